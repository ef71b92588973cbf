//! Sync tasks: read one, list them.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use shared::db::tasks::{self, TaskFilter};
use shared::domain::{CustomerId, Provider, TaskId, TaskStatus};
use shared::queue;

use super::{optional, page_limit, TaskResponse};
use crate::error::{ApiError, ErrorBody};
use crate::openapi::schemas;
use crate::startup::AppState;

/// Registers the task routes (inside the authenticated scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/tasks")
            .get(list)
            .default_service(web::to(super::wrong_method)),
    )
    .service(
        web::resource("/tasks/{id}")
            .get(get)
            .default_service(web::to(super::wrong_method)),
    )
    .service(
        web::resource("/tasks/{id}/retry")
            .post(retry)
            .default_service(web::to(super::wrong_method)),
    );
}

/// `GET /api/v1/tasks` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `pending`, `in_flight`, `succeeded` or `dead`.
    #[param(pattern = "^(pending|in_flight|succeeded|dead)$")]
    status: Option<String>,
    /// `stripe` or `salesforce`.
    #[param(pattern = "^(stripe|salesforce)$")]
    provider: Option<String>,
    #[param(schema_with = schemas::customer_id)]
    customer_id: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    #[param(format = Uuid)]
    after: Option<String>,
}

/// A page of tasks.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = TaskPage)]
pub struct ListResponse {
    tasks: Vec<TaskResponse>,
    /// Pass as `after` to get the next page; `null` on the last page.
    next_after: Option<uuid::Uuid>,
}

fn parse_task_id(id: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(id).map_err(|e| ApiError::field("id", e))
}

fn not_found(id: TaskId) -> ApiError {
    queue::RetryError::NotFound(id).into()
}

/// One task.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    operation_id = "get_task",
    tag = "tasks",
    params(crate::openapi::path::Task),
    responses(
        (status = 200, description = "The task", body = TaskResponse),
        (status = 400, description = "`validation_failed` naming `id`", body = ErrorBody),
        (status = 404, description = "`task_not_found`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(task_id = %path))]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    let task = state
        .db(move |conn| Ok(tasks::find(conn, id)?))
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(HttpResponse::Ok().json(TaskResponse::from(task)))
}

/// A page of tasks in acceptance order.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    operation_id = "list_tasks",
    tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tasks in acceptance order", body = ListResponse),
        (status = 400, description = "`validation_failed` naming the parameter", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let filter = TaskFilter {
        status: optional("status", query.status.as_deref(), TaskStatus::parse)?,
        provider: optional("provider", query.provider.as_deref(), Provider::parse)?,
        customer_id: optional(
            "customer_id",
            query.customer_id.as_deref(),
            CustomerId::parse,
        )?,
        after: optional("after", query.after.as_deref(), TaskId::parse)?,
        limit: page_limit(query.limit)?,
    };
    let limit = filter.limit as usize;
    let page = state
        .db(move |conn| Ok(tasks::list(conn, &filter)?))
        .await?;
    let next_after = (page.len() == limit)
        .then(|| page.last().map(|t| t.id))
        .flatten();
    Ok(HttpResponse::Ok().json(ListResponse {
        tasks: page.into_iter().map(TaskResponse::from).collect(),
        next_after,
    }))
}

/// Puts a `dead` task back to `pending` and announces it; 409 for any other state.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/retry",
    operation_id = "retry_task",
    tag = "tasks",
    params(crate::openapi::path::Task),
    responses(
        (status = 200, description = "The task, `pending` again with a fresh attempt budget", body = TaskResponse),
        (status = 400, description = "`validation_failed` naming `id`", body = ErrorBody),
        (status = 404, description = "`task_not_found`", body = ErrorBody),
        (status = 409, description = "`task_not_dead`: only a dead task can be retried", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(task_id = %path))]
pub async fn retry(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    let task = state
        .db(move |conn| Ok(queue::retry_dead(conn, id)))
        .await??;
    state.publish(std::slice::from_ref(&task));
    Ok(HttpResponse::Ok().json(TaskResponse::from(task)))
}
