//! age identities and recipients (X25519, post-quantum hybrid and SSH), parsed from bytes, and the wrapping of a data key
//! to a recipient the way sops does it: one ASCII-armored age file per recipient.
//!
//! This module never reads environment variables or files; the CLI edge gathers key material and hands
//! it over with a note of where it came from, so errors can say where identities were looked for.

use std::io::{Read, Write};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
/// A passphrase: wiped when dropped, never printed.
pub use age::secrecy::SecretString;
use zeroize::Zeroizing;

mod bech32;
pub mod pgp;
pub mod pq;

/// A recipient a data key can be wrapped to.
pub enum Recipient {
    /// `age1…`
    X25519(age::x25519::Recipient),
    /// `age1pq1…` (ML-KEM-768 + X25519)
    PostQuantum(Box<pq::PqRecipient>),
    /// `ssh-ed25519 …` / `ssh-rsa …`
    Ssh(Box<age::ssh::Recipient>),
    /// A PGP key (`pgp:FINGERPRINT`), with its certificate.
    Pgp(Box<pgp::PgpRecipient>),
}

/// A recipient string that is not an age or SSH public key.
#[derive(Debug, thiserror::Error)]
#[error(
    "{recipient:?} is not an age recipient (age1…, age1pq1…) or an SSH public key (ssh-ed25519 …, ssh-rsa …)"
)]
pub struct RecipientError {
    /// The text given (a public key, safe to print).
    pub recipient: String,
}

impl Recipient {
    /// Parses `age1…` or an OpenSSH public key line.
    pub fn parse(s: &str) -> Result<Recipient, RecipientError> {
        let s = s.trim();
        if s.starts_with("age1pq1") {
            pq::PqRecipient::parse(s)
                .map(|r| Recipient::PostQuantum(Box::new(r)))
                .ok_or_else(|| RecipientError {
                    recipient: s.to_string(),
                })
        } else if s.starts_with("age1") {
            age::x25519::Recipient::from_str(s)
                .map(Recipient::X25519)
                .map_err(|_| RecipientError {
                    recipient: s.to_string(),
                })
        } else if s.starts_with("ssh-") {
            age::ssh::Recipient::from_str(s)
                .map(|r| Recipient::Ssh(Box::new(r)))
                .map_err(|_| RecipientError {
                    recipient: s.to_string(),
                })
        } else {
            Err(RecipientError {
                recipient: s.to_string(),
            })
        }
    }

    fn as_dyn(&self) -> Option<&dyn age::Recipient> {
        match self {
            Recipient::X25519(r) => Some(r),
            Recipient::PostQuantum(r) => Some(r.as_ref()),
            Recipient::Ssh(r) => Some(r.as_ref()),
            Recipient::Pgp(_) => None,
        }
    }
}

/// Wraps `secret` (a data key or a Shamir share) to one age recipient as an armored age file, as sops
/// stores it. (A PGP recipient wraps with [`pgp::PgpRecipient::wrap`].)
pub fn wrap(secret: &[u8], recipient: &Recipient) -> Result<String, std::io::Error> {
    let recipient = recipient
        .as_dyn()
        .ok_or_else(|| std::io::Error::other("not an age recipient"))?;
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)?;
    let mut w = encryptor.wrap_output(armor)?;
    w.write_all(secret)?;
    w.finish()?.finish()?;
    String::from_utf8(out).map_err(std::io::Error::other)
}

/// One identity and where it came from.
pub struct Identity {
    inner: Box<dyn age::Identity + Send + Sync>,
    /// Its public half (`age1…`, or `ssh key <path>`), for messages.
    pub public: String,
    /// Where it was found (`SOPS_AGE_KEY_FILE=/path`, `--identity …`).
    pub source: String,
}

/// Every identity loaded for a run. Key material is never printed or cloned.
#[derive(Default)]
pub struct KeyRing {
    /// The identities, in load order.
    pub identities: Vec<Identity>,
    /// OpenPGP secret keys held in process, with where each came from.
    pub pgp: Vec<(pgp::PgpIdentity, String)>,
    /// GnuPG (or another agent) for PGP keys not held in process.
    pub agent: Option<Box<dyn pgp::PgpAgent>>,
    /// Sources that were looked at, with what was found (for "no identity matched").
    pub searched: Vec<String>,
}

/// Key material that could not be parsed (the message never contains the key).
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {reason}")]
pub struct IdentityError {
    /// Where the key came from.
    pub source_name: String,
    /// What is wrong with it.
    pub reason: String,
}

impl KeyRing {
    /// Adds the identities in `text` (an age key file: `AGE-SECRET-KEY-1…` lines, `#` comments; an
    /// OpenSSH private key; or an armored OpenPGP secret key block). Returns how many were added.
    pub fn add_text(&mut self, text: &[u8], source: &str) -> Result<usize, IdentityError> {
        let err = |reason: &str| IdentityError {
            source_name: source.to_string(),
            reason: reason.to_string(),
        };
        if pgp::is_secret_key_block(text) {
            let keys = pgp::parse_secret_keys(text).map_err(|reason| err(&reason))?;
            let n = keys.len();
            self.pgp
                .extend(keys.into_iter().map(|k| (k, source.to_string())));
            return Ok(n);
        }
        let text = std::str::from_utf8(text).map_err(|_| err("not UTF-8 text"))?;
        if text
            .trim_start()
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
            || text
                .trim_start()
                .starts_with("-----BEGIN RSA PRIVATE KEY-----")
        {
            let id = age::ssh::Identity::from_buffer(text.as_bytes(), Some(source.to_string()))
                .map_err(|e| err(&format!("not a usable SSH private key ({e})")))?;
            match id {
                age::ssh::Identity::Unencrypted(_) => {}
                age::ssh::Identity::Encrypted(_) => {
                    return Err(err(
                        "passphrase-protected SSH keys are not supported yet; use an unencrypted key or an age key",
                    ));
                }
                age::ssh::Identity::Unsupported(_) => {
                    return Err(err("unsupported SSH key type (use ssh-ed25519 or ssh-rsa)"));
                }
            }
            self.identities.push(Identity {
                inner: Box::new(id),
                public: format!("ssh key {source}"),
                source: source.into(),
            });
            return Ok(1);
        }
        if is_passphrase_protected(text.as_bytes()) {
            return Err(err(
                "the identity file is passphrase-protected (age -p); it can be opened only where a passphrase can be asked for on a terminal — use an identity without a passphrase here",
            ));
        }
        let mut added = 0;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            // sops 3.13 accepts several identities on one line, separated by whitespace.
            for word in line.split_whitespace() {
                if word.starts_with("AGE-SECRET-KEY-1") {
                    let id = age::x25519::Identity::from_str(word).map_err(|_| {
                        err(&format!(
                            "line {}: malformed AGE-SECRET-KEY-1 identity",
                            n + 1
                        ))
                    })?;
                    let public = id.to_public().to_string();
                    self.identities.push(Identity {
                        inner: Box::new(id),
                        public,
                        source: source.into(),
                    });
                    added += 1;
                } else if word.starts_with("AGE-SECRET-KEY-PQ-1") {
                    let id = pq::PqIdentity::parse(word).ok_or_else(|| {
                        err(&format!(
                            "line {}: malformed AGE-SECRET-KEY-PQ-1 identity",
                            n + 1
                        ))
                    })?;
                    let public = id.public.clone();
                    self.identities.push(Identity {
                        inner: Box::new(id),
                        public,
                        source: source.into(),
                    });
                    added += 1;
                } else if word.starts_with("AGE-PLUGIN-") {
                    return Err(err(&format!(
                        "line {}: age plugin identities are not supported yet",
                        n + 1
                    )));
                } else {
                    return Err(err(&format!(
                        "line {}: not an age identity (expected AGE-SECRET-KEY-1…)",
                        n + 1
                    )));
                }
            }
        }
        Ok(added)
    }

    /// Adds the identities of a passphrase-protected identity file (`age -p`: an age file, armored or
    /// not, encrypted to an scrypt passphrase, holding an identity file). The plaintext identity file
    /// exists only in memory and is wiped. Returns how many were added.
    pub fn add_protected(
        &mut self,
        file: &[u8],
        passphrase: SecretString,
        source: &str,
    ) -> Result<usize, IdentityError> {
        let err = |reason: String| IdentityError {
            source_name: source.to_string(),
            reason,
        };
        let reader = age::armor::ArmoredReader::new(trim_leading_blank(file));
        let decryptor = age::Decryptor::new_buffered(reader)
            .map_err(|e| err(format!("not a readable age file ({e})")))?;
        if !decryptor.is_scrypt() {
            return Err(err(
                "an age file encrypted to recipients, not to a passphrase, cannot serve as an identity file"
                    .into(),
            ));
        }
        let identity = age::scrypt::Identity::new(passphrase);
        let mut reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                    err("the passphrase does not open it".into())
                }
                age::DecryptError::ExcessiveWork { required, .. } => err(format!(
                    "its passphrase work factor 2^{required} is more than lockstep will spend"
                )),
                other => err(format!("cannot be decrypted ({other})")),
            })?;
        let mut plain = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut plain)
            .map_err(|e| err(format!("cannot be decrypted ({e})")))?;
        self.add_text(&plain, source)
    }

    /// Opens a data key encrypted to the PGP key `fingerprint`: with the keys held in process, then
    /// through the agent. `Ok(None)` when neither can.
    pub fn unwrap_pgp(
        &self,
        fingerprint: &str,
        enc: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
        let keys: Vec<&pgp::PgpIdentity> = self.pgp.iter().map(|(k, _)| k).collect();
        if let Some(secret) = pgp::open_with(&keys, enc)? {
            return Ok(Some(secret));
        }
        match &self.agent {
            Some(agent) => agent.decrypt(fingerprint, enc),
            None => Ok(None),
        }
    }

    /// Tries every identity on an armored age file; returns the payload, or `None` when none matches.
    pub fn unwrap(&self, enc: &str) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
        // The age crate rejects leading blank lines; sops tolerates them.
        let armored = enc.trim_start();
        for id in &self.identities {
            let reader = age::armor::ArmoredReader::new(armored.as_bytes());
            let decryptor = age::Decryptor::new_buffered(reader)
                .map_err(|e| format!("not an age file: {e}"))?;
            match decryptor.decrypt(std::iter::once(id.inner.as_ref() as &dyn age::Identity)) {
                Ok(mut r) => {
                    let mut out = Zeroizing::new(Vec::new());
                    r.read_to_end(&mut out)
                        .map_err(|e| format!("age payload: {e}"))?;
                    return Ok(Some(out));
                }
                Err(age::DecryptError::NoMatchingKeys) => continue,
                Err(e) => return Err(format!("age: {e}")),
            }
        }
        Ok(None)
    }
}

fn trim_leading_blank(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Whether key material is an age-encrypted file (binary or armored): a passphrase-protected identity
/// file as `age -p` writes it.
pub fn is_passphrase_protected(text: &[u8]) -> bool {
    let text = trim_leading_blank(text);
    text.starts_with(b"age-encryption.org/")
        || text.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----")
}

/// A new X25519 identity in `age-keygen`'s file format, and its recipient.
pub fn generate(created: &str) -> (Zeroizing<String>, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let text = Zeroizing::new(format!(
        "# created: {created}\n# public key: {public}\n{}\n",
        id.to_string().expose_secret()
    ));
    (text, public)
}

/// A new post-quantum hybrid identity in `age-keygen -pq`'s file format, and its recipient.
pub fn generate_pq(created: &str) -> (Zeroizing<String>, String) {
    let (secret, public) = pq::generate();
    let text = Zeroizing::new(format!(
        "# created: {created}\n# public key: {public}\n{}\n",
        *secret
    ));
    (text, public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_round_trip_and_foreign_identity_does_not_match() {
        let (text, public) = generate("2026-01-01T00:00:00Z");
        let mut ring = KeyRing::default();
        assert_eq!(ring.add_text(text.as_bytes(), "test").expect("parses"), 1);
        assert_eq!(ring.identities[0].public, public);
        let enc = wrap(&[5u8; 32], &Recipient::parse(&public).expect("recipient")).expect("wraps");
        assert!(enc.starts_with("-----BEGIN AGE ENCRYPTED FILE-----\n"));
        assert_eq!(
            ring.unwrap(&enc).expect("ok").expect("matches").as_slice(),
            &[5u8; 32]
        );

        let (other, _) = generate("2026-01-01T00:00:00Z");
        let mut other_ring = KeyRing::default();
        other_ring
            .add_text(other.as_bytes(), "other")
            .expect("parses");
        assert!(other_ring.unwrap(&enc).expect("ok").is_none());
    }

    #[test]
    fn a_passphrase_protected_identity_file_opens_with_its_passphrase_only() {
        let (text, public) = generate("2026-01-01T00:00:00Z");
        let mut recipient = age::scrypt::Recipient::new("correct horse".to_string().into());
        recipient.set_work_factor(10);
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .expect("encryptor");
        let mut file = Vec::new();
        let armor =
            age::armor::ArmoredWriter::wrap_output(&mut file, age::armor::Format::AsciiArmor)
                .expect("armor");
        let mut w = encryptor.wrap_output(armor).expect("writer");
        w.write_all(text.as_bytes()).expect("write");
        w.finish().expect("finish").finish().expect("armor finish");
        assert!(is_passphrase_protected(&file));

        let mut ring = KeyRing::default();
        let refused = ring
            .add_text(&file, "keys.age")
            .expect_err("needs the passphrase");
        assert!(refused.reason.contains("passphrase-protected"), "{refused}");
        let wrong = ring
            .add_protected(&file, "wrong".to_string().into(), "keys.age")
            .expect_err("wrong passphrase");
        assert_eq!(wrong.reason, "the passphrase does not open it");
        assert_eq!(
            ring.add_protected(&file, "correct horse".to_string().into(), "keys.age")
                .expect("opens"),
            1
        );
        assert_eq!(ring.identities[0].public, public);
    }

    #[test]
    fn bad_key_material_is_named_without_the_key() {
        let mut ring = KeyRing::default();
        let e = ring
            .add_text(b"AGE-SECRET-KEY-1NOTAKEY\n", "SOPS_AGE_KEY")
            .expect_err("rejects");
        assert!(e.to_string().starts_with("SOPS_AGE_KEY: line 1"), "{e}");
        assert!(!e.to_string().contains("NOTAKEY"), "{e}");
        assert!(Recipient::parse("age1nope").is_err());
        assert!(Recipient::parse("pgp:ABCDEF").is_err());
    }
}
