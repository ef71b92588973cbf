//! `/_sandbox/...`: controls for tests and benchmarks, outside Stripe's API. They skip the
//! Stripe layers (authentication is accepted but not needed; no rate limit, injected
//! failures, latency or idempotency) and are not in the request log.

use std::sync::{Arc, PoisonError};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::api::{parameters, Shared};
use crate::error::ApiError;
use crate::form::Params;
use crate::routes::customers;

/// Why a control action was refused; the message is Stripe's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// 404 `resource_missing`, e.g. "No such customer: 'cus_x'".
    #[error("{0}")]
    NotFound(String),
    /// 400: a parameter the real endpoint would refuse.
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<String>,
    },
}

impl From<ApiError> for ControlError {
    fn from(e: ApiError) -> Self {
        match e.status {
            404 => Self::NotFound(e.message),
            _ => Self::Invalid {
                message: e.message,
                param: e.param,
            },
        }
    }
}

/// Mounts the controls under `/_sandbox`, ahead of Stripe's catch-all handler.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/_sandbox").default_service(web::to(handle)));
}

/// Holds webhook deliveries (new ones and retries) until [`resume_webhooks`].
pub fn pause_webhooks(shared: &Shared) {
    if let Some(outbox) = &shared.outbox {
        outbox.pause();
    }
}

/// Lets held deliveries go out.
pub fn resume_webhooks(shared: &Shared) {
    if let Some(outbox) = &shared.outbox {
        outbox.resume();
    }
}

/// Forgets every event so far and drops their queued deliveries: (forgotten, dropped).
pub fn expire_events(shared: &Shared) -> (usize, usize) {
    let (forgotten, dropped) = shared
        .store
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .expire_events();
    tracing::info!(forgotten, dropped, "events expired");
    (forgotten, dropped)
}

/// Updates a customer as `POST /v1/customers/{id}` would, without an event.
pub fn silent_update(shared: &Shared, id: &str, params: &Params) -> Result<Value, ApiError> {
    let mut store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
    customers::update_silently(&mut store, id, params)
}

fn answer(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::to_string_pretty(body).expect("JSON serialises"))
}

fn refused(error: &ApiError) -> HttpResponse {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    answer(status, &error.body())
}

/// The one handler behind `/_sandbox/...`.
async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let method = req.method().as_str();
    let path = req.path();
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    match (method, parts.as_slice()) {
        ("POST", ["webhooks", "pause"]) => {
            pause_webhooks(&shared);
            answer(StatusCode::OK, &json!({"paused": true}))
        }
        ("POST", ["webhooks", "resume"]) => {
            resume_webhooks(&shared);
            answer(StatusCode::OK, &json!({"paused": false}))
        }
        ("POST", ["events", "expire"]) => {
            let (forgotten, dropped) = expire_events(&shared);
            answer(
                StatusCode::OK,
                &json!({"expired_events": forgotten, "dropped_deliveries": dropped}),
            )
        }
        ("POST", ["idempotency", "expire"]) => {
            let forgotten = shared.expire_idempotency_keys();
            tracing::info!(forgotten, "idempotency keys expired");
            answer(StatusCode::OK, &json!({"expired_keys": forgotten}))
        }
        ("POST", ["customers", id, "silent"]) => {
            let params = parameters(&req, &body).and_then(Params::parse);
            match params.and_then(|p| silent_update(&shared, id, &p)) {
                Ok(customer) => answer(StatusCode::OK, &customer),
                Err(e) => refused(&e),
            }
        }
        _ => refused(
            &ApiError::invalid(format!(
                "Unrecognized request URL ({method}: {path}). The sandbox's controls are \
                 POST /_sandbox/webhooks/pause, POST /_sandbox/webhooks/resume, \
                 POST /_sandbox/events/expire and POST /_sandbox/customers/{{id}}/silent."
            ))
            .status(404),
        ),
    }
}
