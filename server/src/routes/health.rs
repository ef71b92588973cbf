//! `GET /api/v1/health`.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::probe::DatabaseProbe;

/// Registers `GET /health` (no token).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/health")
            .get(health)
            .default_service(web::to(super::wrong_method)),
    );
}

/// What health answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthResponse {
    /// `ok` or `unavailable`.
    #[schema(value_type = String, pattern = "^(ok|unavailable)$")]
    status: &'static str,
    /// `ok` or `unreachable`.
    #[schema(value_type = String, pattern = "^(ok|unreachable)$")]
    database: &'static str,
}

/// 200 when PostgreSQL answered the probe within the last second, 503 otherwise; no
/// database work of its own.
#[utoipa::path(
    get,
    path = "/api/v1/health",
    operation_id = "get_health",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "PostgreSQL answered within the last second", body = HealthResponse),
        (status = 503, description = "PostgreSQL is unreachable", body = HealthResponse),
    )
)]
pub async fn health(probe: web::Data<DatabaseProbe>) -> HttpResponse {
    if probe.database_up() {
        HttpResponse::Ok().json(HealthResponse {
            status: "ok",
            database: "ok",
        })
    } else {
        HttpResponse::ServiceUnavailable().json(HealthResponse {
            status: "unavailable",
            database: "unreachable",
        })
    }
}
