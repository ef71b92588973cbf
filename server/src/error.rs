//! The API's errors and their JSON shape: `{"error": {"code", "message", "field"?}}`.

use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use shared::catalog::CatalogError;
use shared::db::DbError;
use shared::domain::ParseError;
use shared::queue::RetryError;

/// Everything a handler can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field or parameter the caller can fix.
    #[error("{message}")]
    Validation {
        field: Option<String>,
        message: String,
    },
    /// A request the caller must fix, with its own code (webhook signatures and events).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// The body is not the JSON we expect.
    #[error("{0}")]
    MalformedJson(String),
    /// The body is over the limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive within `HTTP_BODY_TIMEOUT_SECS`.
    #[error("{0}")]
    RequestTimeout(String),
    /// The body is not JSON.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// No such resource.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// No such route or method.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The path exists but not with this method; `allow` lists the ones it serves.
    #[error("{message}")]
    MethodNotAllowed { message: String, allow: String },
    /// The request contradicts what is stored.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A well-formed field that the provider refuses (a Stripe id naming no customer).
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        field: String,
        message: String,
    },
    /// A provider the answer depends on could not be asked; retrying later may work (the
    /// handler logs the cause, the body names only what failed).
    #[error("{message}")]
    BadGateway { code: &'static str, message: String },
    /// PostgreSQL cannot be reached.
    #[error("the database is unavailable; retry later")]
    Unavailable(String),
    /// Anything else; the cause goes to the log, never to the caller.
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// A validation error on one field.
    pub fn field(field: &str, error: ParseError) -> Self {
        ApiError::Validation {
            field: Some(field.to_owned()),
            message: error.0,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation_failed",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::BadGateway { code, .. }
            | ApiError::BadRequest { code, .. } => code,
            ApiError::NoRoute(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unavailable(_) => "database_unavailable",
            ApiError::Unexpected(_) => "internal_error",
        }
    }
}

/// Every error's body.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorBody)]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// What went wrong, for a program (`code`) and a person (`message`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable and snake_case, such as `validation_failed` or `customer_not_found`.
    #[schema(value_type = String)]
    code: &'a str,
    message: String,
    /// The field or parameter to fix, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    field: Option<&'a str>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. }
            | ApiError::MalformedJson(_)
            | ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            // The cause chain goes to the log once, on the request span.
            ApiError::Unexpected(e) => tracing::error!(error = ?e, "request failed"),
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "database unavailable"),
            _ => {}
        }
        let field = match self {
            ApiError::Validation { field, .. } => field.as_deref(),
            ApiError::Unprocessable { field, .. } => Some(field.as_str()),
            _ => None,
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            // RFC 9110: a 405 names the methods the resource serves.
            ApiError::MethodNotAllowed { allow, .. } => {
                response.insert_header((actix_web::http::header::ALLOW, allow.as_str()));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                field,
            },
        })
    }
}

impl From<PayloadError> for ApiError {
    fn from(e: PayloadError) -> Self {
        match e {
            PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                ApiError::RequestTimeout(format!("request {io}"))
            }
            other => ApiError::MalformedJson(format!("could not read the body: {other}")),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(message) => ApiError::Unavailable(message),
            // Unique violations become 409 here, in one place.
            DbError::Conflict(message) => ApiError::Conflict {
                code: "conflict",
                message: format!("conflicts with a stored row: {message}"),
            },
            DbError::Unexpected(e) => ApiError::Unexpected(e),
        }
    }
}

/// The one place where the catalog's refusals become status codes.
impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let message = e.to_string();
        match e {
            CatalogError::Db(e) => e.into(),
            CatalogError::NotFound(_) => ApiError::NotFound {
                code: "customer_not_found",
                message,
            },
            CatalogError::Exists(_) | CatalogError::ExistedAndDeleted(_) => ApiError::Conflict {
                code: "customer_exists",
                message,
            },
            CatalogError::Deleted(_) => ApiError::Conflict {
                code: "customer_deleted",
                message,
            },
            CatalogError::LinkTaken { .. } => ApiError::Conflict {
                code: "link_taken",
                message,
            },
        }
    }
}

/// The queue's refusals of a manual retry.
impl From<RetryError> for ApiError {
    fn from(e: RetryError) -> Self {
        let message = e.to_string();
        match e {
            RetryError::NotFound(_) => ApiError::NotFound {
                code: "task_not_found",
                message,
            },
            RetryError::NotDead(..) => ApiError::Conflict {
                code: "task_not_dead",
                message,
            },
            RetryError::Db(e) => DbError::from(e).into(),
        }
    }
}
