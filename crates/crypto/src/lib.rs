//! SOPS cryptography, and the only lockstep crate that produces plaintext: age [`keys`] (X25519,
//! SSH, post-quantum hybrid) and the [`sops`] value cipher, MAC and key groups. Plaintext leaves it in
//! wiping types only (`Zeroizing` buffers, `Document`s that wipe on drop, `DataKey`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod keys;
pub mod sops;
