//! Jobs: imports and reconciles of a provider account, run by one consumer at a time
//! under a lease that a companion task renews, checkpointed after every step in the
//! step's own transaction, so a consumer that dies leaves a job another one resumes
//! where it stopped. The same runner serves the background loop and the foreground
//! commands (`consumer import`, `consumer reconcile`).

pub mod import;
pub mod reader;
pub mod reconcile;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use serde_json::Value;
use shared::db::jobs::{self, Checkpoint, Finding, JobRow, Renewal};
use shared::db::{self, adoption, DbError, PgPool};
use shared::domain::{JobKind, JobStatus, Provider};
use shared::stripe::{Customer, List, StripeClient, StripeError};
use tokio::sync::watch;

pub use reader::Reader;

/// How often an idle consumer looks for a job to run.
const IDLE_POLL: Duration = Duration::from_secs(2);

/// What every job needs.
pub struct JobContext {
    pub pool: PgPool,
    pub reader: Arc<Reader>,
    /// This process's lease owner name.
    pub owner: String,
    /// The providers changes are passed on to.
    pub providers: Vec<Provider>,
    pub lease: Duration,
    /// Objects per list page.
    pub page_size: u8,
}

/// Why a job stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Another consumer took the job over (this one's lease ran out): nothing more is
    /// written.
    #[error("the job's lease was lost to another consumer")]
    Lost,
    /// Cancelled on request.
    #[error("cancelled")]
    Cancelled,
    /// This process is stopping: the job is handed back for another consumer.
    #[error("the consumer is stopping")]
    Stopping,
    #[error("Stripe: {0}")]
    Stripe(#[from] StripeError),
    #[error("database: {0}")]
    Db(#[from] DbError),
}

/// What a step did: its findings, counts and where it got to.
pub struct Step {
    pub findings: Vec<Finding>,
    pub counted: Vec<(&'static str, i64)>,
    pub phase: &'static str,
    pub checkpoint: String,
}

/// A batch's findings and the counts it adds.
pub type Found = (Vec<Finding>, Vec<(&'static str, i64)>);

/// Someone watching a job: told after every step.
pub trait Observer: Send + Sync {
    fn step(&self, job: uuid::Uuid, phase: &str, progress: &Value);
}

/// Logs each step at debug level.
pub struct LogObserver;

impl Observer for LogObserver {
    fn step(&self, job: uuid::Uuid, phase: &str, progress: &Value) {
        tracing::debug!(job_id = %job, phase, %progress, "job step");
    }
}

/// A job being run: its row as claimed, the lease state, and the way to record steps.
pub struct Steps<'a> {
    pub ctx: &'a JobContext,
    job: JobRow,
    state: watch::Receiver<Renewal>,
    stopping: watch::Receiver<bool>,
    observer: &'a dyn Observer,
    /// Cancellation seen when a step was recorded (sooner than the next renewal).
    cancel_seen: std::sync::atomic::AtomicBool,
}

impl Steps<'_> {
    /// The job's id.
    pub fn job_id(&self) -> uuid::Uuid {
        self.job.id
    }

    /// Whether the job repairs what it finds.
    pub fn repair(&self) -> bool {
        self.job.repair
    }

    /// When the job's walk began (recorded by the walk, kept across resumes).
    pub async fn walk_started_at(&self) -> Result<chrono::DateTime<chrono::Utc>, JobError> {
        let job = self.job.id;
        Ok(db::run(&self.ctx.pool, move |conn| {
            Ok(jobs::mark_walk_started(conn, job)?)
        })
        .await?)
    }

    /// The phases still to run: from the checkpoint's phase on.
    pub fn phases_from(&self, phases: &[&'static str]) -> Vec<&'static str> {
        let at = phases
            .iter()
            .position(|p| *p == self.job.phase)
            .unwrap_or(0);
        phases[at..].to_vec()
    }

    /// Where the job stopped in `phase`, if it was in it.
    pub fn checkpoint_in(&self, phase: &str) -> Option<String> {
        (self.job.phase == phase)
            .then(|| self.job.checkpoint.clone())
            .flatten()
    }

    /// Stops at a step boundary when the job was cancelled, lost or the process stops.
    fn check(&self) -> Result<(), JobError> {
        if *self.stopping.borrow() {
            return Err(JobError::Stopping);
        }
        if self.cancel_seen.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(JobError::Cancelled);
        }
        match *self.state.borrow() {
            Renewal::Held => Ok(()),
            Renewal::CancelRequested => Err(JobError::Cancelled),
            Renewal::Lost => Err(JobError::Lost),
        }
    }

    /// Runs `work` in a transaction that also records its step (findings, counts and
    /// checkpoint) under this job's lease; the answer is the checkpoint recorded, or
    /// `None` when `work` had nothing to do.
    pub async fn transaction<F>(&self, work: F) -> Result<Option<String>, JobError>
    where
        F: FnOnce(&mut PgConnection) -> Result<Option<Step>, DbError> + Send + 'static,
    {
        self.check()?;
        let (id, owner) = (self.job.id, self.ctx.owner.clone());
        let recorded = db::run(&self.ctx.pool, move |conn| {
            conn.transaction(|conn| {
                let Some(step) = work(conn)? else {
                    return Ok(None);
                };
                let at = Checkpoint {
                    phase: step.phase,
                    checkpoint: Some(&step.checkpoint),
                };
                if !jobs::record_step(conn, id, &owner, &step.findings, &step.counted, at)? {
                    return Err(DbError::Conflict("lease lost".into()));
                }
                use shared::db::schema::sync_jobs;
                let (progress, cancel): (Value, bool) = sync_jobs::table
                    .find(id)
                    .select((sync_jobs::progress, sync_jobs::cancel_requested))
                    .first(conn)?;
                Ok(Some((step.phase, step.checkpoint, progress, cancel)))
            })
        })
        .await;
        match recorded {
            Ok(Some((phase, checkpoint, progress, cancel))) => {
                self.observer.step(id, phase, &progress);
                if cancel {
                    self.cancel_seen
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(Some(checkpoint))
            }
            Ok(None) => Ok(None),
            Err(DbError::Conflict(message)) if message == "lease lost" => Err(JobError::Lost),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `phase` as batches until one finds nothing: `batch` gets the last key done
    /// (`None` at the start of the phase) and answers what it found and its own last key,
    /// in one transaction with the job's step.
    pub async fn batches<F>(&self, phase: &'static str, batch: F) -> Result<(), JobError>
    where
        F: Fn(&mut PgConnection, Option<&str>) -> Result<Option<(Found, String)>, DbError>
            + Clone
            + Send
            + 'static,
    {
        let mut after = self.checkpoint_in(phase);
        loop {
            let (from, batch) = (after.clone(), batch.clone());
            let step = self
                .transaction(move |conn| {
                    let Some(((findings, counted), last)) = batch(conn, from.as_deref())? else {
                        return Ok(None);
                    };
                    Ok(Some(Step {
                        findings,
                        counted,
                        phase,
                        checkpoint: last,
                    }))
                })
                .await?;
            match step {
                Some(checkpoint) => after = Some(checkpoint),
                None => return Ok(()),
            }
        }
    }

    /// Reads the page of a Stripe list after `from` in a background slot; the page and
    /// the time it was read.
    pub async fn read_page<T, R, Fut>(
        &self,
        read: &R,
        from: Option<String>,
    ) -> Result<(List<T>, i64), JobError>
    where
        R: Fn(Arc<StripeClient>, Option<String>, u8) -> Fut,
        Fut: std::future::Future<Output = Result<List<T>, StripeError>>,
    {
        self.check()?;
        let size = self.ctx.page_size;
        let page = self
            .ctx
            .reader
            .read(|client| read(client, from.clone(), size))
            .await?;
        Ok((page, chrono::Utc::now().timestamp()))
    }

    /// Walks a Stripe list, a page per step, from `first` (the page after `phase`'s
    /// checkpoint, see [`Steps::read_page`]): `store` writes a page (with the time it was
    /// read) in the step's transaction, and `read` asks for the page after an id. The next
    /// page is read while a step commits, so the walk keeps the budget's pace as long as a
    /// step takes less than a slot.
    pub async fn walk<T, R, Fut, S>(
        &self,
        phase: &'static str,
        first: (List<T>, i64),
        read: R,
        id_of: fn(&T) -> &str,
        store: S,
    ) -> Result<(), JobError>
    where
        T: Send + 'static,
        R: Fn(Arc<StripeClient>, Option<String>, u8) -> Fut,
        Fut: std::future::Future<Output = Result<List<T>, StripeError>>,
        S: Fn(&mut PgConnection, Vec<T>, i64) -> Result<Found, DbError> + Clone + Send + 'static,
    {
        let (mut page, mut read_at) = first;
        loop {
            let Some(last) = page.data.last().map(|o| id_of(o).to_owned()) else {
                return Ok(());
            };
            let has_more = page.has_more;
            let (store, data, checkpoint) = (store.clone(), page.data, last.clone());
            let step = self.transaction(move |conn| {
                let (findings, counted) = store(conn, data, read_at)?;
                Ok(Some(Step {
                    findings,
                    counted,
                    phase,
                    checkpoint,
                }))
            });
            if !has_more {
                step.await?;
                return Ok(());
            }
            let (stored, next) = tokio::join!(step, self.read_page(&read, Some(last)));
            stored?;
            (page, read_at) = next?;
        }
    }

    /// The walk of every Stripe customer, staged for the decisions; `decide` sees each
    /// page's customers not staged before, in that page's step, and answers what it found
    /// and the ids it decided (an import decides there what no later page can change).
    pub async fn walk_customers<F>(&self, decide: F) -> Result<(), JobError>
    where
        F: Fn(&mut PgConnection, &[adoption::Staged]) -> Result<(Found, HashSet<String>), DbError>
            + Clone
            + Send
            + 'static,
    {
        let job = self.job.id;
        db::run(&self.ctx.pool, move |conn| {
            Ok(jobs::mark_walk_started(conn, job)?)
        })
        .await?;
        let read = |client: Arc<StripeClient>, from: Option<String>, size| async move {
            client.list_customers(from.as_deref(), size).await
        };
        let first = self
            .read_page(&read, self.checkpoint_in("customers"))
            .await?;
        self.walk(
            "customers",
            first,
            read,
            |c: &Customer| c.id.as_str(),
            move |conn, page, _| {
                let fresh = adoption::unstaged(conn, job, &page)?;
                let ((findings, mut counted), decided) = decide(conn, &fresh)?;
                adoption::stage(conn, job, &fresh, &decided)?;
                counted.push(("customers_walked", page.len() as i64));
                Ok((findings, counted))
            },
        )
        .await
    }

    /// Gathers the statistics of what the walks staged, for the decisions that read the
    /// staged rows in batches.
    pub async fn analyze_staged(&self) -> Result<(), JobError> {
        Ok(db::run(&self.ctx.pool, |conn| Ok(adoption::analyze_staged(conn)?)).await?)
    }
}

/// How a job ended.
#[derive(Debug)]
pub struct Ended {
    pub job: JobRow,
}

impl Ended {
    /// Whether drift remains after the job (for a reconcile's exit code): any drift a dry
    /// run found, or what a repair could not fix.
    pub fn drift_remains(&self) -> bool {
        let counts = self.job.report.as_ref().map(|r| &r["counts"]);
        let count = |kind: &str| {
            counts
                .and_then(|c| c.get(kind))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        if self.job.repair {
            count("unrepaired") > 0
        } else {
            reconcile::DRIFT.iter().map(|k| count(k)).sum::<i64>() > 0
        }
    }
}

/// Runs a claimed job to its end (or until it is lost or this process stops), renewing
/// its lease meanwhile; the job as it ended, or `None` when it was handed back or lost.
pub async fn run(
    ctx: &JobContext,
    job: JobRow,
    stopping: watch::Receiver<bool>,
    observer: &dyn Observer,
) -> anyhow::Result<Option<Ended>> {
    let (id, owner) = (job.id, ctx.owner.clone());
    tracing::info!(job_id = %id, kind = %job.kind, repair = job.repair, phase = %job.phase, "job started");
    let (state_tx, state) = watch::channel(Renewal::Held);
    let renewer = tokio::spawn(renew(
        ctx.pool.clone(),
        id,
        owner.clone(),
        ctx.lease,
        state_tx,
    ));
    let steps = Steps {
        ctx,
        job: job.clone(),
        state,
        stopping,
        observer,
        cancel_seen: std::sync::atomic::AtomicBool::new(false),
    };
    let result = match job.kind {
        JobKind::Import => import::run(&steps).await,
        JobKind::Reconcile => reconcile::run(&steps).await,
    };
    renewer.abort();
    let (status, error) = match result {
        Ok(()) => (JobStatus::Succeeded, None),
        Err(JobError::Cancelled) => (JobStatus::Cancelled, None),
        Err(JobError::Lost) => {
            tracing::warn!(job_id = %id, "job taken over by another consumer; stopping here");
            return Ok(None);
        }
        Err(JobError::Stopping) => {
            db::run(&ctx.pool, move |conn| {
                Ok(jobs::hand_back(conn, id, &owner)?)
            })
            .await?;
            tracing::info!(job_id = %id, "job handed back at its checkpoint for another consumer");
            return Ok(None);
        }
        Err(e) => (JobStatus::Failed, Some(e.to_string())),
    };
    let finished = db::run(&ctx.pool, move |conn| {
        Ok(jobs::finish(conn, id, &owner, status, error.as_deref())?)
    })
    .await?;
    Ok(finished.map(|job| {
        tracing::info!(job_id = %id, status = %job.status, counts = %job.progress, error = job.error.as_deref().unwrap_or(""), "job ended");
        Ended { job }
    }))
}

/// Renews the lease a third of its length before it runs out, until aborted; tells the
/// runner when the job was cancelled or lost.
async fn renew(
    pool: PgPool,
    id: uuid::Uuid,
    owner: String,
    lease: Duration,
    state: watch::Sender<Renewal>,
) {
    loop {
        tokio::time::sleep(lease / 3).await;
        let owner = owner.clone();
        let renewed = db::run(&pool, move |conn| Ok(jobs::renew(conn, id, &owner, lease)?)).await;
        match renewed {
            Ok(renewal) => {
                let _ = state.send(renewal);
                if renewal == Renewal::Lost {
                    return;
                }
            }
            Err(e) => tracing::warn!(job_id = %id, error = %e, "renewing the job's lease failed"),
        }
    }
}

/// Runs the provider's jobs one at a time until shutdown: claims the next queued job (or
/// one whose consumer died) whenever none runs.
pub async fn job_loop(
    ctx: Arc<JobContext>,
    provider: Provider,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        let owner = ctx.owner.clone();
        let lease = ctx.lease;
        let claimed = db::run(&ctx.pool, move |conn| {
            Ok(jobs::claim(conn, provider, &owner, lease)?)
        })
        .await;
        match claimed {
            Ok(Some(job)) => {
                if let Err(e) = run(&ctx, job, shutdown.clone(), &LogObserver).await {
                    tracing::error!(error = %e, "recording a job's end failed; its lease will expire");
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "looking for a job failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}
