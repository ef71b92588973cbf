//! `GET /metrics` of the real `consumer` binary at `CONSUMER_METRICS_BIND`, parsed as
//! Prometheus would parse it: provider calls, task outcomes and the budget move by exactly
//! what the tasks did.

use std::process::Child;

use sandbox::SandboxConfig;
use shared::testing::metrics::Metrics;
use shared::testing::{eventually, free_port};

use crate::adoption::stripe_customer;
use crate::helpers::{stack, Stack, WAIT};

/// The consumer binary serving its metrics; the scrape URL.
fn consumer(stack: &Stack, env: &[(&str, &str)]) -> (KillOnDrop, String) {
    let bind = format!("127.0.0.1:{}", free_port());
    // No catch-up poll and no scheduled reconcile: only the tasks call Stripe.
    let mut all = vec![
        ("CONSUMER_METRICS_BIND", bind.as_str()),
        ("STRIPE_EVENTS_POLL_SECS", "0"),
        ("RECONCILE_INTERVAL_HOURS", "0"),
    ];
    all.extend_from_slice(env);
    let child = stack.consumer_process(&all);
    (KillOnDrop(child), format!("http://{bind}/metrics"))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn scrape_when(url: &str, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    eventually(what, WAIT, || async {
        match reqwest::get(url).await {
            Ok(r) if r.status() == 200 => {
                let m = Metrics::parse(&r.text().await.ok()?);
                ready(&m).then_some(m)
            }
            _ => None,
        }
    })
    .await
}

const CALLS: &str = "customer_sync_provider_calls_total";
const OUTCOMES: &str = "customer_sync_task_outcomes_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_create_and_a_dead_one_move_calls_and_outcomes_by_exactly_their_amounts() {
    let stack = stack(SandboxConfig::default()).await;
    // Two Stripe customers with one email: a create with it cannot choose, and goes dead.
    stripe_customer(&stack.sandbox, "Ben", "ben@example.com", None).await;
    stripe_customer(&stack.sandbox, "Ben B", "ben@example.com", None).await;
    let (_consumer, url) = consumer(&stack, &[]);
    let before = scrape_when(&url, "the consumer's metrics", |_| true).await;

    stack.create("c-ok", "Ok", "ok@example.com").await;
    stack.create("c-ben", "Ben", "ben@example.com").await;
    let after = scrape_when(&url, "both tasks finished", |m| {
        m.value(
            OUTCOMES,
            &[("provider", "stripe"), ("outcome", "succeeded")],
        ) == 1.0
            && m.value(OUTCOMES, &[("provider", "stripe"), ("outcome", "dead")]) == 1.0
    })
    .await;
    assert_eq!(
        stack.statuses(),
        [("dead".into(), 1), ("succeeded".into(), 1)]
    );

    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let call = |op, outcome| {
        [
            ("provider", "stripe"),
            ("operation", op),
            ("outcome", outcome),
        ]
    };
    // Each create looks for a customer with its email first (adoption), then c-ok creates.
    assert_eq!(delta(CALLS, &call("list_customers", "ok")), 2.0);
    assert_eq!(delta(CALLS, &call("create_customer", "ok")), 1.0);
    assert_eq!(
        delta(
            "customer_sync_provider_call_duration_seconds",
            &[("provider", "stripe"), ("operation", "create_customer")]
        ),
        1.0
    );
    assert_eq!(
        delta(OUTCOMES, &[("provider", "stripe"), ("outcome", "retried")]),
        0.0
    );
    // Three calls, three permits from the shared budget.
    assert_eq!(
        delta(
            "customer_sync_budget_permits_total",
            &[("budget", "stripe"), ("kind", "live")]
        ),
        3.0
    );
    for series in after.series(CALLS) {
        assert!(
            !series
                .values()
                .any(|v| v.contains("c-ok") || v.contains("cus_")),
            "{series:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_counted_by_its_outcome_and_its_task_as_dead() {
    let stack = stack(SandboxConfig {
        fail_rate: 1.0,
        ..SandboxConfig::default()
    })
    .await;
    let (_consumer, url) = consumer(
        &stack,
        &[
            ("TASK_MAX_ATTEMPTS", "1"),
            ("STRIPE_ADOPT_BY_EMAIL", "false"),
        ],
    );
    let before = scrape_when(&url, "the consumer's metrics", |_| true).await;
    stack.create("c-fail", "Fail", "fail@example.com").await;
    let after = scrape_when(&url, "the task to die", |m| {
        m.value(OUTCOMES, &[("provider", "stripe"), ("outcome", "dead")]) == 1.0
    })
    .await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let call = |outcome| {
        [
            ("provider", "stripe"),
            ("operation", "create_customer"),
            ("outcome", outcome),
        ]
    };
    assert_eq!(delta(CALLS, &call("server_error")), 1.0);
    assert_eq!(delta(CALLS, &call("ok")), 0.0);
    assert_eq!(
        delta(
            OUTCOMES,
            &[("provider", "stripe"), ("outcome", "succeeded")]
        ),
        0.0
    );
    assert_eq!(stack.statuses(), [("dead".into(), 1)]);
}

#[tokio::test]
async fn the_metrics_port_serves_only_get_metrics() {
    let stack = stack(SandboxConfig::default()).await;
    let (_consumer, url) = consumer(&stack, &[]);
    scrape_when(&url, "the consumer's metrics", |_| true).await;
    let other = reqwest::get(url.replace("/metrics", "/api/v1/customers"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let posted = reqwest::Client::new().post(&url).send().await.unwrap();
    assert_eq!(posted.status(), 404);
    assert!(posted.text().await.unwrap().contains("only GET /metrics"));
}
