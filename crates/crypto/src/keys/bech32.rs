//! Bech32 (the BIP 173 checksum) as age uses it for keys, on the `bech32` crate: the same checksum
//! without BIP 173's 90-character limit, since post-quantum recipients are about 1,950 characters
//! long (age's own Go implementation does not limit the length either).

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Checksum, Hrp};

/// BIP 173's Bech32 checksum, with a code length that admits age's long post-quantum keys.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Bech32Long {}

impl Checksum for Bech32Long {
    type MidstateRepr = <bech32::Bech32 as Checksum>::MidstateRepr;
    const CODE_LENGTH: usize = usize::MAX;
    const CHECKSUM_LENGTH: usize = <bech32::Bech32 as Checksum>::CHECKSUM_LENGTH;
    const GENERATOR_SH: [u32; 5] = <bech32::Bech32 as Checksum>::GENERATOR_SH;
    const TARGET_RESIDUE: u32 = <bech32::Bech32 as Checksum>::TARGET_RESIDUE;
}

/// Decodes `hrp1data…` (all lowercase or all uppercase) into the lowercase human-readable part and
/// the data bytes.
pub fn decode(s: &str) -> Option<(String, Vec<u8>)> {
    let checked = CheckedHrpstring::new::<Bech32Long>(s).ok()?;
    let hrp = checked.hrp().to_lowercase();
    Some((hrp, checked.byte_iter().collect()))
}

/// Encodes data under a (lowercase) human-readable part.
pub fn encode(hrp: &str, data: &[u8]) -> Option<String> {
    let hrp = Hrp::parse(hrp).ok()?;
    bech32::encode_lower::<Bech32Long>(hrp, data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_age_x25519_keys_and_rejects_changes() {
        let public = "age1cunssxzmelyguczf39cjyuztac9mh3wlk6hgqv0s8m7khtfyw47qxrz3zg";
        let (hrp, data) = decode(public).expect("decodes");
        assert_eq!(hrp, "age");
        assert_eq!(data.len(), 32);
        assert_eq!(encode("age", &data).as_deref(), Some(public));
        assert!(decode(&public.replace("cun", "cum")).is_none());
        assert!(decode("Age1cunssxzmelyguczf39cjyuztac9mh3wlk6hgqv0s8m7khtfyw47qxrz3zg").is_none());
        assert_eq!(
            decode(&public.to_ascii_uppercase()).map(|(h, d)| (h, d.len())),
            Some(("age".to_string(), 32))
        );
    }

    #[test]
    fn long_payloads_round_trip() {
        let data: Vec<u8> = (0..1216u32).map(|i| (i * 7 % 251) as u8).collect();
        let text = encode("age1pq", &data).expect("encodes");
        assert!(text.len() > 1900, "{}", text.len());
        assert_eq!(decode(&text), Some(("age1pq".to_string(), data)));
    }
}
