//! The `customers` table. Every write to it is here.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::schema::customers;
use crate::domain::{CustomerId, CustomerName, Email};

/// A row of `customers`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = customers)]
pub struct CustomerRow {
    pub id: CustomerId,
    pub name: String,
    pub email: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// Inserts a customer at version 1 unless the id is taken; returns the row when inserted.
pub fn insert_if_absent(
    conn: &mut PgConnection,
    id: &CustomerId,
    name: &CustomerName,
    email: &Email,
) -> QueryResult<Option<CustomerRow>> {
    diesel::insert_into(customers::table)
        .values((
            customers::id.eq(id),
            customers::name.eq(name.as_str()),
            customers::email.eq(email.as_str()),
        ))
        .on_conflict_do_nothing()
        .returning(CustomerRow::as_returning())
        .get_result(conn)
        .optional()
}

/// Inserts customers at version 1, skipping ids that are taken (and repeats of an id
/// within `ids`, where the first wins); returns the inserted rows.
///
/// The rows travel as three arrays, so the statement text is the same whatever the
/// batch size: PostgreSQL parses and plans it in constant time, where a multi-row
/// `VALUES` list costs planning work for every row.
pub fn insert_many(
    conn: &mut PgConnection,
    ids: &[&CustomerId],
    names: &[&str],
    emails: &[&str],
) -> QueryResult<Vec<CustomerRow>> {
    use diesel::sql_types::{Array, Text};
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    super::statement::statement(
        "INSERT INTO customers (id, name, email) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
         ON CONFLICT DO NOTHING RETURNING *",
    )
    .bind::<Array<Text>, _>(&ids)
    .bind::<Array<Text>, _>(names)
    .bind::<Array<Text>, _>(emails)
    .load(conn)
}

/// The customer, or `None`.
pub fn find(conn: &mut PgConnection, id: &CustomerId) -> QueryResult<Option<CustomerRow>> {
    customers::table
        .find(id)
        .select(CustomerRow::as_select())
        .first(conn)
        .optional()
}

/// The customer, row-locked until the transaction ends, so that changes to one
/// customer are serialised (and their tasks get ordered sequence numbers).
pub fn find_for_update(
    conn: &mut PgConnection,
    id: &CustomerId,
) -> QueryResult<Option<CustomerRow>> {
    customers::table
        .find(id)
        .select(CustomerRow::as_select())
        .for_update()
        .first(conn)
        .optional()
}

/// Writes new fields and bumps the version.
pub fn update_fields(
    conn: &mut PgConnection,
    id: &CustomerId,
    name: &str,
    email: &str,
) -> QueryResult<CustomerRow> {
    diesel::update(customers::table.find(id))
        .set((
            customers::name.eq(name),
            customers::email.eq(email),
            customers::version.eq(customers::version + 1),
            customers::updated_at.eq(diesel::dsl::now),
        ))
        .returning(CustomerRow::as_returning())
        .get_result(conn)
}

/// Writes new fields for many customers and bumps their versions, in one statement;
/// returns the rows as they now stand.
pub fn update_many(
    conn: &mut PgConnection,
    ids: &[&CustomerId],
    names: &[&str],
    emails: &[&str],
) -> QueryResult<Vec<CustomerRow>> {
    use diesel::sql_types::{Array, Text};
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    super::statement::statement(
        "UPDATE customers SET name = t.name, email = t.email, \
           version = customers.version + 1, updated_at = now() \
         FROM unnest($1::text[], $2::text[], $3::text[]) AS t(id, name, email) \
         WHERE customers.id = t.id RETURNING customers.*",
    )
    .bind::<Array<Text>, _>(ids.iter().map(|id| id.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(names)
    .bind::<Array<Text>, _>(emails)
    .load(conn)
}

/// The given customers, locked (one index probe per id: see `links::LINKED_STRIPE_IDS`).
pub(crate) const CUSTOMERS_FOR_UPDATE: &str =
    "SELECT c.* FROM unnest($1::text[]) AS t(id), LATERAL \
       (SELECT * FROM customers WHERE id = t.id LIMIT 1 FOR UPDATE) AS c";

/// These customers, row-locked until the transaction ends.
pub fn find_many_for_update(
    conn: &mut PgConnection,
    ids: &[&CustomerId],
) -> QueryResult<Vec<CustomerRow>> {
    use diesel::sql_types::{Array, Text};
    super::statement::statement(CUSTOMERS_FOR_UPDATE)
        .bind::<Array<Text>, _>(ids.iter().map(|id| id.as_str()).collect::<Vec<_>>())
        .load(conn)
}

/// Makes the customer a tombstone and bumps the version.
pub fn tombstone(conn: &mut PgConnection, id: &CustomerId) -> QueryResult<CustomerRow> {
    diesel::update(customers::table.find(id))
        .set((
            customers::deleted_at.eq(diesel::dsl::now),
            customers::version.eq(customers::version + 1),
            customers::updated_at.eq(diesel::dsl::now),
        ))
        .returning(CustomerRow::as_returning())
        .get_result(conn)
}

/// Filters for a page of customers.
#[derive(Debug, Clone, Default)]
pub struct CustomerFilter {
    /// Only this exact address.
    pub email: Option<Email>,
    /// Ids strictly greater than this one (keyset pagination).
    pub after: Option<CustomerId>,
    /// Include tombstones.
    pub include_deleted: bool,
    /// Page size.
    pub limit: i64,
}

/// A page of customers ordered by id.
pub fn list(conn: &mut PgConnection, filter: &CustomerFilter) -> QueryResult<Vec<CustomerRow>> {
    let mut query = customers::table
        .select(CustomerRow::as_select())
        .order(customers::id.asc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(email) = &filter.email {
        query = query.filter(customers::email.eq(email.as_str().to_owned()));
    }
    if let Some(after) = &filter.after {
        query = query.filter(customers::id.gt(after.clone()));
    }
    if !filter.include_deleted {
        query = query.filter(customers::deleted_at.is_null());
    }
    query.load(conn)
}

/// A customer to create with [`insert_with_tasks`], and the API request that asked.
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
    pub id: &'a CustomerId,
    pub name: &'a str,
    pub email: &'a str,
    pub request_id: Option<&'a str>,
}

/// Inserts the customers whose ids are free, with a link and a `create` task at each
/// provider, in one statement (the one write here that reaches beyond `customers`): one
/// round trip and no explicit transaction for a whole batch of creates. Answers the tasks
/// in request order, then by provider, so their `seq` keeps per-customer order.
pub fn insert_with_tasks(
    conn: &mut PgConnection,
    rows: &[NewRow<'_>],
    providers: &[crate::domain::Provider],
) -> QueryResult<Vec<super::tasks::TaskRow>> {
    use crate::domain::TaskId;
    use diesel::sql_types::{Array, Nullable, Text, Uuid};
    let pairs: Vec<(&NewRow<'_>, crate::domain::Provider)> = rows
        .iter()
        .flat_map(|row| providers.iter().map(move |p| (row, *p)))
        .collect();
    let task_ids: Vec<TaskId> = pairs.iter().map(|_| TaskId::generate()).collect();
    super::statement::statement(
        "WITH c AS (INSERT INTO customers (id, name, email) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
             ON CONFLICT DO NOTHING RETURNING id, version), \
         l AS (INSERT INTO provider_links (customer_id, provider) \
             SELECT c.id, p.provider FROM c CROSS JOIN unnest($4::text[]) AS p(provider)) \
         INSERT INTO sync_tasks (id, provider, customer_id, operation, version, \
             idempotency_key, request_id) \
         SELECT t.i, t.p, t.c, 'create', c.version, t.k, t.r \
         FROM unnest($5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[]) \
           WITH ORDINALITY AS t(i, p, c, k, r, n) \
         JOIN c ON c.id = t.c ORDER BY t.n RETURNING *",
    )
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.name).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.email).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(providers.iter().map(|p| p.as_str()).collect::<Vec<_>>())
    .bind::<Array<Uuid>, _>(task_ids.iter().map(|id| id.as_uuid()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(pairs.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(pairs.iter().map(|(r, _)| r.id.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        task_ids
            .iter()
            .map(|id| super::tasks::key_for(*id))
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(pairs.iter().map(|(r, _)| r.request_id).collect::<Vec<_>>())
    .load(conn)
}
