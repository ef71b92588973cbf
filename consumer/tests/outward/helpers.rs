//! A stack per test: fresh database, sandbox, server on port 0, consumers in-process or as
//! the real binary.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use consumer::startup::Consumer;
use diesel::prelude::*;
use sandbox::{Sandbox, SandboxConfig};
use serde_json::{json, Value};
use server::startup::Application;
use shared::config::{
    CommonSettings, ConsumerSettings, LogFormat, SalesforceSettings, ServerSettings, StripeSettings,
};
use shared::domain::Provider;
use shared::testing::TestDatabase;

pub const TOKEN: &str = "test-token-0123456789abcdef";
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Stack {
    pub db: TestDatabase,
    pub sandbox: Sandbox,
    pub address: String,
    pub zmq_endpoint: String,
    pub client: reqwest::Client,
    /// Whether the salesforce provider is enabled.
    pub salesforce: bool,
}

pub fn common(db: &TestDatabase, sandbox: &Sandbox, zmq: &str, salesforce: bool) -> CommonSettings {
    CommonSettings {
        database_url: db.url.clone().into(),
        zmq_endpoints: vec![zmq.to_owned()],
        stripe: Some(StripeSettings {
            api_key: "sk_test_customer_sync".to_owned().into(),
            api_base: sandbox.base_url(),
        }),
        salesforce: salesforce.then(|| SalesforceSettings {
            login_url: sandbox.base_url(),
            client_id: sandbox::salesforce::CLIENT_ID.to_owned().into(),
            client_secret: sandbox::salesforce::CLIENT_SECRET.to_owned().into(),
            api_version: "66.0".into(),
            external_id_field: "Customer_Id__c".into(),
        }),
        log_format: LogFormat::Pretty,
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
    shared::telemetry::init(LogFormat::Pretty, "warn");
    let db = tokio::task::spawn_blocking(TestDatabase::create)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    if webhooks {
        sandbox_config.webhook_url = Some(format!("{address}/api/v1/endpoint/stripe"));
    }
    let sandbox = Sandbox::start(sandbox_config)
        .await
        .expect("starting the sandbox");
    let settings = ServerSettings {
        common: common(&db, &sandbox, "tcp://127.0.0.1:0", salesforce),
        http_bind: "127.0.0.1:0".parse().unwrap(),
        api_token: Some(TOKEN.to_owned().into()),
        webhook_secrets: vec![sandbox.webhook_secret().to_owned().into()],
        webhook_tolerance: Duration::from_secs(300),
        http_max_connections: 2048,
    };
    let app = Application::build_on(settings, listener)
        .await
        .expect("building the server");
    let zmq_endpoint = app.zmq_endpoint().to_owned();
    tokio::spawn(app.run_until_stopped());
    Stack {
        db,
        sandbox,
        address,
        zmq_endpoint,
        client: reqwest::Client::new(),
        salesforce,
    }
}

impl Stack {
    /// Consumer settings for the stripe topic with a fast sweep.
    pub fn consumer_settings(&self) -> ConsumerSettings {
        let mut providers = vec![Provider::Stripe];
        if self.salesforce {
            providers.push(Provider::Salesforce);
        }
        ConsumerSettings {
            common: common(&self.db, &self.sandbox, &self.zmq_endpoint, self.salesforce),
            providers,
            concurrency: 8,
            stripe_max_rps: 1000,
            max_attempts: 12,
            sweep_interval: Duration::from_millis(200),
            lease: Duration::from_secs(30),
            // Failure tests draw long losing streaks; keep their retries quick.
            max_backoff: Duration::from_millis(500),
        }
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

    /// The real `consumer` binary, started.
    pub fn consumer_process(&self, extra_env: &[(&str, &str)]) -> Child {
        self.consumer_command(extra_env)
            .spawn()
            .expect("starting the consumer binary")
    }

    /// The real `consumer` binary, ready to start.
    pub fn consumer_command(&self, extra_env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_consumer"));
        command
            .args(["--topic", "stripe"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.db.url)
            .env("ZMQ_PUB_ENDPOINT", &self.zmq_endpoint)
            .env("STRIPE_API_KEY", "sk_test_customer_sync")
            .env("STRIPE_API_BASE", self.sandbox.base_url())
            .env("STRIPE_MAX_RPS", "1000")
            .env("CONSUMER_SWEEP_INTERVAL_MS", "200")
            .env("CONSUMER_BACKOFF_MAX_MS", "500")
            .env("RUST_LOG", "warn")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            command.env(k, v);
        }
        command
    }

    /// The consumers that completed tasks (the lease owner is kept on success).
    pub fn completed_by(&self) -> std::collections::BTreeSet<String> {
        use shared::db::schema::sync_tasks::dsl::*;
        sync_tasks
            .filter(status.eq("succeeded"))
            .select(lease_owner)
            .load::<Option<String>>(&mut self.db.connect())
            .unwrap()
            .into_iter()
            .flatten()
            .collect()
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(TOKEN)
    }

    pub async fn create(&self, id: &str, name: &str, email: &str) -> Value {
        let response = self
            .request(reqwest::Method::POST, "/api/v1/customers")
            .json(&json!({"id": id, "name": name, "email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        response.json().await.unwrap()
    }

    pub async fn patch(&self, id: &str, body: Value) -> Value {
        let response = self
            .request(reqwest::Method::PATCH, &format!("/api/v1/customers/{id}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        response.json().await.unwrap()
    }

    pub async fn delete(&self, id: &str) -> Value {
        let response = self
            .request(reqwest::Method::DELETE, &format!("/api/v1/customers/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        response.json().await.unwrap()
    }

    pub async fn customer(&self, id: &str) -> Value {
        self.request(reqwest::Method::GET, &format!("/api/v1/customers/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn task(&self, id: &str) -> Value {
        self.request(reqwest::Method::GET, &format!("/api/v1/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Task counts by status.
    pub fn statuses(&self) -> Vec<(String, i64)> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            status: String,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.db.connect();
        diesel::sql_query(
            "SELECT status, count(*) AS n FROM sync_tasks GROUP BY status ORDER BY status",
        )
        .load::<Row>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|r| (r.status, r.n))
        .collect()
    }

    /// Waits until every task is finished, then returns the counts.
    pub async fn drained(&self, expect_succeeded: i64) -> Vec<(String, i64)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let statuses = self.statuses();
            if statuses == [("succeeded".to_owned(), expect_succeeded)] {
                return statuses;
            }
            if tokio::time::Instant::now() >= deadline {
                let open: Vec<_> = shared::db::schema::sync_tasks::table
                    .filter(shared::db::schema::sync_tasks::status.ne("succeeded"))
                    .select((
                        shared::db::schema::sync_tasks::customer_id,
                        shared::db::schema::sync_tasks::status,
                        shared::db::schema::sync_tasks::attempts,
                        shared::db::schema::sync_tasks::next_attempt_at,
                        shared::db::schema::sync_tasks::last_error,
                    ))
                    .load::<(
                        String,
                        String,
                        i32,
                        chrono::DateTime<chrono::Utc>,
                        Option<String>,
                    )>(&mut self.db.connect())
                    .unwrap();
                panic!("tasks not drained: {statuses:?}; open: {open:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A call to the sandbox Stripe, as another Stripe client (the Dashboard) would make it.
    pub async fn stripe(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> Value {
        let response = self
            .client
            .request(method, format!("{}{path}", self.sandbox.base_url()))
            .bearer_auth("sk_test_dashboard")
            .form(form)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// The most attempts any task of `provider` took.
    pub fn max_attempts(&self, provider: &str) -> i32 {
        use shared::db::schema::sync_tasks::dsl;
        dsl::sync_tasks
            .filter(dsl::provider.eq(provider))
            .select(diesel::dsl::max(dsl::attempts))
            .first::<Option<i32>>(&mut self.db.connect())
            .unwrap()
            .unwrap_or(0)
    }

    /// Sandbox events of one type.
    pub fn count_events(&self, kind: &str) -> usize {
        self.sandbox
            .events()
            .iter()
            .filter(|e| e["type"] == kind)
            .count()
    }

    /// Local customers (tombstones included) as (id, name, email, deleted).
    pub fn local_customers(&self) -> Vec<(String, String, String, bool)> {
        use shared::db::schema::customers::dsl::*;
        customers
            .select((id, name, email, deleted_at.is_not_null()))
            .order(id)
            .load(&mut self.db.connect())
            .unwrap()
    }

    /// Live (not deleted) sandbox customers carrying each local id.
    pub fn sandbox_ids_by_local_id(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut by_local = std::collections::BTreeMap::<String, Vec<String>>::new();
        for c in self.sandbox.customers() {
            if c.deleted {
                continue;
            }
            if let Some(local) = c.metadata.get("customer_sync_id") {
                by_local
                    .entry(local.clone())
                    .or_default()
                    .push(c.id.clone());
            }
        }
        by_local
    }
}
