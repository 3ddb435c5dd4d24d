//! Bech32 (BIP 173 checksum) without the 90-character limit, as age uses it for keys: post-quantum
//! recipients are about 1,950 characters long.

const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
const GENERATOR: [u32; 5] = [
    0x3b6a_57b2,
    0x2650_8e6d,
    0x1ea1_19fa,
    0x3d42_33dd,
    0x2a14_62b3,
];

fn polymod(values: impl Iterator<Item = u8>) -> u32 {
    let mut chk: u32 = 1;
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x01ff_ffff) << 5) ^ u32::from(v);
        for (i, g) in GENERATOR.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

fn hrp_expand(hrp: &str) -> Vec<u8> {
    let mut out: Vec<u8> = hrp.bytes().map(|b| b >> 5).collect();
    out.push(0);
    out.extend(hrp.bytes().map(|b| b & 31));
    out
}

fn regroup(data: &[u8], from: u32, to: u32, pad: bool) -> Option<Vec<u8>> {
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    let max = (1u32 << to) - 1;
    let mut out = Vec::with_capacity(data.len() * from as usize / to as usize + 1);
    for &v in data {
        let v = u32::from(v);
        if v >> from != 0 {
            return None;
        }
        acc = (acc << from) | v;
        bits += from;
        while bits >= to {
            bits -= to;
            out.push(((acc >> bits) & max) as u8);
        }
    }
    if pad {
        if bits > 0 {
            out.push(((acc << (to - bits)) & max) as u8);
        }
    } else if bits >= from || ((acc << (to - bits)) & max) != 0 {
        return None;
    }
    Some(out)
}

/// Decodes `hrp1data…` into the lowercase human-readable part and the data bytes.
pub fn decode(s: &str) -> Option<(String, Vec<u8>)> {
    let has_lower = s.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = s.bytes().any(|b| b.is_ascii_uppercase());
    if (has_lower && has_upper) || !s.is_ascii() {
        return None;
    }
    let s = s.to_ascii_lowercase();
    let sep = s.rfind('1')?;
    let (hrp, rest) = (&s[..sep], &s[sep + 1..]);
    if hrp.is_empty() || rest.len() < 6 || hrp.bytes().any(|b| !(33..=126).contains(&b)) {
        return None;
    }
    let values: Vec<u8> = rest
        .bytes()
        .map(|b| CHARSET.iter().position(|&c| c == b).map(|p| p as u8))
        .collect::<Option<_>>()?;
    if polymod(hrp_expand(hrp).into_iter().chain(values.iter().copied())) != 1 {
        return None;
    }
    let data = regroup(&values[..values.len() - 6], 5, 8, false)?;
    Some((hrp.to_string(), data))
}

/// Encodes data under a (lowercase) human-readable part.
pub fn encode(hrp: &str, data: &[u8]) -> Option<String> {
    let values = regroup(data, 8, 5, true)?;
    let checksum_input = hrp_expand(hrp)
        .into_iter()
        .chain(values.iter().copied())
        .chain([0u8; 6]);
    let pm = polymod(checksum_input) ^ 1;
    let mut out = String::with_capacity(hrp.len() + 1 + values.len() + 6);
    out.push_str(hrp);
    out.push('1');
    for v in values {
        out.push(CHARSET[v as usize] as char);
    }
    for i in 0..6 {
        out.push(CHARSET[((pm >> (5 * (5 - i))) & 31) as usize] as char);
    }
    Some(out)
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
    }
}
