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
use crate::providers::{ProviderApi, Salesforce, Stripe};
use crate::subscriber;
use crate::worker::Worker;
use shared::domain::Provider;
use shared::salesforce::SalesforceClient;
use shared::stripe::StripeClient;

/// How long in-flight calls may finish after a stop signal before their tasks are released.
const DRAIN: Duration = Duration::from_secs(10);

/// A running consumer.
pub struct Consumer {
    worker: Arc<Worker>,
    shutdown: watch::Sender<bool>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Consumer {
    /// Connects to the database and starts subscribing and claiming.
    pub async fn start(settings: ConsumerSettings) -> anyhow::Result<Self> {
        let worker = worker(&settings).await?;
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
        tracing::info!(
            owner = %worker.owner,
            topics = ?settings.providers,
            endpoints = ?settings.common.zmq_endpoints,
            concurrency = settings.concurrency,
            "consumer started"
        );
        Ok(Self {
            worker,
            shutdown,
            loops,
        })
    }

    /// Stops claiming, lets in-flight calls finish for a while, releases the rest.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for handle in self.loops {
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
        tracing::info!("consumer stopped");
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
    let url = settings.common.database_url.clone();
    let pool_size = settings.concurrency as u32 + 4;
    let pool = tokio::task::spawn_blocking(move || db::connect(&url, pool_size))
        .await
        .context("database set-up task")??;
    let mut providers: HashMap<Provider, Arc<dyn ProviderApi>> = HashMap::new();
    if let Some(stripe) = &settings.common.stripe {
        let client = StripeClient::new(stripe)?;
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
        let api = Stripe::new(client, writes, reads);
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
    Ok(Arc::new(Worker {
        pool,
        owner,
        providers,
        permits: Arc::new(Semaphore::new(settings.concurrency)),
        concurrency: settings.concurrency,
        max_attempts: settings.max_attempts,
        max_backoff: settings.max_backoff,
        lease: settings.lease,
        in_flight: Mutex::new(HashMap::new()),
    }))
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
