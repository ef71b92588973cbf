//! A stack per test on the shared test stack (`shared::testing`): a fresh database, the
//! sandbox, the server on port 0, and consumers in-process or as the real binary.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use consumer::startup::Consumer;
use sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;
use server::startup::Application;
use shared::config::{CommonSettings, ConsumerSettings};
use shared::testing::{processes, settings, ApiClient, TestDatabase};

pub const WAIT: Duration = Duration::from_secs(60);

/// The database, the sandbox and the server; the API client's requests are its methods.
pub struct Stack {
    pub db: TestDatabase,
    pub sandbox: Sandbox,
    pub api: ApiClient,
    pub zmq_endpoint: String,
    /// Whether the salesforce provider is enabled.
    pub salesforce: bool,
}

impl std::ops::Deref for Stack {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

/// Starts the database, the sandbox (configured by `sandbox_config`) and the server.
pub async fn stack(sandbox_config: SandboxConfig) -> Stack {
    stack_with(sandbox_config, false).await
}

/// Same, with the sandbox delivering its events to the server's webhook when `webhooks`.
pub async fn stack_with(sandbox_config: SandboxConfig, webhooks: bool) -> Stack {
    stack_full(sandbox_config, webhooks, false).await
}

/// Same, with the salesforce provider enabled against the sandbox's Salesforce mode.
pub async fn stack_full(
    mut sandbox_config: SandboxConfig,
    webhooks: bool,
    salesforce: bool,
) -> Stack {
    shared::telemetry::init(shared::config::LogFormat::Pretty, "warn");
    let db = tokio::task::spawn_blocking(TestDatabase::create)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = ApiClient::new(format!("http://{}", listener.local_addr().unwrap()));
    if webhooks {
        sandbox_config.webhook_url = Some(format!("{}/api/v1/endpoint/stripe", api.base_url));
    }
    let sandbox = Sandbox::start(sandbox_config)
        .await
        .expect("starting the sandbox");
    let common = common(&db, &sandbox, "tcp://127.0.0.1:0", salesforce);
    let settings = settings::server(common, &[sandbox.webhook_secret()]);
    let app = Application::build_on(settings, listener)
        .await
        .expect("building the server");
    let zmq_endpoint = app.zmq_endpoint().to_owned();
    tokio::spawn(app.run_until_stopped());
    Stack {
        db,
        sandbox,
        api,
        zmq_endpoint,
        salesforce,
    }
}

/// The stack's database, Stripe in the sandbox, and its Salesforce mode when `salesforce`.
fn common(db: &TestDatabase, sandbox: &Sandbox, zmq: &str, salesforce: bool) -> CommonSettings {
    let mut common = settings::common(db, zmq, &sandbox.base_url());
    common.salesforce = salesforce.then(|| {
        let (id, secret) = (
            sandbox::salesforce::CLIENT_ID,
            sandbox::salesforce::CLIENT_SECRET,
        );
        settings::salesforce(&sandbox.base_url(), id, secret)
    });
    common
}

impl Stack {
    /// Consumer settings for the stack's providers with a fast sweep.
    pub fn consumer_settings(&self) -> ConsumerSettings {
        let common = common(&self.db, &self.sandbox, &self.zmq_endpoint, self.salesforce);
        settings::consumer(common)
    }

    /// An in-process consumer.
    pub async fn consumer(&self) -> Consumer {
        self.consumer_with(|_| {}).await
    }

    pub async fn consumer_with(&self, adjust: impl FnOnce(&mut ConsumerSettings)) -> Consumer {
        let mut settings = self.consumer_settings();
        adjust(&mut settings);
        Consumer::start(settings)
            .await
            .expect("starting a consumer")
    }

    /// Runs every task to the end (retries included) with an in-process consumer that
    /// stops when none is left: no claim loop to wait for. Answers the executions.
    pub async fn drain(&self) -> usize {
        consumer::startup::drain(self.consumer_settings())
            .await
            .expect("draining the queue")
    }

    /// The real `consumer` binary, started.
    pub fn consumer_process(&self, extra_env: &[(&str, &str)]) -> Child {
        self.consumer_command(extra_env)
            .spawn()
            .expect("starting the consumer binary")
    }

    /// The real `consumer` binary, ready to start.
    pub fn consumer_command(&self, extra_env: &[(&str, &str)]) -> Command {
        let base = self.sandbox.base_url();
        let exe = env!("CARGO_BIN_EXE_consumer");
        let mut command = processes::consumer(exe, &self.db.url, &self.zmq_endpoint, &base);
        command
            .env("STRIPE_MAX_RPS", "1000")
            .env("CONSUMER_SWEEP_INTERVAL_MS", "200")
            .env("CONSUMER_BACKOFF_MAX_MS", "500")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .envs(extra_env.iter().copied());
        command
    }

    /// Creates a customer (202).
    pub async fn create(&self, id: &str, name: &str, email: &str) -> Value {
        self.api.create_customer(id, name, email).await
    }

    /// Changes a customer (202).
    pub async fn patch(&self, id: &str, body: Value) -> Value {
        self.api.update_customer(id, &body).await
    }

    /// Deletes a customer (202).
    pub async fn delete(&self, id: &str) -> Value {
        self.api.delete_customer(id).await
    }

    /// Task counts by status.
    pub fn statuses(&self) -> Vec<(String, i64)> {
        self.db.task_statuses()
    }

    /// Waits until every task is finished, then returns the counts.
    pub async fn drained(&self, expect_succeeded: i64) -> Vec<(String, i64)> {
        self.db.wait_all_succeeded(expect_succeeded, WAIT).await
    }

    /// Creates a Stripe customer straight at the sandbox under an idempotency key, as an
    /// earlier attempt of a task (its key `customer-sync-{task}`) whose answer was lost
    /// would have; the status.
    pub async fn stripe_create_with_key(&self, key: &str, form: &[(&str, &str)]) -> u16 {
        reqwest::Client::new()
            .post(format!("{}/v1/customers", self.sandbox.base_url()))
            .bearer_auth(shared::testing::settings::STRIPE_KEY)
            .header("Idempotency-Key", key)
            .form(form)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Retries a dead task through the API; the status.
    pub async fn retry(&self, task: &str) -> reqwest::StatusCode {
        self.request(
            reqwest::Method::POST,
            &format!("/api/v1/tasks/{task}/retry"),
        )
        .send()
        .await
        .unwrap()
        .status()
    }

    /// How many `method path` requests the sandbox received.
    pub fn sandbox_requests(&self, method: &str, path: &str) -> usize {
        self.sandbox
            .request_log()
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    /// Live (not deleted) sandbox customers' ids, by the local id they carry.
    pub fn sandbox_ids_by_local_id(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        self.sandbox
            .live_by_local_id()
            .into_iter()
            .map(|(local, customers)| (local, customers.into_iter().map(|c| c.id).collect()))
            .collect()
    }
}
