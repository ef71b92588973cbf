//! Stripe webhook signatures: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`, HMAC-SHA256
//! over `<t>.<raw body>` keyed with the whole `whsec_...` string.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

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

impl SignatureHeader {
    /// Parses the header as Stripe's SDKs do: split on `,` then `=`, no trimming, lowercase hex.
    pub fn parse(header: &str) -> Result<Self, SignatureError> {
        let mut timestamp = None;
        let mut v1 = Vec::new();
        let mut saw_v1 = false;
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
                    saw_v1 = true;
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
        if !saw_v1 {
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
    let matched = secrets.iter().any(|secret| {
        header.v1.iter().any(|signature| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(header.timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            // verify_slice compares in constant time.
            mac.verify_slice(signature).is_ok()
        })
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    if (now - header.timestamp).abs() > tolerance_secs {
        return Err(SignatureError::Expired);
    }
    Ok(())
}

/// Signs a payload as Stripe does: the sandbox's deliveries, the tests and the benchmark.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
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
