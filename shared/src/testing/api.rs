//! A typed client for customer-sync's HTTP API, as tests and the benchmark call it.

use std::time::Duration;

use serde_json::{json, Value};

/// The API of one running server, called with its token.
#[derive(Clone)]
pub struct ApiClient {
    /// `http://host:port`.
    pub base_url: String,
    /// The bearer token.
    pub token: String,
    /// The HTTP client (for requests without the token, too).
    pub client: reqwest::Client,
}

impl ApiClient {
    /// A client for the server at `base_url`, with the test token.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            token: super::TOKEN.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// A request to `path` with the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.token)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> reqwest::Response {
        self.send(self.request(reqwest::Method::PATCH, path).json(body))
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        request.send().await.expect("the server answers")
    }

    /// Creates a customer and asserts the 202; answers the body.
    pub async fn create_customer(&self, id: &str, name: &str, email: &str) -> Value {
        let body = json!({"id": id, "name": name, "email": email});
        accepted(self.post("/api/v1/customers", &body).await, id).await
    }

    /// Changes a customer and asserts the 202; answers the body.
    pub async fn update_customer(&self, id: &str, body: &Value) -> Value {
        accepted(
            self.patch(&format!("/api/v1/customers/{id}"), body).await,
            id,
        )
        .await
    }

    /// Deletes a customer and asserts the 202; answers the body.
    pub async fn delete_customer(&self, id: &str) -> Value {
        accepted(self.delete(&format!("/api/v1/customers/{id}")).await, id).await
    }

    /// `GET /api/v1/customers/{id}`'s body.
    pub async fn customer(&self, id: &str) -> Value {
        let response = self.get(&format!("/api/v1/customers/{id}")).await;
        response.json().await.expect("a JSON customer")
    }

    /// `GET /api/v1/tasks/{id}`'s body.
    pub async fn task(&self, id: &str) -> Value {
        let response = self.get(&format!("/api/v1/tasks/{id}")).await;
        response.json().await.expect("a JSON task")
    }

    /// Waits until `GET /api/v1/health` answers 200; `false` after `timeout`.
    pub async fn wait_healthy(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let health = self
                .client
                .get(format!("{}/api/v1/health", self.base_url))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

async fn accepted(response: reqwest::Response, id: &str) -> Value {
    assert_eq!(response.status(), 202, "changing {id}");
    response.json().await.expect("a JSON change")
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
