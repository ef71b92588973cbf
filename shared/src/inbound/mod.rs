//! Inward sync: verified Stripe events applied to the catalog and the invoice catalogue,
//! together with their event rows, in one transaction.
//!
//! Rules (README "The Stripe webhook"): an event is applied once (by id); an older event
//! never rolls state back; a same-second tie is settled by whether the event follows from
//! the state we last applied (its `previous_attributes`); an echo of a value we pushed
//! never overwrites a newer local change; remote changes go to the other providers, never
//! back to Stripe. The rules are decided in [`rules`] on values alone; [`apply`] reads
//! and writes the rows.

mod apply;
pub mod rules;

pub use crate::db::events::Source;
pub use apply::{
    apply, apply_batch, apply_batch_from, apply_current_customer, apply_deliveries, settle_tie,
    store_invoices,
};

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event id was seen before: nothing new.
    Duplicate,
    /// Stored, but the type is not one we act on.
    Unhandled,
    /// Stored and acted on (which may be "nothing to change": stale, echo).
    Handled(Effect),
}

/// What a handled event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Older than the last event applied (or, for an invoice, than the stored row).
    Stale,
    /// The same second as the last event applied and not following from it: neither
    /// order can be trusted, so the caller reads the customer from Stripe and applies it
    /// with [`settle_tie`]. Until then the event is not recorded as received.
    Tie,
    /// The customer is a tombstone here; the remote state was recorded.
    DeletedLocally,
    /// Stripe holds our current state (an echo).
    InSync,
    /// A newer local change is on its way to Stripe.
    OlderThanLocal,
    /// The remote fields became ours.
    Applied,
    /// A customer created in Stripe became a local customer.
    Imported,
    /// A customer created in Stripe whose id is already a local customer's.
    IdTaken,
    /// A customer created in Stripe whose id cannot be a local id.
    UnusableId,
    /// A Stripe customer naming a local id we do not have.
    UnknownLocalId,
    /// A deleted Stripe customer we never linked.
    UnknownCustomer,
    /// A deletion of a customer already deleted here.
    AlreadyDeleted,
    /// The customer was deleted here.
    Deleted,
    /// The invoice row was written.
    InvoiceStored,
}

impl Effect {
    /// The outcome as the webhook's answer and log name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Stale => "stale",
            Effect::Tie => "same-second tie",
            Effect::DeletedLocally => "deleted locally",
            Effect::InSync => "in sync",
            Effect::OlderThanLocal => "older than a local change",
            Effect::Applied => "applied",
            Effect::Imported => "imported",
            Effect::IdTaken => "id taken",
            Effect::UnusableId => "unusable id",
            Effect::UnknownLocalId => "unknown local id",
            Effect::UnknownCustomer => "unknown customer",
            Effect::AlreadyDeleted => "already deleted",
            Effect::Deleted => "deleted",
            Effect::InvoiceStored => "invoice stored",
        }
    }
}

impl Effect {
    /// The outcome stored with the event row, as `GET /api/v1/events` lists and filters it.
    pub fn code(self) -> &'static str {
        match self {
            Effect::Stale => "stale",
            Effect::Tie => "tie",
            Effect::DeletedLocally => "deleted_locally",
            Effect::InSync => "in_sync",
            Effect::OlderThanLocal => "older_than_local",
            Effect::Applied => "applied",
            Effect::Imported => "imported",
            Effect::IdTaken => "id_taken",
            Effect::UnusableId => "unusable_id",
            Effect::UnknownLocalId => "unknown_local_id",
            Effect::UnknownCustomer => "unknown_customer",
            Effect::AlreadyDeleted => "already_deleted",
            Effect::Deleted => "deleted",
            Effect::InvoiceStored => "invoice_stored",
        }
    }
}

impl Applied {
    /// The outcome stored with the event row; `None` for a duplicate, which stores nothing.
    pub fn code(self) -> Option<&'static str> {
        match self {
            Applied::Duplicate => None,
            Applied::Unhandled => Some("unhandled"),
            Applied::Handled(effect) => Some(effect.code()),
        }
    }
}

/// Every outcome an event row can hold (the `outcome` filter of `GET /api/v1/events`).
pub const OUTCOMES: &[&str] = &[
    "applied",
    "imported",
    "deleted",
    "invoice_stored",
    "in_sync",
    "older_than_local",
    "stale",
    "deleted_locally",
    "already_deleted",
    "id_taken",
    "unusable_id",
    "unknown_local_id",
    "unknown_customer",
    "unhandled",
];

impl From<rules::Verdict> for Effect {
    fn from(verdict: rules::Verdict) -> Self {
        use rules::Verdict;
        match verdict {
            Verdict::Stale => Effect::Stale,
            Verdict::Tie => Effect::Tie,
            Verdict::DeletedLocally => Effect::DeletedLocally,
            Verdict::InSync => Effect::InSync,
            Verdict::OlderThanLocal => Effect::OlderThanLocal,
            Verdict::Apply => Effect::Applied,
        }
    }
}
