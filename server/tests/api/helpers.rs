//! `spawn_app()`: the real server on port 0 with its own fresh database.

use std::net::TcpListener;
use std::time::Duration;

use diesel::prelude::*;
use serde_json::Value;
use server::startup::Application;
use shared::config::{
    CommonSettings, LogFormat, SalesforceSettings, ServerSettings, StripeSettings,
};
use shared::testing::TestDatabase;

/// The API token every test app uses.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A running server and its database.
pub struct TestApp {
    pub address: String,
    #[allow(dead_code)] // used by the outward-sync tests
    pub zmq_endpoint: String,
    pub db: TestDatabase,
    pub client: reqwest::Client,
}

/// The settings a test app starts from: Stripe enabled, Salesforce not.
pub fn test_settings(db: &TestDatabase) -> ServerSettings {
    ServerSettings {
        common: CommonSettings {
            database_url: db.url.clone().into(),
            zmq_endpoints: vec!["tcp://127.0.0.1:0".into()],
            stripe: Some(StripeSettings {
                api_key: "sk_test_unused".to_owned().into(),
                api_base: "http://127.0.0.1:9".into(),
            }),
            salesforce: None,
            log_format: LogFormat::Pretty,
        },
        http_bind: "127.0.0.1:0".parse().unwrap(),
        api_token: Some(TOKEN.to_owned().into()),
        webhook_secrets: vec![],
        webhook_tolerance: Duration::from_secs(300),
        http_max_connections: 2048,
    }
}

/// Salesforce settings, to enable the second provider.
pub fn salesforce() -> SalesforceSettings {
    SalesforceSettings {
        login_url: "http://127.0.0.1:9".into(),
        client_id: "id".to_owned().into(),
        client_secret: "secret".to_owned().into(),
        api_version: "66.0".into(),
        external_id_field: "Customer_Id__c".into(),
    }
}

/// Starts the server with Stripe enabled.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the server after `adjust` changed its settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut ServerSettings)) -> TestApp {
    shared::telemetry::init(LogFormat::Pretty, "warn");
    let db = tokio::task::spawn_blocking(TestDatabase::create)
        .await
        .unwrap();
    let mut settings = test_settings(&db);
    adjust(&mut settings);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let app = Application::build_on(settings, listener)
        .await
        .expect("building the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let zmq_endpoint = app.zmq_endpoint().to_owned();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        zmq_endpoint,
        db,
        client: reqwest::Client::new(),
    }
}

impl TestApp {
    /// A request to `path` with the API token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(TOKEN)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, path: &str, body: &Value) -> reqwest::Response {
        self.request(reqwest::Method::PATCH, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::DELETE, path)
            .send()
            .await
            .unwrap()
    }

    /// Creates a customer and asserts the 202.
    pub async fn create_customer(&self, id: &str, name: &str, email: &str) -> Value {
        let response = self
            .post(
                "/api/v1/customers",
                &serde_json::json!({"id": id, "name": name, "email": email}),
            )
            .await;
        assert_eq!(response.status(), 202, "creating {id}");
        response.json().await.unwrap()
    }

    /// A direct connection to the app's database, to check what was written.
    pub fn conn(&self) -> PgConnection {
        self.db.connect()
    }

    /// Rows in `table`.
    pub fn count(&self, table: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result::<Count>(&mut self.conn())
            .unwrap()
            .n
    }

    /// (customers, tasks) row counts, to assert that nothing was written.
    pub fn counts(&self) -> (i64, i64) {
        (self.count("customers"), self.count("sync_tasks"))
    }
}

/// Asserts the JSON error shape and returns (code, field).
pub async fn error_of(response: reqwest::Response) -> (String, Option<String>) {
    let body: Value = response.json().await.expect("error bodies are JSON");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (
        error["code"].as_str().expect("error code").to_owned(),
        error["field"].as_str().map(str::to_owned),
    )
}
