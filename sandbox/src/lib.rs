//! The sandbox: a faithful in-memory subset of Stripe's API (customers, invoices, invoice
//! items, events, idempotency keys, signed webhooks), plus Salesforce Contact upserts, for
//! tests, demos and benchmarks. Start it in-process with [`Sandbox::start`] (port 0 works)
//! or run the `sandbox` binary.

#![recursion_limit = "256"]

mod api;
mod config;
mod control;
mod error;
mod form;
mod routes;
pub mod salesforce;
mod seed;
mod store;
mod webhooks;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;

pub use api::RequestRecord;
pub use config::{random_webhook_secret, Cli, SandboxConfig};
pub use control::ControlError;
pub use seed::SeedError;

use api::{Knobs, Shared};
use error::ApiError;
use form::Params;
use store::Store;

/// A Stripe customer as the sandbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerSnapshot {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub deleted: bool,
    pub created: i64,
}

/// A running sandbox; it stops when dropped or on [`Sandbox::stop`].
pub struct Sandbox {
    addr: SocketAddr,
    webhook_secret: String,
    shared: Arc<Shared>,
    salesforce: Arc<salesforce::SalesforceState>,
    server: actix_web::dev::ServerHandle,
    deliveries: Option<tokio::task::JoinHandle<()>>,
}

impl Sandbox {
    /// Binds, starts serving on a multi-threaded actix server, and starts webhook delivery.
    pub async fn start(config: SandboxConfig) -> anyhow::Result<Sandbox> {
        config.validate()?;
        let listener = TcpListener::bind(config.bind)
            .with_context(|| format!("binding the sandbox to {}", config.bind))?;
        let addr = listener.local_addr()?;
        let mut seeds = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let mut rng = || StdRng::from_rng(&mut seeds).expect("a seeded generator");

        let outbox = config
            .webhook_url
            .as_ref()
            .map(|_| webhooks::Outbox::new(config.duplicate_rate));
        let mut store = Store::new(rng(), outbox.clone());
        store.search_delay = Duration::from_millis(config.search_delay_ms);
        let store = Arc::new(Mutex::new(store));
        let shared = Arc::new(Shared::new(
            store.clone(),
            Knobs::new(&config, rng()),
            outbox.clone(),
        ));
        if config.seed_customers > 0 || config.seed_invoices > 0 {
            seed_store(&shared, config.seed_customers, config.seed_invoices)?;
        }
        let deliveries = match (config.webhook_url.clone(), outbox) {
            (Some(url), Some(outbox)) => {
                let deliverer = webhooks::Deliverer {
                    url,
                    secret: config.webhook_secret.clone(),
                    shuffle: config.shuffle,
                    rng: rng(),
                    outbox,
                    store,
                };
                Some(tokio::spawn(deliverer.run()))
            }
            _ => None,
        };

        let salesforce = Arc::new(salesforce::SalesforceState::default());
        let data = web::Data::new(shared.clone());
        let salesforce_data = web::Data::new(salesforce.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(salesforce_data.clone())
                .app_data(web::PayloadConfig::new(1024 * 1024))
                .configure(salesforce::configure)
                .configure(control::configure)
                .default_service(web::to(api::handle))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        tracing::info!(%addr, webhook_url = ?config.webhook_url, "stripe sandbox listening");
        Ok(Sandbox {
            addr,
            webhook_secret: config.webhook_secret,
            shared,
            salesforce,
            server: handle,
            deliveries,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the SDKs' `api_base`, our `STRIPE_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `whsec_` secret webhooks are signed with.
    pub fn webhook_secret(&self) -> &str {
        &self.webhook_secret
    }

    /// A call to this sandbox as another Stripe client (the Dashboard) would make it, for
    /// tests; panics unless it succeeds.
    pub async fn dashboard(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> serde_json::Value {
        let response = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base_url()))
            .bearer_auth("sk_test_dashboard")
            .form(form)
            .send()
            .await
            .expect("the sandbox answers");
        let status = response.status();
        assert!(status.is_success(), "{path}: {status}");
        response.json().await.expect("a JSON answer")
    }

    /// How many events of type `kind` the sandbox created.
    pub fn count_events(&self, kind: &str) -> usize {
        self.events().iter().filter(|e| e["type"] == kind).count()
    }

    /// The live (not deleted) customers carrying our metadata, by the local id they name:
    /// more than one under an id is a duplicate.
    pub fn live_by_local_id(&self) -> BTreeMap<String, Vec<CustomerSnapshot>> {
        let mut by_local = BTreeMap::<String, Vec<CustomerSnapshot>>::new();
        for customer in self.customers().into_iter().filter(|c| !c.deleted) {
            if let Some(local) = customer.metadata.get(shared::stripe::METADATA_KEY) {
                by_local.entry(local.clone()).or_default().push(customer);
            }
        }
        by_local
    }

    /// Every customer, deleted ones included, oldest first.
    pub fn customers(&self) -> Vec<CustomerSnapshot> {
        let store = self
            .shared
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        store
            .customers
            .oldest_first()
            .map(|c| CustomerSnapshot {
                id: c.id.clone(),
                name: c.name.clone(),
                email: c.email.clone(),
                metadata: c.metadata.clone(),
                deleted: c.deleted,
                created: c.created,
            })
            .collect()
    }

    /// Every invoice as Stripe renders it, oldest first.
    pub fn invoices(&self) -> Vec<serde_json::Value> {
        let store = self
            .shared
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        store
            .invoices
            .oldest_first()
            .map(|i| i.to_json(&store))
            .collect()
    }

    /// Every event, oldest first (`pending_webhooks` is 0 once delivered).
    pub fn events(&self) -> Vec<serde_json::Value> {
        let store = self
            .shared
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        store.events.oldest_first().cloned().collect()
    }

    /// Every API request with its answer, oldest first.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the share of requests failing before execution.
    pub fn set_fail_rate(&self, rate: f64) {
        self.shared
            .knobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fail_rate = rate;
    }

    /// Changes the share of changes failing after commit.
    pub fn set_fail_after_commit_rate(&self, rate: f64) {
        self.shared
            .knobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fail_after_commit_rate = rate;
    }

    /// Changes the latency added to every response.
    pub fn set_latency_ms(&self, latency_ms: u64) {
        self.shared
            .knobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .latency_ms = latency_ms;
    }

    /// Answers the next `count` API requests with this Stripe error before anything
    /// executes (nothing stored under the key); the error type follows the status.
    pub fn fail_next(&self, status: u16, code: &str, message: &str, count: usize) {
        let mut knobs = self
            .shared
            .knobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for _ in 0..count {
            knobs
                .fail_next
                .push_back(ApiError::injected(status, code, message));
        }
    }

    /// The Salesforce org served under `/services/...`.
    pub fn salesforce(&self) -> &salesforce::SalesforceState {
        &self.salesforce
    }

    /// Webhook deliveries queued, in flight or waiting for a retry.
    pub fn pending_webhooks(&self) -> usize {
        self.shared.pending_deliveries()
    }

    /// Waits until no webhook delivery is pending; false on timeout.
    pub async fn wait_webhooks_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.pending_deliveries() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Holds every webhook delivery, new ones and retries, until
    /// [`Sandbox::resume_webhooks`]; events are still created and listed, and held
    /// deliveries count as pending. A delivery already being sent finishes.
    pub fn pause_webhooks(&self) {
        control::pause_webhooks(&self.shared);
    }

    /// Lets the held deliveries go out, in order.
    pub fn resume_webhooks(&self) {
        control::resume_webhooks(&self.shared);
    }

    /// Forgets every event created so far, as if 30 days had passed (`/v1/events` no longer
    /// lists them, retrieving one is a 404), and drops their pending deliveries; returns how
    /// many events were forgotten.
    pub fn expire_events(&self) -> usize {
        control::expire_events(&self.shared).0
    }

    /// Forgets every idempotency key's stored answer, as if Stripe's 24 hours had passed;
    /// returns how many were forgotten.
    pub fn expire_idempotency_keys(&self) -> usize {
        self.shared.expire_idempotency_keys()
    }

    /// Changes a customer as `POST /v1/customers/{id}` with these form fields would (same
    /// validation; `metadata[k]=` unsets a key), without creating an event; returns the
    /// customer as Stripe renders it.
    pub fn silent_update(
        &self,
        id: &str,
        form: &[(&str, &str)],
    ) -> Result<serde_json::Value, ControlError> {
        let pairs = form
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let params = Params::parse(pairs)?;
        Ok(control::silent_update(&self.shared, id, &params)?)
    }

    /// Adds `customers` customers ("Seed Customer N", `seedN@example.com`) and `invoices`
    /// invoices spread over them (paid and open, one item each), older than anything
    /// already there and than 30 days of events, without any event.
    pub fn seed(&self, customers: usize, invoices: usize) -> Result<(), SeedError> {
        seed_store(&self.shared, customers, invoices)
    }

    /// Stops serving (finishing requests under way) and stops webhook delivery.
    pub async fn stop(mut self) {
        if let Some(deliveries) = self.deliveries.take() {
            deliveries.abort();
        }
        self.server.stop(true).await;
    }
}

/// Seeds under the store's lock and logs what it made and how long it took.
fn seed_store(shared: &Shared, customers: usize, invoices: usize) -> Result<(), SeedError> {
    let started = Instant::now();
    let mut store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
    seed::seed(&mut store, customers, invoices)?;
    tracing::info!(
        customers,
        invoices,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "seeded the account (no events)"
    );
    Ok(())
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(deliveries) = self.deliveries.take() {
            deliveries.abort();
        }
        // Sends the stop command at once; the returned future only waits for completion.
        drop(self.server.stop(false));
    }
}
