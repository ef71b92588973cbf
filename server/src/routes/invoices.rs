//! The invoice catalogue: read one, list them.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use shared::db::invoices::{self, InvoiceFilter, InvoiceRow};
use shared::domain::CustomerId;

use super::{optional, page_limit};
use crate::error::{ApiError, ErrorBody};
use crate::openapi::schemas;
use crate::startup::AppState;

/// Registers the invoice routes (inside the authenticated scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/invoices")
            .get(list)
            .default_service(web::to(super::wrong_method)),
    )
    .service(
        web::resource("/invoices/{id}")
            .get(get)
            .default_service(web::to(super::wrong_method)),
    );
}

/// `GET /api/v1/invoices` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(schema_with = schemas::customer_id)]
    customer_id: Option<String>,
    /// Stripe's invoice status, or `deleted` for a deleted draft.
    #[param(pattern = "^(draft|open|paid|uncollectible|void|deleted)$")]
    status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    #[param(schema_with = schemas::stripe_id)]
    after: Option<String>,
}

/// An invoice as the API shows it (amounts in minor units).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Invoice)]
pub struct InvoiceResponse {
    pub id: String,
    pub customer_id: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub number: Option<String>,
    pub status: Option<String>,
    pub currency: String,
    pub amount_due: i64,
    pub amount_paid: i64,
    pub amount_remaining: i64,
    pub total: i64,
    pub hosted_invoice_url: Option<String>,
    pub due_date: Option<i64>,
    pub period_start: Option<i64>,
    pub period_end: Option<i64>,
    pub created: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<InvoiceRow> for InvoiceResponse {
    fn from(r: InvoiceRow) -> Self {
        Self {
            id: r.id,
            customer_id: r.customer_id.map(|c| c.to_string()),
            stripe_customer_id: r.stripe_customer_id,
            number: r.number,
            status: r.status,
            currency: r.currency,
            amount_due: r.amount_due,
            amount_paid: r.amount_paid,
            amount_remaining: r.amount_remaining,
            total: r.total,
            hosted_invoice_url: r.hosted_invoice_url,
            due_date: r.due_date,
            period_start: r.period_start,
            period_end: r.period_end,
            created: r.created,
            updated_at: r.updated_at,
        }
    }
}

/// A page of invoices.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = InvoicePage)]
pub struct ListResponse {
    invoices: Vec<InvoiceResponse>,
    next_after: Option<String>,
}

const STATUSES: &[&str] = &["draft", "open", "paid", "uncollectible", "void", "deleted"];

fn invoice_id(id: &str) -> Result<String, ApiError> {
    if id.is_empty()
        || id.len() > 255
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(ApiError::Validation {
            field: Some("id".into()),
            message: "invoice id must be a Stripe id like in_1Abc".into(),
        });
    }
    Ok(id.to_owned())
}

/// One invoice.
#[utoipa::path(
    get,
    path = "/api/v1/invoices/{id}",
    operation_id = "get_invoice",
    tag = "invoices",
    params(crate::openapi::path::Invoice),
    responses(
        (status = 200, description = "The invoice", body = InvoiceResponse),
        (status = 400, description = "`validation_failed` naming `id`", body = ErrorBody),
        (status = 404, description = "`invoice_not_found`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(invoice_id = %path))]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = invoice_id(&path)?;
    let lookup = id.clone();
    let invoice = state
        .db(move |conn| Ok(invoices::find(conn, &lookup)?))
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "invoice_not_found",
            message: format!("no invoice with id '{id}'"),
        })?;
    Ok(HttpResponse::Ok().json(InvoiceResponse::from(invoice)))
}

/// A page of invoices ordered by id.
#[utoipa::path(
    get,
    path = "/api/v1/invoices",
    operation_id = "list_invoices",
    tag = "invoices",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of invoices ordered by id", body = ListResponse),
        (status = 400, description = "`validation_failed` naming the parameter", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    if let Some(status) = &query.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::Validation {
                field: Some("status".into()),
                message: format!("status must be one of {}", STATUSES.join(", ")),
            });
        }
    }
    let filter = InvoiceFilter {
        customer_id: optional(
            "customer_id",
            query.customer_id.as_deref(),
            CustomerId::parse,
        )?,
        status: query.status,
        after: query.after.as_deref().map(invoice_id).transpose()?,
        limit: page_limit(query.limit)?,
    };
    let limit = filter.limit as usize;
    let page = state
        .db(move |conn| Ok(invoices::list(conn, &filter)?))
        .await?;
    let next_after = (page.len() == limit)
        .then(|| page.last().map(|i| i.id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(ListResponse {
        invoices: page.into_iter().map(InvoiceResponse::from).collect(),
        next_after,
    }))
}
