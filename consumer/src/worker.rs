//! Claiming and executing tasks: claim (commit), call the provider, record the outcome
//! (commit). The provider call never happens inside a database transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::db::customers::{self, CustomerRow};
use shared::db::tasks::{self, TaskRow};
use shared::db::{self, adoption, links, DbError, PgPool};
use shared::domain::{Operation, Provider, TaskStatus};
use shared::queue;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::backoff;
use crate::providers::{CallError, Match, ProviderApi};

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

impl Outcome {
    /// The provider holds `synced_version` (and, when it told one, its id).
    fn done(external_id: Option<String>, synced_version: i64) -> Self {
        Outcome::Done {
            external_id,
            synced_version,
        }
    }

    /// Try again later with the same key.
    fn retry(error: impl Into<String>) -> Self {
        Self::retry_after(error, None, false)
    }

    /// Try again after `retry_after` (or the backoff), under a new key when `new_key`.
    fn retry_after(error: impl Into<String>, retry_after: Option<Duration>, new_key: bool) -> Self {
        Outcome::Retry {
            error: error.into(),
            retry_after,
            new_key,
            sent_email: None,
        }
    }
}

impl From<CallError> for Outcome {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Retry {
                message,
                retry_after,
            } => Outcome::retry_after(message, retry_after, false),
            CallError::Unknown {
                message,
                retry_after,
            } => Outcome::retry_after(message, retry_after, true),
            CallError::Gone(message) | CallError::Permanent(message) => Outcome::Dead(message),
        }
    }
}

/// Everything the claim loops and task executions share.
pub struct Worker {
    pub pool: PgPool,
    /// This process's lease owner name.
    pub owner: String,
    /// The providers this process can call.
    pub providers: HashMap<Provider, Arc<dyn ProviderApi>>,
    pub permits: Arc<Semaphore>,
    pub concurrency: usize,
    pub max_attempts: i32,
    pub max_backoff: Duration,
    pub lease: Duration,
    /// Tasks being executed, to release them at shutdown.
    pub in_flight: Mutex<HashMap<uuid::Uuid, TaskRow>>,
    /// Whether a create adopts the one unlinked provider object with the customer's email
    /// (`STRIPE_ADOPT_BY_EMAIL`) rather than create a second one.
    pub adopt_by_email: bool,
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
        while !*shutdown.borrow() {
            self.claim_while_free(provider, &bell).await;
            tokio::select! {
                _ = bell.notified() => {}
                _ = tokio::time::sleep(sweep) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Claims and starts due tasks as long as permits are free and claims fill them;
    /// answers how many were started. The permits are taken before the claim, so every
    /// task claimed starts at once (no lease runs while a task waits for a permit another
    /// provider's loop took meanwhile).
    async fn claim_while_free(self: &Arc<Self>, provider: Provider, bell: &Arc<Notify>) -> usize {
        let mut started = 0;
        loop {
            let (free, mut held) = loop {
                let free = self.permits.available_permits();
                if free == 0 {
                    return started;
                }
                // Another loop may take some between the count and the taking.
                if let Ok(held) = self.permits.clone().try_acquire_many_owned(free as u32) {
                    break (free, held);
                }
            };
            let Some(tasks) = self.claim(provider, free).await else {
                return started;
            };
            let count = tasks.len();
            for task in tasks {
                let permit = held.split(1).expect("a permit held per task claimed");
                self.start(provider, task, permit, bell.clone());
            }
            drop(held);
            started += count;
            if count < free {
                return started;
            }
        }
    }

    /// Claims up to `limit` due tasks; `None` when the claim failed (logged).
    async fn claim(&self, provider: Provider, limit: usize) -> Option<Vec<TaskRow>> {
        let owner = self.owner.clone();
        let lease = self.lease;
        let claimed = db::run(&self.pool, move |conn| {
            Ok(queue::claim(conn, provider, limit as i64, &owner, lease)?)
        })
        .await;
        match claimed {
            Ok(tasks) => Some(tasks),
            Err(e) => {
                tracing::warn!(%provider, error = %e, "claiming tasks failed; retrying at the next sweep");
                None
            }
        }
    }

    /// Executes a claimed task on its own tokio task, holding `permit` until its outcome
    /// is recorded; a panic is recorded as a retry rather than left to the lease.
    fn start(
        self: &Arc<Self>,
        provider: Provider,
        task: TaskRow,
        permit: OwnedSemaphorePermit,
        bell: Arc<Notify>,
    ) {
        self.in_flight.lock().unwrap().insert(task.id, task.clone());
        let handle = tokio::spawn({
            let worker = self.clone();
            let task = task.clone();
            async move { worker.run(provider, task).await }
        });
        let worker = self.clone();
        tokio::spawn(async move {
            if let Err(e) = handle.await {
                tracing::error!(task_id = %task.id, error = %e, "task execution panicked");
                worker
                    .record(&task, Outcome::retry(format!("consumer panicked: {e}")))
                    .await;
            }
            worker.in_flight.lock().unwrap().remove(&task.id);
            drop(permit);
            // The customer's next task may be claimable now.
            bell.notify_one();
        });
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
            let task = match self.fresh_key(&task).await {
                Ok(Some(task)) => task,
                Ok(None) => return,
                Err(outcome) => return self.record(&task, outcome).await,
            };
            let outcome = match self.providers.get(&provider) {
                Some(api) => match self.execute_leased(api.as_ref(), &task).await {
                    Some(outcome) => outcome,
                    None => return,
                },
                None => Outcome::Dead(format!(
                    "the {provider} provider is not configured in this consumer"
                )),
            };
            log(&outcome, started.elapsed());
            self.record(&task, outcome).await;
        }
        .instrument(span)
        .await
    }

    /// The task with a key Stripe still knows: a key first sent more than
    /// [`tasks::KEY_MAX_AGE`] ago is replaced by the next generation (a create then
    /// searches for what the old key's calls may have made before it calls). `None` when
    /// the claim no longer holds the task.
    async fn fresh_key(&self, task: &TaskRow) -> Result<Option<TaskRow>, Outcome> {
        let max_age = chrono::Duration::from_std(tasks::KEY_MAX_AGE).expect("a small duration");
        let stale = task
            .key_sent_at
            .is_some_and(|sent| chrono::Utc::now() - sent > max_age);
        if !stale {
            return Ok(Some(task.clone()));
        }
        let held = task.clone();
        let bumped = db::run(&self.pool, move |conn| {
            Ok(queue::next_key_generation(conn, &held, None)?)
        })
        .await;
        match bumped {
            Ok(Some(generation)) => {
                tracing::info!(
                    generation,
                    "the task's key is older than Stripe keeps keys; a new one after the reconcile"
                );
                Ok(Some(TaskRow {
                    key_generation: generation,
                    key_sent_at: None,
                    ..task.clone()
                }))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(Outcome::retry(format!("replacing an old key: {e}"))),
        }
    }

    /// Executes the task while renewing its lease a third of the way through each term;
    /// the outcome, or `None` when the lease was lost (another consumer claimed the task,
    /// or it could not be renewed before it ran out): the call is then abandoned where it
    /// stands, and its retry runs under the same idempotency key.
    async fn execute_leased(&self, api: &dyn ProviderApi, task: &TaskRow) -> Option<Outcome> {
        let keep = async {
            let mut expires = Instant::now() + self.lease;
            loop {
                tokio::time::sleep(self.lease / 3).await;
                let (pool, task, lease) = (self.pool.clone(), task.clone(), self.lease);
                let asked = Instant::now();
                let renewed =
                    db::run(&pool, move |conn| Ok(queue::renew(conn, &task, lease)?)).await;
                match renewed {
                    Ok(true) => expires = asked + self.lease,
                    Ok(false) => {
                        tracing::warn!(
                            "the task's lease passed to another consumer; its call is abandoned"
                        );
                        return;
                    }
                    Err(e) if Instant::now() + self.lease / 3 >= expires => {
                        tracing::warn!(error = %e, "the task's lease could not be renewed before it ran out; its call is abandoned");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the task's lease failed; trying again")
                    }
                }
            }
        };
        tokio::select! {
            outcome = self.execute(api, task) => Some(outcome),
            () = keep => None,
        }
    }

    /// Writes the outcome under the task's claim: link and `succeeded` together, or the
    /// retry, or `dead`. A late outcome (another consumer claimed the task since) is
    /// logged and dropped.
    async fn record(&self, task: &TaskRow, outcome: Outcome) {
        let task = task.clone();
        let max_attempts = self.max_attempts;
        let max_backoff = self.max_backoff;
        let provider = task.provider;
        let result = db::run(&self.pool, move |conn| {
            use diesel::Connection;
            conn.transaction(|conn| {
                Ok::<_, DbError>(match outcome {
                    Outcome::Done {
                        external_id,
                        synced_version,
                    } => queue::complete(conn, &task, external_id.as_deref(), synced_version)?
                        .then_some("succeeded"),
                    Outcome::Retry {
                        error,
                        retry_after,
                        new_key,
                        sent_email,
                    } => {
                        if new_key
                            && queue::next_key_generation(conn, &task, sent_email.as_deref())?
                                .is_none()
                        {
                            return Ok(None);
                        }
                        let delay = backoff::delay(task.attempts, retry_after, max_backoff);
                        queue::retry_later(conn, &task, &error, delay, max_attempts)?.map(
                            |status| match status {
                                TaskStatus::Dead => "dead",
                                _ => "retried",
                            },
                        )
                    }
                    Outcome::Dead(error) => queue::kill(conn, &task, &error)?.then_some("dead"),
                })
            })
        })
        .await;
        match result {
            Ok(Some(outcome)) => {
                metrics::counter!(shared::metrics::TASK_OUTCOMES,
                    "provider" => provider.as_str(), "outcome" => outcome)
                .increment(1);
            }
            Ok(None) => tracing::warn!(
                "a late outcome was dropped: another consumer claimed the task since"
            ),
            // The lease will expire and another attempt will run with the same key.
            Err(e) => tracing::error!(error = %e, "recording the task outcome failed"),
        }
    }

    /// The customer as it is now and its link at the task's provider; `Err` is the
    /// outcome when the task cannot go on.
    async fn prepare(
        &self,
        task: &TaskRow,
    ) -> Result<(CustomerRow, Option<links::LinkRow>), Outcome> {
        let (id, provider) = (task.customer_id.clone(), task.provider);
        let state = db::run(&self.pool, move |conn| {
            let customer = customers::find(conn, &id)?;
            let link = links::find(conn, &id, provider)?;
            Ok::<_, DbError>((customer, link))
        })
        .await;
        match state {
            Ok((Some(customer), link)) => Ok((customer, link)),
            Ok((None, _)) => Err(Outcome::Dead("the local customer does not exist".into())),
            Err(e) => Err(Outcome::retry(format!("reading the customer: {e}"))),
        }
    }

    /// One task at its provider, sending the customer's current state (README "Operations":
    /// a stale queued call never overwrites a newer state).
    async fn execute(&self, api: &dyn ProviderApi, task: &TaskRow) -> Outcome {
        let (customer, link) = match self.prepare(task).await {
            Ok(state) => state,
            Err(outcome) => return outcome,
        };
        let synced = link.as_ref().map_or(0, |l| l.synced_version);
        let mut linked = link.and_then(|l| l.external_id);
        let adopting = task.operation == Operation::Create
            && linked.is_none()
            && self.adopt_by_email
            && !api.keyed_by_local_id()
            && customer.deleted_at.is_none();
        if adopting {
            match self.adopt(api, &customer).await {
                Ok(found) => linked = found,
                Err(outcome) => return outcome,
            }
        }
        // A remote change applied meanwhile, or an earlier task that already pushed this
        // state: a stale queued call must not overwrite it.
        let found = linked.is_some() || api.keyed_by_local_id();
        if synced >= task.version && (task.operation != Operation::Create || found) {
            return Outcome::done(None, synced);
        }
        let call = Call {
            api,
            task,
            // The state we push: a tombstone's fields are those of the version before the
            // delete.
            pushed: customer.version - i64::from(customer.deleted_at.is_some()),
            customer,
            linked,
            searched_email: adopting,
        };
        match task.operation {
            Operation::Create => call.create().await,
            Operation::Update => call.update().await,
            Operation::Delete => call.delete().await,
        }
    }

    /// Adoption by email, before a create: the provider object with our metadata, or the
    /// one object with the customer's email that carries none (when no other local
    /// customer could be it either), is linked to the customer first (the unique link
    /// settles a race with another create or an import) and the create becomes an update
    /// that writes our metadata. Several candidates: the task goes dead naming them, for
    /// the operator to link one by hand.
    async fn adopt(
        &self,
        api: &dyn ProviderApi,
        customer: &CustomerRow,
    ) -> Result<Option<String>, Outcome> {
        let found = api.same_email(customer).await.map_err(Outcome::from)?;
        let ours = found
            .iter()
            .find(|m| m.local_id.as_deref() == Some(customer.id.as_str()));
        let free: Vec<&Match> = found.iter().filter(|m| m.local_id.is_none()).collect();
        let target = match (ours, free.as_slice()) {
            (Some(ours), _) => ours.clone(),
            (None, []) => return Ok(None),
            (None, [only]) => (*only).clone(),
            (None, several) => {
                return Err(Outcome::Dead(format!(
                    "several Stripe customers could be this customer (same email, none carries our \
                     metadata): {}; link the right one with PUT /api/v1/customers/{}/links/stripe",
                    several.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", "),
                    customer.id
                )))
            }
        };
        let (id, local) = (customer.id.clone(), customer.email.clone());
        let by_metadata = ours.is_some();
        let claimed = db::run(&self.pool, move |conn| {
            use diesel::Connection;
            conn.transaction(|conn| {
                if !by_metadata {
                    let taken = links::stripe_links_for_update(conn, &[target.id.as_str()])?;
                    if let Some(other) = taken.first() {
                        return Ok(Err(format!(
                            "the Stripe customer {} with this email is linked to local customer {}; \
                             link another with PUT /api/v1/customers/{id}/links/stripe",
                            target.id, other.customer_id
                        )));
                    }
                    let key = adoption::email_key(&local).unwrap_or_default();
                    let locals = adoption::unlinked_with_emails(conn, &[key.as_str()])?;
                    if locals.len() > 1 {
                        return Ok(Err(format!(
                            "the Stripe customer {} has this email, and so do local customers {}; \
                             link it by hand with PUT /api/v1/customers/{{id}}/links/stripe",
                            target.id,
                            locals.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
                        )));
                    }
                }
                if !adoption::link(conn, &id, &target.id, 0, (&target.name, &target.email))? {
                    return Err(DbError::Conflict("the customer has a Stripe customer".into()));
                }
                Ok::<_, DbError>(Ok(target.id))
            })
        })
        .await;
        match claimed {
            Ok(Ok(adopted)) => {
                tracing::info!(external_id = %adopted, by_metadata, "adopted an existing provider object by email");
                Ok(Some(adopted))
            }
            Ok(Err(ambiguous)) => Err(Outcome::Dead(ambiguous)),
            // Linked meanwhile (a webhook, an import, another create): the next attempt
            // sees it.
            Err(e) => Err(Outcome::retry(format!("adopting by email: {e}"))),
        }
    }

    /// Hands back tasks still executing (after the drain timeout at shutdown).
    pub async fn release_in_flight(&self) {
        let tasks: Vec<TaskRow> = self.in_flight.lock().unwrap().values().cloned().collect();
        for task in tasks {
            let id = task.id;
            let released = db::run(&self.pool, move |conn| Ok(queue::release(conn, &task)?)).await;
            match released {
                Ok(true) => tracing::info!(task_id = %id, "released an unfinished task"),
                Ok(false) => {
                    tracing::info!(task_id = %id, "an unfinished task was claimed by another consumer meanwhile")
                }
                Err(e) => {
                    tracing::warn!(task_id = %id, error = %e, "releasing failed; its lease will expire")
                }
            }
        }
    }

    /// Runs every task of `provider` until none is pending or in flight (those waiting
    /// for a retry included), then returns how many executions it took: a deterministic
    /// drain for tests and one-off runs, instead of a claim loop and a poll.
    pub async fn drain(self: &Arc<Self>, provider: Provider) -> Result<usize, DbError> {
        let bell = Arc::new(Notify::new());
        let mut executed = 0;
        loop {
            executed += self.claim_while_free(provider, &bell).await;
            // Every started execution finishes (and releases its permit) before we look.
            let all = self.concurrency as u32;
            drop(self.permits.acquire_many(all).await.expect("never closed"));
            let next_due =
                db::run(&self.pool, move |conn| Ok(queue::next_due(conn, provider)?)).await?;
            match next_due {
                None => return Ok(executed),
                Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                Some(_) => {}
            }
        }
    }
}

/// One provider call for one task: what it needs to decide what to send.
struct Call<'a> {
    api: &'a dyn ProviderApi,
    task: &'a TaskRow,
    customer: CustomerRow,
    /// The provider's id for the customer, when we know it.
    linked: Option<String>,
    /// The version whose state the call pushes.
    pushed: i64,
    /// Adoption already looked for our customer under the current email.
    searched_email: bool,
}

impl Call<'_> {
    fn deleted(&self) -> bool {
        self.customer.deleted_at.is_some()
    }

    /// Creates the customer, unless an earlier attempt did: after a 500 spent a key, that
    /// call may have created it, under the email it carried then or the one it has now.
    async fn create(self) -> Outcome {
        let mut existing = self.linked.clone();
        // After a spent key, or for a customer deleted since: an earlier call (one whose
        // answer was lost, or one cut short at a shutdown) may have made it.
        let search =
            self.task.key_generation > 0 || (self.deleted() && !self.api.keyed_by_local_id());
        if existing.is_none() && search {
            let mut emails = self.task.reconcile_emails.clone();
            if self.searched_email {
                emails.retain(|e| *e != self.customer.email);
            } else if !emails.contains(&self.customer.email) {
                emails.push(self.customer.email.clone());
            }
            match self.api.find_existing(&self.customer, &emails).await {
                Ok(Some(found)) => {
                    tracing::info!(external_id = %found, "adopted the object an earlier attempt created");
                    existing = Some(found);
                }
                Ok(None) => {}
                Err(e) => return e.into(),
            }
        }
        let key = queue::idempotency_key(self.task);
        let result = match &existing {
            // An update under a key of its own: Stripe refuses a key first used on another
            // endpoint, and this task's key may have gone to `POST /v1/customers` already
            // (the attempt that created the customer we found, or adopted).
            Some(id) if !self.deleted() => self
                .api
                .update(Some(id), &self.customer, &format!("{key}-update"))
                .await
                .map(|told| told.or(Some(id.clone()))),
            Some(id) => Ok(Some(id.clone())),
            // Deleted, and no earlier call made it (the search above found nothing, or
            // the provider is keyed by our id and its delete finds it anyway): nothing to
            // create, nothing to call.
            None if self.deleted() => Ok(None),
            None => self.api.create(&self.customer, &key).await,
        };
        let error = match result {
            Ok(id) => return Outcome::done(id, self.pushed),
            Err(e) => e,
        };
        let mut outcome = Outcome::from(error);
        if let Outcome::Retry {
            new_key: true,
            sent_email,
            ..
        } = &mut outcome
        {
            // The spent key's call may have created it under this email: the reconcile
            // of the next attempt searches it too.
            if existing.is_none() {
                *sent_email = Some(self.customer.email.clone());
            }
        }
        outcome
    }

    /// Pushes the current name and email.
    async fn update(self) -> Outcome {
        if self.linked.is_none() && !self.api.keyed_by_local_id() {
            return Outcome::retry("waiting for the customer's create to succeed");
        }
        if self.deleted() {
            // The delete task that follows removes it; nothing to push.
            return Outcome::done(None, self.pushed);
        }
        let key = queue::idempotency_key(self.task);
        match self
            .api
            .update(self.linked.as_deref(), &self.customer, &key)
            .await
        {
            Ok(id) => Outcome::done(id, self.pushed),
            Err(CallError::Gone(_)) => {
                // Deleted at the provider meanwhile: its deletion webhook tombstones the
                // customer here; there is nothing left to update.
                tracing::warn!(
                    external_id = self.linked.as_deref().unwrap_or(""),
                    "the provider's object no longer exists"
                );
                Outcome::done(None, self.pushed)
            }
            Err(e) => e.into(),
        }
    }

    /// Deletes the provider's object, found by our metadata when it was never linked.
    async fn delete(self) -> Outcome {
        let target = match (&self.linked, self.api.keyed_by_local_id()) {
            (_, true) | (Some(_), false) => self.linked.clone(),
            (None, false) => {
                let emails = [self.customer.email.clone()];
                match self.api.find_existing(&self.customer, &emails).await {
                    Ok(found) => found,
                    Err(e) => return e.into(),
                }
            }
        };
        if target.is_some() || self.api.keyed_by_local_id() {
            if let Err(e) = self.api.delete(target.as_deref(), &self.customer).await {
                return e.into();
            }
        }
        Outcome::done(None, self.customer.version)
    }
}

/// One log line per execution, at the level its outcome deserves.
fn log(outcome: &Outcome, elapsed: Duration) {
    let elapsed_ms = elapsed.as_millis() as u64;
    match outcome {
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
}
