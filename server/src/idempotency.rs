//! `Idempotency-Key` on our API, as Stripe honours it (README "Retrying a request
//! safely"): the first response to a POST, PATCH or DELETE under a key is stored per key
//! and API token for 24 hours and replayed, with `Idempotent-Replayed: true`, to any
//! retry; the same key with another request is a 422; a retry while the first request
//! still runs is a 409.
//!
//! Only answers that say what the request did are kept (2xx, 404, 409, 410). A refusal of
//! the request itself (400, 413, 415, 422) or a failure (5xx) is not: the retry runs again.
//! A create without an id takes an id derived from the key, so a create that committed
//! before its answer was lost (a 503 after the commit, a timeout) is found again by its
//! retry rather than made twice.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{self, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use diesel::Connection;
use sha2::{Digest, Sha256};
use shared::db::idempotency::{self, Begun, Keyed, Stored};
use shared::db::DbError;
use shared::domain::CustomerId;

use crate::committers::{CommitFn, GroupCommit};
use crate::error::ApiError;
use crate::routes::{read_body_up_to, JSON_LIMIT};
use crate::startup::AppState;

/// The request header, as Stripe names it.
pub const HEADER: &str = "idempotency-key";
/// The header on a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";
/// The longest key accepted (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;
/// How long a first request may hold its key before a retry of the same request may take
/// it over (its process died): well past any request's own time limits.
const RUNNING_FOR: Duration = Duration::from_secs(60);

/// What the keys' committers write.
pub enum KeyOp {
    /// Take the key for a request, or say what its first request did.
    Begin(Keyed),
    /// Keep the response of a request that took its key.
    Finish(Keyed, Stored),
    /// Release the key of a request whose response is not kept.
    Abandon(Keyed),
}

/// Group commit for the keys: the requests that arrive while a batch commits are
/// written together in the next one, a few statements and one commit per batch.
pub type Keys = GroupCommit<KeyOp, Option<Begun>, DbError>;

/// Committers for the keys: two (as for webhook events).
const KEY_COMMITTERS: usize = 2;

/// Starts the keys' committers on their own connections.
pub fn committers(url: &secrecy::SecretString) -> Keys {
    let commit: Arc<CommitFn<KeyOp, Option<Begun>, DbError>> = Arc::new(|conn, ops| {
        let conn: &mut diesel::PgConnection = conn;
        conn.transaction(|conn| {
            let begins: Vec<&Keyed> = ops
                .iter()
                .filter_map(|op| match op {
                    KeyOp::Begin(keyed) => Some(keyed),
                    _ => None,
                })
                .collect();
            let finishes: Vec<(&Keyed, &Stored)> = ops
                .iter()
                .filter_map(|op| match op {
                    KeyOp::Finish(keyed, stored) => Some((keyed, stored)),
                    _ => None,
                })
                .collect();
            let abandons: Vec<&Keyed> = ops
                .iter()
                .filter_map(|op| match op {
                    KeyOp::Abandon(keyed) => Some(keyed),
                    _ => None,
                })
                .collect();
            let mut begun = if begins.is_empty() {
                Vec::new()
            } else {
                idempotency::begin_many(conn, &begins, RUNNING_FOR)?
            }
            .into_iter();
            if !finishes.is_empty() {
                idempotency::finish_many(conn, &finishes)?;
            }
            if !abandons.is_empty() {
                idempotency::abandon_many(conn, &abandons)?;
            }
            Ok(ops
                .iter()
                .map(|op| {
                    Ok(match op {
                        KeyOp::Begin(_) => begun.next(),
                        _ => None,
                    })
                })
                .collect())
        })
    });
    let pool = shared::db::bulk_pool(url, KEY_COMMITTERS as u32);
    GroupCommit::start("keys", pool, KEY_COMMITTERS, commit)
}

/// The key a request runs under, for handlers that derive something from it.
#[derive(Debug, Clone)]
pub struct RunningKey(Vec<u8>);

impl RunningKey {
    /// The id a create without one takes: the same for every retry under the key.
    pub fn customer_id(&self) -> CustomerId {
        let digest = Sha256::digest(&self.0);
        CustomerId::parse(&format!("cs_{}", hex::encode(&digest[..16])))
            .expect("cs_ and 32 hex digits is a valid id")
    }
}

/// Middleware (inside the token check): runs a keyed POST, PATCH or DELETE once per key.
pub async fn once_per_key(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // Only a change a route serves: a wrong method or path answers 405 or 404 as without a key.
    let keyed_method =
        matches!(*req.method(), Method::POST | Method::PATCH | Method::DELETE) && served(&req);
    let Some(key) = req.headers().get(HEADER).filter(|_| keyed_method).cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let key = match parse_key(&key) {
        Ok(key) => key,
        Err(e) => return Ok(req.error_response(e)),
    };
    let payload = req.take_payload();
    let body = match read_body_up_to(req.headers(), payload, JSON_LIMIT).await {
        Ok(body) => body,
        Err(e) => return Ok(req.error_response(e)),
    };
    let keyed = Keyed {
        token_hash: Sha256::digest(
            req.headers()
                .get(header::AUTHORIZATION)
                .map_or(&b""[..], HeaderValue::as_bytes),
        )
        .to_vec(),
        request_hash: request_hash(&req, &body),
        key,
    };
    req.set_payload(Payload::from(body));
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered in startup")
        .clone();
    let begun = state
        .keys
        .submit(&keyed.key, KeyOp::Begin(keyed.clone()))
        .await
        .map(|begun| begun.unwrap_or(Begun::Running));
    let refusal = match begun {
        Ok(Begun::Run) => None,
        Ok(Begun::Replay(stored)) => return Ok(req.into_response(replay(&keyed.key, stored))),
        Ok(Begun::OtherRequest) => Some(ApiError::Unprocessable {
            code: "idempotency_key_reused",
            field: HEADER.into(),
            message: "this Idempotency-Key was first used for another request (method, path \
                      or body); use a new key for a new request"
                .into(),
        }),
        Ok(Begun::Running) => Some(ApiError::Conflict {
            code: "idempotency_key_in_use",
            message: "a request under this Idempotency-Key is still running; retry later".into(),
        }),
        Err(e) => Some(e.into()),
    };
    if let Some(refusal) = refusal {
        return Ok(req.error_response(refusal));
    }
    let mut hasher = Sha256::new();
    hasher.update(&keyed.token_hash);
    hasher.update(keyed.key.as_bytes());
    req.extensions_mut()
        .insert(RunningKey(hasher.finalize().to_vec()));

    let response = next.call(req).await?.map_into_boxed_body();
    let (req, response) = response.into_parts();
    let (head, body) = response.into_parts();
    let body = match body::to_bytes(body).await {
        Ok(body) => body,
        Err(e) => {
            forget(&state, keyed).await;
            let error = ApiError::Unexpected(anyhow::anyhow!("reading the response: {e}"));
            return Ok(ServiceResponse::new(req, error.error_response()));
        }
    };
    let status = head.status();
    let key = keyed.key.clone();
    if kept(status) {
        let stored = Stored {
            status: status.as_u16() as i16,
            content_type: head
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: body.to_vec(),
        };
        if let Err(e) = state.keys.submit(&key, KeyOp::Finish(keyed, stored)).await {
            // The answer still goes out; a retry finds the key running, then takes it
            // over once RUNNING_FOR has passed.
            tracing::warn!(error = %e, idempotency_key = %key, "could not store the response under its key");
        }
    } else {
        forget(&state, keyed).await;
    }
    let mut response = head.set_body(BoxBody::new(body));
    if let Ok(value) = HeaderValue::from_str(&key) {
        response
            .headers_mut()
            .insert(HEADER.parse().unwrap(), value);
    }
    Ok(ServiceResponse::new(req, response))
}

/// Whether a response says what the request did, and so is kept for its retries.
fn kept(status: StatusCode) -> bool {
    status.is_success()
        || matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::CONFLICT | StatusCode::GONE
        )
}

async fn forget(state: &AppState, keyed: Keyed) {
    let key = keyed.key.clone();
    if let Err(e) = state.keys.submit(&key, KeyOp::Abandon(keyed)).await {
        tracing::warn!(error = %e, "could not release an idempotency key");
    }
}

/// Whether a route serves the request's method at its path (the OpenAPI document lists
/// every route's methods, and a test keeps it equal to the routes).
fn served(req: &ServiceRequest) -> bool {
    req.resource_map()
        .match_pattern(req.path())
        .and_then(|pattern| crate::openapi::methods_at(&pattern))
        .is_some_and(|methods| methods.split(", ").any(|m| m == req.method().as_str()))
}

fn parse_key(value: &HeaderValue) -> Result<String, ApiError> {
    let invalid = |message: &str| ApiError::Validation {
        field: Some(HEADER.into()),
        message: message.into(),
    };
    let key = value
        .to_str()
        .map_err(|_| invalid("Idempotency-Key must be printable ASCII"))?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(invalid("Idempotency-Key must be 1 to 255 characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "Idempotency-Key must be printable ASCII without spaces",
        ));
    }
    Ok(key.to_owned())
}

/// What makes two requests the same: method, path, query and body.
fn request_hash(req: &ServiceRequest, body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for part in [
        req.method().as_str().as_bytes(),
        req.path().as_bytes(),
        req.query_string().as_bytes(),
        body,
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().to_vec()
}

fn replay(key: &str, stored: Stored) -> HttpResponse {
    let status = StatusCode::from_u16(stored.status as u16).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    response.insert_header((REPLAYED, "true"));
    if let Ok(value) = HeaderValue::from_str(key) {
        response.insert_header((HEADER, value));
    }
    if let Some(content_type) = stored.content_type {
        response.insert_header((header::CONTENT_TYPE, content_type));
    }
    response.body(stored.body)
}

/// Removes keys older than 24 hours, a batch at a time, every `every`.
pub async fn prune_forever(state: web::Data<AppState>, every: Duration) {
    const BATCH: i32 = 1_000;
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let mut removed = 0;
        loop {
            match state.db(|conn| Ok(idempotency::prune(conn, BATCH)?)).await {
                Ok(n) => {
                    removed += n;
                    if n < BATCH as usize {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning idempotency keys failed");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "pruned idempotency keys older than 24 hours");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_of_1_to_255_characters() {
        let parse = |s: &str| parse_key(&HeaderValue::from_str(s).unwrap());
        assert_eq!(parse("a-key_1").unwrap(), "a-key_1");
        assert!(parse(&"k".repeat(255)).is_ok());
        assert!(parse(&"k".repeat(256)).is_err());
        assert!(parse("").is_err());
        assert!(parse("two words").is_err());
        assert!(parse_key(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_err());
    }

    #[test]
    fn the_derived_id_depends_on_the_key_only() {
        let a = RunningKey(b"token+key".to_vec()).customer_id();
        assert_eq!(a, RunningKey(b"token+key".to_vec()).customer_id());
        assert_ne!(a, RunningKey(b"token+other".to_vec()).customer_id());
        assert_eq!(a.as_str().len(), 3 + 32);
    }
}
