//! `spawn_app()`: the real server on port 0 with its own fresh database, on the shared
//! test stack (`shared::testing`).

use std::net::TcpListener;
use std::time::Duration;

use consumer::startup::Consumer;
use sandbox::{Sandbox, SandboxConfig};
use server::startup::Application;
use shared::config::{SalesforceSettings, ServerSettings};
use shared::testing::{settings, ApiClient, TestDatabase};

/// How long the loop tests wait for an asynchronous effect.
#[allow(dead_code)] // used by the inward tests
pub const WAIT: Duration = Duration::from_secs(60);

pub use shared::testing::{error_of, TOKEN};

/// A running server and its database; the API client's requests are its methods.
pub struct TestApp {
    pub api: ApiClient,
    pub address: String,
    #[allow(dead_code)] // used by the ZeroMQ tests
    pub zmq_endpoint: String,
    pub db: TestDatabase,
    pub client: reqwest::Client,
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

/// Salesforce settings, to enable the second provider (nothing answers them).
pub fn salesforce() -> SalesforceSettings {
    settings::salesforce("http://127.0.0.1:9", "id", "secret")
}

/// Starts the server with Stripe enabled (nothing answers it) and Salesforce not.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the server after `adjust` changed its settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut ServerSettings)) -> TestApp {
    let db = database().await;
    let common = settings::common(&db, "tcp://127.0.0.1:0", "http://127.0.0.1:9");
    let mut settings = settings::server(common, &[]);
    adjust(&mut settings);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    spawn(db, settings, listener).await
}

async fn database() -> TestDatabase {
    shared::telemetry::init(shared::config::LogFormat::Pretty, "warn");
    tokio::task::spawn_blocking(TestDatabase::create)
        .await
        .unwrap()
}

async fn spawn(db: TestDatabase, settings: ServerSettings, listener: TcpListener) -> TestApp {
    let app = Application::build_on(settings, listener)
        .await
        .expect("building the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let zmq_endpoint = app.zmq_endpoint().to_owned();
    tokio::spawn(app.run_until_stopped());
    let api = ApiClient::new(&address);
    TestApp {
        client: api.client.clone(),
        api,
        address,
        zmq_endpoint,
        db,
    }
}

impl TestApp {
    /// A direct connection to the app's database, to check what was written.
    pub fn conn(&self) -> diesel::PgConnection {
        self.db.connect()
    }

    /// Rows in `table`.
    pub fn count(&self, table: &str) -> i64 {
        self.db.count(table)
    }

    /// (customers, tasks) row counts, to assert that nothing was written.
    pub fn counts(&self) -> (i64, i64) {
        (self.count("customers"), self.count("sync_tasks"))
    }
}

/// The inward loop: the server with Stripe in the sandbox, which delivers its signed
/// events to the server's webhook when asked to; consumers on demand.
pub struct Loop {
    pub app: TestApp,
    pub sandbox: Sandbox,
}

impl std::ops::Deref for Loop {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.app
    }
}

/// Starts the sandbox (delivering webhooks when `webhooks`) and the server wired to it.
#[allow(dead_code)] // used by the inward tests
pub async fn spawn_loop(mut config: SandboxConfig, webhooks: bool) -> Loop {
    let db = database().await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    if webhooks {
        config.webhook_url = Some(format!("http://{address}/api/v1/endpoint/stripe"));
    }
    let sandbox = Sandbox::start(config).await.expect("starting the sandbox");
    let common = settings::common(&db, "tcp://127.0.0.1:0", &sandbox.base_url());
    let settings = settings::server(common, &[sandbox.webhook_secret()]);
    let app = spawn(db, settings, listener).await;
    Loop { app, sandbox }
}

#[allow(dead_code)] // used by the inward tests
impl Loop {
    /// An in-process consumer of the loop's providers.
    pub async fn consumer(&self) -> Consumer {
        let common = settings::common(&self.db, &self.zmq_endpoint, &self.sandbox.base_url());
        Consumer::start(settings::consumer(common))
            .await
            .expect("starting a consumer")
    }

    /// Task counts by status.
    pub fn statuses(&self) -> Vec<(String, i64)> {
        self.db.task_statuses()
    }

    /// Waits until every task succeeded and there are `expected` of them.
    pub async fn drained(&self, expected: i64) -> Vec<(String, i64)> {
        self.db.wait_all_succeeded(expected, WAIT).await
    }

    /// Local customers (tombstones included) as (id, name, email, deleted).
    pub fn local_customers(&self) -> Vec<(String, String, String, bool)> {
        self.db.local_customers()
    }
}
