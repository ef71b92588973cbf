//! Stripe behind [`ProviderApi`]: every call waits for a slot of the account's shared
//! rate budget, and a rate-limit 429 pauses that budget for every process.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use shared::db::customers::CustomerRow;
use shared::stripe::{StripeClient, StripeError};

use super::{CallError, Match, ProviderApi};
use crate::budget::Budget;

/// The Stripe provider: the client and the account's shared rate budgets, one for
/// writes and one for reads (the same one unless they were split).
pub struct Stripe {
    client: StripeClient,
    writes: Arc<Budget>,
    reads: Arc<Budget>,
}

impl Stripe {
    /// Calls through `client`, writing within `writes` and reading within `reads`.
    pub fn new(client: StripeClient, writes: Arc<Budget>, reads: Arc<Budget>) -> Self {
        Self {
            client,
            writes,
            reads,
        }
    }

    /// Runs one API call in a slot of `budget`.
    async fn call<T>(
        &self,
        budget: &Budget,
        request: impl Future<Output = Result<T, StripeError>>,
    ) -> Result<T, CallError> {
        budget.acquire().await;
        match request.await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                if e.is_rate_limit() {
                    budget.slow_down(e.retry_after()).await;
                }
                Err(e.into())
            }
        }
    }
}

impl From<StripeError> for CallError {
    fn from(e: StripeError) -> Self {
        use shared::stripe::Next;
        let retry_after = e.retry_after();
        let message = e.to_string();
        if e.status() == Some(404) {
            return CallError::Gone(message);
        }
        match e.next() {
            Next::RetrySameKey => CallError::Retry {
                message,
                retry_after,
            },
            Next::ReconcileThenNewKey => CallError::Unknown {
                message,
                retry_after,
            },
            Next::GiveUp => CallError::Permanent(message),
        }
    }
}

#[async_trait]
impl ProviderApi for Stripe {
    fn name(&self) -> &'static str {
        "stripe (STRIPE_API_KEY)"
    }

    fn keyed_by_local_id(&self) -> bool {
        false
    }

    async fn create(&self, customer: &CustomerRow, key: &str) -> Result<Option<String>, CallError> {
        let created = self
            .call(
                &self.writes,
                self.client.create_customer(
                    customer.id.as_str(),
                    &customer.name,
                    &customer.email,
                    key,
                ),
            )
            .await?;
        Ok(Some(created.id))
    }

    async fn update(
        &self,
        external_id: Option<&str>,
        customer: &CustomerRow,
        key: &str,
    ) -> Result<Option<String>, CallError> {
        let id = external_id
            .ok_or_else(|| CallError::Permanent("no Stripe customer to update".into()))?;
        self.call(
            &self.writes,
            self.client.update_customer(
                id,
                customer.id.as_str(),
                &customer.name,
                &customer.email,
                key,
            ),
        )
        .await?;
        Ok(None)
    }

    async fn delete(
        &self,
        external_id: Option<&str>,
        _customer: &CustomerRow,
    ) -> Result<(), CallError> {
        let id = external_id
            .ok_or_else(|| CallError::Permanent("no Stripe customer to delete".into()))?;
        self.call(&self.writes, self.client.delete_customer(id))
            .await
    }

    async fn same_email(&self, customer: &CustomerRow) -> Result<Vec<Match>, CallError> {
        let found = self
            .call(
                &self.reads,
                self.client.customers_with_email(&customer.email),
            )
            .await?;
        Ok(found
            .into_iter()
            .map(|c| {
                let local_id = c.local_id().map(str::to_owned);
                let (name, email) = c.fields();
                Match {
                    id: c.id,
                    local_id,
                    name,
                    email,
                }
            })
            .collect())
    }

    async fn find_existing(
        &self,
        customer: &CustomerRow,
        emails: &[String],
    ) -> Result<Option<String>, CallError> {
        for email in emails {
            let found = self
                .call(
                    &self.reads,
                    self.client.find_customer(customer.id.as_str(), email),
                )
                .await?;
            if let Some(found) = found {
                return Ok(Some(found.id));
            }
        }
        Ok(None)
    }
}
