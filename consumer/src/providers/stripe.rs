//! Stripe behind [`ProviderApi`]: every call waits for the process's Stripe rate limit.

use async_trait::async_trait;
use shared::db::customers::CustomerRow;
use shared::stripe::{StripeClient, StripeError};

use super::{CallError, ProviderApi};
use crate::rate_limit::RateLimiter;

/// The Stripe provider: the shared client and this process's rate limit.
pub struct Stripe {
    client: StripeClient,
    limiter: RateLimiter,
}

impl Stripe {
    /// Calls through `client` at most `max_rps` times a second.
    pub fn new(client: StripeClient, max_rps: u32) -> Self {
        Self {
            client,
            limiter: RateLimiter::new(max_rps),
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
        self.limiter.acquire().await;
        let created = self
            .client
            .create_customer(customer.id.as_str(), &customer.name, &customer.email, key)
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
        self.limiter.acquire().await;
        self.client
            .update_customer(id, &customer.name, &customer.email, key)
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
        self.limiter.acquire().await;
        Ok(self.client.delete_customer(id).await?)
    }

    async fn find_existing(
        &self,
        customer: &CustomerRow,
        emails: &[String],
    ) -> Result<Option<String>, CallError> {
        for email in emails {
            self.limiter.acquire().await;
            if let Some(found) = self
                .client
                .find_customer(customer.id.as_str(), email)
                .await?
            {
                return Ok(Some(found.id));
            }
        }
        Ok(None)
    }
}
