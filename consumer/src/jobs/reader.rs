//! Stripe reads for background work (jobs and the catch-up): each waits for a slot the
//! live traffic leaves in the shared read budget, and what can be retried is retried.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shared::stripe::{Next, StripeClient, StripeError};

use crate::backoff;
use crate::budget::Budget;

/// Attempts of one read before the job gives up on it.
const ATTEMPTS: i32 = 8;
/// The longest wait between two attempts of a read.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// A Stripe client reading within the account's shared budget, behind live writes.
pub struct Reader {
    client: Arc<StripeClient>,
    budget: Arc<Budget>,
}

impl Reader {
    /// Reads through `client` within `budget`.
    pub fn new(client: StripeClient, budget: Arc<Budget>) -> Self {
        Self {
            client: Arc::new(client),
            budget,
        }
    }

    /// Runs `call` in a background slot; a network error, 409, 429 or 5xx is tried again
    /// (a read changes nothing), anything else is the answer. `call` gets the client to
    /// own, so its future borrows nothing of the reader.
    pub async fn read<T, F, Fut>(&self, call: F) -> Result<T, StripeError>
    where
        F: Fn(Arc<StripeClient>) -> Fut,
        Fut: Future<Output = Result<T, StripeError>>,
    {
        let mut attempts = 0;
        loop {
            self.budget.acquire_background().await;
            let error = match call(self.client.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            if error.is_rate_limit() {
                self.budget.slow_down(error.retry_after()).await;
            }
            attempts += 1;
            if error.next() == Next::GiveUp || attempts >= ATTEMPTS {
                return Err(error);
            }
            let wait = backoff::delay(attempts, error.retry_after(), MAX_WAIT);
            tracing::warn!(error = %error, attempts, wait_ms = wait.as_millis() as u64, "a Stripe read failed; trying again");
            tokio::time::sleep(wait).await;
        }
    }
}
