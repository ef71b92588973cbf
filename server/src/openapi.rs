//! The OpenAPI 3.1 description of the HTTP API, generated from the handlers' annotations and
//! served at `GET /api/v1/openapi.json` without a token.
//!
//! Each handler names its own answers; [`CommonAnswers`] adds the ones every route of a kind
//! shares (the token's 401, a body's 400/408/413/415, the `Idempotency-Key` header and its
//! 409/422, the database's 500/503), so no handler repeats them.

use std::collections::btree_map::Entry;
use std::collections::HashMap;
use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi as Document, Ref, RefOr, Required, ResponseBuilder, Type,
};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    customers, events, health, invoices, jobs, queue, sync, tasks, timeline, webhook,
};

/// The security scheme every route behind the token names.
pub const BEARER: &str = "api_token";

/// The document: every `/api/v1` route and `/metrics`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "customer-sync",
        description = "Keeps a customer catalog in two-way sync with Stripe and Salesforce. \
                       Every route except health, the webhook, metrics and this document \
                       needs `Authorization: Bearer $API_TOKEN`. Errors are \
                       `{\"error\": {\"code\", \"message\", \"field\"?}}`.",
        license(name = "MIT", identifier = "MIT")
    ),
    servers((url = "/", description = "The server this document was read from")),
    paths(
        health::health,
        openapi_json,
        crate::metrics::scrape,
        webhook::stripe,
        customers::list,
        customers::create,
        customers::create_seed,
        customers::get,
        customers::update,
        customers::delete,
        customers::link_stripe,
        timeline::timeline,
        tasks::list,
        tasks::get,
        tasks::retry,
        queue::status,
        events::list,
        invoices::list,
        invoices::get,
        jobs::list,
        jobs::create,
        jobs::get,
        jobs::findings,
        jobs::cancel,
        sync::status,
    ),
    components(schemas(crate::error::ErrorBody)),
    security(("api_token" = [])),
    modifiers(&CommonAnswers),
    tags(
        (name = "customers", description = "The customer catalog"),
        (name = "tasks", description = "Sync tasks, one per change and provider"),
        (name = "invoices", description = "The invoice catalogue, filled by Stripe's webhooks"),
        (name = "jobs", description = "Imports and reconciles of a provider's account"),
        (name = "operations", description = "Health, sync status, metrics and this document"),
        (name = "webhooks", description = "Deliveries from Stripe, authenticated by signature, and the events received"),
    )
)]
pub struct ApiDoc;

/// The document as served, rendered once.
pub fn document() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serialises")
    })
}

/// The methods the document gives `pattern` (a route pattern such as
/// `/api/v1/customers/{id}`), as an `Allow` header lists them.
pub fn methods_at(pattern: &str) -> Option<&'static str> {
    static METHODS: OnceLock<HashMap<String, String>> = OnceLock::new();
    METHODS
        .get_or_init(|| {
            ApiDoc::openapi()
                .paths
                .paths
                .into_iter()
                .map(|(path, item)| {
                    let methods: Vec<&str> = [
                        ("GET", item.get.is_some()),
                        ("POST", item.post.is_some()),
                        ("PUT", item.put.is_some()),
                        ("PATCH", item.patch.is_some()),
                        ("DELETE", item.delete.is_some()),
                    ]
                    .into_iter()
                    .filter_map(|(method, served)| served.then_some(method))
                    .collect();
                    (path, methods.join(", "))
                })
                .collect()
        })
        .get(pattern)
        .map(String::as_str)
}

/// Registers `GET /openapi.json` (no token).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/openapi.json")
            .get(openapi_json)
            .default_service(web::to(crate::routes::wrong_method)),
    );
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "get_openapi_document",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

/// Adds the answers routes share by kind, and the bearer scheme.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The server's API_TOKEN"))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            let operations = [
                ("GET", &mut item.get),
                ("POST", &mut item.post),
                ("PUT", &mut item.put),
                ("PATCH", &mut item.patch),
                ("DELETE", &mut item.delete),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    add_common(operation, method);
                }
            }
        }
    }
}

fn add_common(op: &mut Operation, method: &str) {
    // An operation with `security` of its own (`[{}]`) is public; the rest inherit the token.
    let behind_token = op.security.is_none();
    let has_query = op
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == ParameterIn::Query);
    let has_body = op.request_body.is_some();
    let keyed = behind_token && matches!(method, "POST" | "PATCH" | "DELETE");
    if keyed {
        op.parameters
            .get_or_insert_with(Vec::new)
            .push(idempotency_key());
    }
    if behind_token {
        answer(op, 401, "Missing or wrong bearer token (`unauthorized`)");
    }
    if has_query || has_body || keyed {
        answer(
            op,
            400,
            "A parameter, header or body the caller can fix: `validation_failed` (with \
             `field`) or `malformed_json`",
        );
    }
    // Public bodies (the webhook) are read raw, not through the JSON extractor.
    if has_body && behind_token {
        answer(
            op,
            408,
            "The body did not arrive within HTTP_BODY_TIMEOUT_SECS (`request_timeout`)",
        );
        answer(op, 413, "The body is over the limit (`payload_too_large`)");
        answer(
            op,
            415,
            "The body is not `application/json` (`unsupported_media_type`)",
        );
    }
    if keyed {
        answer(
            op,
            409,
            "`idempotency_key_in_use`: a request under the same key still runs",
        );
        answer(
            op,
            422,
            "`idempotency_key_reused`: the key was used with another request",
        );
    }
    // Public routes name their own failures (health answers from its probe, the webhook
    // turns every failure into a 500 for Stripe to retry).
    if behind_token {
        answer(
            op,
            500,
            "`internal_error`: the cause is logged, never returned",
        );
        answer(
            op,
            503,
            "`database_unavailable`: PostgreSQL is unreachable; retry (under an \
             Idempotency-Key for a change)",
        );
    }
}

/// Adds an error answer; where the handler named that status itself, adds the shared
/// case to its description.
fn answer(op: &mut Operation, status: u16, description: &str) {
    match op.responses.responses.entry(status.to_string()) {
        Entry::Vacant(entry) => {
            entry.insert(RefOr::T(error_response(description)));
        }
        Entry::Occupied(mut entry) => {
            if let RefOr::T(response) = entry.get_mut() {
                response.description = format!("{}; or {description}", response.description);
            }
        }
    }
}

/// An answer with the error shape.
pub fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

fn idempotency_key() -> Parameter {
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Makes a retry of this change safe: the first answer under the key is replayed \
             for 24 hours (README \"Retrying a request safely\")",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some("^[!-~]+$")),
        ))
        .build()
}

/// Path parameters as the document describes them. Handlers take the text and parse it
/// themselves, so that a 400 names the field.
#[allow(dead_code)]
pub mod path {
    use super::schemas;

    /// `{id}` of a customer.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct Customer {
        /// The customer's id.
        #[param(schema_with = schemas::customer_id)]
        id: String,
    }

    /// `{id}` of a task.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct Task {
        /// The task's id.
        #[param(format = Uuid)]
        id: String,
    }

    /// `{id}` of a job.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct Job {
        /// The job's id.
        #[param(format = Uuid)]
        id: String,
    }

    /// `{id}` of an invoice.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct Invoice {
        /// The Stripe invoice id (`in_...`).
        #[param(schema_with = schemas::stripe_id)]
        id: String,
    }
}

/// The schemas of the values the API parses, as their `parse` accepts them.
pub mod schemas {
    use utoipa::openapi::{Object, ObjectBuilder, Type};

    fn text(min: usize, max: usize, pattern: Option<&str>, description: &str) -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(max))
            .pattern(pattern)
            .description(Some(description))
            .build()
    }

    /// A customer id: 1 to 64 of `[A-Za-z0-9_.-]`, not only dots.
    pub fn customer_id() -> Object {
        text(
            1,
            64,
            Some("^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$"),
            "A customer id: 1 to 64 of [A-Za-z0-9_.-], not only dots",
        )
    }

    /// A name: 1 to 256 characters, not blank, no control characters.
    pub fn name() -> Object {
        text(
            1,
            256,
            Some(
                "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f]\
                 [^\\u0000-\\u001f\\u007f-\\u009f]*$",
            ),
            "1 to 256 characters, not blank, no control characters",
        )
    }

    /// A plain `local@domain.tld` address.
    pub fn email() -> Object {
        text(
            6,
            254,
            Some(
                "^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\
                 @([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z]{2,63}$",
            ),
            "A plain local@domain.tld address",
        )
    }

    /// A Stripe id such as `cus_1Abc` or `in_1Abc`.
    pub fn stripe_id() -> Object {
        text(
            1,
            255,
            Some("^[A-Za-z0-9_]+$"),
            "A Stripe id: 1 to 255 letters, digits and underscores",
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every path a `web::resource("...")` or `.route("...")` of these sources registers,
    /// under `prefix`.
    fn registered(prefix: &str, sources: &[&str]) -> BTreeSet<String> {
        let mut paths = BTreeSet::new();
        for source in sources {
            for opener in ["web::resource(\"", ".route(\""] {
                for (at, _) in source.match_indices(opener) {
                    let rest = &source[at + opener.len()..];
                    let path = &rest[..rest.find('"').expect("a closing quote")];
                    // This test's own search strings are not paths.
                    if path.starts_with('/') {
                        paths.insert(format!("{prefix}{path}"));
                    }
                }
            }
        }
        paths
    }

    #[test]
    fn the_document_has_every_path_the_server_registers_and_no_other() {
        // The routes under /api/v1 (routes::configure) and those at the root (startup).
        let mut routes = registered(
            "/api/v1",
            &[
                include_str!("routes/customers.rs"),
                include_str!("routes/events.rs"),
                include_str!("routes/health.rs"),
                include_str!("routes/invoices.rs"),
                include_str!("routes/jobs.rs"),
                include_str!("routes/queue.rs"),
                include_str!("routes/sync.rs"),
                include_str!("routes/tasks.rs"),
                include_str!("routes/timeline.rs"),
                include_str!("routes/webhook.rs"),
                include_str!("openapi.rs"),
            ],
        );
        routes.extend(registered("", &[include_str!("metrics.rs")]));
        let documented: BTreeSet<String> = ApiDoc::openapi().paths.paths.into_keys().collect();
        assert_eq!(routes, documented);
    }

    #[test]
    fn every_route_module_is_read_by_the_path_test() {
        // A new module under routes/ must be added to the list above.
        let modules: BTreeSet<&str> = include_str!("routes/mod.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("pub mod "))
            .map(|line| line.trim_end_matches(';'))
            .collect();
        assert_eq!(
            modules,
            BTreeSet::from([
                "customers",
                "events",
                "health",
                "invoices",
                "jobs",
                "queue",
                "sync",
                "tasks",
                "timeline",
                "webhook"
            ])
        );
    }

    #[test]
    fn every_operation_has_an_id_of_its_own() {
        // Client generators name their methods after these.
        let mut ids = BTreeSet::new();
        for item in ApiDoc::openapi().paths.paths.values() {
            for op in [&item.get, &item.post, &item.put, &item.patch, &item.delete]
                .into_iter()
                .flatten()
            {
                let id = op.operation_id.clone().expect("an operationId");
                assert!(ids.insert(id.clone()), "{id} is used twice");
            }
        }
        assert_eq!(ids.len(), 25);
    }

    #[test]
    fn allow_lists_the_documented_methods_of_a_pattern() {
        assert_eq!(methods_at("/api/v1/customers"), Some("GET, POST"));
        assert_eq!(
            methods_at("/api/v1/customers/{id}"),
            Some("GET, PATCH, DELETE")
        );
        assert_eq!(methods_at("/metrics"), Some("GET"));
        assert_eq!(methods_at("/api/v1/nothing"), None);
    }
}
