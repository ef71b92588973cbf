//! Stripe's contract, in one place: the pinned API version, our metadata key, the objects
//! we read (customer, invoice, event, list, error), the webhook signature scheme and the
//! HTTP client. The consumer, the server, the sandbox and the tests all use this module.

mod client;
mod objects;
pub mod signature;

pub use client::{path_segment, Next, StripeClient, StripeError};
pub use objects::{Customer, ErrorBody, ErrorDetail, Event, EventData, Invoice, List};

/// The API version every request pins (and the sandbox answers with), so Stripe's answers
/// keep the shape we parse.
pub const API_VERSION: &str = "2026-10-28.endive";

/// The metadata key on a Stripe customer that names the local customer it was created for.
pub const METADATA_KEY: &str = "customer_sync_id";

/// The customer event types that change the catalog.
pub const CUSTOMER_EVENTS: &[&str] = &["customer.created", "customer.updated", "customer.deleted"];

/// The invoice event types that feed the invoice catalogue.
pub const INVOICE_EVENTS: &[&str] = &[
    "invoice.created",
    "invoice.finalized",
    "invoice.updated",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "invoice.marked_uncollectible",
    "invoice.deleted",
];
