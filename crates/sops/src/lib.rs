//! The SOPS file format without its cryptography, bytes in and bytes out: the ordered [`tree`] every
//! store parses into, the [`store`]s (YAML, JSON, dotenv, INI, binary), the [`metadata`] block, the
//! selection [`rules`] and `.sops.yaml` ([`config`]). Nothing here can decrypt a value: that is
//! `lockstep-crypto`'s, so a crate that depends only on this one (render) cannot produce plaintext.
//! Nothing here touches the filesystem, the clock or the RNG.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod metadata;
pub mod rules;
pub mod store;
pub mod tree;

use metadata::Metadata;
use store::Format;

/// True when the bytes carry sops metadata with a version and a MAC (`sops filestatus`).
pub fn is_encrypted(bytes: &[u8], format: Format) -> bool {
    store::load_encrypted(format, bytes)
        .ok()
        .and_then(|l| l.metadata)
        .and_then(|m| Metadata::parse(&m).ok())
        .is_some_and(|m| !m.mac.is_empty())
}
