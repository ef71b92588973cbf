//! The `provider_links` table: a customer's id at each provider and the version it holds.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::schema::provider_links;
use crate::domain::{CustomerId, Provider};

/// A row of `provider_links`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = provider_links)]
pub struct LinkRow {
    pub customer_id: String,
    pub provider: String,
    pub external_id: Option<String>,
    pub synced_version: i64,
    pub remote_event_created: Option<i64>,
    pub remote_event_id: Option<String>,
    pub remote_name: Option<String>,
    pub remote_email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// [`ensure`] for many: the i-th customer gets a link at the i-th provider unless it has
/// one, in one statement.
pub fn ensure_many(
    conn: &mut PgConnection,
    customers: &[&str],
    providers: &[&str],
) -> QueryResult<()> {
    use diesel::sql_types::{Array, Text};
    super::statement::statement(
        "INSERT INTO provider_links (customer_id, provider) \
         SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
    )
    .bind::<Array<Text>, _>(customers)
    .bind::<Array<Text>, _>(providers)
    .execute(conn)
    .map(|_| ())
}

/// Makes sure the customer has a (possibly still unsynced) link row for the provider.
pub fn ensure(
    conn: &mut PgConnection,
    customer: &CustomerId,
    provider: Provider,
) -> QueryResult<()> {
    diesel::insert_into(provider_links::table)
        .values((
            provider_links::customer_id.eq(customer.as_str()),
            provider_links::provider.eq(provider.as_str()),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .map(|_| ())
}

/// The links of these customers, ordered by customer and provider.
pub fn for_customers(conn: &mut PgConnection, ids: &[String]) -> QueryResult<Vec<LinkRow>> {
    provider_links::table
        .filter(provider_links::customer_id.eq_any(ids))
        .select(LinkRow::as_select())
        .order((provider_links::customer_id, provider_links::provider))
        .load(conn)
}

/// The customer's link at one provider, or `None`.
pub fn find(
    conn: &mut PgConnection,
    customer: &str,
    provider: Provider,
) -> QueryResult<Option<LinkRow>> {
    provider_links::table
        .find((customer, provider.as_str()))
        .select(LinkRow::as_select())
        .first(conn)
        .optional()
}
