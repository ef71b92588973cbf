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
