//! OpenPGP keys in sops files: the data key (or a Shamir share) encrypted to a PGP key, stored as an
//! armored PGP message — what `gpg --encrypt -a` and sops write. Opened here in process with
//! unprotected secret keys (rPGP: armored or binary key material, e.g. `gpg --export-secret-keys -a`
//! or Flux's `*.asc` Secret entries), or at the CLI edge through GnuPG itself ([`PgpAgent`]), so a
//! keyring, a smartcard or a pinentry keeps working as with sops.

use std::io::BufReader;

use pgp::composed::{Deserializable as _, Message, SignedSecretKey};
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
