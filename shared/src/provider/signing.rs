//! The pieces every signature scheme is made of: HMAC over a few byte slices, hex or base64,
//! constant-time comparison, timestamp tolerance.

use base64::Engine;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use super::AuthError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "sha1" => Some(Algorithm::Sha1),
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// HMAC of the concatenation of `parts` under `key`.
    pub fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes any key length");
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
            Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
            Algorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    pub fn parse(s: &str) -> Option<Encoding> {
        match s.to_ascii_lowercase().as_str() {
            "hex" => Some(Encoding::Hex),
            "base64" => Some(Encoding::Base64),
            _ => None,
        }
    }

    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Hex => hex::encode(bytes),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// Decodes a presented signature; hex in either case.
    pub fn decode(self, s: &str) -> Option<Vec<u8>> {
        match self {
            Encoding::Hex => hex::decode(s.trim()).ok(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok(),
        }
    }
}

/// Constant-time equality of two MACs (their length is public: the algorithm's output size).
pub fn macs_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// True when any presented signature equals the MAC under any key. Every pair is compared, so
/// the time taken does not depend on which (if any) matched.
pub fn any_mac_matches(
    alg: Algorithm,
    keys: &[Vec<u8>],
    parts: &[&[u8]],
    presented: &[Vec<u8>],
) -> bool {
    let mut found = subtle::Choice::from(0);
    for key in keys {
        let expected = alg.mac(key, parts);
        for p in presented {
            found |= subtle::Choice::from(macs_equal(&expected, p) as u8);
        }
    }
    found.into()
}

/// A Unix-seconds timestamp header within `tolerance` of `now`, in the past or the future.
pub fn check_timestamp(raw: &[u8], now: i64, tolerance_secs: u64) -> Result<i64, AuthError> {
    let ts: i64 = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or(AuthError::MalformedTimestamp)?;
    if now.abs_diff(ts) > tolerance_secs {
        return Err(AuthError::TimestampOutOfTolerance);
    }
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_known_answers() {
        // RFC 4231 test case 2 (SHA-256) and RFC 2202 test case 2 (SHA-1).
        let parts: &[&[u8]] = &[b"what do ya want ", b"for nothing?"];
        assert_eq!(
            hex::encode(Algorithm::Sha256.mac(b"Jefe", parts)),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(Algorithm::Sha1.mac(b"Jefe", parts)),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(Algorithm::Sha512.mac(b"k", &[b"x"]).len(), 64);
    }

    #[test]
    fn timestamps_outside_tolerance_either_way_are_refused() {
        assert_eq!(check_timestamp(b"1000", 1000, 300), Ok(1000));
        assert_eq!(check_timestamp(b"700", 1000, 300), Ok(700));
        assert_eq!(
            check_timestamp(b"699", 1000, 300),
            Err(AuthError::TimestampOutOfTolerance)
        );
        assert_eq!(
            check_timestamp(b"1301", 1000, 300),
            Err(AuthError::TimestampOutOfTolerance)
        );
        assert_eq!(
            check_timestamp(b"12a", 1000, 300),
            Err(AuthError::MalformedTimestamp)
        );
    }
}
