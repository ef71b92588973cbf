//! `GET /api/v1/health`.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use diesel::RunQueryDsl;
use serde_json::json;
use shared::db::PgPool;

/// Registers `GET /health` (no token).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health));
}

/// 200 when PostgreSQL answers, 503 otherwise.
#[tracing::instrument(skip_all)]
pub async fn health(pool: web::Data<PgPool>) -> HttpResponse {
    let pool = pool.get_ref().clone();
    let ok = tokio::task::spawn_blocking(move || {
        let mut conn = pool.get_timeout(Duration::from_secs(2)).ok()?;
        diesel::sql_query("SELECT 1").execute(&mut conn).ok()
    })
    .await
    .ok()
    .flatten()
    .is_some();
    if ok {
        HttpResponse::Ok().json(json!({"status": "ok", "database": "ok"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "database": "unreachable"}))
    }
}
