//! OpenPGP keys in sops files: the data key (or a Shamir share) encrypted to a PGP key, stored as an
//! armored PGP message — what `gpg --encrypt -a` and sops write. Opened here in process with
//! unprotected secret keys (rPGP: armored or binary key material, e.g. `gpg --export-secret-keys -a`
//! or Flux's `*.asc` Secret entries), or at the CLI edge through GnuPG itself ([`PgpAgent`]), so a
//! keyring, a smartcard or a pinentry keeps working as with sops.

use std::io::BufReader;

use pgp::composed::{
    ArmorOptions, Deserializable as _, Message, MessageBuilder, SignedPublicKey,
    SignedPublicSubKey, SignedSecretKey,
};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::{KeyDetails as _, Password, SecretParams};
use zeroize::Zeroizing;

/// An unprotected OpenPGP secret key (with its subkeys).
pub struct PgpIdentity {
    key: SignedSecretKey,
    /// The primary key's fingerprint, upper-case hex as sops writes `fp`.
    pub fingerprint: String,
}

/// Opens PGP messages outside this process: GnuPG, with the user's keyring and agent.
pub trait PgpAgent: Send + Sync {
    /// Decrypts `armored`, a message encrypted to `fingerprint`; `Ok(None)` when it holds no secret
    /// key for it. Errors never contain the payload.
    fn decrypt(
        &self,
        fingerprint: &str,
        armored: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, String>;
    /// What it is and where it looks, for messages (`gpg (GNUPGHOME=…)`).
    fn describe(&self) -> String;
}

/// Whether key material is an OpenPGP secret key block (armored).
pub fn is_secret_key_block(text: &[u8]) -> bool {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    text[start..].starts_with(b"-----BEGIN PGP PRIVATE KEY BLOCK-----")
}

fn is_plain(params: &SecretParams) -> bool {
    matches!(params, SecretParams::Plain(_))
}

/// Every secret key in `bytes` (armored or binary). A key protected by a passphrase is refused with
/// what to do: such keys are opened through gpg-agent, which asks for the passphrase.
pub fn parse_secret_keys(bytes: &[u8]) -> Result<Vec<PgpIdentity>, String> {
    let (keys, _) = SignedSecretKey::from_reader_many(bytes)
        .map_err(|e| format!("not an OpenPGP secret key ({e})"))?;
    let mut out = Vec::new();
    for key in keys {
        let key = key.map_err(|e| format!("not an OpenPGP secret key ({e})"))?;
        let fingerprint = hex::encode_upper(key.fingerprint().as_bytes());
        let protected = !is_plain(key.primary_key.secret_params())
            || key
                .secret_subkeys
                .iter()
                .any(|s| !is_plain(s.key.secret_params()));
        if protected {
            return Err(format!(
                "the PGP secret key {fingerprint} is passphrase-protected; import it into GnuPG (gpg --import) so gpg-agent can ask for the passphrase, or export it without one"
            ));
        }
        out.push(PgpIdentity { key, fingerprint });
    }
    if out.is_empty() {
        return Err("no OpenPGP secret key in it".into());
    }
    Ok(out)
}

/// The unprotected secret keys of a GnuPG 1.x keyring (`secring.gpg`, binary); keys it cannot parse
/// or that are passphrase-protected are left to GnuPG, which reads the same keyring.
pub fn parse_keyring(bytes: &[u8]) -> Vec<PgpIdentity> {
    let Ok((keys, _)) = SignedSecretKey::from_reader_many(bytes) else {
        return vec![];
    };
    keys.flatten()
        .filter(|key| {
            is_plain(key.primary_key.secret_params())
                && key
                    .secret_subkeys
                    .iter()
                    .all(|s| is_plain(s.key.secret_params()))
        })
        .map(|key| PgpIdentity {
            fingerprint: hex::encode_upper(key.fingerprint().as_bytes()),
            key,
        })
        .collect()
}

/// Opens an armored PGP message with the in-process keys; `Ok(None)` when none of them is a
/// recipient.
pub fn open_with(
    identities: &[&PgpIdentity],
    armored: &str,
) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    if identities.is_empty() {
        return Ok(None);
    }
    let (message, _) = Message::from_armor(BufReader::new(armored.trim_start().as_bytes()))
        .map_err(|e| format!("not an armored PGP message ({e})"))?;
    let password = Password::empty();
    let keys: Vec<&SignedSecretKey> = identities.iter().map(|i| &i.key).collect();
    let passwords = vec![&password; keys.len()];
    let mut message = match message.decrypt_with_keys(passwords, keys) {
        Ok(m) => m,
        Err(pgp::errors::Error::MissingKey) => return Ok(None),
        Err(e) => return Err(format!("PGP: {e}")),
    };
    if message.is_compressed() {
        message = message
            .decompress()
            .map_err(|e| format!("PGP: cannot decompress ({e})"))?;
    }
    let data = message
        .as_data_vec()
        .map_err(|e| format!("PGP: cannot read the message ({e})"))?;
    Ok(Some(Zeroizing::new(data)))
}

/// A PGP key a data key can be encrypted to: its certificate, from public key material.
pub struct PgpRecipient {
    /// The fingerprint as given (upper-case hex, spaces removed): what sops writes as `fp`.
    pub fingerprint: String,
    key: SignedPublicKey,
}

/// `A1B2 …` or `a1b2…` → `A1B2…`; a trailing `!` (sops: exactly this subkey) is kept off.
pub fn normalize_fingerprint(fingerprint: &str) -> String {
    fingerprint
        .trim()
        .trim_end_matches('!')
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_uppercase()
}

/// Whether a binding or self signature allows the key to encrypt (no flags at all: it may).
fn allows_encryption(signatures: &[pgp::packet::Signature]) -> bool {
    signatures.is_empty()
        || signatures.iter().any(|s| {
            let flags = s.key_flags();
            flags.encrypt_comms() || flags.encrypt_storage()
        })
}

impl PgpRecipient {
    /// The certificate in `material` (armored or binary, e.g. what `gpg --export FPR` prints) whose
    /// primary key or a subkey has `fingerprint`, if it has a key that can encrypt.
    pub fn from_key_material(fingerprint: &str, material: &[u8]) -> Result<PgpRecipient, String> {
        let wanted = normalize_fingerprint(fingerprint);
        let (certs, _) = SignedPublicKey::from_reader_many(material)
            .map_err(|e| format!("{wanted}: not an OpenPGP public key ({e})"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{wanted}: not an OpenPGP public key ({e})"))?;
            let primary = hex::encode_upper(cert.fingerprint().as_bytes());
            let has_subkey = cert
                .public_subkeys
                .iter()
                .any(|s| hex::encode_upper(s.key.fingerprint().as_bytes()) == wanted);
            if primary == wanted || has_subkey {
                let recipient = PgpRecipient {
                    fingerprint: wanted.clone(),
                    key: cert,
                };
                recipient.encryption_key()?;
                return Ok(recipient);
            }
        }
        Err(format!(
            "{wanted}: no public key with this fingerprint in the key material"
        ))
    }

    /// The subkey to encrypt to: the one named by a subkey fingerprint, else the first subkey that
    /// may encrypt, else the primary key when it may.
    fn encryption_key(&self) -> Result<EncryptTo<'_>, String> {
        let usable = |s: &&SignedPublicSubKey| {
            s.key.algorithm().can_encrypt() && allows_encryption(&s.signatures)
        };
        if let Some(sub) = self
            .key
            .public_subkeys
            .iter()
            .find(|s| hex::encode_upper(s.key.fingerprint().as_bytes()) == self.fingerprint)
        {
            return Ok(EncryptTo::Subkey(sub));
        }
        if let Some(sub) = self.key.public_subkeys.iter().find(usable) {
            return Ok(EncryptTo::Subkey(sub));
        }
        if self.key.primary_key.algorithm().can_encrypt() {
            return Ok(EncryptTo::Primary(&self.key));
        }
        Err(format!(
            "{}: the key has no subkey that can encrypt (add one with gpg --quick-add-key FPR cv25519 encr)",
            self.fingerprint
        ))
    }

    /// Encrypts `secret` (a data key or a Shamir share) to this key as an armored PGP message
    /// (SEIPD v1, AES-256, a binary literal packet — what sops and `gpg --encrypt` write).
    pub fn wrap(
        &self,
        secret: &[u8],
        rng: &mut crate::sops::walk::Rng<'_>,
    ) -> Result<String, String> {
        let mut rng = RngAdapter(rng);
        let mut builder = MessageBuilder::from_bytes("", secret.to_vec())
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
        match self.encryption_key()? {
            EncryptTo::Subkey(sub) => builder.encrypt_to_key(&mut rng, sub),
            EncryptTo::Primary(key) => builder.encrypt_to_key(&mut rng, key),
        }
        .map_err(|e| format!("{}: cannot encrypt to the key ({e})", self.fingerprint))?;
        builder
            .to_armored_string(&mut rng, ArmorOptions::default())
            .map_err(|e| format!("{}: cannot write the PGP message ({e})", self.fingerprint))
    }
}

enum EncryptTo<'a> {
    Subkey(&'a SignedPublicSubKey),
    Primary(&'a SignedPublicKey),
}

/// The caller's random source as the RNG rPGP takes.
struct RngAdapter<'r, 'a>(&'r mut crate::sops::walk::Rng<'a>);

impl rand_core_06::RngCore for RngAdapter<'_, '_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        (self.0)(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        (self.0)(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        (self.0)(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        (self.0)(dest);
        Ok(())
    }
}

/// The random bytes come from the operating system's generator (the CLI's and controller's `Rng`).
impl rand_core_06::CryptoRng for RngAdapter<'_, '_> {}
