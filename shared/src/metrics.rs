//! Prometheus metrics: one recorder per process (the `metrics` facade with its Prometheus
//! exporter), the names every crate records under, and their help texts.
//!
//! Names follow Prometheus's conventions: a `customer_sync_` prefix, `_total` on counters,
//! base units (`_seconds`), and labels whose values come from small fixed sets (routes as
//! patterns, providers, operations, outcomes): never a customer, task or event id.
//!
//! Until [`install`] runs, recording is a no-op (the library tests never install it).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests by `method`, `route` (the pattern, `unmatched` for none) and `status`.
pub const HTTP_REQUESTS: &str = "customer_sync_http_requests_total";
/// HTTP request latency by `method` and `route`.
pub const HTTP_DURATION: &str = "customer_sync_http_request_duration_seconds";
/// Requests per committed batch, by `committer` (`changes`: creates, updates and
/// deletes; `events`: webhook events; `keys`: the API's idempotency keys).
pub const COMMIT_BATCH: &str = "customer_sync_commit_batch_size";
/// Webhook events by `type` and `outcome` (applied, duplicate, stale, ignored,
/// refused_signature, refused_body).
pub const WEBHOOK_EVENTS: &str = "customer_sync_webhook_events_total";
/// Tasks not succeeded, by `provider` and `status` (pending, in_flight, dead), read from
/// PostgreSQL every few seconds.
pub const TASKS: &str = "customer_sync_tasks";
/// Age of the oldest due task, by `provider` (0 when none is due).
pub const OLDEST_DUE_TASK_AGE: &str = "customer_sync_oldest_due_task_age_seconds";
/// Seconds since a webhook delivery was last received (absent before the first).
pub const SINCE_LAST_WEBHOOK: &str = "customer_sync_last_webhook_age_seconds";
/// Seconds since the Events API catch-up last reached the newest event, by `provider`.
pub const CURSOR_AGE: &str = "customer_sync_events_cursor_age_seconds";
/// Jobs by `kind` and `status`.
pub const JOBS: &str = "customer_sync_jobs";
/// A running job's counts, by `kind` and `count` (the names its progress reports).
pub const JOB_PROGRESS: &str = "customer_sync_job_progress";
/// Provider calls by `provider`, `operation` and `outcome` (ok, client_error,
/// rate_limited, server_error, transport_error).
pub const PROVIDER_CALLS: &str = "customer_sync_provider_calls_total";
/// Provider call latency by `provider` and `operation`.
pub const PROVIDER_DURATION: &str = "customer_sync_provider_call_duration_seconds";
/// Provider answers 429, by `provider`.
pub const PROVIDER_RATE_LIMITED: &str = "customer_sync_provider_rate_limited_total";
/// Task executions by `provider` and `outcome` (succeeded, retried, dead).
pub const TASK_OUTCOMES: &str = "customer_sync_task_outcomes_total";
/// Permits taken from the deployment's shared rate budget, by `budget` (stripe, or
/// stripe-read and stripe-write when split; salesforce) and `kind` (live, background).
pub const BUDGET_PERMITS: &str = "customer_sync_budget_permits_total";
/// Time spent waiting for a budget permit, by `budget` and `kind`.
pub const BUDGET_WAIT: &str = "customer_sync_budget_wait_seconds";
/// Rows removed by retention, by `table` (sync_tasks, webhook_events).
pub const RETENTION_REMOVED: &str = "customer_sync_retention_removed_total";
/// Retention passes finished, by `outcome` (done, failed).
pub const RETENTION_PASSES: &str = "customer_sync_retention_passes_total";

/// Every metric this crate's binaries record.
pub const ALL: &[&str] = &[
    HTTP_REQUESTS,
    HTTP_DURATION,
    COMMIT_BATCH,
    WEBHOOK_EVENTS,
    TASKS,
    OLDEST_DUE_TASK_AGE,
    SINCE_LAST_WEBHOOK,
    CURSOR_AGE,
    JOBS,
    JOB_PROGRESS,
    PROVIDER_CALLS,
    PROVIDER_DURATION,
    PROVIDER_RATE_LIMITED,
    TASK_OUTCOMES,
    BUDGET_PERMITS,
    BUDGET_WAIT,
    RETENTION_REMOVED,
    RETENTION_PASSES,
];

/// Latency buckets, in seconds: 1 ms to 30 s.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Batch sizes: 1 to the committers' largest batch.
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs this process's recorder (once; later calls return the same handle) and, when
/// called inside a Tokio runtime, its upkeep, which keeps histograms' memory bounded
/// between scrapes.
pub fn install() -> PrometheusHandle {
    let mut fresh = false;
    let handle = HANDLE.get_or_init(|| {
        fresh = true;
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_BATCH.into()), BATCH))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program's own): then
        // this handle renders what it was given, which is nothing.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    });
    if fresh {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let handle = handle.clone();
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    handle.run_upkeep();
                }
            });
        }
    }
    handle.clone()
}

/// The metrics in Prometheus's text format (empty before [`install`]).
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by method, route pattern and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by method and route pattern"
    );
    describe_histogram!(COMMIT_BATCH, "Rows per committed batch, by committer");
    describe_counter!(WEBHOOK_EVENTS, "Webhook events by type and outcome");
    describe_gauge!(
        TASKS,
        "Tasks not succeeded, by provider and status (read from PostgreSQL)"
    );
    describe_gauge!(
        OLDEST_DUE_TASK_AGE,
        Unit::Seconds,
        "Age of the oldest due task, by provider"
    );
    describe_gauge!(
        SINCE_LAST_WEBHOOK,
        Unit::Seconds,
        "Seconds since a webhook delivery was last received"
    );
    describe_gauge!(
        CURSOR_AGE,
        Unit::Seconds,
        "Seconds since the Events API catch-up last reached the newest event"
    );
    describe_gauge!(JOBS, "Import and reconcile jobs by kind and status");
    describe_gauge!(JOB_PROGRESS, "A running job's counts, by kind and count");
    describe_counter!(
        PROVIDER_CALLS,
        "Provider API calls by provider, operation and outcome"
    );
    describe_histogram!(
        PROVIDER_DURATION,
        Unit::Seconds,
        "Provider API call latency by provider and operation"
    );
    describe_counter!(
        PROVIDER_RATE_LIMITED,
        "Provider answers 429 (rate limited), by provider"
    );
    describe_counter!(TASK_OUTCOMES, "Task executions by provider and outcome");
    describe_counter!(
        BUDGET_PERMITS,
        "Permits taken from the deployment's shared rate budget"
    );
    describe_histogram!(
        BUDGET_WAIT,
        Unit::Seconds,
        "Time spent waiting for a budget permit"
    );
    describe_counter!(RETENTION_REMOVED, "Rows removed by retention, by table");
    describe_counter!(RETENTION_PASSES, "Retention passes finished, by outcome");
}

/// The outcome label of a provider call answered with HTTP `status` (`None`: no answer).
pub fn call_outcome(status: Option<u16>) -> &'static str {
    match status {
        None => "transport_error",
        Some(200..=299) => "ok",
        Some(429) => "rate_limited",
        Some(500..) => "server_error",
        Some(_) => "client_error",
    }
}

/// Records one provider call.
pub fn provider_call(
    provider: &'static str,
    operation: &'static str,
    status: Option<u16>,
    took: Duration,
) {
    let outcome = call_outcome(status);
    metrics::counter!(PROVIDER_CALLS, "provider" => provider, "operation" => operation, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(PROVIDER_DURATION, "provider" => provider, "operation" => operation)
        .record(took.as_secs_f64());
    if status == Some(429) {
        metrics::counter!(PROVIDER_RATE_LIMITED, "provider" => provider).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_outcomes_are_a_small_fixed_set() {
        assert_eq!(call_outcome(None), "transport_error");
        assert_eq!(call_outcome(Some(200)), "ok");
        assert_eq!(call_outcome(Some(404)), "client_error");
        assert_eq!(call_outcome(Some(429)), "rate_limited");
        assert_eq!(call_outcome(Some(503)), "server_error");
    }
}
