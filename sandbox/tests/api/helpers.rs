//! A sandbox per test, a small Stripe-speaking client, a webhook receiver and a bounded poll.

use std::collections::VecDeque;
use std::future::Future;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;

pub const KEY: &str = "sk_test_sandbox_tests";
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `check` until it yields a value; panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An answer: status, headers and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `error.type`, `error.code` of a Stripe error body.
    pub fn error(&self) -> (&str, &str) {
        (
            self.body["error"]["type"].as_str().unwrap_or(""),
            self.body["error"]["code"].as_str().unwrap_or(""),
        )
    }

    pub fn id(&self) -> String {
        self.body["id"].as_str().expect("an id").to_owned()
    }
}

/// Speaks to the sandbox as the SDKs do: form bodies, Bearer key.
#[derive(Clone)]
pub struct Stripe {
    pub base: String,
    pub http: reqwest::Client,
}

impl Stripe {
    pub fn new(sandbox: &Sandbox) -> Self {
        Self {
            base: sandbox.base_url(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the sandbox answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body: {text}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(KEY)
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.send(self.request(reqwest::Method::POST, path).form(form))
            .await
    }

    pub async fn post_with_key(&self, path: &str, form: &[(&str, &str)], key: &str) -> Answer {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header("Idempotency-Key", key)
                .form(form),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// Creates a customer and returns its id.
    pub async fn customer(&self, name: &str, email: &str) -> String {
        let answer = self
            .post("/v1/customers", &[("name", name), ("email", email)])
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        answer.id()
    }
}

pub async fn start(config: SandboxConfig) -> (Sandbox, Stripe) {
    let sandbox = Sandbox::start(config).await.expect("the sandbox starts");
    let stripe = Stripe::new(&sandbox);
    (sandbox, stripe)
}

/// One webhook as received: raw body and the signature header.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Vec<u8>,
    pub signature: String,
    pub content_type: String,
}

impl Received {
    pub fn event(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook endpoint that records every delivery and answers scripted statuses (then 200).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    delay: Arc<Mutex<Duration>>,
    server: actix_web::dev::ServerHandle,
}

impl Receiver {
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let state = (received.clone(), script.clone(), delay.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/webhook", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .default_service(web::to(record))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url,
            received,
            script,
            delay,
            server: handle,
        }
    }

    /// Answer these statuses to the next deliveries.
    pub fn script(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    /// Wait this long before answering each delivery.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn stop(&self) {
        drop(self.server.stop(false));
    }
}

type ReceiverState = (
    Arc<Mutex<Vec<Received>>>,
    Arc<Mutex<VecDeque<u16>>>,
    Arc<Mutex<Duration>>,
);

async fn record(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ReceiverState>,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    state.0.lock().unwrap().push(Received {
        body: body.to_vec(),
        signature: header("stripe-signature"),
        content_type: header("content-type"),
    });
    let delay = *state.2.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = state.1.lock().unwrap().pop_front().unwrap_or(200);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .insert_header(("Location", "http://127.0.0.1:9/elsewhere"))
        .finish()
}

/// Verifies a `Stripe-Signature` header with the verifier the server uses (any
/// timestamp); returns its timestamp.
pub fn verify(secret: &str, header: &str, body: &[u8]) -> Option<i64> {
    use shared::stripe::signature::{self, SignatureHeader};
    let header = SignatureHeader::parse(header).ok()?;
    let secrets = [secrecy::SecretString::from(secret.to_owned())];
    let t = header.timestamp;
    signature::verify(&header, body, &secrets, 0, t)
        .ok()
        .map(|()| t)
}

/// A fixture copied from Stripe's OpenAPI fixtures (see tests/fixtures/README.md).
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// Top-level keys of a JSON object, sorted.
pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}
