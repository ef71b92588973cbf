use super::ParseError;

/// A local customer id: 1–64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
#[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub struct CustomerId(String);

impl CustomerId {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 64;

    /// Checks the characters and length.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        if value.is_empty() {
            return Err(ParseError("id must not be empty".into()));
        }
        if value.len() > Self::MAX_LEN {
            return Err(ParseError(format!(
                "id must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(ParseError(
                "id may contain only letters, digits, '_', '.' and '-'".into(),
            ));
        }
        if value.bytes().all(|b| b == b'.') {
            // "." and ".." would name another resource in a provider's URL path.
            return Err(ParseError(
                "id must contain a character other than '.'".into(),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// A new random id, for a create that names none.
    pub fn generate() -> Self {
        Self(format!("cs_{}", uuid::Uuid::now_v7().simple()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CustomerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn valid_ids_are_accepted_and_kept(id in "[A-Za-z0-9_.-]{0,63}[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}"
            .prop_filter("at most 64", |id| id.len() <= 64)) {
            let parsed = CustomerId::parse(&id).unwrap();
            prop_assert_eq!(parsed.as_str(), id.as_str());
        }

        #[test]
        fn ids_with_another_character_are_refused(
            head in "[A-Za-z0-9]{0,10}",
            bad in "[^A-Za-z0-9_.-]",
            tail in "[A-Za-z0-9]{0,10}",
        ) {
            let id = format!("{head}{bad}{tail}");
            prop_assert!(CustomerId::parse(&id).is_err());
        }

        #[test]
        fn ids_longer_than_64_are_refused(id in "[a-z]{65,100}") {
            prop_assert!(CustomerId::parse(&id).is_err());
        }
    }

    #[test]
    fn ids_of_dots_alone_are_refused() {
        for id in [".", "..", "...", &".".repeat(64)] {
            assert!(CustomerId::parse(id).is_err(), "{id}");
        }
        for id in [".a", "a..", "..-", "_."] {
            assert!(CustomerId::parse(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn empty_and_generated_ids() {
        assert!(CustomerId::parse("").is_err());
        let generated = CustomerId::generate();
        assert!(CustomerId::parse(generated.as_str()).is_ok());
        assert_ne!(generated, CustomerId::generate());
    }
}
