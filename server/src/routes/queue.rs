//! `GET /api/v1/queue`: the task queue at a glance (what the console's overview shows):
//! unfinished and dead tasks by provider and status, and the providers' 429s.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::db::{budgets, gauges};

use crate::error::ApiError;
use crate::startup::AppState;

/// Registers `GET /queue` (inside the authenticated scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/queue")
            .get(status)
            .default_service(web::to(super::wrong_method)),
    );
}

/// The queue and the providers' rate limits.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Queue)]
pub struct QueueResponse {
    /// Pending, in-flight and dead tasks by provider and status (succeeded ones are not
    /// counted); a pair with no task is left out.
    tasks: Vec<TaskCount>,
    /// Each provider account's 429s, shared by every consumer.
    rate_limits: Vec<RateLimits>,
}

/// Tasks of one provider in one status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskCount {
    #[schema(pattern = "^(stripe|salesforce)$")]
    provider: String,
    #[schema(pattern = "^(pending|in_flight|dead)$")]
    status: String,
    count: i64,
    /// For pending tasks: seconds since the oldest due one became due (`null`: none due).
    oldest_due_seconds: Option<f64>,
}

/// One provider account's 429s.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RateLimits {
    /// The account: the provider and a digest of its key.
    account: String,
    /// 429s answered to any consumer since the account's budget was made.
    rate_limited_total: i64,
    last_rate_limited_at: Option<DateTime<Utc>>,
    /// Every consumer waits until then (`null`: not paused).
    paused_until: Option<DateTime<Utc>>,
}

/// The task queue by provider and status, and the providers' 429s.
#[utoipa::path(
    get,
    path = "/api/v1/queue",
    operation_id = "get_queue",
    tag = "tasks",
    responses((status = 200, description = "The queue by provider and status, and the providers' 429s", body = QueueResponse))
)]
#[tracing::instrument(skip_all)]
pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (tasks, limits) = state
        .db(|conn| Ok((gauges::tasks(conn)?, budgets::rate_limits(conn)?)))
        .await?;
    Ok(HttpResponse::Ok().json(QueueResponse {
        tasks: tasks
            .into_iter()
            .map(|t| TaskCount {
                provider: t.provider,
                status: t.status,
                count: t.count,
                oldest_due_seconds: t.oldest_due_seconds,
            })
            .collect(),
        rate_limits: limits
            .into_iter()
            .map(|r| RateLimits {
                account: r.account,
                rate_limited_total: r.rate_limited_total,
                last_rate_limited_at: r.last_rate_limited_at,
                paused_until: r.paused_until,
            })
            .collect(),
    }))
}
