//! The providers a consumer calls, behind one trait: the claim loop and the execution of
//! a task (`crate::worker`) know nothing of Stripe or Salesforce, so a third provider is
//! one more implementation here and touches no loop.

mod salesforce;
mod stripe;

use std::time::Duration;

use async_trait::async_trait;
use shared::db::customers::CustomerRow;

pub use salesforce::Salesforce;
pub use stripe::Stripe;

/// The calls a task makes at its provider.
#[async_trait]
pub trait ProviderApi: Send + Sync {
    /// What to tell the operator when this provider is missing from a consumer.
    fn name(&self) -> &'static str;

    /// Whether the provider finds its object by our id (an upsert by external id): then
    /// updates and deletes need no link, and a create needs no reconcile.
    fn keyed_by_local_id(&self) -> bool;

    /// Creates the customer; answers the provider's id when it tells one.
    async fn create(&self, customer: &CustomerRow, key: &str) -> Result<Option<String>, CallError>;

    /// Pushes the customer's current name and email to the object `external_id` (or the
    /// one keyed by our id); answers the provider's id when it tells one.
    async fn update(
        &self,
        external_id: Option<&str>,
        customer: &CustomerRow,
        key: &str,
    ) -> Result<Option<String>, CallError>;

    /// Deletes the object `external_id` (or the one keyed by our id); gone counts as done.
    async fn delete(
        &self,
        external_id: Option<&str>,
        customer: &CustomerRow,
    ) -> Result<(), CallError>;

    /// The live objects at the provider with the customer's email, for adoption by email;
    /// none for a provider that finds its object by our id.
    async fn same_email(&self, _customer: &CustomerRow) -> Result<Vec<Match>, CallError> {
        Ok(Vec::new())
    }

    /// The live object an earlier call created for this customer under any of `emails`.
    async fn find_existing(
        &self,
        customer: &CustomerRow,
        emails: &[String],
    ) -> Result<Option<String>, CallError>;
}

/// A provider object found by email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub id: String,
    /// The local id our metadata on it names, if any.
    pub local_id: Option<String>,
    pub name: String,
    pub email: String,
}

/// A failed provider call, sorted by what the task should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The call may not have arrived or may work later: retry with the same key.
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The outcome is unknown and the key is spent (Stripe stored its 500): reconcile,
    /// then retry under a new key.
    Unknown {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The object does not exist at the provider (any more).
    Gone(String),
    /// Will never work as is: the task goes dead with the provider's message.
    Permanent(String),
}
