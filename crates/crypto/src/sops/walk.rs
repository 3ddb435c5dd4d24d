//! The tree walk that joins a store's tree, the selection rule and the value cipher: encrypts or
//! decrypts every selected value in document order and computes the MAC over the same walk.

use std::collections::HashMap;

use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

use super::cipher::{self, CipherError, DataKey, ValueType};
use super::rules::Selection;
use super::tree::{Comment, Document, Item, Plain, Value, format_float};

/// A value that could not be encrypted or decrypted, named by its key path (never its value).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct WalkError {
    /// Key path, e.g. `db.password` or `hosts[2]`.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// Random bytes for IVs and data keys; injected so outputs can be golden-tested.
pub type Rng<'a> = &'a mut dyn FnMut(&mut [u8]);

/// Options of one walk.
pub struct Walk<'a> {
    /// The file's data key.
    pub key: &'a DataKey,
    /// The file's selection option.
    pub selection: &'a Selection,
    /// `mac_only_encrypted`: hash only encrypted values.
    pub mac_only_encrypted: bool,
}

struct Mac {
    hash: Sha512,
    only_encrypted: bool,
}

impl Mac {
    fn new(only_encrypted: bool) -> Self {
        let mut hash = Sha512::new();
        if only_encrypted {
            // sops's MACOnlyEncryptedInitialization: SHA-256("sops") seeds the hash.
            hash.update(Sha256::digest(b"sops"));
        }
        Mac {
            hash,
            only_encrypted,
        }
    }

    fn add(&mut self, bytes: &[u8], encrypted: bool) {
        if encrypted || !self.only_encrypted {
            self.hash.update(bytes);
        }
    }

    fn hex(self) -> String {
        hex::encode_upper(self.hash.finalize())
    }
}

/// Canonical plaintext bytes of a leaf, as sops hashes and encrypts them.
fn canonical(v: &Value) -> Option<(Zeroizing<Vec<u8>>, ValueType)> {
    let (bytes, ty) = match v {
        Value::Str(s) => (s.expose().as_bytes().to_vec(), ValueType::Str),
        Value::Int(i) => (i.expose().to_string().into_bytes(), ValueType::Int),
        Value::Float(f) => (format_float(*f.expose()).into_bytes(), ValueType::Float),
        Value::Bool(b) => (
            (if *b.expose() { "True" } else { "False" })
                .as_bytes()
                .to_vec(),
            ValueType::Bool,
        ),
        Value::Time(t) => (t.expose().as_bytes().to_vec(), ValueType::Time),
        Value::Bytes(b) => (b.expose().to_vec(), ValueType::Str),
        Value::Null | Value::Map(_) | Value::List(_) | Value::Comment(_) => return None,
    };
    Some((Zeroizing::new(bytes), ty))
}

/// Parses Go `strconv.ParseBool` spellings.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Re-types decrypted bytes according to their `type:`.
fn retype(bytes: Zeroizing<Vec<u8>>, ty: ValueType, binary: bool) -> Result<Value, String> {
    let text = || {
        std::str::from_utf8(&bytes).map_err(|_| format!("decrypted {} is not UTF-8", ty.as_str()))
    };
    Ok(match ty {
        ValueType::Str if binary => Value::Bytes(bytes.as_slice().into()),
        ValueType::Str | ValueType::Comment => Value::Str(text()?.into()),
        ValueType::Bytes => Value::Bytes(bytes.as_slice().into()),
        ValueType::Int => Value::Int(Plain::new(
            text()?
                .parse()
                .map_err(|_| "decrypted int does not parse".to_string())?,
        )),
        ValueType::Float => Value::Float(Plain::new(match text()? {
            "+Inf" | "Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            t => t
                .parse()
                .map_err(|_| "decrypted float does not parse".to_string())?,
        })),
        ValueType::Bool => Value::Bool(
            parse_bool(text()?)
                .ok_or("decrypted bool does not parse")?
                .into(),
        ),
        ValueType::Time => Value::Time(text()?.into()),
    })
}

fn aad(path: &[String]) -> Vec<u8> {
    let mut s = String::new();
    for k in path {
        s.push_str(k);
        s.push(':');
    }
    if path.is_empty() {
        s.push(':');
    }
    s.into_bytes()
}

/// Human key path for errors: `a.b[2].c`.
fn display_path(path: &[String], indices: &[(usize, usize)]) -> String {
    let mut out = String::new();
    for (depth, k) in path.iter().enumerate() {
        if depth > 0 {
            out.push('.');
        }
        out.push_str(k);
        for (d, i) in indices {
            if *d == depth + 1 {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    if path.is_empty() {
        for (_, i) in indices {
            out.push_str(&format!("[{i}]"));
        }
    }
    if out.is_empty() {
        "(top level)".into()
    } else {
        out
    }
}

/// IVs of the values a decryption saw, keyed by a digest of (key path, type, plaintext). Re-encrypting
/// an unchanged value with its old IV (and the same data key) reproduces its ciphertext byte for byte,
/// so an edit shows up in Git as exactly the values that changed — as sops does.
#[derive(Default)]
pub struct Stash {
    ivs: HashMap<[u8; 32], [u8; 32]>,
    /// Where an `ENC[…]` comment did not decrypt (kept as it is, as sops does): moved or edited by
    /// hand, or written with another data key.
    unreadable_comments: Vec<String>,
}

impl Stash {
    fn digest(aad: &[u8], ty: ValueType, plaintext: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((aad.len() as u64).to_be_bytes());
        h.update(aad);
        h.update(ty.as_str().as_bytes());
        h.update([0]);
        h.update(plaintext);
        h.finalize().into()
    }

    fn remember(&mut self, aad: &[u8], ty: ValueType, plaintext: &[u8], iv: &[u8]) {
        if let Ok(iv) = <[u8; 32]>::try_from(iv) {
            self.ivs.insert(Self::digest(aad, ty, plaintext), iv);
        }
    }

    fn recall(&self, aad: &[u8], ty: ValueType, plaintext: &[u8]) -> Option<[u8; 32]> {
        self.ivs.get(&Self::digest(aad, ty, plaintext)).copied()
    }

    /// The key paths (`a.b[2]`, or `top level`) of encrypted comments that did not decrypt.
    pub fn unreadable_comments(&self) -> &[String] {
        &self.unreadable_comments
    }
}

enum Mode<'r, 'a> {
    Encrypt {
        rng: &'r mut Rng<'a>,
        stash: Option<&'r Stash>,
    },
    Decrypt {
        binary: bool,
        stash: &'r mut Stash,
    },
    /// Structure only: every selected value must be an `ENC[…]` that parses (no key needed).
    Check,
}

/// An IV for a value: the remembered one when the value is unchanged, else a fresh random one.
fn iv_for(
    rng: &mut Rng<'_>,
    stash: Option<&Stash>,
    aad: &[u8],
    ty: ValueType,
    plaintext: &[u8],
) -> [u8; 32] {
    if let Some(iv) = stash.and_then(|s| s.recall(aad, ty, plaintext)) {
        return iv;
    }
    let mut iv = [0u8; 32];
    rng(&mut iv);
    iv
}

struct State<'w, 'r, 'a> {
    walk: &'w Walk<'w>,
    mode: Mode<'r, 'a>,
    mac: Mac,
    path: Vec<String>,
    indices: Vec<(usize, usize)>,
    /// The plaintext of the comments above the current value (the comment-regex options).
    comments: Vec<Plain<String>>,
}

impl<'w, 'r, 'a> State<'w, 'r, 'a> {
    /// Walks every document in `mode`; returns the MAC over the plaintext values.
    fn run(
        walk: &'w Walk<'w>,
        mode: Mode<'r, 'a>,
        docs: &mut [Document],
    ) -> Result<String, WalkError> {
        let mut state = State {
            walk,
            mode,
            mac: Mac::new(walk.mac_only_encrypted),
            path: vec![],
            indices: vec![],
            comments: vec![],
        };
        for doc in docs.iter_mut() {
            state.items(&mut doc.items)?;
        }
        Ok(state.mac.hex())
    }

    fn err(&self, reason: impl Into<String>) -> WalkError {
        WalkError {
            path: display_path(&self.path, &self.indices),
            reason: reason.into(),
        }
    }

    /// Encrypts or decrypts a comment; returns its plaintext (for the comment-regex options).
    fn comment(&mut self, c: &mut Comment) -> Result<Plain<String>, WalkError> {
        let before = Plain::from(c.text.expose().as_str());
        let marker = self.walk.selection.is_marker(c.text.expose());
        let selected = !marker && self.walk.selection.encrypts(&self.path, &self.comments);
        match &mut self.mode {
            Mode::Encrypt { rng, stash } => {
                if selected && !c.text.expose().is_empty() {
                    let aad = aad(&self.path);
                    let iv = iv_for(
                        rng,
                        *stash,
                        &aad,
                        ValueType::Comment,
                        c.text.expose().as_bytes(),
                    );
                    let enc = cipher::seal(
                        self.walk.key,
                        c.text.expose().as_bytes(),
                        &iv,
                        &aad,
                        ValueType::Comment,
                    );
                    c.text = enc.into();
                }
                Ok(before)
            }
            Mode::Decrypt { stash, .. } => {
                if cipher::is_encrypted(c.text.expose()) {
                    // Like sops: a comment that does not decrypt is kept as it is.
                    let aad = aad(&self.path);
                    if let Ok(sealed) = cipher::parse(c.text.expose())
                        && let Ok(plain) = cipher::open(self.walk.key, &sealed, &aad)
                        && let Ok(text) = std::str::from_utf8(&plain)
                    {
                        stash.remember(&aad, ValueType::Comment, &plain, &sealed.iv);
                        c.text = text.into();
                    } else {
                        let at = display_path(&self.path, &self.indices);
                        stash.unreadable_comments.push(if at.is_empty() {
                            "the top level".into()
                        } else {
                            at
                        });
                    }
                }
                Ok(Plain::from(c.text.expose().as_str()))
            }
            Mode::Check => Ok(before),
        }
    }

    fn leaf(&mut self, v: &mut Value) -> Result<(), WalkError> {
        let selected = self.walk.selection.encrypts(&self.path, &self.comments);
        match &mut self.mode {
            Mode::Check => match v {
                _ if !selected => {}
                Value::Null => {}
                Value::Str(s) if s.expose().is_empty() => {}
                Value::Str(s) => {
                    cipher::parse(s.expose()).map_err(|e| self.err(e.to_string()))?;
                }
                other => {
                    return Err(self.err(format!(
                        "expected an encrypted value (ENC[…]) but found a plain {}",
                        other.kind()
                    )));
                }
            },
            Mode::Encrypt { rng, stash } => {
                let Some((bytes, ty)) = canonical(v) else {
                    return Ok(());
                };
                self.mac.add(&bytes, selected);
                if selected && !bytes.is_empty() {
                    let aad = aad(&self.path);
                    let iv = iv_for(rng, *stash, &aad, ty, &bytes);
                    *v = Value::Str(cipher::seal(self.walk.key, &bytes, &iv, &aad, ty).into());
                } else if selected {
                    *v = Value::Str(String::new().into());
                }
            }
            Mode::Decrypt { binary, .. } => {
                let binary = *binary;
                if !selected {
                    if let Some((bytes, _)) = canonical(v) {
                        self.mac.add(&bytes, false);
                    }
                    return Ok(());
                }
                match v {
                    Value::Null => {}
                    Value::Str(s) if s.expose().is_empty() => {}
                    Value::Str(s) => {
                        let sealed =
                            cipher::parse(s.expose()).map_err(|e| self.err(e.to_string()))?;
                        let plain = cipher::open(self.walk.key, &sealed, &aad(&self.path)).map_err(|e| match e {
                            CipherError::Auth => self.err(
                                "value does not decrypt with this file's data key (modified outside lockstep/sops, or moved to another key path)",
                            ),
                            other => self.err(other.to_string()),
                        })?;
                        let value = retype(plain, sealed.ty, binary).map_err(|e| self.err(e))?;
                        if let Some((bytes, ty)) = canonical(&value) {
                            self.mac.add(&bytes, true);
                            let aad = aad(&self.path);
                            if let Mode::Decrypt { stash, .. } = &mut self.mode {
                                stash.remember(&aad, ty, &bytes, &sealed.iv);
                            }
                        }
                        *v = value;
                    }
                    other => {
                        return Err(self.err(format!(
                            "expected an encrypted value (ENC[…]) but found a plain {}",
                            other.kind()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn value(&mut self, v: &mut Value) -> Result<(), WalkError> {
        match v {
            Value::Map(items) => self.items(items),
            Value::List(values) => {
                let depth = self.path.len();
                let saved = self.comments.len();
                for (i, elem) in values.iter_mut().enumerate() {
                    self.indices.push((depth, i));
                    let r = match elem {
                        Value::Comment(c) => self.comment(c).map(|plain| self.comments.push(plain)),
                        other => self.value(other),
                    };
                    self.indices.pop();
                    r?;
                }
                self.comments.truncate(saved);
                Ok(())
            }
            Value::Comment(c) => self.comment(c).map(drop),
            leaf => self.leaf(leaf),
        }
    }

    fn items(&mut self, items: &mut [Item]) -> Result<(), WalkError> {
        let saved = self.comments.len();
        for item in items.iter_mut() {
            match item {
                Item::Comment(c) => {
                    let plain = self.comment(c)?;
                    if !c.inline {
                        self.comments.push(plain);
                    }
                }
                Item::Pair(k, v) => {
                    self.path.push(k.clone());
                    let r = self.value(v);
                    self.path.pop();
                    r?;
                    // Comments above a key apply to that key only.
                    self.comments.truncate(saved);
                }
            }
        }
        self.comments.truncate(saved);
        Ok(())
    }
}

/// Encrypts the selected values of every document in place; returns the MAC (uppercase hex). With a
/// stash, unchanged values keep their IVs (and so their ciphertext, under the same data key).
pub fn encrypt(
    docs: &mut [Document],
    walk: &Walk<'_>,
    rng: &mut Rng<'_>,
    stash: Option<&Stash>,
) -> Result<String, WalkError> {
    State::run(walk, Mode::Encrypt { rng, stash }, docs)
}

/// Decrypts the selected values of every document in place, remembering their IVs in `stash`; returns
/// the MAC recomputed over the plaintext (compare it with the file's). With `binary`, `str` values
/// decrypt to raw bytes.
pub fn decrypt(
    docs: &mut [Document],
    walk: &Walk<'_>,
    binary: bool,
    stash: &mut Stash,
) -> Result<String, WalkError> {
    State::run(walk, Mode::Decrypt { binary, stash }, docs)
}

/// Checks, without a key, that every value the selection covers is a well-formed `ENC[…]`.
pub fn check(docs: &mut [Document], selection: &Selection) -> Result<(), WalkError> {
    // Check mode never touches the key; the walk's shape wants one.
    let unused = DataKey::from_slice(&[0u8; 32]).expect("32 bytes");
    let walk = Walk {
        key: &unused,
        selection,
        mac_only_encrypted: false,
    };
    State::run(&walk, Mode::Check, docs).map(drop)
}

/// Encrypts the MAC for storage: AAD = `lastmodified`.
pub fn seal_mac(key: &DataKey, mac: &str, lastmodified: &str, rng: &mut Rng<'_>) -> String {
    let mut iv = [0u8; 32];
    rng(&mut iv);
    cipher::seal(
        key,
        mac.as_bytes(),
        &iv,
        lastmodified.as_bytes(),
        ValueType::Str,
    )
}

/// Decrypts the stored MAC.
pub fn open_mac(key: &DataKey, stored: &str, lastmodified: &str) -> Result<String, CipherError> {
    let sealed = cipher::parse(stored)?;
    let plain = cipher::open(key, &sealed, lastmodified.as_bytes())?;
    String::from_utf8(plain.to_vec()).map_err(|_| CipherError::Malformed("MAC is not text"))
}
