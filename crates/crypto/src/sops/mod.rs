//! SOPS files opened and sealed: the value cipher, the MAC walk and Shamir key groups over the format
//! of `lockstep-sops` (re-exported here, so `sops::tree`, `sops::store`… name one thing). Nothing here
//! touches the filesystem, the clock or the RNG directly: the time and random bytes are passed in, so
//! outputs can be golden-tested.

pub mod cipher;
pub mod shamir;
pub mod walk;

pub use lockstep_sops::{config, is_encrypted, metadata, rules, store, tree};

use zeroize::Zeroizing;

use crate::keys::{KeyRing, Recipient};
use cipher::DataKey;
use metadata::{AgeEntry, KeyGroup, Metadata, PgpEntry};
use rules::Selection;
use store::{Format, StoreError};
use tree::Document;
use walk::{Rng, Walk};

/// Why a file could not be encrypted or decrypted. Messages name keys, paths and recipients — never values.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    /// The input does not parse in its format.
    #[error("cannot parse as {format:?}: {source}")]
    Parse {
        /// The format tried.
        format: Format,
        /// Where and why.
        source: StoreError,
    },
    /// The output cannot be written in the format (e.g. nested values in dotenv).
    #[error("cannot write as {format:?}: {source}")]
    Emit {
        /// The format tried.
        format: Format,
        /// Which key and why.
        source: StoreError,
    },
    /// `encrypt` on a file that already has sops metadata.
    #[error("the file is already encrypted (it has sops metadata); decrypt it first or use `edit`")]
    AlreadyEncrypted,
    /// `decrypt` on a file without sops metadata.
    #[error("sops metadata not found: the file is not encrypted")]
    NotEncrypted,
    /// The file has no content to encrypt.
    #[error("the file is empty; there is nothing to encrypt")]
    Empty,
    /// The metadata block is unusable.
    #[error(transparent)]
    Metadata(#[from] metadata::MetadataError),
    /// No recipient was given for a new file.
    #[error(
        "no recipients: pass --age age1… or add a creation rule with age recipients to .sops.yaml"
    )]
    NoRecipients,
    /// A data key could not be wrapped.
    #[error("cannot wrap the data key for {recipient}: {message}")]
    Wrap {
        /// The recipient.
        recipient: String,
        /// Why.
        message: String,
    },
    /// None of the loaded identities opens the file's data key.
    #[error("no identity can decrypt the data key")]
    NoMatchingIdentity {
        /// The file's age recipients.
        recipients: Vec<String>,
        /// Other key types in the file (pgp, kms…), which lockstep cannot use.
        foreign: Vec<String>,
        /// `(public half, source)` of every identity tried.
        tried: Vec<(String, String)>,
    },
    /// An age stanza is damaged.
    #[error("the data key wrapped for {recipient} is damaged: {message}")]
    BadStanza {
        /// The recipient of the damaged stanza.
        recipient: String,
        /// Why.
        message: String,
    },
    /// A value could not be encrypted or decrypted.
    #[error(transparent)]
    Walk(#[from] walk::WalkError),
    /// The MAC does not match.
    #[error(
        "MAC mismatch: the file was modified outside lockstep/sops (values, their order or lastmodified changed)"
    )]
    MacMismatch,
    /// The file has no MAC.
    #[error("MAC mismatch: the file has no MAC")]
    NoMac,
    /// The stored MAC does not decrypt.
    #[error("cannot decrypt the MAC: {0}")]
    BadMac(cipher::CipherError),
    /// Invalid key-group settings.
    #[error("{0}")]
    KeyGroups(String),
}

/// sops's exit codes, by their names in getsops/sops `cmd/sops/codes`.
pub mod codes {
    /// A failure without a more specific code.
    pub const ERROR_GENERIC: u8 = 1;
    /// The input could not be read or parsed.
    pub const COULD_NOT_READ_INPUT_FILE: u8 = 2;
    /// The output could not be written.
    pub const COULD_NOT_WRITE_OUTPUT_FILE: u8 = 3;
    /// The tree could not be written in the output format.
    pub const ERROR_DUMPING_TREE: u8 = 4;
    /// A `set` value that does not parse.
    pub const ERROR_INVALID_SET_FORMAT: u8 = 7;
    /// Options that cannot go together.
    pub const ERROR_CONFLICTING_PARAMETERS: u8 = 8;
    /// A value could not be decrypted.
    pub const ERROR_DECRYPTING_TREE: u8 = 25;
    /// The MAC does not match (or is missing).
    pub const MAC_MISMATCH: u8 = 51;
    /// A tree path that does not parse.
    pub const INVALID_TREE_PATH_FORMAT: u8 = 91;
    /// Nothing to encrypt.
    pub const NEED_AT_LEAST_ONE_DOCUMENT: u8 = 92;
    /// The input file does not exist.
    pub const NO_FILE_SPECIFIED: u8 = 100;
    /// No identity could open the data key.
    pub const COULD_NOT_RETRIEVE_KEY: u8 = 128;
    /// `edit` left the file as it was.
    pub const FILE_HAS_NOT_BEEN_MODIFIED: u8 = 200;
    /// The editor could not be started.
    pub const NO_EDITOR_FOUND: u8 = 201;
    /// The file already has sops metadata.
    pub const FILE_ALREADY_ENCRYPTED: u8 = 203;
}

impl SopsError {
    /// The exit code sops uses for the same failure.
    pub fn exit_code(&self) -> u8 {
        use codes::*;
        match self {
            SopsError::Parse { .. } => COULD_NOT_READ_INPUT_FILE,
            SopsError::Emit { .. } => ERROR_DUMPING_TREE,
            SopsError::AlreadyEncrypted => FILE_ALREADY_ENCRYPTED,
            SopsError::Empty => NEED_AT_LEAST_ONE_DOCUMENT,
            SopsError::NoMatchingIdentity { .. } | SopsError::BadStanza { .. } => {
                COULD_NOT_RETRIEVE_KEY
            }
            SopsError::Walk(_) => ERROR_DECRYPTING_TREE,
            SopsError::MacMismatch | SopsError::NoMac | SopsError::BadMac(_) => MAC_MISMATCH,
            SopsError::NotEncrypted
            | SopsError::Metadata(_)
            | SopsError::NoRecipients
            | SopsError::Wrap { .. }
            | SopsError::KeyGroups(_) => ERROR_GENERIC,
        }
    }
}

/// How to encrypt a new file.
pub struct EncryptOptions<'a> {
    /// The plaintext's format.
    pub format: Format,
    /// The encrypted file's format (usually the same).
    pub output: Format,
    /// Recipients per key group (one group in the common case).
    pub key_groups: Vec<Vec<(String, Recipient)>>,
    /// Shares needed when there are several groups (default: all).
    pub shamir_threshold: Option<usize>,
    /// Which values to encrypt.
    pub selection: Selection,
    /// Hash only encrypted values.
    pub mac_only_encrypted: bool,
    /// The write time (`lastmodified`).
    pub now: jiff::Timestamp,
    /// Indentation of YAML output.
    pub yaml_indent: usize,
    /// Random bytes (data key, IVs, Shamir coefficients).
    pub rng: Rng<'a>,
}

/// Encrypts a plaintext file.
pub fn encrypt(plain: &[u8], mut opts: EncryptOptions<'_>) -> Result<Vec<u8>, SopsError> {
    let format = opts.format;
    let loaded =
        store::load_plain(format, plain).map_err(|source| SopsError::Parse { format, source })?;
    if loaded.metadata.is_some() || loaded.docs.iter().any(|d| d.has("sops")) {
        return Err(SopsError::AlreadyEncrypted);
    }
    let mut docs = loaded.docs;
    if docs.is_empty() {
        return Err(SopsError::Empty);
    }
    if opts.key_groups.iter().all(|g| g.is_empty()) {
        return Err(SopsError::NoRecipients);
    }
    let key = DataKey::generate(&mut opts.rng);
    let key_groups = wrap_groups(
        &key,
        &opts.key_groups,
        opts.shamir_threshold,
        opts.now,
        &mut opts.rng,
    )?;
    let meta = Metadata {
        shamir_threshold: (key_groups.len() > 1)
            .then(|| opts.shamir_threshold.unwrap_or(key_groups.len())),
        key_groups,
        lastmodified: String::new(),
        mac: String::new(),
        selection: opts.selection.clone(),
        mac_only_encrypted: opts.mac_only_encrypted,
        version: metadata::SOPS_VERSION.to_string(),
    };
    seal(
        &mut docs,
        meta,
        &key,
        None,
        opts.output,
        opts.now,
        opts.yaml_indent,
        &mut opts.rng,
    )
}

/// Encrypts plaintext documents with `key` under `meta` (recipients and options kept; `lastmodified`,
/// MAC and version renewed) and emits the file. With a stash, unchanged values keep their ciphertext.
#[allow(clippy::too_many_arguments)]
pub fn seal(
    docs: &mut [Document],
    mut meta: Metadata,
    key: &DataKey,
    stash: Option<&walk::Stash>,
    format: Format,
    now: jiff::Timestamp,
    yaml_indent: usize,
    rng: &mut Rng<'_>,
) -> Result<Vec<u8>, SopsError> {
    let walk = Walk {
        key,
        selection: &meta.selection,
        mac_only_encrypted: meta.mac_only_encrypted,
    };
    let mac = walk::encrypt(docs, &walk, rng, stash)?;
    meta.lastmodified = metadata::format_lastmodified(now);
    meta.mac = walk::seal_mac(key, &mac, &meta.lastmodified, rng);
    meta.version = metadata::SOPS_VERSION.to_string();
    store::emit_encrypted(format, docs, &meta.to_value(), yaml_indent)
        .map_err(|source| SopsError::Emit { format, source })
}

/// The recipients of a file's key groups, parsed back from their text (for a rotation that keeps
/// them); PGP keys (`pgp:FINGERPRINT`) are found with `pgp_key`.
pub fn recipients_of(
    meta: &Metadata,
    pgp_key: &dyn Fn(&str) -> Result<Recipient, String>,
) -> Result<Vec<Vec<(String, Recipient)>>, SopsError> {
    meta.key_groups
        .iter()
        .map(|g| {
            let age = g.age.iter().map(|e| {
                Recipient::parse(&e.recipient)
                    .map(|r| (e.recipient.clone(), r))
                    .map_err(|err| SopsError::Wrap {
                        recipient: e.recipient.clone(),
                        message: err.to_string(),
                    })
            });
            let pgp = g.pgp.iter().map(|e| {
                let text = format!("pgp:{}", e.fp);
                pgp_key(&e.fp)
                    .map(|r| (text.clone(), r))
                    .map_err(|message| SopsError::Wrap {
                        recipient: text,
                        message,
                    })
            });
            age.chain(pgp).collect()
        })
        .collect()
}

/// Refuses to re-wrap a file that has keys of types lockstep cannot encrypt to (kms, Vault…: they
/// would be lost). age and PGP keys are both re-wrapped.
pub fn ensure_age_only(meta: &Metadata) -> Result<(), SopsError> {
    let foreign: Vec<String> = meta
        .key_groups
        .iter()
        .flat_map(|g| g.others.iter())
        .filter(|(_, v)| matches!(v, tree::Value::List(l) if !l.is_empty()))
        .map(|(k, _)| k.clone())
        .collect();

    if foreign.is_empty() {
        Ok(())
    } else {
        Err(SopsError::KeyGroups(format!(
            "the file also has {} keys, which lockstep cannot wrap a data key for; use sops for this file, or re-encrypt it to age recipients only",
            foreign.join(", ")
        )))
    }
}

/// Wraps `key` (a new file's or rotation's key, or the existing key for `updatekeys`) for key groups:
/// the whole key for one group, a Shamir share per group for several. PGP entries are dated `now`.
pub fn wrap_groups(
    key: &DataKey,
    groups: &[Vec<(String, Recipient)>],
    threshold: Option<usize>,
    now: jiff::Timestamp,
    rng: &mut Rng<'_>,
) -> Result<Vec<KeyGroup>, SopsError> {
    let secrets: Vec<Zeroizing<Vec<u8>>> = if groups.len() == 1 {
        vec![Zeroizing::new(key.expose().to_vec())]
    } else {
        let t = threshold.unwrap_or(groups.len());
        if t == 0 || t > groups.len() {
            return Err(SopsError::KeyGroups(format!(
                "shamir_threshold {t} must be between 1 and the number of key groups ({})",
                groups.len()
            )));
        }
        shamir::split(key.expose(), groups.len(), t, rng)
    };
    let created_at = metadata::format_lastmodified(now);
    let mut out = Vec::new();
    for (group, secret) in groups.iter().zip(secrets.iter()) {
        let mut wrapped = KeyGroup::default();
        for (text, r) in group {
            let fail = |message: String| SopsError::Wrap {
                recipient: text.clone(),
                message,
            };
            match r {
                Recipient::Pgp(pgp) => wrapped.pgp.push(PgpEntry {
                    fp: pgp.fingerprint.clone(),
                    created_at: created_at.clone(),
                    enc: pgp.wrap(secret, rng).map_err(fail)?,
                }),
                age => wrapped.age.push(AgeEntry {
                    recipient: text.clone(),
                    enc: crate::keys::wrap(secret, age).map_err(|e| fail(e.to_string()))?,
                }),
            }
        }
        out.push(wrapped);
    }
    Ok(out)
}

/// A decrypted file. Its documents hold plaintext and are wiped when dropped.
pub struct Decrypted {
    /// The plaintext documents.
    pub docs: Vec<Document>,
    /// The file's metadata.
    pub metadata: Metadata,
    /// The data key (for re-encrypting after an edit).
    pub key: DataKey,
    /// The IVs of the decrypted values, for minimal diffs when re-encrypting.
    pub stash: walk::Stash,
}

/// One group's secret (the data key, or its Shamir share): its age entries first, then its PGP
/// entries (in process, then through the agent); `None` when no identity in `ring` opens any.
fn group_share(group: &KeyGroup, ring: &KeyRing) -> Result<Option<Zeroizing<Vec<u8>>>, SopsError> {
    for entry in &group.age {
        match ring.unwrap(&entry.enc) {
            Ok(Some(secret)) => return Ok(Some(secret)),
            Ok(None) => {}
            Err(message) => {
                return Err(SopsError::BadStanza {
                    recipient: entry.recipient.clone(),
                    message,
                });
            }
        }
    }
    for entry in &group.pgp {
        match ring.unwrap_pgp(&entry.fp, &entry.enc) {
            Ok(Some(secret)) => return Ok(Some(secret)),
            Ok(None) => {}
            Err(message) => {
                return Err(SopsError::BadStanza {
                    recipient: format!("pgp {}", entry.fp),
                    message,
                });
            }
        }
    }
    Ok(None)
}

/// Recovers a file's data key with the identities in `ring`.
pub fn data_key(meta: &Metadata, ring: &KeyRing) -> Result<DataKey, SopsError> {
    let mut shares = Vec::new();
    for group in &meta.key_groups {
        if let Some(secret) = group_share(group, ring)? {
            shares.push(secret);
        }
    }
    let no_match = || SopsError::NoMatchingIdentity {
        recipients: meta
            .age_entries()
            .map(|e| e.recipient.clone())
            .chain(meta.pgp_entries().map(|e| format!("pgp {}", e.fp)))
            .collect(),
        foreign: meta
            .key_groups
            .iter()
            .flat_map(|g| g.others.iter())
            .filter(|(_, v)| matches!(v, tree::Value::List(l) if !l.is_empty()))
            .map(|(k, _)| k.clone())
            .collect(),
        tried: ring
            .identities
            .iter()
            .map(|i| (i.public.clone(), i.source.clone()))
            .chain(
                ring.pgp
                    .iter()
                    .map(|(k, source)| (format!("pgp {}", k.fingerprint), source.clone())),
            )
            .chain(
                ring.agent
                    .iter()
                    .map(|a| ("pgp secret keys it holds".to_string(), a.describe())),
            )
            .collect(),
    };
    if meta.key_groups.len() <= 1 {
        let secret = shares.pop().ok_or_else(no_match)?;
        return DataKey::from_slice(&secret)
            .ok_or_else(|| SopsError::KeyGroups("the wrapped data key is not 32 bytes".into()));
    }
    let threshold = meta.shamir_threshold.unwrap_or(meta.key_groups.len());
    if shares.len() < threshold {
        return Err(no_match());
    }
    let secret = shamir::combine(&shares)
        .map_err(|e| SopsError::KeyGroups(format!("cannot combine key shares: {e}")))?;
    DataKey::from_slice(&secret)
        .ok_or_else(|| SopsError::KeyGroups("the combined data key is not 32 bytes".into()))
}

/// Opens an encrypted file: data key, values, MAC check (unless `ignore_mac`).
pub fn decrypt(
    bytes: &[u8],
    format: Format,
    ring: &KeyRing,
    ignore_mac: bool,
) -> Result<Decrypted, SopsError> {
    let loaded = store::load_encrypted(format, bytes)
        .map_err(|source| SopsError::Parse { format, source })?;
    let raw_meta = loaded.metadata.ok_or(SopsError::NotEncrypted)?;
    let meta = Metadata::parse(&raw_meta)?;
    let mut docs = loaded.docs;
    let key = data_key(&meta, ring)?;
    let walk = Walk {
        key: &key,
        selection: &meta.selection,
        mac_only_encrypted: meta.mac_only_encrypted,
    };
    let mut stash = walk::Stash::default();
    let computed = walk::decrypt(&mut docs, &walk, format == Format::Binary, &mut stash)?;
    if !ignore_mac {
        if meta.mac.is_empty() {
            return Err(SopsError::NoMac);
        }
        let stored = walk::open_mac(&key, &meta.mac, &metadata::mac_aad_time(&meta.lastmodified))
            .map_err(SopsError::BadMac)?;
        if stored != computed {
            return Err(SopsError::MacMismatch);
        }
    }
    Ok(Decrypted {
        docs,
        metadata: meta,
        key,
        stash,
    })
}

/// Checks an encrypted file's structure without a key: metadata that parses, a MAC, and every value
/// the selection covers a well-formed `ENC[…]`. Returns the metadata.
pub fn check_structure(bytes: &[u8], format: Format) -> Result<Metadata, SopsError> {
    let loaded = store::load_encrypted(format, bytes)
        .map_err(|source| SopsError::Parse { format, source })?;
    let meta = Metadata::parse(&loaded.metadata.ok_or(SopsError::NotEncrypted)?)?;
    if meta.mac.is_empty() {
        return Err(SopsError::NoMac);
    }
    cipher::parse(&meta.mac).map_err(SopsError::BadMac)?;
    let mut docs = loaded.docs;
    walk::check(&mut docs, &meta.selection)?;
    Ok(meta)
}
