//! The `provider_links` table: a customer's id at each provider, the version it holds,
//! and the last remote state applied from Stripe. Every write to the table is here.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};

use super::schema::provider_links;
use super::statement::statement;
use crate::domain::{CustomerId, Provider};

/// A row of `provider_links`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = provider_links)]
pub struct LinkRow {
    pub customer_id: CustomerId,
    pub provider: Provider,
    pub external_id: Option<String>,
    pub synced_version: i64,
    pub remote_event_created: Option<i64>,
    pub remote_event_id: Option<String>,
    pub remote_name: Option<String>,
    pub remote_email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Gives the i-th customer a (possibly still unsynced) link at the i-th provider unless
/// it has one, in one statement.
pub fn ensure_many(
    conn: &mut PgConnection,
    customers: &[&CustomerId],
    providers: &[Provider],
) -> QueryResult<()> {
    statement(
        "INSERT INTO provider_links (customer_id, provider) \
         SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
    )
    .bind::<Array<Text>, _>(customers.iter().map(|c| c.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(providers.iter().map(|p| p.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .map(|_| ())
}

/// Records the Stripe customer of our own create's echo on the local customer's link,
/// unless the link already names one; `false` when it does (a second Stripe customer
/// claims this local id).
pub fn link_stripe_echo(
    conn: &mut PgConnection,
    local: &CustomerId,
    stripe_id: &str,
) -> QueryResult<bool> {
    ensure_many(conn, &[local], &[Provider::Stripe])?;
    let linked = diesel::update(
        provider_links::table
            .find((local, Provider::Stripe))
            .filter(provider_links::external_id.is_null()),
    )
    .set(provider_links::external_id.eq(stripe_id))
    .execute(conn)?;
    Ok(linked == 1)
}

/// The remote state of one Stripe event, recorded on its customer's Stripe link.
#[derive(Debug, Clone, Copy)]
pub struct Remembered<'a> {
    pub customer_id: &'a CustomerId,
    pub event_created: i64,
    pub event_id: &'a str,
    pub name: Option<&'a str>,
    pub email: Option<&'a str>,
    /// Raised to this version unless the link holds a later one (0: unchanged).
    pub synced_version: i64,
}

/// Records the remote state of Stripe events on their customers' Stripe links, in one
/// statement.
pub fn remember_many(conn: &mut PgConnection, rows: &[Remembered<'_>]) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    statement(
        "UPDATE provider_links SET remote_event_created = t.ec, remote_event_id = t.ei, \
           remote_name = t.rn, remote_email = t.re, \
           synced_version = GREATEST(provider_links.synced_version, t.v), updated_at = now() \
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[]) \
           AS t(c, ec, ei, rn, re, v) \
         WHERE provider_links.customer_id = t.c AND provider_links.provider = 'stripe'",
    )
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.customer_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.event_created).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.name).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.email).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.synced_version).collect::<Vec<_>>())
    .execute(conn)
    .map(|_| ())
}

/// The Stripe links of customers imported from Stripe (whose local id is the Stripe id),
/// with the remote state their event carried, in one statement.
pub fn insert_imported(conn: &mut PgConnection, rows: &[Remembered<'_>]) -> QueryResult<()> {
    statement(
        "INSERT INTO provider_links (customer_id, provider, external_id, synced_version, \
           remote_event_created, remote_event_id, remote_name, remote_email) \
         SELECT c, 'stripe', c, v, ec, ei, rn, re FROM unnest($1::text[], $2::bigint[], \
           $3::bigint[], $4::text[], $5::text[], $6::text[]) AS t(c, v, ec, ei, rn, re)",
    )
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.customer_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.synced_version).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.event_created).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.name).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.email).collect::<Vec<_>>())
    .execute(conn)
    .map(|_| ())
}

/// Records what a provider call achieved: the provider's id (kept when `None`) and the
/// version it now holds (never lowered).
pub fn record_synced(
    conn: &mut PgConnection,
    customer: &CustomerId,
    provider: Provider,
    external_id: Option<&str>,
    synced_version: i64,
) -> QueryResult<()> {
    diesel::insert_into(provider_links::table)
        .values((
            provider_links::customer_id.eq(customer),
            provider_links::provider.eq(provider),
            provider_links::external_id.eq(external_id),
            provider_links::synced_version.eq(synced_version),
        ))
        .on_conflict((provider_links::customer_id, provider_links::provider))
        .do_update()
        .set((
            // A Stripe link set meanwhile (by hand, by an import) is kept: the call reached
            // another customer, and its version says nothing of the linked one. Salesforce
            // finds its contact by our id, so the id it answers is the current one.
            provider_links::external_id.eq(diesel::dsl::sql::<Nullable<Text>>(
                "CASE WHEN provider_links.provider = 'stripe' \
                 THEN COALESCE(provider_links.external_id, excluded.external_id) \
                 ELSE COALESCE(excluded.external_id, provider_links.external_id) END",
            )),
            provider_links::synced_version.eq(diesel::dsl::sql::<BigInt>(
                "CASE WHEN provider_links.provider = 'stripe' \
                   AND provider_links.external_id <> excluded.external_id \
                 THEN provider_links.synced_version \
                 ELSE GREATEST(provider_links.synced_version, excluded.synced_version) END",
            )),
            provider_links::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// The links of these customers, ordered by customer and provider.
pub fn for_customers(conn: &mut PgConnection, ids: &[&CustomerId]) -> QueryResult<Vec<LinkRow>> {
    provider_links::table
        .filter(provider_links::customer_id.eq_any(ids))
        .select(LinkRow::as_select())
        .order((provider_links::customer_id, provider_links::provider))
        .load(conn)
}

/// The customer's link at one provider, or `None`.
pub fn find(
    conn: &mut PgConnection,
    customer: &CustomerId,
    provider: Provider,
) -> QueryResult<Option<LinkRow>> {
    provider_links::table
        .find((customer, provider))
        .select(LinkRow::as_select())
        .first(conn)
        .optional()
}

/// The local customer linked to a Stripe customer id, if any.
pub fn customer_of_stripe_id(
    conn: &mut PgConnection,
    stripe_id: &str,
) -> QueryResult<Option<CustomerId>> {
    provider_links::table
        .filter(provider_links::provider.eq(Provider::Stripe))
        .filter(provider_links::external_id.eq(stripe_id))
        .select(provider_links::customer_id)
        .first(conn)
        .optional()
}

/// The local customers linked to these Stripe customer ids, by Stripe id.
pub fn customers_of_stripe_ids(
    conn: &mut PgConnection,
    stripe_ids: &[&str],
) -> QueryResult<std::collections::HashMap<String, CustomerId>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        external_id: String,
        #[diesel(sql_type = Text)]
        customer_id: String,
    }
    if stripe_ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<Row> = statement(
        "SELECT l.external_id, l.customer_id FROM unnest($1::text[]) AS t(id), LATERAL \
           (SELECT * FROM provider_links \
            WHERE provider = 'stripe' AND external_id = t.id LIMIT 1) AS l",
    )
    .bind::<Array<Text>, _>(stripe_ids)
    .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.external_id, CustomerId::parse(&r.customer_id).ok()?)))
        .collect())
}

// One index probe per id, whatever the tables' statistics say. `= ANY($1)`, or the same
// subquery without its LIMIT (which PostgreSQL flattens into a join), can be planned as a
// scan of the whole table and a hash join when the statistics are stale: milliseconds
// per batch, growing with the table. The LIMIT keeps each subquery a probe per id.

/// The Stripe links of the given Stripe customer ids, locked.
pub(crate) const LINKED_STRIPE_IDS: &str = "SELECT l.* FROM unnest($1::text[]) AS t(id), LATERAL \
       (SELECT * FROM provider_links \
        WHERE provider = 'stripe' AND external_id = t.id LIMIT 1 FOR UPDATE) AS l";

/// The Stripe links of these Stripe customer ids, locked.
pub fn stripe_links_for_update(
    conn: &mut PgConnection,
    stripe_ids: &[&str],
) -> QueryResult<Vec<LinkRow>> {
    if stripe_ids.is_empty() {
        return Ok(Vec::new());
    }
    statement(LINKED_STRIPE_IDS)
        .bind::<Array<Text>, _>(stripe_ids)
        .load(conn)
}

#[cfg(test)]
mod tests {
    /// The batch's lookups stay one index probe per id on large tables whose statistics
    /// were never gathered (a hash join over every link took milliseconds per batch), in
    /// the custom plan of a first call and in the generic plan PostgreSQL may cache for a
    /// prepared statement.
    #[cfg(feature = "testing")]
    #[test]
    fn the_batch_lookups_probe_the_index_per_id_whatever_the_statistics() {
        use diesel::connection::SimpleConnection;
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct Line {
            #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
            line: String,
        }
        let db = crate::testing::TestDatabase::create();
        let mut conn = db.connect();
        conn.batch_execute(
            "INSERT INTO customers (id, name, email) \
               SELECT 'cus_' || g, 'N', 'n@example.com' FROM generate_series(1, 20000) g; \
             INSERT INTO provider_links (customer_id, provider, external_id) \
               SELECT 'cus_' || g, 'stripe', 'cus_' || g FROM generate_series(1, 20000) g;",
        )
        .unwrap();
        let ids = format!(
            "'{{{}}}'",
            (0..16)
                .map(|n| format!("cus_{}", n * 997))
                .collect::<Vec<_>>()
                .join(",")
        );
        for (name, sql) in [
            ("links", super::LINKED_STRIPE_IDS),
            ("customers", crate::db::customers::CUSTOMERS_FOR_UPDATE),
        ] {
            conn.batch_execute(&format!("PREPARE {name}(text[]) AS {sql}"))
                .unwrap();
            for mode in ["force_custom_plan", "force_generic_plan"] {
                conn.batch_execute(&format!("SET plan_cache_mode = {mode}"))
                    .unwrap();
                let plan: Vec<Line> = diesel::sql_query(format!("EXPLAIN EXECUTE {name}({ids})"))
                    .load(&mut conn)
                    .unwrap();
                let plan: Vec<String> = plan.into_iter().map(|l| l.line).collect();
                let plan = plan.join("\n");
                assert!(plan.contains("Nested Loop"), "{name}, {mode}:\n{plan}");
                assert!(plan.contains("Index"), "{name}, {mode}:\n{plan}");
                assert!(
                    !plan.contains("Hash") && !plan.contains("Seq Scan"),
                    "{name}, {mode}:\n{plan}"
                );
            }
        }
    }
}
