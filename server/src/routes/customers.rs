//! The customer catalog: create, read, list, update, delete.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use shared::catalog::{self, Change, Command, NewCustomer, Origin};
use shared::db::customers::CustomerFilter;
use shared::domain::{CustomerId, CustomerName, Email};
use tracing_actix_web::RequestId;

use super::{optional, page_limit, CustomerResponse, TaskResponse};
use crate::error::ApiError;
use crate::startup::AppState;

/// Registers the customer routes (inside the authenticated scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/customers")
            .get(list)
            .post(create)
            .default_service(web::to(super::wrong_method)),
    )
    .service(
        web::resource("/task/create/customer")
            .post(create)
            .default_service(web::to(super::wrong_method)),
    )
    .service(
        web::resource("/customers/{id}")
            .get(get)
            .patch(update)
            .delete(delete)
            .default_service(web::to(super::wrong_method)),
    );
}

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

/// Commits a change through the catalog committer, announces its tasks and answers it:
/// 202 when something was written, 200 for a no-op.
async fn commit(
    state: &AppState,
    command: Command,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let key = command.customer_id().to_string();
    let change = state
        .changes
        .submit(&key, (command, origin(request_id)))
        .await?;
    state.publish(&change.tasks);
    Ok(respond(change))
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
    commit(&state, Command::Create(new), request_id).await
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
    commit(&state, Command::Update { id, name, email }, request_id).await
}

/// Makes the customer a tombstone and queues delete tasks.
#[tracing::instrument(skip_all, fields(customer_id = %path))]
pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<String>,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    commit(&state, Command::Delete(id), request_id).await
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
        .then(|| page.last().map(|v| v.customer.id.to_string()))
        .flatten();
    let customers = page.into_iter().map(CustomerResponse::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse {
        customers,
        next_after,
    }))
}
