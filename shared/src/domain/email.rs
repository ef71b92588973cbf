use super::ParseError;

/// An email address: `local@domain`, at most 254 characters, a dotted domain.
///
/// Deliberately simple (no quoted local parts, no IP literals): what Stripe and
/// Salesforce both accept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// The longest address accepted.
    pub const MAX_LEN: usize = 254;

    /// Checks the shape of the address.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let invalid = || ParseError(format!("email '{}' is not a valid address", shorten(value)));
        if value.len() > Self::MAX_LEN {
            return Err(ParseError(format!(
                "email must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        let (local, domain) = value.rsplit_once('@').ok_or_else(invalid)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
        if local_ok && domain_ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(invalid())
        }
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn shorten(value: &str) -> String {
    let clean: String = value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(64)
        .collect();
    clean
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ordinary_addresses_are_accepted(
            local in "[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]",
            domain in "[a-z0-9]{1,20}(\\.[a-z0-9]{1,10})?\\.[a-z]{2,6}",
        ) {
            prop_assume!(!local.contains(".."));
            let address = format!("{local}@{domain}");
            let parsed = Email::parse(&address).unwrap();
            prop_assert_eq!(parsed.as_str(), address.as_str());
        }

        #[test]
        fn text_without_an_at_sign_is_refused(text in "[^@]{0,80}") {
            prop_assert!(Email::parse(&text).is_err());
        }

        #[test]
        fn addresses_with_spaces_or_controls_are_refused(
            bad in "[ \\p{Cc}]",
            local in "[a-z]{1,10}",
        ) {
            let address = format!("{local}{bad}x@example.com");
            prop_assert!(Email::parse(&address).is_err());
        }
    }

    #[test]
    fn edge_cases() {
        assert!(Email::parse("a@b.co").is_ok());
        assert!(Email::parse("a@localhost").is_err());
        assert!(Email::parse("@example.com").is_err());
        assert!(Email::parse("a@@example.com").is_err());
        assert!(Email::parse("a..b@example.com").is_err());
        assert!(Email::parse("a@-x.com").is_err());
        let long = format!("{}@{}.com", "a".repeat(64), "b".repeat(63));
        assert!(Email::parse(&long).is_ok());
        let too_long = format!(
            "{}@{}.{}.{}.com",
            "a".repeat(64),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63)
        );
        assert!(too_long.len() > 254 && Email::parse(&too_long).is_err());
    }
}
