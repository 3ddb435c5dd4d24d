//! Shamir secret sharing over GF(2^8) as sops uses it for several key groups (HashiCorp Vault's
//! scheme): a share is the secret's length of y-bytes followed by one x-byte.

use zeroize::Zeroizing;

/// Multiplication in GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1.
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let hi = a & 0x80;
        a <<= 1;
        if hi != 0 {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    p
}

/// Multiplicative inverse (a^254); `inv(0)` is 0 and never used.
fn inv(a: u8) -> u8 {
    let mut result = 1u8;
    let mut base = a;
    let mut e = 254u32;
    while e > 0 {
        if e & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    result
}

/// Splits `secret` into `parts` shares, any `threshold` of which recover it.
pub fn split(
    secret: &[u8],
    parts: usize,
    threshold: usize,
    rng: &mut dyn FnMut(&mut [u8]),
) -> Vec<Zeroizing<Vec<u8>>> {
    assert!(
        threshold >= 1 && threshold <= parts && parts < 255,
        "validated by the caller"
    );
    let mut shares: Vec<Zeroizing<Vec<u8>>> = (0..parts)
        .map(|i| {
            Zeroizing::new({
                let mut s = vec![0u8; secret.len() + 1];
                s[secret.len()] = (i + 1) as u8;
                s
            })
        })
        .collect();
    let mut coeffs = Zeroizing::new(vec![0u8; threshold.saturating_sub(1)]);
    for (pos, &byte) in secret.iter().enumerate() {
        rng(&mut coeffs);
        for share in shares.iter_mut() {
            let x = share[secret.len()];
            // Horner: byte + c1 x + c2 x^2 + …
            let mut y = 0u8;
            for &c in coeffs.iter().rev() {
                y = mul(y, x) ^ c;
            }
            share[pos] = mul(y, x) ^ byte;
        }
    }
    shares
}

/// Recovers the secret from shares (each y-bytes + x-byte). Fails on inconsistent shares.
pub fn combine(shares: &[Zeroizing<Vec<u8>>]) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let first = shares.first().ok_or("no shares")?;
    let len = first.len().checked_sub(1).ok_or("empty share")?;
    if shares.iter().any(|s| s.len() != len + 1) {
        return Err("shares have different lengths");
    }
    let xs: Vec<u8> = shares.iter().map(|s| s[len]).collect();
    for (i, x) in xs.iter().enumerate() {
        if *x == 0 || xs[..i].contains(x) {
            return Err("duplicate or zero share index");
        }
    }
    let mut secret = Zeroizing::new(vec![0u8; len]);
    for (pos, out) in secret.iter_mut().enumerate() {
        // Lagrange interpolation at x = 0.
        let mut acc = 0u8;
        for (i, share) in shares.iter().enumerate() {
            let mut basis = 1u8;
            for (j, &xj) in xs.iter().enumerate() {
                if i != j {
                    basis = mul(basis, mul(xj, inv(xs[i] ^ xj)));
                }
            }
            acc ^= mul(share[pos], basis);
        }
        *out = acc;
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_subset_recovers_the_secret() {
        let secret: Vec<u8> = (0..32).collect();
        let mut state = 17u8;
        let mut rng = |buf: &mut [u8]| {
            for b in buf.iter_mut() {
                state = state.wrapping_mul(31).wrapping_add(7);
                *b = state;
            }
        };
        let shares = split(&secret, 3, 2, &mut rng);
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let pair = [shares[a].clone(), shares[b].clone()];
            assert_eq!(
                combine(&pair).expect("combines").as_slice(),
                secret.as_slice()
            );
        }
        assert_ne!(
            combine(&shares[..1]).expect("one share").as_slice(),
            secret.as_slice()
        );
    }

    #[test]
    fn field_inverse() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "{a}");
        }
    }
}
