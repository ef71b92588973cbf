//! The customer catalog: create, read, list, update, delete, and a Stripe link made by hand.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use shared::catalog::{self, Change, Command, NewCustomer, Origin};
use shared::db::customers::CustomerFilter;
use shared::domain::{CustomerId, CustomerName, Email, Provider};
use shared::stripe::{StripeClient, StripeError};
use tracing_actix_web::RequestId;

use super::webhook::WebhookSettings;
use super::{optional, page_limit, required, CustomerResponse, TaskResponse};
use crate::error::{ApiError, ErrorBody};
use crate::idempotency::RunningKey;
use crate::openapi::schemas;
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
            .post(create_seed)
            .default_service(web::to(super::wrong_method)),
    )
    .service(
        web::resource("/customers/{id}")
            .get(get)
            .patch(update)
            .delete(delete)
            .default_service(web::to(super::wrong_method)),
    )
    .service(
        web::resource("/customers/{id}/links/stripe")
            .put(link_stripe)
            .default_service(web::to(super::wrong_method)),
    );
}

/// `POST /api/v1/customers` and the seed-compatible `POST /api/v1/task/create/customer`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewCustomer)]
pub struct CreateBody {
    /// Generated (`cs_...`) when absent.
    #[schema(schema_with = schemas::customer_id)]
    id: Option<String>,
    #[schema(schema_with = schemas::name, required = true)]
    name: Option<String>,
    #[schema(schema_with = schemas::email, required = true)]
    email: Option<String>,
}

/// `PATCH /api/v1/customers/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CustomerChange)]
pub struct UpdateBody {
    #[schema(schema_with = schemas::name)]
    name: Option<String>,
    #[schema(schema_with = schemas::email)]
    email: Option<String>,
}

/// `PUT /api/v1/customers/{id}/links/stripe`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = StripeLink)]
pub struct LinkBody {
    /// A Stripe customer id such as `cus_1Abc`.
    #[schema(schema_with = schemas::stripe_id, required = true)]
    external_id: Option<String>,
}

/// `GET /api/v1/customers` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    #[param(schema_with = schemas::customer_id)]
    after: Option<String>,
    /// Only the customers with this email.
    #[param(schema_with = schemas::email)]
    email: Option<String>,
    /// Tombstones too.
    #[serde(default)]
    include_deleted: bool,
}

/// What both creates answer (besides the shared answers of `openapi`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Describes the answers; `respond` and `ApiError` make them.
pub enum CreateAnswers {
    /// Created, with one task per enabled provider
    #[response(status = 202)]
    Created(ChangeResponse),
    /// The same id exists with the same fields (a retry): nothing written, no task
    #[response(status = 200)]
    Same(ChangeResponse),
    /// `validation_failed` naming `id`, `name` or `email`, or `malformed_json`
    #[response(status = 400)]
    Invalid(ErrorBody<'static>),
    /// `customer_exists`: the id exists with other fields, or was deleted
    #[response(status = 409)]
    Exists(ErrorBody<'static>),
}

/// A change's answer: the customer and the tasks it queued.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = CustomerChanged)]
pub struct ChangeResponse {
    customer: CustomerResponse,
    tasks: Vec<TaskResponse>,
}

/// A page of customers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = CustomerPage)]
pub struct ListResponse {
    customers: Vec<CustomerResponse>,
    /// Pass as `after` to get the next page; `null` on the last page.
    next_after: Option<String>,
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
#[utoipa::path(
    post,
    path = "/api/v1/customers",
    operation_id = "create_customer",
    tag = "customers",
    request_body = CreateBody,
    responses(CreateAnswers)
)]
#[tracing::instrument(skip_all, fields(customer_id))]
pub async fn create(
    state: web::Data<AppState>,
    body: web::Json<CreateBody>,
    request_id: RequestId,
    key: Option<web::ReqData<RunningKey>>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let new = NewCustomer {
        id: match (&body.id, key) {
            (Some(id), _) => parse_id(id)?,
            // The same id for every retry under the key: a retry of a create that
            // committed finds it rather than making a second customer.
            (None, Some(key)) => key.customer_id(),
            (None, None) => CustomerId::generate(),
        },
        name: CustomerName::parse(required("name", &body.name)?)
            .map_err(|e| ApiError::field("name", e))?,
        email: Email::parse(required("email", &body.email)?)
            .map_err(|e| ApiError::field("email", e))?,
    };
    tracing::Span::current().record("customer_id", new.id.as_str());
    commit(&state, Command::Create(new), request_id).await
}

/// The seed-compatible create: the same as `POST /api/v1/customers`.
#[utoipa::path(
    post,
    path = "/api/v1/task/create/customer",
    operation_id = "create_customer_seed_compatible",
    tag = "customers",
    request_body = CreateBody,
    responses(CreateAnswers)
)]
pub async fn create_seed(
    state: web::Data<AppState>,
    body: web::Json<CreateBody>,
    request_id: RequestId,
    key: Option<web::ReqData<RunningKey>>,
) -> Result<HttpResponse, ApiError> {
    create(state, body, request_id, key).await
}

/// Changes name and/or email.
#[utoipa::path(
    patch,
    path = "/api/v1/customers/{id}",
    operation_id = "update_customer",
    tag = "customers",
    params(crate::openapi::path::Customer),
    request_body = UpdateBody,
    responses(
        (status = 202, description = "Changed: version + 1, with one task per enabled provider", body = ChangeResponse),
        (status = 200, description = "Nothing changes: nothing written, no task", body = ChangeResponse),
        (status = 400, description = "`validation_failed` naming `id`, `name` or `email`, or `malformed_json`", body = ErrorBody),
        (status = 404, description = "`customer_not_found`", body = ErrorBody),
        (status = 409, description = "`customer_deleted`: the customer is a tombstone", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    delete,
    path = "/api/v1/customers/{id}",
    operation_id = "delete_customer",
    tag = "customers",
    params(crate::openapi::path::Customer),
    responses(
        (status = 202, description = "Deleted (a tombstone), with one delete task per enabled provider", body = ChangeResponse),
        (status = 200, description = "Already deleted: nothing written, no task", body = ChangeResponse),
        (status = 400, description = "`validation_failed` naming `id`", body = ErrorBody),
        (status = 404, description = "`customer_not_found`", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/api/v1/customers/{id}",
    operation_id = "get_customer",
    tag = "customers",
    params(crate::openapi::path::Customer),
    responses(
        (status = 200, description = "The customer, with `version`, timestamps, `deleted_at` and its links", body = CustomerResponse),
        (status = 400, description = "`validation_failed` naming `id`", body = ErrorBody),
        (status = 404, description = "`customer_not_found`", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/api/v1/customers",
    operation_id = "list_customers",
    tag = "customers",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of customers ordered by id", body = ListResponse),
        (status = 400, description = "`validation_failed` naming the parameter", body = ErrorBody),
    )
)]
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

/// A Stripe customer id as the operator gives it: 1 to 255 of `[A-Za-z0-9_]`.
fn stripe_customer_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty()
        || id.len() > 255
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(ApiError::Validation {
            field: Some("external_id".into()),
            message: "external_id must be a Stripe customer id like cus_1Abc \
                      (1 to 255 letters, digits and underscores)"
                .into(),
        });
    }
    Ok(id)
}

/// Refuses a Stripe id that names no live customer in the account; answers whether Stripe
/// could be asked at all.
async fn verify_stripe_customer(stripe: &StripeClient, id: &str) -> Result<(), ApiError> {
    let gone = |message: String| ApiError::Unprocessable {
        code: "stripe_customer_not_found",
        field: "external_id".into(),
        message,
    };
    match stripe.retrieve_customer(id).await {
        Ok((customer, _)) if customer.deleted => {
            Err(gone(format!("Stripe customer '{id}' is deleted")))
        }
        Ok(_) => Ok(()),
        Err(StripeError::Api { status: 404, .. }) => {
            Err(gone(format!("Stripe has no customer '{id}'")))
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the Stripe customer to link");
            Err(ApiError::BadGateway {
                code: "stripe_unavailable",
                message: format!("could not ask Stripe about customer '{id}'; retry later"),
            })
        }
    }
}

/// Links the customer to a Stripe customer chosen by hand: 202 with the Stripe `update`
/// task that pushes our state and metadata onto it; 200 and no task when the link already
/// names it. Dead Stripe tasks of the customer are settled.
#[utoipa::path(
    put,
    path = "/api/v1/customers/{id}/links/stripe",
    operation_id = "link_stripe_customer",
    tag = "customers",
    params(crate::openapi::path::Customer),
    request_body = LinkBody,
    responses(
        (status = 202, description = "Linked, with one Stripe `update` task", body = ChangeResponse),
        (status = 200, description = "The link already names that id: nothing written, `tasks` empty", body = ChangeResponse),
        (status = 400, description = "`validation_failed` naming `id` or `external_id`, or `malformed_json`", body = ErrorBody),
        (status = 404, description = "`customer_not_found`", body = ErrorBody),
        (status = 409, description = "`customer_deleted`, `link_taken` (another customer is linked to that Stripe id) or `provider_disabled`", body = ErrorBody),
        (status = 422, description = "`stripe_customer_not_found`: Stripe has no such customer, or it is deleted", body = ErrorBody),
        (status = 502, description = "`stripe_unavailable`: Stripe could not be asked; nothing written, retry", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(customer_id = %path, provider = "stripe", external_id))]
pub async fn link_stripe(
    state: web::Data<AppState>,
    hooks: web::Data<WebhookSettings>,
    path: web::Path<String>,
    body: web::Json<LinkBody>,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let external_id = stripe_customer_id(required("external_id", &body.external_id)?)?.to_owned();
    tracing::Span::current().record("external_id", external_id.as_str());
    if !state.providers.contains(&Provider::Stripe) {
        return Err(ApiError::Conflict {
            code: "provider_disabled",
            message: "the stripe provider is not enabled on this server".into(),
        });
    }
    // The refusals and the no-op are answered before Stripe is asked.
    let (lookup, wanted) = (id.clone(), external_id.clone());
    let planned = state
        .db(move |conn| Ok(catalog::plan_stripe_link(conn, &lookup, &wanted)))
        .await??;
    if let Some(view) = planned {
        return Ok(HttpResponse::Ok().json(ChangeResponse {
            customer: CustomerResponse::from(view),
            tasks: Vec::new(),
        }));
    }
    // Never inside the transaction: the provider call comes first.
    if let Some(stripe) = &hooks.stripe {
        verify_stripe_customer(stripe, &external_id).await?;
    }
    let origin = origin(request_id);
    let linked = state
        .db(move |conn| Ok(catalog::link_stripe(conn, &id, &external_id, &origin)))
        .await??;
    state.publish(&linked.tasks);
    if linked.changed {
        tracing::info!(
            superseded = linked.superseded,
            "linked a Stripe customer by hand"
        );
    }
    let mut response = if linked.changed {
        HttpResponse::Accepted()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(ChangeResponse {
        customer: CustomerResponse::from(linked.view),
        tasks: linked.tasks.into_iter().map(TaskResponse::from).collect(),
    }))
}
