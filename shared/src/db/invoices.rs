//! The `invoices` table: the invoice catalogue.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::schema::invoices;

/// A row of `invoices`.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = invoices)]
pub struct InvoiceRow {
    pub id: String,
    pub customer_id: Option<String>,
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
    pub customer_id: Option<String>,
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
