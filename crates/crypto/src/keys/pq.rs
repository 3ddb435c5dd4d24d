//! age's post-quantum hybrid keys (age v1.3): `age1pq1…` recipients and `AGE-SECRET-KEY-PQ-1…`
//! identities.
//!
//! A file key is sealed with HPKE (RFC 9180) in base mode: the X-Wing KEM (ML-KEM-768 + X25519,
//! draft-connolly-cfrg-xwing-kem), HKDF-SHA256 and ChaCha20-Poly1305, with info
//! `age-encryption.org/mlkem768x25519`; the stanza is `-> mlkem768x25519 <base64 encapsulated key>`
//! with the sealed file key as its body. The secret key is X-Wing's 32-byte seed. Built from the
//! same ML-KEM, X25519, SHA-3, HKDF and ChaCha20-Poly1305 crates the age crate uses.

use std::collections::HashSet;

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza};
use base64::Engine as _;
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use ml_kem::kem::Decapsulate;
use ml_kem::{EncapsulateDeterministic, EncodedSizeUser, KemCore, MlKem768};
use sha3::digest::{ExtendableOutput, Update, XofReader};
use sha3::{Digest, Sha3_256, Shake256};
use zeroize::Zeroizing;

use super::bech32;

/// The stanza type.
pub const STANZA_TAG: &str = "mlkem768x25519";
/// HPKE info string.
const INFO: &[u8] = b"age-encryption.org/mlkem768x25519";
/// Recipients with this label may not be mixed with classic ones in one age file.
const PQ_LABEL: &str = "postquantum";
const FILE_KEY_BYTES: usize = 16;
const TAG_BYTES: usize = 16;
/// X-Wing sizes: ML-KEM-768 encapsulation key and ciphertext, X25519 points.
const MLKEM_EK_BYTES: usize = 1184;
const MLKEM_CT_BYTES: usize = 1088;
const X25519_BYTES: usize = 32;
/// X-Wing's combiner label, `\./` `/^\`.
const XWING_LABEL: &[u8; 6] = &[0x5c, 0x2e, 0x2f, 0x2f, 0x5e, 0x5c];
/// HPKE suite: KEM 0x647a (MLKEM768-X25519), KDF 0x0001 (HKDF-SHA256), AEAD 0x0003 (ChaCha20-Poly1305).
const SUITE_ID: &[u8] = b"HPKE\x64\x7a\x00\x01\x00\x03";

type DecapsulationKey = <MlKem768 as KemCore>::DecapsulationKey;
type EncapsulationKey = <MlKem768 as KemCore>::EncapsulationKey;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD_NO_PAD
}

fn random<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut buf = Zeroizing::new([0u8; N]);
    getrandom::fill(buf.as_mut()).expect("the operating system's random source is available");
    buf
}

/// X-Wing's shared secret: SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ label).
fn combine(ss_m: &[u8], ss_x: &[u8], ct_x: &[u8], pk_x: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha3_256::new();
    Digest::update(&mut h, ss_m);
    Digest::update(&mut h, ss_x);
    Digest::update(&mut h, ct_x);
    Digest::update(&mut h, pk_x);
    Digest::update(&mut h, XWING_LABEL);
    Zeroizing::new(h.finalize().into())
}

/// HPKE base-mode key schedule (RFC 9180 §5.1) for a KEM shared secret: the AEAD key and nonce.
fn key_schedule(shared_secret: &[u8]) -> (Zeroizing<[u8; 32]>, [u8; 12]) {
    let labeled_extract = |salt: &[u8], label: &[u8], ikm: &[u8]| {
        let mut input = Vec::with_capacity(7 + SUITE_ID.len() + label.len() + ikm.len());
        input.extend_from_slice(b"HPKE-v1");
        input.extend_from_slice(SUITE_ID);
        input.extend_from_slice(label);
        input.extend_from_slice(ikm);
        let input = Zeroizing::new(input);
        hkdf::Hkdf::<sha2_10::Sha256>::extract(Some(salt), &input)
    };
    let labeled_expand = |prk: &[u8], label: &[u8], info: &[u8], out: &mut [u8]| {
        let mut full = Vec::with_capacity(9 + SUITE_ID.len() + label.len() + info.len());
        full.extend_from_slice(&(out.len() as u16).to_be_bytes());
        full.extend_from_slice(b"HPKE-v1");
        full.extend_from_slice(SUITE_ID);
        full.extend_from_slice(label);
        full.extend_from_slice(info);
        let hk = hkdf::Hkdf::<sha2_10::Sha256>::from_prk(prk)
            .expect("an HMAC-SHA256 output is a valid PRK");
        hk.expand(&full, out)
            .expect("32 and 12 bytes are within HKDF-SHA256's output limit");
    };
    let (psk_id_hash, _) = labeled_extract(b"", b"psk_id_hash", b"");
    let (info_hash, _) = labeled_extract(b"", b"info_hash", INFO);
    let mut context = Vec::with_capacity(1 + 64);
    context.push(0x00); // mode_base
    context.extend_from_slice(&psk_id_hash);
    context.extend_from_slice(&info_hash);
    let (secret, _) = labeled_extract(shared_secret, b"secret", b"");
    let secret = Zeroizing::new(secret);
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 12];
    labeled_expand(&secret, b"key", &context, key.as_mut());
    labeled_expand(&secret, b"base_nonce", &context, &mut nonce);
    (key, nonce)
}

/// An `age1pq1…` recipient: an ML-KEM-768 encapsulation key and an X25519 public key.
pub struct PqRecipient {
    mlkem: EncapsulationKey,
    x25519: x25519_dalek::PublicKey,
}

impl PqRecipient {
    /// Parses `age1pq1…`.
    pub fn parse(s: &str) -> Option<PqRecipient> {
        let (hrp, data) = bech32::decode(s)?;
        if hrp != "age1pq" || data.len() != MLKEM_EK_BYTES + X25519_BYTES {
            return None;
        }
        let (ek, pk_x) = data.split_at(MLKEM_EK_BYTES);
        let ek = ml_kem::Encoded::<EncapsulationKey>::try_from(ek).ok()?;
        let pk_x: [u8; X25519_BYTES] = pk_x.try_into().ok()?;
        Some(PqRecipient {
            mlkem: EncapsulationKey::from_bytes(&ek),
            x25519: x25519_dalek::PublicKey::from(pk_x),
        })
    }
}

impl age::Recipient for PqRecipient {
    fn wrap_file_key(
        &self,
        file_key: &FileKey,
    ) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        // X-Wing encapsulation with fresh randomness: 32 bytes for ML-KEM, 32 for the X25519 share.
        let m = random::<32>();
        let (ct_m, ss_m) = self
            .mlkem
            .encapsulate_deterministic(&ml_kem::B32::from(*m))
            .map_err(|()| {
                age::EncryptError::Io(std::io::Error::other("ML-KEM encapsulation failed"))
            })?;
        let ephemeral = x25519_dalek::StaticSecret::from(*random::<32>());
        let ct_x = x25519_dalek::PublicKey::from(&ephemeral);
        let ss_x = ephemeral.diffie_hellman(&self.x25519);
        let shared = combine(
            &ss_m,
            ss_x.as_bytes(),
            ct_x.as_bytes(),
            self.x25519.as_bytes(),
        );
        let (key, nonce) = key_schedule(shared.as_ref());
        let body = ChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_ref()))
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: file_key.expose_secret(),
                    aad: b"",
                },
            )
            .map_err(|_| {
                age::EncryptError::Io(std::io::Error::other("sealing the file key failed"))
            })?;
        let mut enc = Vec::with_capacity(MLKEM_CT_BYTES + X25519_BYTES);
        enc.extend_from_slice(&ct_m);
        enc.extend_from_slice(ct_x.as_bytes());
        let stanza = Stanza {
            tag: STANZA_TAG.to_string(),
            args: vec![b64().encode(&enc)],
            body,
        };
        Ok((vec![stanza], HashSet::from([PQ_LABEL.to_string()])))
    }
}

/// An `AGE-SECRET-KEY-PQ-1…` identity. No Debug, no Clone; the seed is wiped on drop.
pub struct PqIdentity {
    mlkem: DecapsulationKey,
    x25519: x25519_dalek::StaticSecret,
    x25519_public: x25519_dalek::PublicKey,
    /// Its recipient, `age1pq1…`.
    pub public: String,
}

impl PqIdentity {
    /// Parses `AGE-SECRET-KEY-PQ-1…` (case-insensitive, as bech32 is): X-Wing's 32-byte seed,
    /// expanded with SHAKE256 into the ML-KEM seed (d ‖ z) and the X25519 secret.
    pub fn parse(s: &str) -> Option<PqIdentity> {
        let (hrp, seed) = bech32::decode(s)?;
        let seed = Zeroizing::new(seed);
        if hrp != "age-secret-key-pq-" || seed.len() != 32 {
            return None;
        }
        let mut xof = Shake256::default();
        xof.update(&seed);
        let mut reader = xof.finalize_xof();
        let mut expanded = Zeroizing::new([0u8; 96]);
        reader.read(expanded.as_mut());
        let d = ml_kem::B32::try_from(&expanded[0..32]).ok()?;
        let z = ml_kem::B32::try_from(&expanded[32..64]).ok()?;
        let (mlkem, ek) = MlKem768::generate_deterministic(&d, &z);
        let sk_x: [u8; 32] = expanded[64..96].try_into().ok()?;
        let x25519 = x25519_dalek::StaticSecret::from(sk_x);
        let x25519_public = x25519_dalek::PublicKey::from(&x25519);
        let mut pk = Vec::with_capacity(MLKEM_EK_BYTES + X25519_BYTES);
        pk.extend_from_slice(&ek.as_bytes());
        pk.extend_from_slice(x25519_public.as_bytes());
        let public = bech32::encode("age1pq", &pk)?;
        Some(PqIdentity {
            mlkem,
            x25519,
            x25519_public,
            public,
        })
    }
}

/// A new identity: its `AGE-SECRET-KEY-PQ-1…` text and its recipient.
pub fn generate() -> (Zeroizing<String>, String) {
    let seed = random::<32>();
    let text = Zeroizing::new(
        bech32::encode("age-secret-key-pq-", seed.as_ref())
            .expect("32 bytes always encode")
            .to_ascii_uppercase(),
    );
    let public = PqIdentity::parse(&text)
        .expect("a freshly encoded seed parses")
        .public;
    (text, public)
}

impl age::Identity for PqIdentity {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        if stanza.tag != STANZA_TAG {
            return None;
        }
        let [arg] = stanza.args.as_slice() else {
            return Some(Err(age::DecryptError::InvalidHeader));
        };
        let Ok(enc) = b64().decode(arg) else {
            return Some(Err(age::DecryptError::InvalidHeader));
        };
        if enc.len() != MLKEM_CT_BYTES + X25519_BYTES
            || stanza.body.len() != FILE_KEY_BYTES + TAG_BYTES
        {
            return Some(Err(age::DecryptError::InvalidHeader));
        }
        let (ct_m, ct_x) = enc.split_at(MLKEM_CT_BYTES);
        let ct_m = ml_kem::Ciphertext::<MlKem768>::try_from(ct_m).ok()?;
        let ss_m = self.mlkem.decapsulate(&ct_m).ok()?;
        let ct_x_point: [u8; 32] = ct_x.try_into().ok()?;
        let ss_x = self
            .x25519
            .diffie_hellman(&x25519_dalek::PublicKey::from(ct_x_point));
        let shared = combine(&ss_m, ss_x.as_bytes(), ct_x, self.x25519_public.as_bytes());
        let (key, nonce) = key_schedule(shared.as_ref());
        // A failed open means the stanza is for another key: let the next identity try.
        let opened = ChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_ref()))
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &stanza.body,
                    aad: b"",
                },
            )
            .ok()?;
        let opened = Zeroizing::new(opened);
        if opened.len() != FILE_KEY_BYTES {
            return Some(Err(age::DecryptError::InvalidHeader));
        }
        Some(Ok(FileKey::init_with_mut(|k| k.copy_from_slice(&opened))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_test_identity_has_the_published_recipient() {
        // From the sops/Flux test vectors (keys_age-pq.txt), generated by age-keygen -pq.
        let id = PqIdentity::parse(
            "AGE-SECRET-KEY-PQ-1Z8QMHKS77CVF95LF38SMLT0MEFR00HVMW58DJGD5USLGCVXTJCSQNRKCNK",
        )
        .expect("parses");
        assert!(id.public.starts_with("age1pq1ehusfwsvrente8p6gafr4jemv2urnqfm4c59ng5dgqqzlk2vv9rcekpjxws7tsy23geqnpy2zqjkx72zsw2cwtg74wk0zlrqh9s"));
        assert!(PqRecipient::parse(&id.public).is_some());
        assert!(
            PqIdentity::parse(
                "AGE-SECRET-KEY-PQ-1Z8QMHKS77CVF95LF38SMLT0MEFR00HVMW58DJGD5USLGCVXTJCSQNRKCNL"
            )
            .is_none(),
            "bad checksum"
        );
    }
}
