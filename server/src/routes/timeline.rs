//! `GET /api/v1/customers/{id}/timeline`: one customer's story in order. Each change with
//! the request that made it (none for a change that came from Stripe or a job), the task
//! per provider it queued with its attempts, error and the provider's id, and every Stripe
//! event about the customer or its invoices with what applying it did.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::catalog;
use shared::db::{events, tasks};
use shared::domain::CustomerId;

use super::events::EventResponse;
use super::{CustomerResponse, TaskResponse};
use crate::error::{ApiError, ErrorBody};
use crate::startup::AppState;

/// The most tasks, and the most events, a timeline shows: the newest.
const MOST: i64 = 500;

/// Registers `GET /customers/{id}/timeline` (inside the authenticated scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/customers/{id}/timeline")
            .get(timeline)
            .default_service(web::to(super::wrong_method)),
    );
}

/// A customer and what happened to it, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Timeline)]
pub struct TimelineResponse {
    customer: CustomerResponse,
    entries: Vec<Entry>,
    /// More than 500 tasks or events: only the newest 500 of each are shown.
    truncated: bool,
}

/// One step of a customer's story.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[schema(as = TimelineEntry)]
pub enum Entry {
    /// A change of the customer: the tasks it queued, one per provider.
    Change {
        /// When its first task was queued.
        at: DateTime<Utc>,
        #[schema(pattern = "^(create|update|delete)$")]
        operation: String,
        /// The customer's version it carries.
        version: i64,
        /// The API request that made it (`X-Request-Id`); `null` for a change that came
        /// from Stripe (a webhook, the catch-up) or a job.
        request_id: Option<String>,
        tasks: Vec<TimelineTask>,
    },
    /// A Stripe event about the customer or one of its invoices.
    Event {
        /// When it was received.
        at: DateTime<Utc>,
        event: EventResponse,
    },
}

/// A task and the provider's id for the customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TimelineTask {
    task: TaskResponse,
    /// The provider's id for the customer now; `null` until the provider made it.
    external_id: Option<String>,
}

/// Groups tasks (in acceptance order) into the changes that queued them.
fn changes(tasks: Vec<TaskResponse>, external_id: impl Fn(&str) -> Option<String>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for task in tasks {
        let same_change = |entry: &Entry| {
            matches!(entry, Entry::Change { operation, version, request_id, .. }
                if *operation == task.operation && *version == task.version && *request_id == task.request_id)
        };
        let found = entries.iter().rposition(same_change);
        let timeline_task = TimelineTask {
            external_id: external_id(&task.provider),
            task,
        };
        match found.map(|i| &mut entries[i]) {
            Some(Entry::Change { tasks, .. }) => tasks.push(timeline_task),
            _ => entries.push(Entry::Change {
                at: timeline_task.task.created_at,
                operation: timeline_task.task.operation.clone(),
                version: timeline_task.task.version,
                request_id: timeline_task.task.request_id.clone(),
                tasks: vec![timeline_task],
            }),
        }
    }
    entries
}

fn at(entry: &Entry) -> DateTime<Utc> {
    match entry {
        Entry::Change { at, .. } | Entry::Event { at, .. } => *at,
    }
}

/// One customer's story: its changes with their requests and tasks, and Stripe's events
/// about it, in order.
#[utoipa::path(
    get,
    path = "/api/v1/customers/{id}/timeline",
    operation_id = "get_customer_timeline",
    tag = "customers",
    params(crate::openapi::path::Customer),
    responses(
        (status = 200, description = "The customer and its story, oldest first", body = TimelineResponse),
        (status = 400, description = "`validation_failed` naming `id`", body = ErrorBody),
        (status = 404, description = "`customer_not_found`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(customer_id = %path))]
pub async fn timeline(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = CustomerId::parse(&path).map_err(|e| ApiError::field("id", e))?;
    let (view, tasks, events) = state
        .db(move |conn| {
            let view = match catalog::get(conn, &id) {
                Ok(view) => view,
                Err(e) => return Ok(Err(e)),
            };
            let tasks = tasks::newest_of_customer(conn, &id, MOST + 1)?;
            let events = events::about_customer(conn, id.as_str(), MOST + 1)?;
            Ok(Ok((view, tasks, events)))
        })
        .await??;
    let truncated = tasks.len() as i64 > MOST || events.len() as i64 > MOST;
    let customer = CustomerResponse::from(view);
    let external_id = |provider: &str| {
        customer
            .links
            .iter()
            .find(|l| l.provider == provider)
            .and_then(|l| l.external_id.clone())
    };
    let tasks = skip_oldest(tasks)
        .into_iter()
        .map(TaskResponse::from)
        .collect();
    let mut entries = changes(tasks, external_id);
    entries.extend(skip_oldest(events).into_iter().map(|e| Entry::Event {
        at: e.received_at,
        event: EventResponse::from(e),
    }));
    // Stable: a change and an event at the same instant keep changes first.
    entries.sort_by_key(at);
    Ok(HttpResponse::Ok().json(TimelineResponse {
        customer,
        entries,
        truncated,
    }))
}

/// The newest `MOST` of rows in order (the queries fetch one more, to tell truncation).
fn skip_oldest<T>(mut rows: Vec<T>) -> Vec<T> {
    let extra = rows.len().saturating_sub(MOST as usize);
    rows.drain(..extra);
    rows
}
