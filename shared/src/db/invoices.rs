//! The `invoices` table: the invoice catalogue.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::schema::invoices;
use crate::domain::CustomerId;
use crate::stripe::Invoice;

/// A row of `invoices`.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = invoices)]
pub struct InvoiceRow {
    pub id: String,
    pub customer_id: Option<CustomerId>,
    pub stripe_customer_id: Option<String>,
    pub number: Option<String>,
    pub status: Option<String>,
    pub currency: String,
    pub amount_due: i64,
    pub amount_paid: i64,
    pub amount_remaining: i64,
    pub total: i64,
    pub hosted_invoice_url: Option<String>,
    pub due_date: Option<i64>,
    pub period_start: Option<i64>,
    pub period_end: Option<i64>,
    pub created: i64,
    pub last_event_created: i64,
    pub updated_at: DateTime<Utc>,
}

/// The invoice, or `None`.
pub fn find(conn: &mut PgConnection, id: &str) -> QueryResult<Option<InvoiceRow>> {
    invoices::table
        .find(id)
        .select(InvoiceRow::as_select())
        .first(conn)
        .optional()
}

/// Filters for a page of invoices.
#[derive(Debug, Clone, Default)]
pub struct InvoiceFilter {
    pub customer_id: Option<CustomerId>,
    pub status: Option<String>,
    /// Invoice ids strictly greater than this one (keyset pagination).
    pub after: Option<String>,
    pub limit: i64,
}

/// A page of invoices ordered by id.
pub fn list(conn: &mut PgConnection, filter: &InvoiceFilter) -> QueryResult<Vec<InvoiceRow>> {
    let mut query = invoices::table
        .select(InvoiceRow::as_select())
        .order(invoices::id.asc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(customer) = &filter.customer_id {
        query = query.filter(invoices::customer_id.eq(customer.clone()));
    }
    if let Some(status) = &filter.status {
        query = query.filter(invoices::status.eq(status.clone()));
    }
    if let Some(after) = &filter.after {
        query = query.filter(invoices::id.gt(after.clone()));
    }
    query.load(conn)
}

/// Gives the i-th Stripe customer's invoices that name no local customer yet to the i-th
/// local customer (invoices can arrive before their customer), in one statement.
pub fn link_many(
    conn: &mut PgConnection,
    stripe_ids: &[&str],
    customers: &[&CustomerId],
) -> QueryResult<()> {
    use diesel::sql_types::{Array, Text};
    diesel::sql_query(
        "UPDATE invoices SET customer_id = t.c FROM unnest($1::text[], $2::text[]) AS t(s, c) \
         WHERE invoices.stripe_customer_id = t.s AND invoices.customer_id IS NULL",
    )
    .bind::<Array<Text>, _>(stripe_ids)
    .bind::<Array<Text>, _>(customers.iter().map(|c| c.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .map(|_| ())
}

/// The stored status and event time of each of these invoices that is stored, row-locked
/// (in id order, as every writer locks them).
pub fn stored_for_update(
    conn: &mut PgConnection,
    ids: &[&str],
) -> QueryResult<HashMap<String, (Option<String>, i64)>> {
    Ok(invoices::table
        .filter(invoices::id.eq_any(ids))
        .order(invoices::id)
        .select((invoices::id, invoices::status, invoices::last_event_created))
        .for_update()
        .load::<(String, Option<String>, i64)>(conn)?
        .into_iter()
        .map(|(id, status, last)| (id, (status, last)))
        .collect())
}

/// An invoice to write: as Stripe showed it, with its status (Stripe's, or `deleted`)
/// and the local customer when known.
pub struct Upsert<'a> {
    pub invoice: &'a Invoice,
    pub status: Option<&'a str>,
    pub customer: Option<&'a CustomerId>,
}

/// Writes the invoices as of `event_created` (an event's time, or a list read's), in one
/// statement; no id may appear twice.
pub fn upsert(
    conn: &mut PgConnection,
    rows: &[Upsert<'_>],
    event_created: i64,
) -> QueryResult<usize> {
    use diesel::upsert::excluded;
    if rows.is_empty() {
        return Ok(0);
    }
    let values: Vec<_> = rows
        .iter()
        .map(|row| {
            let invoice = row.invoice;
            (
                invoices::id.eq(&invoice.id),
                invoices::customer_id.eq(row.customer),
                invoices::stripe_customer_id.eq(invoice.customer_id()),
                invoices::number.eq(&invoice.number),
                invoices::status.eq(row.status),
                invoices::currency.eq(invoice.currency.clone().unwrap_or_default()),
                invoices::amount_due.eq(invoice.amount_due),
                invoices::amount_paid.eq(invoice.amount_paid),
                invoices::amount_remaining.eq(invoice.amount_remaining),
                invoices::total.eq(invoice.total),
                invoices::hosted_invoice_url.eq(&invoice.hosted_invoice_url),
                invoices::due_date.eq(invoice.due_date),
                invoices::period_start.eq(invoice.period_start),
                invoices::period_end.eq(invoice.period_end),
                invoices::created.eq(invoice.created),
                invoices::last_event_created.eq(event_created),
            )
        })
        .collect();
    diesel::insert_into(invoices::table)
        .values(values)
        .on_conflict(invoices::id)
        .do_update()
        .set((
            invoices::customer_id.eq(excluded(invoices::customer_id)),
            invoices::stripe_customer_id.eq(excluded(invoices::stripe_customer_id)),
            invoices::number.eq(excluded(invoices::number)),
            invoices::status.eq(excluded(invoices::status)),
            invoices::currency.eq(excluded(invoices::currency)),
            invoices::amount_due.eq(excluded(invoices::amount_due)),
            invoices::amount_paid.eq(excluded(invoices::amount_paid)),
            invoices::amount_remaining.eq(excluded(invoices::amount_remaining)),
            invoices::total.eq(excluded(invoices::total)),
            invoices::hosted_invoice_url.eq(excluded(invoices::hosted_invoice_url)),
            invoices::due_date.eq(excluded(invoices::due_date)),
            invoices::period_start.eq(excluded(invoices::period_start)),
            invoices::period_end.eq(excluded(invoices::period_end)),
            invoices::created.eq(excluded(invoices::created)),
            invoices::last_event_created.eq(excluded(invoices::last_event_created)),
            invoices::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
}
