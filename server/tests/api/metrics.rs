//! `GET /metrics` of the real `server` binary (a process of its own, so no other test's
//! requests reach its counters), parsed as Prometheus would parse it: each known action
//! moves its counters by exactly its amount.

use std::time::Duration;

use diesel::RunQueryDsl;
use serde_json::{json, Value};
use shared::stripe::signature::sign;
use shared::testing::metrics::Metrics;
use shared::testing::processes::{self, Processes};
use shared::testing::{eventually, free_port, ApiClient, TestDatabase};

const SECRET: &str = "whsec_metrics_0123456789";
const WAIT: Duration = Duration::from_secs(30);

/// The server binary on a fresh database, with the stripe provider enabled (nothing
/// consumes its tasks).
struct Server {
    db: TestDatabase,
    api: ApiClient,
    _processes: Processes,
}

impl Server {
    async fn start() -> Self {
        let db = tokio::task::spawn_blocking(TestDatabase::create)
            .await
            .unwrap();
        let port = free_port();
        let api = ApiClient::new(format!("http://127.0.0.1:{port}"));
        let mut command = processes::binary(env!("CARGO_BIN_EXE_server"));
        command
            .env("DATABASE_URL", &db.url)
            .env("HTTP_BIND", format!("127.0.0.1:{port}"))
            .env(
                "ZMQ_PUB_ENDPOINT",
                format!("tcp://127.0.0.1:{}", free_port()),
            )
            .env("API_TOKEN", &api.token)
            .env("STRIPE_WEBHOOK_SECRET", SECRET)
            .env("STRIPE_API_KEY", shared::testing::settings::STRIPE_KEY)
            .env("STRIPE_API_BASE", "http://127.0.0.1:9")
            .env("RUST_LOG", "error");
        let mut running = Processes::default();
        running.spawn("server", &mut command).unwrap();
        assert!(api.wait_healthy(WAIT).await, "the server became healthy");
        Self {
            db,
            api,
            _processes: running,
        }
    }

    async fn metrics(&self) -> Metrics {
        Metrics::scrape(&format!("{}/metrics", self.api.base_url)).await
    }

    async fn deliver(&self, body: &[u8], signature: &str) -> u16 {
        self.api
            .client
            .post(format!("{}/api/v1/endpoint/stripe", self.api.base_url))
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn customer_created(event_id: &str, stripe_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": event_id, "object": "event", "api_version": "2026-10-28.endive",
        "created": chrono::Utc::now().timestamp(), "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": "customer.created",
        "data": {"object": {"id": stripe_id, "object": "customer", "name": "Metric",
                 "email": "metric@example.com", "metadata": {}, "created": 1}}
    }))
    .unwrap()
}

fn delta(before: &Metrics, after: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[tokio::test]
async fn each_request_webhook_and_refusal_moves_its_counters_by_exactly_one() {
    let server = Server::start().await;
    let before = server.metrics().await;

    // A create: one 202 on the route's pattern, one request in a committed batch.
    let created = server
        .api
        .post(
            "/api/v1/customers",
            &json!({"id": "m-1", "name": "M", "email": "m1@example.com"}),
        )
        .await;
    assert_eq!(created.status(), 202);
    // A customer read: counted under the pattern, never the id.
    assert_eq!(server.api.get("/api/v1/customers/m-1").await.status(), 200);
    assert_eq!(
        server.api.get("/api/v1/customers/nobody").await.status(),
        404
    );
    // A webhook applied, the same event again (a duplicate), a refused signature.
    let body = customer_created("evt_metrics_1", "cus_metrics_1");
    let now = chrono::Utc::now().timestamp();
    assert_eq!(server.deliver(&body, &sign(SECRET, now, &body)).await, 200);
    assert_eq!(server.deliver(&body, &sign(SECRET, now, &body)).await, 200);
    assert_eq!(
        server
            .deliver(&body, &sign("whsec_wrong_secret_000", now, &body))
            .await,
        400
    );

    let after = server.metrics().await;
    let http = "customer_sync_http_requests_total";
    let route = |method, route, status| [("method", method), ("route", route), ("status", status)];
    assert_eq!(
        delta(
            &before,
            &after,
            http,
            &route("POST", "/api/v1/customers", "202")
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            http,
            &route("GET", "/api/v1/customers/{id}", "200")
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            http,
            &route("GET", "/api/v1/customers/{id}", "404")
        ),
        1.0
    );
    let hook = "/api/v1/endpoint/stripe";
    assert_eq!(
        delta(&before, &after, http, &route("POST", hook, "200")),
        2.0
    );
    assert_eq!(
        delta(&before, &after, http, &route("POST", hook, "400")),
        1.0
    );
    for series in after.series(http) {
        assert!(
            !series["route"].contains("m-1") && !series["route"].contains("nobody"),
            "an id in a label: {series:?}"
        );
    }
    let latency = "customer_sync_http_request_duration_seconds";
    assert_eq!(
        delta(
            &before,
            &after,
            latency,
            &[("method", "POST"), ("route", "/api/v1/customers")]
        ),
        1.0
    );

    let events = "customer_sync_webhook_events_total";
    let created = |outcome| [("type", "customer.created"), ("outcome", outcome)];
    assert_eq!(delta(&before, &after, events, &created("applied")), 1.0);
    assert_eq!(delta(&before, &after, events, &created("duplicate")), 1.0);
    assert_eq!(
        delta(
            &before,
            &after,
            events,
            &[("type", "unknown"), ("outcome", "refused_signature")]
        ),
        1.0
    );
    let batches = "customer_sync_commit_batch_size";
    assert_eq!(
        delta(&before, &after, batches, &[("committer", "changes")]),
        1.0
    );
    assert_eq!(
        delta(&before, &after, batches, &[("committer", "events")]),
        2.0
    );
}

#[tokio::test]
async fn queue_depth_dead_tasks_and_the_last_webhook_are_read_from_postgresql() {
    let server = Server::start().await;
    for i in 0..3 {
        let response = server
            .api
            .post(
                "/api/v1/customers",
                &json!({"id": format!("q-{i}"), "name": "Q", "email": format!("q{i}@example.com")}),
            )
            .await;
        assert_eq!(response.status(), 202);
    }
    // One of them dead, as a consumer leaves a task the provider refused; one due for a
    // minute already.
    let mut conn = server.db.connect();
    for sql in [
        "UPDATE sync_tasks SET status = 'dead', last_error = 'Stripe 400' WHERE customer_id = 'q-0'",
        "UPDATE sync_tasks SET next_attempt_at = now() - interval '60 seconds' WHERE customer_id = 'q-1'",
    ] {
        diesel::sql_query(sql).execute(&mut conn).unwrap();
    }
    let body = customer_created("evt_metrics_q", "cus_metrics_q");
    let signature = sign(SECRET, chrono::Utc::now().timestamp(), &body);
    assert_eq!(server.deliver(&body, &signature).await, 200);

    // The gauges are read every few seconds, not per scrape: wait for a read that saw it.
    let url = format!("{}/metrics", server.api.base_url);
    let metrics = eventually("the gauges to show the queue", WAIT, || {
        let url = url.clone();
        async move {
            let m = Metrics::scrape(&url).await;
            let tasks = |status| {
                m.value(
                    "customer_sync_tasks",
                    &[("provider", "stripe"), ("status", status)],
                )
            };
            (tasks("pending") == 2.0 && tasks("dead") == 1.0).then_some(m)
        }
    })
    .await;
    assert_eq!(
        metrics.value(
            "customer_sync_tasks",
            &[("provider", "stripe"), ("status", "in_flight")]
        ),
        0.0
    );
    let oldest = metrics.value(
        "customer_sync_oldest_due_task_age_seconds",
        &[("provider", "stripe")],
    );
    assert!(
        (59.0..120.0).contains(&oldest),
        "oldest due task: {oldest} s"
    );
    let since = metrics.value(
        "customer_sync_last_webhook_age_seconds",
        &[("provider", "stripe")],
    );
    assert!(
        (0.0..60.0).contains(&since),
        "since the last webhook: {since} s"
    );
    for status in ["queued", "running", "succeeded", "failed", "cancelled"] {
        assert_eq!(
            metrics.value(
                "customer_sync_jobs",
                &[("kind", "import"), ("status", status)]
            ),
            0.0
        );
    }
}

#[tokio::test]
async fn metrics_need_no_token_and_refuse_other_methods() {
    let server = Server::start().await;
    let response = reqwest::get(format!("{}/metrics", server.api.base_url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    // Help and type lines, as Prometheus expects them.
    assert!(
        text.contains("# TYPE customer_sync_http_requests_total counter"),
        "{text}"
    );
    let posted = server
        .api
        .client
        .post(format!("{}/metrics", server.api.base_url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 405);
    let error: Value = posted.json().await.unwrap();
    assert!(error["error"]["code"].is_string(), "{error}");
}
