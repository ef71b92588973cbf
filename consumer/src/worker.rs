//! Claiming and executing tasks: claim (commit), call the provider, record the outcome
//! (commit). The provider call never happens inside a database transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::db::customers::CustomerRow;
use shared::db::tasks::TaskRow;
use shared::db::{self, links, DbError, PgPool};
use shared::domain::{CustomerId, Operation, Provider};
use shared::queue;
use tokio::sync::{watch, Notify, Semaphore};
use tracing::Instrument;

use crate::backoff;
use crate::rate_limit::RateLimiter;
use crate::salesforce::{SalesforceClient, SalesforceError};
use crate::stripe::{Next, StripeClient, StripeError};

/// What became of one execution.
#[derive(Debug)]
pub enum Outcome {
    /// The provider holds the customer's state as of `synced_version`.
    Done {
        external_id: Option<String>,
        synced_version: i64,
    },
    /// Try again later; `new_key` after a 500 spent the idempotency key, and
    /// `sent_email` is the email the failed create carried (for the reconcile).
    Retry {
        error: String,
        retry_after: Option<Duration>,
        new_key: bool,
        sent_email: Option<String>,
    },
    /// Will never work as is.
    Dead(String),
}

impl From<SalesforceError> for Outcome {
    fn from(e: SalesforceError) -> Self {
        if e.retryable() {
            Outcome::Retry {
                retry_after: e.retry_after(),
                error: e.to_string(),
                new_key: false,
                sent_email: None,
            }
        } else {
            Outcome::Dead(e.to_string())
        }
    }
}

impl From<StripeError> for Outcome {
    fn from(e: StripeError) -> Self {
        match e.next() {
            Next::RetrySameKey => Outcome::Retry {
                retry_after: e.retry_after(),
                error: e.to_string(),
                new_key: false,
                sent_email: None,
            },
            Next::ReconcileThenNewKey => Outcome::Retry {
                retry_after: e.retry_after(),
                error: e.to_string(),
                new_key: true,
                sent_email: None,
            },
            Next::GiveUp => Outcome::Dead(e.to_string()),
        }
    }
}

/// Everything the claim loops and task executions share.
pub struct Worker {
    pub pool: PgPool,
    /// This process's lease owner name.
    pub owner: String,
    pub stripe: Option<StripeClient>,
    pub salesforce: Option<SalesforceClient>,
    pub stripe_limiter: RateLimiter,
    pub permits: Arc<Semaphore>,
    pub concurrency: usize,
    pub max_attempts: i32,
    pub max_backoff: Duration,
    pub lease: Duration,
    /// Tasks being executed, to release them at shutdown.
    pub in_flight: Mutex<HashMap<uuid::Uuid, TaskRow>>,
}

impl Worker {
    /// Claims and starts due tasks of `provider` whenever the doorbell rings or the sweep
    /// interval passes, until shutdown.
    pub async fn claim_loop(
        self: Arc<Self>,
        provider: Provider,
        bell: Arc<Notify>,
        sweep: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            loop {
                let free = self.permits.available_permits();
                if free == 0 {
                    break;
                }
                let owner = self.owner.clone();
                let lease = self.lease;
                let claimed = db::run(&self.pool, move |conn| {
                    Ok(queue::claim(conn, provider, free as i64, &owner, lease)?)
                })
                .await;
                let tasks = match claimed {
                    Ok(tasks) => tasks,
                    Err(e) => {
                        tracing::warn!(%provider, error = %e, "claiming tasks failed; retrying at the next sweep");
                        break;
                    }
                };
                let count = tasks.len();
                for task in tasks {
                    let permit = match self.permits.clone().try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(_) => self
                            .permits
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed"),
                    };
                    self.in_flight.lock().unwrap().insert(task.id, task.clone());
                    let worker = self.clone();
                    let bell = bell.clone();
                    let handle = tokio::spawn({
                        let worker = worker.clone();
                        let task = task.clone();
                        async move { worker.run(provider, task).await }
                    });
                    tokio::spawn(async move {
                        if let Err(e) = handle.await {
                            // A panic must not leave the task stuck until its lease expires.
                            tracing::error!(task_id = %task.id, error = %e, "task execution panicked");
                            let outcome = Outcome::Retry {
                                error: format!("consumer panicked: {e}"),
                                retry_after: None,
                                new_key: false,
                                sent_email: None,
                            };
                            worker.record(&task, outcome).await;
                        }
                        worker.in_flight.lock().unwrap().remove(&task.id);
                        drop(permit);
                        // The customer's next task may be claimable now.
                        bell.notify_one();
                    });
                }
                if count < free {
                    break;
                }
            }
            tokio::select! {
                _ = bell.notified() => {}
                _ = tokio::time::sleep(sweep) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Executes one claimed task and records its outcome.
    async fn run(&self, provider: Provider, task: TaskRow) {
        let span = tracing::info_span!(
            "task",
            task_id = %task.id,
            request_id = task.request_id.as_deref().unwrap_or(""),
            %provider,
            operation = %task.operation,
            customer_id = %task.customer_id,
            attempt = task.attempts,
        );
        async {
            let started = Instant::now();
            let outcome = match provider {
                Provider::Stripe => self.execute_stripe(&task).await,
                Provider::Salesforce => self.execute_salesforce(&task).await,
            };
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match &outcome {
                Outcome::Done {
                    external_id,
                    synced_version,
                } => tracing::info!(
                    elapsed_ms,
                    external_id = external_id.as_deref().unwrap_or(""),
                    synced_version,
                    "task succeeded"
                ),
                Outcome::Retry { error, new_key, .. } => {
                    tracing::warn!(elapsed_ms, %error, new_key, "task will be retried")
                }
                Outcome::Dead(error) => tracing::error!(elapsed_ms, %error, "task is dead"),
            }
            self.record(&task, outcome).await;
        }
        .instrument(span)
        .await
    }

    /// Writes the outcome: link and `succeeded` together, or the retry, or `dead`.
    async fn record(&self, task: &TaskRow, outcome: Outcome) {
        let task = task.clone();
        let max_attempts = self.max_attempts;
        let max_backoff = self.max_backoff;
        let result = db::run(&self.pool, move |conn| {
            match outcome {
                Outcome::Done {
                    external_id,
                    synced_version,
                } => queue::complete(conn, &task, external_id.as_deref(), synced_version)?,
                Outcome::Retry {
                    error,
                    retry_after,
                    new_key,
                    sent_email,
                } => {
                    if new_key {
                        queue::next_key_generation(conn, &task, sent_email.as_deref())?;
                    }
                    let delay = backoff::delay(task.attempts, retry_after, max_backoff);
                    queue::retry_later(conn, &task, &error, delay, max_attempts)?;
                }
                Outcome::Dead(error) => queue::kill(conn, &task, &error)?,
            }
            Ok(())
        })
        .await;
        if let Err(e) = result {
            // The lease will expire and another attempt will run with the same key.
            tracing::error!(error = %e, "recording the task outcome failed");
        }
    }

    /// What every provider needs first: the operation, the customer as it is now, and its
    /// link at `provider`; `Err` is the outcome when the task cannot go on.
    async fn prepare(
        &self,
        task: &TaskRow,
        provider: Provider,
    ) -> Result<(Operation, CustomerRow, Option<links::LinkRow>), Outcome> {
        let operation = Operation::parse(&task.operation).map_err(|e| Outcome::Dead(e.0))?;
        let id = task.customer_id.clone();
        let state = db::run(&self.pool, move |conn| {
            let customer_id = CustomerId::parse(&id).map_err(|e| DbError::Unexpected(e.into()))?;
            let customer = shared::db::customers::find(conn, &customer_id)?;
            let link = links::find(conn, &id, provider)?;
            Ok((customer, link))
        })
        .await;
        match state {
            Ok((Some(customer), link)) => Ok((operation, customer, link)),
            Ok((None, _)) => Err(Outcome::Dead("the local customer does not exist".into())),
            Err(e) => Err(Outcome::Retry {
                error: format!("reading the customer: {e}"),
                retry_after: None,
                new_key: false,
                sent_email: None,
            }),
        }
    }

    /// One Stripe task, sending the customer's current state (SPEC "Outward").
    async fn execute_stripe(&self, task: &TaskRow) -> Outcome {
        let Some(stripe) = &self.stripe else {
            return Outcome::Dead("STRIPE_API_KEY is not configured in this consumer".into());
        };
        let (operation, customer, link) = match self.prepare(task, Provider::Stripe).await {
            Ok(state) => state,
            Err(outcome) => return outcome,
        };
        let synced = link.as_ref().map_or(0, |l| l.synced_version);
        let linked = link.and_then(|l| l.external_id);
        // A remote change applied meanwhile, or an earlier task that already pushed this
        // state: a stale queued call must not overwrite it.
        if synced >= task.version && (operation != Operation::Create || linked.is_some()) {
            return Outcome::Done {
                external_id: None,
                synced_version: synced,
            };
        }
        // The state we push: a tombstone's fields are those of the version before the delete.
        let deleted = customer.deleted_at.is_some();
        let pushed = if deleted {
            customer.version - 1
        } else {
            customer.version
        };
        let key = queue::idempotency_key(task);
        match operation {
            Operation::Create => {
                let mut existing = linked;
                if existing.is_none() && task.key_generation > 0 {
                    // A 500 spent an earlier key: that call may have created the customer,
                    // under the email it carried then or the one the customer has now.
                    let mut emails = task.reconcile_emails.clone();
                    if !emails.contains(&customer.email) {
                        emails.push(customer.email.clone());
                    }
                    for email in &emails {
                        self.stripe_limiter.acquire().await;
                        match stripe.find_customer(&customer.id, email).await {
                            Ok(Some(found)) => {
                                tracing::info!(stripe_id = %found.id, "adopted the Stripe customer an earlier attempt created");
                                existing = Some(found.id);
                                break;
                            }
                            Ok(None) => {}
                            Err(e) => return e.into(),
                        }
                    }
                }
                self.stripe_limiter.acquire().await;
                let result = match &existing {
                    Some(id) if !deleted => stripe
                        .update_customer(id, &customer.name, &customer.email, &key)
                        .await
                        .map(|c| c.id),
                    Some(id) => Ok(id.clone()),
                    None => stripe
                        .create_customer(&customer.id, &customer.name, &customer.email, &key)
                        .await
                        .map(|c| c.id),
                };
                match result {
                    Ok(id) => Outcome::Done {
                        external_id: Some(id),
                        synced_version: pushed,
                    },
                    Err(e) => match Outcome::from(e) {
                        Outcome::Retry {
                            error,
                            retry_after,
                            new_key: true,
                            ..
                        } if existing.is_none() => Outcome::Retry {
                            error,
                            retry_after,
                            new_key: true,
                            sent_email: Some(customer.email.clone()),
                        },
                        other => other,
                    },
                }
            }
            Operation::Update => {
                let Some(id) = linked else {
                    return Outcome::Retry {
                        error: "waiting for the customer's create to succeed".into(),
                        retry_after: None,
                        new_key: false,
                        sent_email: None,
                    };
                };
                if deleted {
                    // The delete task that follows removes it; nothing to push.
                    return Outcome::Done {
                        external_id: None,
                        synced_version: pushed,
                    };
                }
                self.stripe_limiter.acquire().await;
                match stripe
                    .update_customer(&id, &customer.name, &customer.email, &key)
                    .await
                {
                    Ok(_) => Outcome::Done {
                        external_id: None,
                        synced_version: pushed,
                    },
                    Err(StripeError::Api { status: 404, .. }) => {
                        // Deleted in Stripe meanwhile: its customer.deleted webhook
                        // tombstones the customer here; there is nothing left to update.
                        tracing::warn!(stripe_id = %id, "the Stripe customer no longer exists");
                        Outcome::Done {
                            external_id: None,
                            synced_version: pushed,
                        }
                    }
                    Err(e) => e.into(),
                }
            }
            Operation::Delete => {
                let target = match linked {
                    Some(id) => Some(id),
                    None => {
                        self.stripe_limiter.acquire().await;
                        match stripe.find_customer(&customer.id, &customer.email).await {
                            Ok(found) => found.map(|c| c.id),
                            Err(e) => return e.into(),
                        }
                    }
                };
                if let Some(id) = target {
                    self.stripe_limiter.acquire().await;
                    if let Err(e) = stripe.delete_customer(&id).await {
                        return e.into();
                    }
                }
                Outcome::Done {
                    external_id: None,
                    synced_version: customer.version,
                }
            }
        }
    }

    /// One Salesforce task: an upsert by external id is idempotent, so no key is needed.
    async fn execute_salesforce(&self, task: &TaskRow) -> Outcome {
        let Some(salesforce) = &self.salesforce else {
            return Outcome::Dead("Salesforce is not configured in this consumer".into());
        };
        let (operation, customer, link) = match self.prepare(task, Provider::Salesforce).await {
            Ok(state) => state,
            Err(outcome) => return outcome,
        };
        let synced = link.as_ref().map_or(0, |l| l.synced_version);
        if synced >= task.version {
            return Outcome::Done {
                external_id: None,
                synced_version: synced,
            };
        }
        let deleted = customer.deleted_at.is_some();
        match operation {
            Operation::Create | Operation::Update if deleted => Outcome::Done {
                external_id: None,
                synced_version: customer.version - 1,
            },
            Operation::Create | Operation::Update => {
                match salesforce
                    .upsert_contact(&customer.id, &customer.name, &customer.email)
                    .await
                {
                    Ok(id) => Outcome::Done {
                        external_id: id,
                        synced_version: customer.version,
                    },
                    Err(e) => e.into(),
                }
            }
            Operation::Delete => match salesforce.delete_contact(&customer.id).await {
                Ok(()) => Outcome::Done {
                    external_id: None,
                    synced_version: customer.version,
                },
                Err(e) => e.into(),
            },
        }
    }

    /// Hands back tasks still executing (after the drain timeout at shutdown).
    pub async fn release_in_flight(&self) {
        let tasks: Vec<TaskRow> = self.in_flight.lock().unwrap().values().cloned().collect();
        for task in tasks {
            let owner = self.owner.clone();
            let id = task.id;
            let released = db::run(&self.pool, move |conn| {
                Ok(queue::release(conn, &task, &owner)?)
            })
            .await;
            match released {
                Ok(()) => tracing::info!(task_id = %id, "released an unfinished task"),
                Err(e) => {
                    tracing::warn!(task_id = %id, error = %e, "releasing failed; its lease will expire")
                }
            }
        }
    }
}
