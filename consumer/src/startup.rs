//! Wiring: the pool, the provider clients, one SUB socket per server endpoint and one claim
//! loop per topic; graceful shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use shared::config::ConsumerSettings;
use shared::db;
use tokio::sync::{watch, Notify, Semaphore};

use crate::budget::Budget;
use crate::catch_up::CatchUp;
use crate::jobs::{self, JobContext, Reader};
use crate::providers::{ProviderApi, Salesforce, Stripe};
use crate::subscriber;
use crate::worker::Worker;
use shared::domain::Provider;
use shared::salesforce::SalesforceClient;
use shared::stripe::StripeClient;

/// How long in-flight calls may finish after a stop signal before their tasks are released.
const DRAIN: Duration = Duration::from_secs(10);
/// How often the reconcile schedule is looked at.
const SCHEDULE_CHECK: Duration = Duration::from_secs(60);

/// A running consumer.
pub struct Consumer {
    worker: Arc<Worker>,
    metrics: Option<crate::metrics::MetricsServer>,
    shutdown: watch::Sender<bool>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Consumer {
    /// Connects to the database and starts subscribing and claiming.
    pub async fn start(settings: ConsumerSettings) -> anyhow::Result<Self> {
        let metrics = match settings.metrics_bind {
            Some(bind) => Some(crate::metrics::MetricsServer::start(bind)?),
            None => None,
        };
        let parts = parts(&settings).await?;
        let worker = parts.worker.clone();
        let (shutdown, stop) = watch::channel(false);
        let doorbells: Arc<HashMap<_, _>> = Arc::new(
            settings
                .providers
                .iter()
                .map(|p| (*p, Arc::new(Notify::new())))
                .collect(),
        );
        let mut loops = Vec::new();
        for endpoint in &settings.common.zmq_endpoints {
            let (endpoint, doorbells, stop) = (endpoint.clone(), doorbells.clone(), stop.clone());
            loops.push(tokio::task::spawn_blocking(move || {
                subscriber::subscribe(endpoint, doorbells, stop)
            }));
        }
        for (provider, bell) in doorbells.iter() {
            loops.push(tokio::spawn(worker.clone().claim_loop(
                *provider,
                bell.clone(),
                settings.sweep_interval,
                stop.clone(),
            )));
        }
        let serves_stripe = settings.providers.contains(&Provider::Stripe);
        if let (true, Some(ctx)) = (serves_stripe, job_context(&settings, &parts)) {
            let ctx = Arc::new(ctx);
            loops.push(tokio::spawn(jobs::job_loop(
                ctx.clone(),
                Provider::Stripe,
                stop.clone(),
            )));
            if let Some(every) = settings.events_poll {
                let catch_up = CatchUp {
                    pool: ctx.pool.clone(),
                    reader: ctx.reader.clone(),
                    owner: ctx.owner.clone(),
                    providers: ctx.providers.clone(),
                    every,
                };
                loops.push(tokio::spawn(catch_up.run(stop.clone())));
            }
            if let Some(every) = settings.reconcile_interval {
                loops.push(tokio::spawn(reconcile_schedule(
                    ctx.pool.clone(),
                    every,
                    stop.clone(),
                )));
            }
        }
        if let Some(days) = settings.retention_days {
            let retention = crate::retention::Retention::new(worker.pool.clone(), days);
            loops.push(tokio::spawn(retention.run(stop.clone())));
        }
        tracing::info!(
            owner = %worker.owner,
            topics = ?settings.providers,
            endpoints = ?settings.common.zmq_endpoints,
            concurrency = settings.concurrency,
            "consumer started"
        );
        Ok(Self {
            worker,
            metrics,
            shutdown,
            loops,
        })
    }

    /// Where `GET /metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr)
    }

    /// Stops claiming, lets in-flight calls finish for a while, releases the rest.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for handle in std::mem::take(&mut self.loops) {
            let _ = handle.await;
        }
        let drained = tokio::time::timeout(
            DRAIN,
            self.worker
                .permits
                .acquire_many(self.worker.concurrency as u32),
        )
        .await;
        if drained.is_err() {
            self.worker.release_in_flight().await;
        }
        if let Some(metrics) = &self.metrics {
            metrics.stop().await;
        }
        tracing::info!("consumer stopped");
    }
}

impl Drop for Consumer {
    /// A consumer dropped without [`Consumer::shutdown`] (a test that panicked) still
    /// stops its loops: a subscriber thread left running would keep its runtime from
    /// shutting down.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "consumer".into())
}

/// Runs every task of the consumer's providers until none is pending or in flight (those
/// waiting for a retry included), without ZeroMQ, then stops; answers how many executions
/// it took. A deterministic drain for tests and one-off runs, as crates.io's worker runner
/// does with `shutdown_when_queue_empty`.
pub async fn drain(settings: ConsumerSettings) -> anyhow::Result<usize> {
    let worker = worker(&settings).await?;
    let mut executed = 0;
    for provider in &settings.providers {
        executed += worker.drain(*provider).await?;
    }
    Ok(executed)
}

/// The pool, the provider clients and the lease owner name of one consumer process.
async fn worker(settings: &ConsumerSettings) -> anyhow::Result<Arc<Worker>> {
    Ok(parts(settings).await?.worker)
}

/// What one consumer process runs: the worker, and for Stripe the background reader
/// (jobs and the catch-up) on the account's shared read budget.
pub struct Parts {
    pub worker: Arc<Worker>,
    pub stripe_reader: Option<Arc<Reader>>,
}

/// Connects and opens the provider clients and budgets.
pub async fn parts(settings: &ConsumerSettings) -> anyhow::Result<Parts> {
    let url = settings.common.database_url.clone();
    // Calls in flight, plus the claim loops, a job, the catch-up and a retention pass
    // (which holds its connection, and the lock on it, for the whole pass).
    let pool_size = settings.concurrency as u32 + 7;
    let pool = tokio::task::spawn_blocking(move || db::connect(&url, pool_size))
        .await
        .context("database set-up task")??;
    let mut providers: HashMap<Provider, Arc<dyn ProviderApi>> = HashMap::new();
    let mut stripe_reader = None;
    if let Some(stripe) = &settings.common.stripe {
        let key = stripe.api_key.expose_secret();
        let open = |class: &'static str, rps| {
            let pool = pool.clone();
            async move {
                Budget::open(pool, class, key, rps)
                    .await
                    .with_context(|| format!("opening the shared {class} rate budget"))
            }
        };
        let (writes, reads) = match settings.stripe_read_write_rps {
            None => {
                let budget = Arc::new(open("stripe", settings.stripe_max_rps).await?);
                (budget.clone(), budget)
            }
            Some((read, write)) => (
                Arc::new(open("stripe-write", write).await?),
                Arc::new(open("stripe-read", read).await?),
            ),
        };
        stripe_reader = Some(Arc::new(Reader::new(
            StripeClient::new(stripe)?,
            reads.clone(),
        )));
        let api = Stripe::new(StripeClient::new(stripe)?, writes, reads);
        providers.insert(Provider::Stripe, Arc::new(api));
    }
    if let Some(salesforce) = &settings.common.salesforce {
        let api = Salesforce::new(SalesforceClient::new(salesforce)?);
        providers.insert(Provider::Salesforce, Arc::new(api));
    }
    let owner = format!(
        "{}-{}-{}",
        hostname(),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let worker = Arc::new(Worker {
        pool,
        owner,
        providers,
        permits: Arc::new(Semaphore::new(settings.concurrency)),
        concurrency: settings.concurrency,
        max_attempts: settings.max_attempts,
        max_backoff: settings.max_backoff,
        lease: settings.lease,
        in_flight: Mutex::new(HashMap::new()),
        adopt_by_email: settings.adopt_by_email,
    });
    Ok(Parts {
        worker,
        stripe_reader,
    })
}

/// The context jobs run in, for a consumer with Stripe.
pub fn job_context(settings: &ConsumerSettings, parts: &Parts) -> Option<JobContext> {
    let reader = parts.stripe_reader.clone()?;
    Some(JobContext {
        pool: parts.worker.pool.clone(),
        reader,
        owner: parts.worker.owner.clone(),
        providers: settings.common.enabled_providers(),
        lease: settings.lease,
        page_size: 100,
    })
}

/// Queues a repairing reconcile whenever the last one is older than `every`, until
/// shutdown (looked at every minute; several consumers agree through PostgreSQL).
async fn reconcile_schedule(
    pool: db::PgPool,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let queued = db::run(&pool, move |conn| {
            Ok(shared::db::jobs::queue_if_due(
                conn,
                Provider::Stripe,
                every,
            )?)
        })
        .await;
        match queued {
            Ok(Some(job)) => tracing::info!(job_id = %job.id, "scheduled reconcile queued"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "queueing the scheduled reconcile failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SCHEDULE_CHECK) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
