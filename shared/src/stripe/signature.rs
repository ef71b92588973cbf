//! Stripe webhook signatures: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`, HMAC-SHA256
//! over `<t>.<raw body>` keyed with the whole `whsec_...` string.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A parsed `Stripe-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// The signed timestamp (the first `t` wins).
    pub timestamp: i64,
    /// Every `v1` signature, decoded.
    pub v1: Vec<[u8; 32]>,
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    Missing,
    #[error("malformed Stripe-Signature header: {0}")]
    Malformed(&'static str),
    #[error("no signatures found with expected scheme v1")]
    NoV1,
    #[error("no signature matches any configured secret")]
    Mismatch,
    #[error("timestamp outside the tolerance")]
    Expired,
    #[error("no STRIPE_WEBHOOK_SECRET is configured")]
    NoSecret,
}

/// The longest `Stripe-Signature` header read. Stripe's carries a timestamp and one `v1`
/// per active secret (two while one rolls), some 150 bytes each.
pub const MAX_HEADER_LEN: usize = 4096;

/// The most `v1` entries read from one header.
pub const MAX_SIGNATURES: usize = 16;

impl SignatureHeader {
    /// Parses the header as Stripe's SDKs do: split on `,` then `=`, no trimming, lowercase
    /// hex. A header over [`MAX_HEADER_LEN`] or with more than [`MAX_SIGNATURES`] `v1`
    /// entries is refused before any of it is checked.
    pub fn parse(header: &str) -> Result<Self, SignatureError> {
        if header.len() > MAX_HEADER_LEN {
            return Err(SignatureError::Malformed("longer than 4096 bytes"));
        }
        let mut timestamp = None;
        let mut v1 = Vec::new();
        let mut entries = 0;
        for item in header.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                continue;
            };
            match key {
                "t" if timestamp.is_none() => {
                    timestamp = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| SignatureError::Malformed("t is not a number"))?,
                    );
                }
                "v1" => {
                    entries += 1;
                    if entries > MAX_SIGNATURES {
                        return Err(SignatureError::Malformed("more than 16 v1 signatures"));
                    }
                    // Stripe writes lowercase hex; anything else can never match.
                    if value.len() == 64
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    {
                        let mut signature = [0u8; 32];
                        hex::decode_to_slice(value, &mut signature)
                            .map_err(|_| SignatureError::Malformed("v1 is not hex"))?;
                        v1.push(signature);
                    }
                }
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed("no timestamp"))?;
        if entries == 0 {
            return Err(SignatureError::NoV1);
        }
        Ok(Self { timestamp, v1 })
    }
}

/// Checks a delivery against every configured secret, then the timestamp both ways.
pub fn verify(
    header: &SignatureHeader,
    body: &[u8],
    secrets: &[SecretString],
    tolerance_secs: i64,
    now: i64,
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    // One HMAC over the body per secret, whatever the header holds; each entry is then
    // compared with it in constant time.
    let matched = secrets.iter().any(|secret| {
        let expected = mac(secret.expose_secret(), header.timestamp, body);
        header
            .v1
            .iter()
            .any(|signature| bool::from(expected.ct_eq(signature)))
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    if (now - header.timestamp).abs() > tolerance_secs {
        return Err(SignatureError::Expired);
    }
    Ok(())
}

/// HMAC-SHA256 over `<timestamp>.<body>` keyed with the whole secret.
fn mac(secret: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Signs a payload as Stripe does: the sandbox's deliveries, the tests and the benchmark.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter()
            .map(|s| SecretString::from(s.to_string()))
            .collect()
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_t_dot_body_keyed_with_the_whole_secret() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let header = sign("whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            header,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn a_valid_signature_passes_and_tampering_fails() {
        let body = br#"{"id":"evt_1"}"#;
        let header = SignatureHeader::parse(&sign(SECRET, 1000, body)).unwrap();
        assert_eq!(
            verify(&header, body, &secrets(&[SECRET]), 300, 1100),
            Ok(())
        );
        assert_eq!(
            verify(
                &header,
                br#"{"id":"evt_2"}"#,
                &secrets(&[SECRET]),
                300,
                1100
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, body, &secrets(&["whsec_other"]), 300, 1100),
            Err(SignatureError::Mismatch)
        );
        // The key is the whole string, prefix included.
        assert_eq!(
            verify(&header, body, &secrets(&["test_secret"]), 300, 1100),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_secret_and_any_v1_may_match() {
        let body = b"{}";
        let good = sign(SECRET, 1000, body);
        let v1 = good.split("v1=").nth(1).unwrap();
        let header = format!("t=1000,v1={},v1={v1},v0=abc", "0".repeat(64));
        let parsed = SignatureHeader::parse(&header).unwrap();
        assert_eq!(
            verify(&parsed, body, &secrets(&["whsec_old", SECRET]), 300, 1000),
            Ok(())
        );
    }

    #[test]
    fn header_shapes_stripe_refuses_are_refused() {
        assert_eq!(SignatureHeader::parse("t=1000"), Err(SignatureError::NoV1));
        assert_eq!(
            SignatureHeader::parse("t=1000,v0=ab"),
            Err(SignatureError::NoV1)
        );
        assert!(SignatureHeader::parse("v1=ab").is_err());
        assert!(SignatureHeader::parse("t=abc,v1=ab").is_err());
        let body = b"{}";
        let good = sign(SECRET, 1000, body);
        let spaced = good.replace(",v1=", ", v1=");
        let parsed = SignatureHeader::parse(&spaced);
        assert!(
            parsed.is_err()
                || verify(&parsed.unwrap(), body, &secrets(&[SECRET]), 300, 1000).is_err()
        );
        let upper = format!(
            "t=1000,v1={}",
            good.split("v1=").nth(1).unwrap().to_uppercase()
        );
        let parsed = SignatureHeader::parse(&upper).unwrap();
        assert_eq!(
            verify(&parsed, body, &secrets(&[SECRET]), 300, 1000),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn headers_past_the_bounds_are_refused_before_any_hmac() {
        let body = b"{}";
        let good = sign(SECRET, 1000, body);
        let v1 = good.split("v1=").nth(1).unwrap();
        let many = |n: usize| {
            let entries = vec![format!("v1={}", "0".repeat(64)); n].join(",");
            format!("t=1000,{entries},v1={v1}")
        };
        // Within the bound, the right signature among wrong ones still matches.
        let within = SignatureHeader::parse(&many(MAX_SIGNATURES - 1)).unwrap();
        assert_eq!(
            verify(&within, body, &secrets(&[SECRET]), 300, 1000),
            Ok(())
        );
        // Thousands of entries (as a flood would send) are refused as malformed.
        assert_eq!(
            SignatureHeader::parse(&many(1800)),
            Err(SignatureError::Malformed("longer than 4096 bytes"))
        );
        assert_eq!(
            SignatureHeader::parse(&many(MAX_SIGNATURES)),
            Err(SignatureError::Malformed("more than 16 v1 signatures"))
        );
        let short = format!("t=1000,{}", vec!["v1=ab"; 40].join(","));
        assert_eq!(
            SignatureHeader::parse(&short),
            Err(SignatureError::Malformed("more than 16 v1 signatures"))
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_either_way_are_refused() {
        let body = b"{}";
        let header = SignatureHeader::parse(&sign(SECRET, 1000, body)).unwrap();
        assert_eq!(
            verify(&header, body, &secrets(&[SECRET]), 300, 1301),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(&header, body, &secrets(&[SECRET]), 300, 699),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(&header, body, &secrets(&[SECRET]), 300, 1300),
            Ok(())
        );
        assert_eq!(
            verify(&header, body, &[], 300, 1000),
            Err(SignatureError::NoSecret)
        );
    }
}
