//! The operator console at `/console`: one HTML page, its script and its stylesheet,
//! embedded in the binary (no CDN, no Node.js build). The files hold no data: every page
//! reads the JSON API with the token the operator types, so serving them needs no token.
//! A strict Content-Security-Policy lets the page load only these files and call only this
//! server.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::ApiError;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/app.css");

/// Only this server's own files and API (and an empty inline icon, so the browser does not
/// ask for `/favicon.ico`); no inline script or style, no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; form-action 'none'; base-uri 'none'; \
    frame-ancestors 'none'";

/// Registers `GET /console` and its two files.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/console")
            .get(|| async { file("text/html; charset=utf-8", INDEX) })
            .default_service(web::to(get_only)),
    )
    .service(
        web::resource("/console/app.js")
            .get(|| async { file("text/javascript; charset=utf-8", SCRIPT) })
            .default_service(web::to(get_only)),
    )
    .service(
        web::resource("/console/app.css")
            .get(|| async { file("text/css; charset=utf-8", STYLE) })
            .default_service(web::to(get_only)),
    );
}

async fn get_only(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed {
        message: format!("{} is not supported on {}", req.method(), req.path()),
        allow: "GET".into(),
    })
}

fn file(content_type: &'static str, body: &'static str) -> HttpResponse {
    let mut response = HttpResponse::Ok().content_type(content_type).body(body);
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // A new binary serves new files: the browser asks again each time.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
