//! Per-value encryption: AES-256-GCM with sops's 32-byte IV, the value's key path as AAD, and the
//! `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` text form.

use aes_gcm::aead::array::Array;
use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{AesGcm, aes::Aes256};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

/// A file's 32-byte data key. Not printable, not clonable, wiped on drop.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// Wraps raw key bytes; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(DataKey(Zeroizing::new(arr)))
    }

    /// A fresh random key from the given random source.
    pub fn generate(rng: &mut dyn FnMut(&mut [u8])) -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rng(k.as_mut());
        DataKey(k)
    }

    /// The key bytes, for wrapping to recipients.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The `type:` of an encrypted value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// `str`
    Str,
    /// `int`
    Int,
    /// `float`
    Float,
    /// `bool`
    Bool,
    /// `time`
    Time,
    /// `bytes` (legacy)
    Bytes,
    /// `comment`
    Comment,
}

impl ValueType {
    /// The tag as written in `type:`.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Str => "str",
            ValueType::Int => "int",
            ValueType::Float => "float",
            ValueType::Bool => "bool",
            ValueType::Time => "time",
            ValueType::Bytes => "bytes",
            ValueType::Comment => "comment",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "str" => ValueType::Str,
            "int" => ValueType::Int,
            "float" => ValueType::Float,
            "bool" => ValueType::Bool,
            "time" => ValueType::Time,
            "bytes" => ValueType::Bytes,
            "comment" => ValueType::Comment,
            _ => return None,
        })
    }
}

/// Why an `ENC[…]` value could not be opened. Never carries plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    /// Not of the form `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`.
    #[error("malformed ENC[…] value ({0})")]
    Malformed(&'static str),
    /// Authentication failed: wrong key, wrong key path, or a modified value.
    #[error(
        "value does not authenticate (modified ciphertext, a moved value, or a different data key)"
    )]
    Auth,
}

/// The parts of an `ENC[…]` string.
pub struct Sealed {
    /// Ciphertext without the tag.
    pub data: Vec<u8>,
    /// The IV (32 bytes when written by sops or lockstep).
    pub iv: Vec<u8>,
    /// The 16-byte GCM tag.
    pub tag: Vec<u8>,
    /// The value's type.
    pub ty: ValueType,
}

/// True when `s` looks like an encrypted value (starts with `ENC[`).
pub fn is_encrypted(s: &str) -> bool {
    s.starts_with("ENC[")
}

/// Parses `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`.
pub fn parse(s: &str) -> Result<Sealed, CipherError> {
    let body = s
        .strip_prefix("ENC[AES256_GCM,")
        .ok_or(CipherError::Malformed("expected ENC[AES256_GCM,"))?
        .strip_suffix(']')
        .ok_or(CipherError::Malformed("missing closing ]"))?;
    let mut fields = body.split(',');
    let mut field = |name: &'static str| -> Result<&str, CipherError> {
        fields
            .next()
            .and_then(|f| f.strip_prefix(name))
            .ok_or(CipherError::Malformed(name))
    };
    let data = field("data:")?;
    let iv = field("iv:")?;
    let tag = field("tag:")?;
    let ty = field("type:")?;
    if fields.next().is_some() {
        return Err(CipherError::Malformed("unexpected field after type:"));
    }
    let b64 = |s: &str, what: &'static str| B64.decode(s).map_err(|_| CipherError::Malformed(what));
    let sealed = Sealed {
        data: b64(data, "data is not base64")?,
        iv: b64(iv, "iv is not base64")?,
        tag: b64(tag, "tag is not base64")?,
        ty: ValueType::parse(ty).ok_or(CipherError::Malformed("unknown type"))?,
    };
    if sealed.tag.len() != 16 {
        return Err(CipherError::Malformed("tag is not 16 bytes"));
    }
    if sealed.iv.is_empty() {
        return Err(CipherError::Malformed("empty iv"));
    }
    Ok(sealed)
}

type SopsGcm = AesGcm<Aes256, U32>;

/// Encrypts `plaintext` with `iv` (32 bytes) and `aad`, returning the `ENC[…]` text.
pub fn seal(key: &DataKey, plaintext: &[u8], iv: &[u8; 32], aad: &[u8], ty: ValueType) -> String {
    let cipher = SopsGcm::new(&Array(*key.expose()));
    let mut buf = Zeroizing::new(plaintext.to_vec());
    let tag = cipher
        .encrypt_inout_detached(&Array(*iv), aad, buf.as_mut_slice().into())
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{}]",
        B64.encode(buf.as_slice()),
        B64.encode(iv),
        B64.encode(tag.as_slice()),
        ty.as_str()
    )
}

/// Decrypts an `ENC[…]` value with its key path as AAD.
pub fn open(key: &DataKey, sealed: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CipherError> {
    let mut buf = Zeroizing::new(sealed.data.clone());
    let tag: [u8; 16] = sealed
        .tag
        .as_slice()
        .try_into()
        .map_err(|_| CipherError::Malformed("tag"))?;
    // sops decrypts with whatever IV length the value carries (NewGCMWithNonceSize(len(iv))).
    if sealed.iv.len() == 32 {
        let iv: [u8; 32] = sealed
            .iv
            .as_slice()
            .try_into()
            .map_err(|_| CipherError::Malformed("iv"))?;
        SopsGcm::new(&Array(*key.expose()))
            .decrypt_inout_detached(&Array(iv), aad, buf.as_mut_slice().into(), &Array(tag))
            .map_err(|_| CipherError::Auth)?;
    } else if sealed.iv.len() == 12 {
        let iv: [u8; 12] = sealed
            .iv
            .as_slice()
            .try_into()
            .map_err(|_| CipherError::Malformed("iv"))?;
        aes_gcm::Aes256Gcm::new(&Array(*key.expose()))
            .decrypt_inout_detached(&Array(iv), aad, buf.as_mut_slice().into(), &Array(tag))
            .map_err(|_| CipherError::Auth)?;
    } else {
        return Err(CipherError::Malformed(
            "iv length other than 12 or 32 bytes",
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::from_slice(&[7u8; 32]).expect("32 bytes")
    }

    #[test]
    fn seal_then_open_round_trips_and_binds_the_path() {
        let iv = [3u8; 32];
        let enc = seal(&key(), b"hunter2", &iv, b"db:password:", ValueType::Str);
        assert!(enc.starts_with("ENC[AES256_GCM,data:"));
        assert!(enc.ends_with(",type:str]"));
        let sealed = parse(&enc).expect("parses");
        assert_eq!(
            open(&key(), &sealed, b"db:password:")
                .expect("opens")
                .as_slice(),
            b"hunter2"
        );
        assert_eq!(
            open(&key(), &sealed, b"db:user:").err(),
            Some(CipherError::Auth)
        );
        let other = DataKey::from_slice(&[8u8; 32]).expect("32 bytes");
        assert_eq!(
            open(&other, &sealed, b"db:password:").err(),
            Some(CipherError::Auth)
        );
    }

    #[test]
    fn malformed_values_are_named() {
        for bad in [
            "ENC[AES256_GCM,data:abc]",
            "ENC[AES256_GCM,data:!!,iv:AAAA,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]",
            "ENC[AES256_GCM,data:AA==,iv:AAAA,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:weird]",
            "ENC[AES256_GCM,data:AA==,iv:AAAA,tag:AAAA,type:str]",
            "ENC[AES128,data:AA==]",
        ] {
            assert!(
                matches!(parse(bad), Err(CipherError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_single_byte_change_is_rejected() {
        let iv = [9u8; 32];
        let enc = seal(&key(), b"value", &iv, b"a:", ValueType::Str);
        let sealed = parse(&enc).expect("parses");
        for part in 0..3 {
            let len = [sealed.data.len(), sealed.iv.len(), sealed.tag.len()][part];
            for i in 0..len {
                let mut s = parse(&enc).expect("parses");
                match part {
                    0 => s.data[i] ^= 0x01,
                    1 => s.iv[i] ^= 0x01,
                    _ => s.tag[i] ^= 0x01,
                }
                assert_eq!(
                    open(&key(), &s, b"a:").err(),
                    Some(CipherError::Auth),
                    "part {part} byte {i}"
                );
            }
        }
    }
}
