//! `GET /api/v1/health`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::probe::DatabaseProbe;

/// Registers `GET /health` (no token).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health));
}

/// 200 when PostgreSQL answered the probe within the last second, 503 otherwise; no
/// database work of its own.
pub async fn health(probe: web::Data<DatabaseProbe>) -> HttpResponse {
    if probe.database_up() {
        HttpResponse::Ok().json(json!({"status": "ok", "database": "ok"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "database": "unreachable"}))
    }
}
