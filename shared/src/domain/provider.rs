use super::ParseError;

/// A provider customer-sync keeps in sync; its name is also its ZeroMQ topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum Provider {
    /// Stripe customers.
    Stripe,
    /// Salesforce contacts.
    Salesforce,
}

impl Provider {
    /// Every provider, in a stable order.
    pub const ALL: [Provider; 2] = [Provider::Stripe, Provider::Salesforce];

    /// Accepts `stripe` or `salesforce`.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        match value {
            "stripe" => Ok(Self::Stripe),
            "salesforce" => Ok(Self::Salesforce),
            _ => Err(ParseError(format!(
                "provider must be 'stripe' or 'salesforce', not '{}'",
                value.chars().take(32).collect::<String>()
            ))),
        }
    }

    /// The name stored in the database and used as the topic.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Salesforce => "salesforce",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn only_the_known_names_parse(name in ".{0,20}") {
            let parsed = Provider::parse(&name);
            prop_assert_eq!(parsed.is_ok(), name == "stripe" || name == "salesforce");
        }
    }

    #[test]
    fn names_round_trip() {
        for provider in Provider::ALL {
            assert_eq!(Provider::parse(provider.as_str()), Ok(provider));
        }
    }
}
