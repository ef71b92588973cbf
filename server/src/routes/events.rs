//! Stripe events as received: a listing, newest first, with what applying each one did.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::db::events::{self, EventFilter, EventPage, EventSummary};
use shared::inbound::OUTCOMES;

use super::page_limit;
use crate::error::{ApiError, ErrorBody};
use crate::startup::AppState;

/// Registers `GET /events` (inside the authenticated scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/events")
            .get(list)
            .default_service(web::to(super::wrong_method)),
    );
}

/// `GET /api/v1/events` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// An event type such as `customer.updated`.
    #[serde(rename = "type")]
    #[param(rename = "type", pattern = "^[a-z_]+(\\.[a-z_]+)+$", max_length = 100)]
    event_type: Option<String>,
    /// What applying the event did: `applied`, `imported`, `deleted`, `invoice_stored`,
    /// `in_sync`, `older_than_local`, `stale`, `deleted_locally`, `already_deleted`,
    /// `id_taken`, `unusable_id`, `unknown_local_id`, `unknown_customer` or `unhandled`.
    #[param(
        pattern = "^(applied|imported|deleted|invoice_stored|in_sync|older_than_local|stale|deleted_locally|already_deleted|id_taken|unusable_id|unknown_local_id|unknown_customer|unhandled)$"
    )]
    outcome: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The `next_after` of the previous page: an event id.
    #[param(max_length = 255)]
    after: Option<String>,
}

/// An event as received, without its payload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Event)]
pub struct EventResponse {
    pub id: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub event_type: String,
    /// When Stripe made the event (Unix seconds).
    pub created: i64,
    pub received_at: DateTime<Utc>,
    /// `webhook` or `events_api` (the catch-up found it).
    #[schema(pattern = "^(webhook|events_api)$")]
    pub source: String,
    /// What applying it did; `null` for events stored before outcomes were recorded.
    pub outcome: Option<String>,
    /// The Stripe object the event is about (a customer or an invoice).
    pub object_id: Option<String>,
    /// The local customer it concerns, when known.
    pub customer_id: Option<String>,
}

impl From<EventSummary> for EventResponse {
    fn from(e: EventSummary) -> Self {
        Self {
            id: e.id,
            event_type: e.event_type,
            created: e.created,
            received_at: e.received_at,
            source: e.source,
            outcome: e.outcome,
            object_id: e.object_id,
            customer_id: e.customer_id,
        }
    }
}

/// A page of events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = EventPage)]
pub struct ListResponse {
    events: Vec<EventResponse>,
    /// Pass as `after` to get the next (older) page; `null` on the last page.
    next_after: Option<String>,
}

/// The longest event type or id accepted in a filter.
const MAX_FILTER: usize = 255;

fn event_type(value: Option<String>) -> Result<Option<String>, ApiError> {
    let valid = |t: &str| {
        t.len() <= 100
            && t.contains('.')
            && t.split('.').all(|part| {
                !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
    };
    match value {
        Some(t) if !valid(&t) => Err(ApiError::Validation {
            field: Some("type".into()),
            message: "type must be an event type such as customer.updated".into(),
        }),
        other => Ok(other),
    }
}

fn outcome(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(o) if !OUTCOMES.contains(&o.as_str()) => Err(ApiError::Validation {
            field: Some("outcome".into()),
            message: format!("outcome must be one of {}", OUTCOMES.join(", ")),
        }),
        other => Ok(other),
    }
}

fn after(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(a) if a.is_empty() || a.len() > MAX_FILTER => Err(ApiError::Validation {
            field: Some("after".into()),
            message: format!("after must be an event id of 1 to {MAX_FILTER} characters"),
        }),
        other => Ok(other),
    }
}

/// A page of the events received, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    operation_id = "list_events",
    tag = "webhooks",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of events, newest first", body = ListResponse),
        (status = 400, description = "`validation_failed` naming the parameter, or `after` naming no event", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let filter = EventFilter {
        event_type: event_type(query.event_type)?,
        outcome: outcome(query.outcome)?,
        after: after(query.after)?,
        limit: page_limit(query.limit)?,
    };
    let limit = filter.limit as usize;
    let page = match state
        .db(move |conn| Ok(events::list(conn, &filter)?))
        .await?
    {
        EventPage::Page(page) => page,
        EventPage::UnknownAfter => {
            return Err(ApiError::Validation {
                field: Some("after".into()),
                message: "after names no event (it may have been removed by retention)".into(),
            })
        }
    };
    let next_after = (page.len() == limit)
        .then(|| page.last().map(|e| e.id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(ListResponse {
        events: page.into_iter().map(EventResponse::from).collect(),
        next_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_event_types_and_known_outcomes_pass() {
        assert!(event_type(Some("customer.updated".into())).is_ok());
        assert!(event_type(Some("invoice.payment_failed".into())).is_ok());
        assert!(event_type(None).unwrap().is_none());
        for bad in [
            "customer",
            "Customer.updated",
            "customer..x",
            ".x",
            "a.b'--",
            &"a.".repeat(60),
        ] {
            assert!(event_type(Some(bad.into())).is_err(), "{bad}");
        }
        assert!(outcome(Some("applied".into())).is_ok());
        assert!(outcome(Some("nope".into())).is_err());
        assert!(after(Some(String::new())).is_err());
        assert!(after(Some("x".repeat(256))).is_err());
        assert!(after(Some("evt_1".into())).is_ok());
    }
}
