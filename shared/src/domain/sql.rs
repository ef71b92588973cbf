//! Domain types stored as themselves: each is written as `text` and parsed again when
//! loaded, so a row never carries a raw string that code past the database re-parses.

/// `ToSql`/`FromSql` as PostgreSQL `text` through the type's `as_str` and `parse`.
macro_rules! stored_as_text {
    ($($name:ty),+ $(,)?) => {$(
        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    self.as_str(),
                    out,
                )
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = std::str::from_utf8(value.as_bytes())?;
                <$name>::parse(text).map_err(|e| format!("stored {}: {e}", stringify!($name)).into())
            }
        }
    )+};
}

stored_as_text!(
    super::CustomerId,
    super::Provider,
    super::Operation,
    super::TaskStatus,
    super::JobKind,
    super::JobStatus
);

#[cfg(all(test, feature = "testing"))]
mod tests {
    use diesel::prelude::*;

    use crate::domain::{CustomerId, Operation, Provider, TaskStatus};

    #[test]
    fn domain_values_round_trip_through_postgresql_and_bad_text_is_refused() {
        let db = crate::testing::TestDatabase::create();
        let mut conn = db.connect();
        let id = CustomerId::parse("c-1.x_Y").unwrap();
        let back: (CustomerId, Provider, Operation, TaskStatus) = diesel::select((
            id.clone().into_sql::<diesel::sql_types::Text>(),
            Provider::Salesforce.into_sql::<diesel::sql_types::Text>(),
            Operation::Delete.into_sql::<diesel::sql_types::Text>(),
            TaskStatus::InFlight.into_sql::<diesel::sql_types::Text>(),
        ))
        .get_result(&mut conn)
        .unwrap();
        assert_eq!(
            back,
            (
                id,
                Provider::Salesforce,
                Operation::Delete,
                TaskStatus::InFlight
            )
        );
        let refused = diesel::select("hubspot".into_sql::<diesel::sql_types::Text>())
            .get_result::<Provider>(&mut conn);
        assert!(refused.is_err());
    }
}
