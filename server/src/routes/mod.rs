//! One module per resource; handlers parse, call the domain and map the result.

pub mod customers;
pub mod events;
pub mod health;
pub mod invoices;
pub mod jobs;
pub mod queue;
pub mod sync;
pub mod tasks;
pub mod timeline;
pub mod webhook;

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::{middleware, web, HttpRequest};
use serde::Serialize;
use shared::catalog::CustomerView;
use shared::db::tasks::TaskRow;

use crate::auth::require_token;
use crate::error::ApiError;

/// The `/api/v1` routes: health, the OpenAPI document and the webhook without a token,
/// every other resource behind it. Each module registers its own routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .configure(health::configure)
            .configure(crate::openapi::configure)
            .configure(webhook::configure)
            .service(
                web::scope("")
                    // Runs inside the token check: keys are kept per token.
                    .wrap(middleware::from_fn(crate::idempotency::once_per_key))
                    .wrap(middleware::from_fn(require_token))
                    .configure(customers::configure)
                    .configure(timeline::configure)
                    .configure(tasks::configure)
                    .configure(queue::configure)
                    .configure(events::configure)
                    .configure(invoices::configure)
                    .configure(jobs::configure)
                    .configure(sync::configure),
            ),
    );
}

/// The largest JSON body the API accepts.
pub const JSON_LIMIT: usize = 64 * 1024;

/// JSON bodies: 64 KiB, `application/json` only, errors in our shape.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(JSON_LIMIT)
        .error_handler(|err, _req| {
            let api = match err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    ApiError::PayloadTooLarge(JSON_LIMIT)
                }
                JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
                JsonPayloadError::Payload(e) => ApiError::from(e),
                JsonPayloadError::Deserialize(e) if e.is_data() => {
                    ApiError::MalformedJson(format!("body does not match the expected fields: {e}"))
                }
                JsonPayloadError::Deserialize(e) => {
                    ApiError::MalformedJson(format!("body is not valid JSON: {e}"))
                }
                other => ApiError::MalformedJson(format!("could not read the body: {other}")),
            };
            api.into()
        })
}

/// Reads a whole body of at most `limit` bytes: 413 as soon as the declared length or
/// the bytes received pass it.
pub async fn read_body_up_to(
    headers: &actix_web::http::header::HeaderMap,
    mut payload: impl futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>>
        + Unpin,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    use futures_util::StreamExt;
    let declared = headers
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Query strings: errors in our shape.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        let QueryPayloadError::Deserialize(e) = err else {
            return ApiError::Validation {
                field: None,
                message: err.to_string(),
            }
            .into();
        };
        ApiError::Validation {
            field: None,
            message: format!("invalid query string: {e}"),
        }
        .into()
    })
}

/// The answer for a path or method we do not serve.
pub async fn no_route(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NoRoute(format!(
        "{} {}",
        req.method(),
        req.path()
    )))
}

/// The answer for a method a known path does not serve, with the methods it does serve
/// (read from the OpenAPI document, which a test keeps equal to the routes).
pub async fn wrong_method(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    let allow = req
        .match_pattern()
        .and_then(|pattern| crate::openapi::methods_at(&pattern))
        .unwrap_or_default();
    Err(ApiError::MethodNotAllowed {
        message: format!("{} is not supported on {}", req.method(), req.path()),
        allow: allow.to_owned(),
    })
}

/// A provider link as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Link)]
pub struct LinkResponse {
    #[schema(pattern = "^(stripe|salesforce)$")]
    pub provider: String,
    /// The provider's id for the customer; `null` until the provider made it.
    pub external_id: Option<String>,
    pub synced_version: i64,
    /// `synced`, `pending` or `dead` (a task for this provider needs a manual retry).
    #[schema(value_type = String, pattern = "^(synced|pending|dead)$")]
    pub state: &'static str,
}

/// A customer as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Customer)]
pub struct CustomerResponse {
    pub id: String,
    pub name: String,
    pub email: String,
    pub version: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub deleted_at: Option<chrono::DateTime<chrono::Utc>>,
    pub links: Vec<LinkResponse>,
}

impl From<CustomerView> for CustomerResponse {
    fn from(view: CustomerView) -> Self {
        let customer = view.customer;
        let links = view
            .links
            .into_iter()
            .map(|l| LinkResponse {
                state: if view.dead_providers.contains(&l.provider) {
                    "dead"
                } else if l.synced_version >= customer.version {
                    "synced"
                } else {
                    "pending"
                },
                provider: l.provider.to_string(),
                external_id: l.external_id,
                synced_version: l.synced_version,
            })
            .collect();
        Self {
            id: customer.id.to_string(),
            name: customer.name,
            email: customer.email,
            version: customer.version,
            created_at: customer.created_at,
            updated_at: customer.updated_at,
            deleted_at: customer.deleted_at,
            links,
        }
    }
}

/// A sync task as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Task)]
pub struct TaskResponse {
    pub id: uuid::Uuid,
    #[schema(pattern = "^(stripe|salesforce)$")]
    pub provider: String,
    pub customer_id: String,
    #[schema(pattern = "^(create|update|delete)$")]
    pub operation: String,
    pub version: i64,
    #[schema(pattern = "^(pending|in_flight|succeeded|dead)$")]
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: chrono::DateTime<chrono::Utc>,
    pub last_error: Option<String>,
    pub request_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<TaskRow> for TaskResponse {
    fn from(t: TaskRow) -> Self {
        Self {
            id: t.id,
            provider: t.provider.to_string(),
            customer_id: t.customer_id.to_string(),
            operation: t.operation.to_string(),
            version: t.version,
            status: t.status.to_string(),
            attempts: t.attempts,
            next_attempt_at: t.next_attempt_at,
            last_error: t.last_error,
            request_id: t.request_id,
            created_at: t.created_at,
            updated_at: t.updated_at,
            completed_at: t.completed_at,
        }
    }
}

/// A field the body must have, or a validation error naming it.
pub fn required<'a>(field: &str, value: &'a Option<String>) -> Result<&'a str, ApiError> {
    value.as_deref().ok_or_else(|| ApiError::Validation {
        field: Some(field.to_owned()),
        message: format!("{field} is required"),
    })
}

/// Parses an optional parameter, naming it in the error.
pub fn optional<T>(
    field: &str,
    value: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, shared::domain::ParseError>,
) -> Result<Option<T>, ApiError> {
    value
        .map(parse)
        .transpose()
        .map_err(|e| ApiError::field(field, e))
}

/// Parses a page size: default 50, 1 to 500.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    page_limit_up_to(limit, 500)
}

/// Parses a page size: default 50, 1 to `max`.
pub fn page_limit_up_to(limit: Option<i64>, max: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50.min(max)),
        Some(l) if (1..=max).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::Validation {
            field: Some("limit".into()),
            message: format!("limit must be between 1 and {max}"),
        }),
    }
}
