use super::ParseError;

/// A sync task's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TaskId(uuid::Uuid);

impl TaskId {
    /// Accepts the hyphenated UUID form.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        uuid::Uuid::try_parse(value)
            .map(Self)
            .map_err(|_| ParseError("task id must be a UUID".into()))
    }

    /// A new time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// The UUID inside.
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl From<uuid::Uuid> for TaskId {
    fn from(value: uuid::Uuid) -> Self {
        Self(value)
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Accepts the stored name.
            pub fn parse(value: &str) -> Result<Self, ParseError> {
                match value {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(ParseError(format!(
                        concat!($what, " must be one of {}"),
                        [$($text),+].join(", ")
                    ))),
                }
            }

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// What a task does at its provider.
    Operation, "operation", {
        /// Create the provider object.
        Create = "create",
        /// Push the current name and email.
        Update = "update",
        /// Delete the provider object.
        Delete = "delete",
    }
);

text_enum!(
    /// Where a task is in its life.
    TaskStatus, "status", {
        /// Waiting to be claimed (maybe until `next_attempt_at`).
        Pending = "pending",
        /// Claimed by a consumer under a lease.
        InFlight = "in_flight",
        /// Done.
        Succeeded = "succeeded",
        /// Failed for good; waits for a manual retry.
        Dead = "dead",
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn task_ids_round_trip(bytes in any::<[u8; 16]>()) {
            let id = TaskId::from(uuid::Uuid::from_bytes(bytes));
            prop_assert_eq!(TaskId::parse(&id.to_string()).unwrap(), id);
        }

        #[test]
        fn arbitrary_text_is_not_a_task_id(text in "[^0-9a-fA-F-]{1,40}") {
            prop_assert!(TaskId::parse(&text).is_err());
        }

        #[test]
        fn statuses_parse_only_their_names(text in "[a-z_]{0,12}") {
            let known = TaskStatus::ALL.iter().any(|s| s.as_str() == text);
            prop_assert_eq!(TaskStatus::parse(&text).is_ok(), known);
        }
    }

    #[test]
    fn operations_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Ok(*op));
        }
    }
}
