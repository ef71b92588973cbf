//! The `customers` table.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::schema::customers;
use crate::domain::{CustomerId, CustomerName, Email};

/// A row of `customers`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = customers)]
pub struct CustomerRow {
    pub id: String,
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
            customers::id.eq(id.as_str()),
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
    ids: &[&str],
    names: &[&str],
    emails: &[&str],
) -> QueryResult<Vec<CustomerRow>> {
    use diesel::sql_types::{Array, Text};
    super::statement::statement(
        "INSERT INTO customers (id, name, email) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
         ON CONFLICT DO NOTHING RETURNING *",
    )
    .bind::<Array<Text>, _>(ids)
    .bind::<Array<Text>, _>(names)
    .bind::<Array<Text>, _>(emails)
    .load(conn)
}

/// The customer, or `None`.
pub fn find(conn: &mut PgConnection, id: &CustomerId) -> QueryResult<Option<CustomerRow>> {
    customers::table
        .find(id.as_str())
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
        .find(id.as_str())
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
    diesel::update(customers::table.find(id.as_str()))
        .set((
            customers::name.eq(name),
            customers::email.eq(email),
            customers::version.eq(customers::version + 1),
            customers::updated_at.eq(diesel::dsl::now),
        ))
        .returning(CustomerRow::as_returning())
        .get_result(conn)
}

/// Makes the customer a tombstone and bumps the version.
pub fn tombstone(conn: &mut PgConnection, id: &CustomerId) -> QueryResult<CustomerRow> {
    diesel::update(customers::table.find(id.as_str()))
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
        query = query.filter(customers::id.gt(after.as_str().to_owned()));
    }
    if !filter.include_deleted {
        query = query.filter(customers::deleted_at.is_null());
    }
    query.load(conn)
}
