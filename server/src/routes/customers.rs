//! The customer catalog: create, read, list, update, delete.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use shared::catalog::{self, CatalogError, Change, NewCustomer, Origin};
use shared::db::DbError;
use shared::domain::Provider;

use crate::batcher::{CommitFn, GroupCommit};
use shared::db::customers::CustomerFilter;
use shared::domain::{CustomerId, CustomerName, Email};
use tracing_actix_web::RequestId;

use super::{optional, page_limit, CustomerResponse, TaskResponse};
use crate::error::ApiError;
use crate::startup::AppState;

/// `POST /api/v1/customers` and the seed-compatible `POST /api/v1/task/create/customer`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    id: Option<String>,
    name: Option<String>,
    email: Option<String>,
}

/// `PATCH /api/v1/customers/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    name: Option<String>,
    email: Option<String>,
}

/// `GET /api/v1/customers` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    after: Option<String>,
    email: Option<String>,
    #[serde(default)]
    include_deleted: bool,
}

/// A change's answer: the customer and the tasks it queued.
#[derive(Debug, Serialize)]
pub struct ChangeResponse {
    customer: CustomerResponse,
    tasks: Vec<TaskResponse>,
}

/// A page of customers.
#[derive(Debug, Serialize)]
pub struct ListResponse {
    customers: Vec<CustomerResponse>,
    /// Pass as `after` to get the next page; `null` on the last page.
    next_after: Option<String>,
}

fn required<'a>(field: &str, value: &'a Option<String>) -> Result<&'a str, ApiError> {
    value.as_deref().ok_or_else(|| ApiError::Validation {
        field: Some(field.to_owned()),
        message: format!("{field} is required"),
    })
}

fn parse_id(id: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(id).map_err(|e| ApiError::field("id", e))
}

fn origin(request_id: RequestId) -> Origin {
    Origin {
        request_id: Some(request_id.to_string()),
    }
}

fn respond(change: Change) -> HttpResponse {
    let mut response = if change.changed {
        HttpResponse::Accepted()
    } else {
        HttpResponse::Ok()
    };
    response.json(ChangeResponse {
        customer: CustomerResponse::from(catalog::CustomerView {
            customer: change.customer,
            links: change.links,
            dead_providers: Vec::new(),
        }),
        tasks: change.tasks.into_iter().map(TaskResponse::from).collect(),
    })
}

/// Group commit for creates.
pub type Creates = GroupCommit<(NewCustomer, Origin), Change, CatalogError>;

/// Writes a batch of creates with [`catalog::create_batch`]; when the batch fails, one
/// transaction per create, so that one bad item does not fail the others.
pub fn commit_creates(
    providers: Vec<Provider>,
) -> Arc<CommitFn<(NewCustomer, Origin), Change, CatalogError>> {
    Arc::new(
        move |conn, items| match catalog::create_batch(conn, &items, &providers) {
            Err(DbError::Unexpected(e)) if items.len() > 1 => {
                tracing::warn!(error = %e, size = items.len(), "batch failed; committing one by one");
                Ok(items
                    .iter()
                    .map(|(new, origin)| catalog::create(conn, new, &providers, origin))
                    .collect())
            }
            answers => answers,
        },
    )
}

/// Creates a customer and one task per enabled provider.
#[tracing::instrument(skip_all, fields(customer_id))]
pub async fn create(
    state: web::Data<AppState>,
    body: web::Json<CreateBody>,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let new = NewCustomer {
        id: match &body.id {
            Some(id) => parse_id(id)?,
            None => CustomerId::generate(),
        },
        name: CustomerName::parse(required("name", &body.name)?)
            .map_err(|e| ApiError::field("name", e))?,
        email: Email::parse(required("email", &body.email)?)
            .map_err(|e| ApiError::field("email", e))?,
    };
    tracing::Span::current().record("customer_id", new.id.as_str());
    let key = new.id.to_string();
    let change = state
        .creates
        .submit(&key, (new, origin(request_id)))
        .await?;
    state.publish(&change.tasks);
    Ok(respond(change))
}

/// Changes name and/or email.
#[tracing::instrument(skip_all, fields(customer_id = %path))]
pub async fn update(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<UpdateBody>,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let name = optional("name", body.name.as_deref(), CustomerName::parse)?;
    let email = optional("email", body.email.as_deref(), Email::parse)?;
    let origin = origin(request_id);
    let providers = state.providers.clone();
    let change = state
        .db(move |conn| {
            Ok(catalog::update(
                conn,
                &id,
                name.as_ref(),
                email.as_ref(),
                &providers,
                &origin,
            ))
        })
        .await??;
    state.publish(&change.tasks);
    Ok(respond(change))
}

/// Makes the customer a tombstone and queues delete tasks.
#[tracing::instrument(skip_all, fields(customer_id = %path))]
pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<String>,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let origin = origin(request_id);
    let providers = state.providers.clone();
    let change = state
        .db(move |conn| Ok(catalog::delete(conn, &id, &providers, &origin)))
        .await??;
    state.publish(&change.tasks);
    Ok(respond(change))
}

/// One customer with its links.
#[tracing::instrument(skip_all, fields(customer_id = %path))]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let view = state.db(move |conn| Ok(catalog::get(conn, &id))).await??;
    Ok(HttpResponse::Ok().json(CustomerResponse::from(view)))
}

/// A page of customers ordered by id.
#[tracing::instrument(skip_all)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let filter = CustomerFilter {
        limit: page_limit(query.limit)?,
        after: optional("after", query.after.as_deref(), CustomerId::parse)?,
        email: optional("email", query.email.as_deref(), Email::parse)?,
        include_deleted: query.include_deleted,
    };
    let limit = filter.limit as usize;
    let page = state
        .db(move |conn| Ok(catalog::list(conn, &filter)))
        .await??;
    let next_after = (page.len() == limit)
        .then(|| page.last().map(|v| v.customer.id.clone()))
        .flatten();
    let customers = page.into_iter().map(CustomerResponse::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse {
        customers,
        next_after,
    }))
}
