use super::ParseError;

/// A customer's display name: 1–256 characters, not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct CustomerName(String);

impl CustomerName {
    /// The longest name accepted, in characters.
    pub const MAX_CHARS: usize = 256;

    /// Checks length, blankness and control characters.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        if value.trim().is_empty() {
            return Err(ParseError("name must not be empty".into()));
        }
        if value.chars().count() > Self::MAX_CHARS {
            return Err(ParseError(format!(
                "name must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(ParseError(
                "name must not contain control characters".into(),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn printable_names_are_accepted(name in "[a-zA-Z][^\\p{Cc}]{0,200}") {
            prop_assert!(CustomerName::parse(&name).is_ok());
        }

        #[test]
        fn names_with_a_control_character_are_refused(
            head in "[a-z]{1,10}",
            bad in "\\p{Cc}",
            tail in "[a-z]{0,10}",
        ) {
            let name = format!("{head}{bad}{tail}");
            prop_assert!(CustomerName::parse(&name).is_err());
        }

        #[test]
        fn names_over_256_characters_are_refused(name in "[é]{257,300}") {
            prop_assert!(CustomerName::parse(&name).is_err());
        }
    }

    #[test]
    fn blank_names_are_refused_and_256_multibyte_characters_fit() {
        assert!(CustomerName::parse("").is_err());
        assert!(CustomerName::parse("   ").is_err());
        assert!(CustomerName::parse(&"é".repeat(256)).is_ok());
    }
}
