//! `GET /metrics` (Prometheus's text format, no token: counts only, never an id), the
//! middleware that counts every HTTP request by its route pattern, and the task that
//! reads the gauges PostgreSQL holds (queue depth, the oldest due task, jobs, the
//! catch-up cursor, the last webhook) every [`REFRESH`], so a scrape costs no query.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::{middleware, web, HttpResponse};
use shared::db::{self, cursors, gauges, PgPool};
use shared::domain::{JobKind, JobStatus, Provider};
use shared::metrics::{
    CURSOR_AGE, HTTP_DURATION, HTTP_REQUESTS, JOBS, JOB_PROGRESS, OLDEST_DUE_TASK_AGE,
    SINCE_LAST_WEBHOOK, TASKS,
};

/// How often the gauges are read from PostgreSQL.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The statuses a task gauge is kept for (succeeded tasks are not counted).
const TASK_STATUSES: [&str; 3] = ["pending", "in_flight", "dead"];

/// Registers `GET /metrics`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/metrics")
            .get(scrape)
            .default_service(web::to(crate::routes::wrong_method)),
    );
}

/// The process's metrics in Prometheus's text format (README "Metrics and alerts").
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "get_metrics",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Prometheus's text exposition format", content_type = "text/plain", body = String))
)]
pub async fn scrape() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(shared::metrics::CONTENT_TYPE)
        .body(shared::metrics::render())
}

/// Counts the request and its latency by method, route pattern and status.
pub async fn record(
    req: ServiceRequest,
    next: middleware::Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let response = next.call(req).await?;
    // The pattern, not the path: `/api/v1/customers/{id}`, never a customer's id.
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

/// The method as a label: the ones the API knows by name, any other as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Reads the gauges every [`REFRESH`] until the process ends; a failed read is logged
/// and the gauges keep their last values.
pub async fn refresh_forever(pool: PgPool, providers: Vec<Provider>) {
    let mut progress_seen: HashSet<(String, String)> = HashSet::new();
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stripe = providers.contains(&Provider::Stripe);
        let read = db::run(&pool, move |conn| {
            let tasks = gauges::tasks(conn)?;
            let jobs = gauges::jobs(conn)?;
            let progress = gauges::running_progress(conn)?;
            let webhook = gauges::last_webhook(conn)?;
            let cursor = if stripe {
                cursors::find(conn, Provider::Stripe)?
            } else {
                None
            };
            Ok((tasks, jobs, progress, webhook, cursor))
        })
        .await;
        let (tasks, jobs, progress, webhook, cursor) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "reading the metrics' gauges failed");
                continue;
            }
        };
        for provider in &providers {
            let name = provider.as_str();
            for status in TASK_STATUSES {
                let count = tasks
                    .iter()
                    .find(|t| t.provider == name && t.status == status)
                    .map_or(0, |t| t.count);
                metrics::gauge!(TASKS, "provider" => name, "status" => status).set(count as f64);
            }
            let oldest = tasks
                .iter()
                .filter(|t| t.provider == name)
                .filter_map(|t| t.oldest_due_seconds)
                .fold(0.0, f64::max);
            metrics::gauge!(OLDEST_DUE_TASK_AGE, "provider" => name).set(oldest);
        }
        for kind in JobKind::ALL {
            for status in JobStatus::ALL {
                let count = jobs
                    .iter()
                    .find(|j| j.kind == kind.as_str() && j.status == status.as_str())
                    .map_or(0, |j| j.count);
                metrics::gauge!(JOBS, "kind" => kind.as_str(), "status" => status.as_str())
                    .set(count as f64);
            }
        }
        // A finished job's counts drop to zero rather than staying at their last value.
        let mut now_seen = HashSet::new();
        for p in progress {
            let labels = (p.kind.clone(), p.count.clone());
            metrics::gauge!(JOB_PROGRESS, "kind" => p.kind, "count" => p.count).set(p.value);
            now_seen.insert(labels);
        }
        for (kind, count) in progress_seen.difference(&now_seen) {
            metrics::gauge!(JOB_PROGRESS, "kind" => kind.clone(), "count" => count.clone())
                .set(0.0);
        }
        progress_seen = now_seen;
        if let Some(at) = webhook {
            let since = (chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::gauge!(SINCE_LAST_WEBHOOK, "provider" => "stripe").set(since);
        }
        if let Some(cursor) = cursor {
            metrics::gauge!(CURSOR_AGE, "provider" => "stripe").set(cursor.age().as_secs_f64());
        }
    }
}
