//! Jobs (README "Adoption and healing"): queue an import or a reconcile, read them and
//! their findings, cancel one. A consumer serving the provider runs them.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::db::jobs::{self, CancelError, FindingRow, JobFilter, JobRow, NewJob};
use shared::db::{DbError, PgConn};
use shared::domain::{JobKind, JobStatus, Provider};

use super::{optional, page_limit, page_limit_up_to, required};
use crate::error::{ApiError, ErrorBody};
use crate::startup::AppState;

/// The largest page of jobs.
const MAX_JOBS_PAGE: i64 = 100;

/// Registers the job routes (inside the authenticated scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/jobs")
            .get(list)
            .post(create)
            .default_service(web::to(super::wrong_method)),
    )
    .service(
        web::resource("/jobs/{id}")
            .get(get)
            .default_service(web::to(super::wrong_method)),
    )
    .service(
        web::resource("/jobs/{id}/findings")
            .get(findings)
            .default_service(web::to(super::wrong_method)),
    )
    .service(
        web::resource("/jobs/{id}/cancel")
            .post(cancel)
            .default_service(web::to(super::wrong_method)),
    );
}

/// `POST /api/v1/jobs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewJob)]
pub struct CreateBody {
    /// `import` or `reconcile`.
    #[schema(value_type = String, required = true, pattern = "^(import|reconcile)$")]
    kind: Option<String>,
    /// Only `stripe` has jobs.
    #[schema(value_type = String, required = true, pattern = "^stripe$")]
    provider: Option<String>,
    /// Repair what a reconcile finds (reconcile only; default false, as is `null`).
    #[schema(value_type = Option<bool>)]
    repair: Option<bool>,
}

/// `GET /api/v1/jobs` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[param(pattern = "^(queued|running|succeeded|failed|cancelled)$")]
    status: Option<String>,
    /// `import` or `reconcile`.
    #[param(pattern = "^(import|reconcile)$")]
    kind: Option<String>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `next_after` of the previous page: older jobs.
    #[param(format = Uuid)]
    after: Option<String>,
}

/// `GET /api/v1/jobs/{id}/findings` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FindingsQuery {
    /// A kind of finding (`linked`, `ambiguous`, `differs`, ...).
    #[param(min_length = 1, max_length = 64, pattern = "^[a-z_]+$")]
    kind: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The `seq` of the last finding seen (`next_after`).
    #[param(pattern = "^[0-9]{1,18}$")]
    after: Option<String>,
}

/// A job as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Job)]
pub struct JobResponse {
    pub id: uuid::Uuid,
    #[schema(pattern = "^(import|reconcile)$")]
    pub kind: String,
    pub provider: String,
    pub repair: bool,
    #[schema(pattern = "^(queued|running|succeeded|failed|cancelled)$")]
    pub status: String,
    pub requested_by: String,
    pub cancel_requested: bool,
    pub phase: String,
    /// Counts so far by kind of finding.
    pub progress: Value,
    /// `null` until the job finished.
    pub report: Option<Value>,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<JobRow> for JobResponse {
    fn from(j: JobRow) -> Self {
        Self {
            id: j.id,
            kind: j.kind.to_string(),
            provider: j.provider.to_string(),
            repair: j.repair,
            status: j.status.to_string(),
            requested_by: j.requested_by,
            cancel_requested: j.cancel_requested,
            phase: j.phase,
            progress: j.progress,
            report: j.report,
            error: j.error,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            updated_at: j.updated_at,
        }
    }
}

/// A page of jobs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = JobPage)]
pub struct ListResponse {
    jobs: Vec<JobResponse>,
    /// Pass as `after` to get the next (older) page; `null` on the last page.
    next_after: Option<uuid::Uuid>,
}

/// One thing a job found about one object.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Finding)]
pub struct FindingResponse {
    pub kind: String,
    pub subject: String,
    pub customer_id: Option<String>,
    pub external_id: Option<String>,
    pub detail: Option<Value>,
    /// The order found in; pass the last one seen as `after`.
    pub seq: i64,
}

impl From<FindingRow> for FindingResponse {
    fn from(f: FindingRow) -> Self {
        Self {
            kind: f.kind,
            subject: f.subject,
            customer_id: f.customer_id,
            external_id: f.external_id,
            detail: f.detail,
            seq: f.seq,
        }
    }
}

/// A page of a job's findings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FindingPage)]
pub struct FindingsResponse {
    findings: Vec<FindingResponse>,
    /// Pass as `after` to get the next page; `null` on the last page.
    next_after: Option<i64>,
}

fn parse_job_id(field: &str, id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::try_parse(id).map_err(|_| ApiError::Validation {
        field: Some(field.to_owned()),
        message: format!("{field} must be a job id (a UUID)"),
    })
}

fn not_found(id: uuid::Uuid) -> ApiError {
    ApiError::NotFound {
        code: "job_not_found",
        message: format!("no job with id '{id}'"),
    }
}

/// Finding kinds are short snake-case words (`linked`, `ambiguous`, ...).
fn finding_kind(kind: &str) -> Result<String, ApiError> {
    if kind.is_empty()
        || kind.len() > 64
        || !kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(ApiError::Validation {
            field: Some("kind".into()),
            message: "kind must be a finding kind such as linked, ambiguous or differs".into(),
        });
    }
    Ok(kind.to_owned())
}

fn finding_seq(after: &str) -> Result<i64, ApiError> {
    after
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq >= 0)
        .ok_or_else(|| ApiError::Validation {
            field: Some("after".into()),
            message: "after must be the seq of a finding (a non-negative integer)".into(),
        })
}

/// Queues the job unless one of its kind is queued or running for the provider; answers
/// the open job's id otherwise.
fn queue_unless_open(
    conn: &mut PgConn,
    job: NewJob<'static>,
) -> Result<Result<JobRow, Option<uuid::Uuid>>, DbError> {
    Ok(jobs::queue_unless_open(conn, job)?.map_err(|open| Some(open.id)))
}

/// Queues an import or a reconcile of a provider.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    operation_id = "create_job",
    tag = "jobs",
    request_body = CreateBody,
    responses(
        (status = 202, description = "Queued (`status: queued`, `requested_by: api`); a consumer serving the provider runs it", body = JobResponse),
        (status = 400, description = "`validation_failed` naming `kind`, `provider` or `repair`, or `malformed_json`", body = ErrorBody),
        (status = 409, description = "`provider_disabled` (no STRIPE_API_KEY), or `job_exists`: a job of that kind and provider is queued or running", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(provider, job_id))]
pub async fn create(
    state: web::Data<AppState>,
    body: web::Json<CreateBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let kind =
        JobKind::parse(required("kind", &body.kind)?).map_err(|e| ApiError::field("kind", e))?;
    let provider = Provider::parse(required("provider", &body.provider)?)
        .map_err(|e| ApiError::field("provider", e))?;
    if provider != Provider::Stripe {
        return Err(ApiError::Validation {
            field: Some("provider".into()),
            message: format!("only stripe has jobs, not {provider}"),
        });
    }
    let repair = body.repair.unwrap_or(false);
    if repair && kind != JobKind::Reconcile {
        return Err(ApiError::Validation {
            field: Some("repair".into()),
            message: "repair applies to reconcile jobs only".into(),
        });
    }
    tracing::Span::current().record("provider", provider.as_str());
    if !state.providers.contains(&provider) {
        return Err(ApiError::Conflict {
            code: "provider_disabled",
            message: format!("the {provider} provider is not enabled on this server"),
        });
    }
    let new = NewJob {
        kind,
        provider,
        repair,
        requested_by: "api",
    };
    let job = state
        .db(move |conn| queue_unless_open(conn, new))
        .await?
        .map_err(|open| ApiError::Conflict {
            code: "job_exists",
            message: match open {
                Some(id) => format!(
                    "job '{id}' ({kind} of {provider}) is already queued or running; \
                     cancel it or wait for it to finish"
                ),
                None => format!("another {kind} of {provider} was queued meanwhile; retry"),
            },
        })?;
    tracing::Span::current().record("job_id", tracing::field::display(job.id));
    tracing::info!(kind = %kind, repair, "job queued");
    Ok(HttpResponse::Accepted().json(JobResponse::from(job)))
}

/// One job.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    params(crate::openapi::path::Job),
    responses(
        (status = 200, description = "The job; `report` is null until it finished", body = JobResponse),
        (status = 400, description = "`validation_failed` naming `id`: not a UUID", body = ErrorBody),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(job_id = %path))]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id("id", &path)?;
    let job = state
        .db(move |conn| Ok(jobs::find(conn, id)?))
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(HttpResponse::Ok().json(JobResponse::from(job)))
}

/// A page of jobs, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = ListResponse),
        (status = 400, description = "`validation_failed` naming the parameter", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let filter = JobFilter {
        status: optional("status", query.status.as_deref(), JobStatus::parse)?,
        kind: optional("kind", query.kind.as_deref(), JobKind::parse)?,
        after: query
            .after
            .as_deref()
            .map(|after| parse_job_id("after", after))
            .transpose()?,
        limit: page_limit_up_to(query.limit, MAX_JOBS_PAGE)?,
    };
    let limit = filter.limit as usize;
    let page = state.db(move |conn| Ok(jobs::list(conn, &filter)?)).await?;
    let next_after = (page.len() == limit)
        .then(|| page.last().map(|j| j.id))
        .flatten();
    Ok(HttpResponse::Ok().json(ListResponse {
        jobs: page.into_iter().map(JobResponse::from).collect(),
        next_after,
    }))
}

/// A page of one job's findings, in the order they were found.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/findings",
    operation_id = "list_job_findings",
    tag = "jobs",
    params(crate::openapi::path::Job, FindingsQuery),
    responses(
        (status = 200, description = "A page of the job's findings in the order found", body = FindingsResponse),
        (status = 400, description = "`validation_failed` naming `id` or the parameter", body = ErrorBody),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(job_id = %path))]
pub async fn findings(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<FindingsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id("id", &path)?;
    let query = query.into_inner();
    let kind = query.kind.as_deref().map(finding_kind).transpose()?;
    let after = query.after.as_deref().map(finding_seq).transpose()?;
    let limit = page_limit(query.limit)?;
    let page = state
        .db(move |conn| {
            if jobs::find(conn, id)?.is_none() {
                return Ok(None);
            }
            Ok(Some(jobs::findings(
                conn,
                id,
                kind.as_deref(),
                after,
                limit,
            )?))
        })
        .await?
        .ok_or_else(|| not_found(id))?;
    let next_after = (page.len() == limit as usize)
        .then(|| page.last().map(|f| f.seq))
        .flatten();
    Ok(HttpResponse::Ok().json(FindingsResponse {
        findings: page.into_iter().map(FindingResponse::from).collect(),
        next_after,
    }))
}

/// Cancels a queued job (200); asks a running one to stop at its next checkpoint (202).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    operation_id = "cancel_job",
    tag = "jobs",
    params(crate::openapi::path::Job),
    responses(
        (status = 200, description = "A queued job, now `cancelled`", body = JobResponse),
        (status = 202, description = "A running job, now `cancel_requested`; its consumer stops at the next checkpoint", body = JobResponse),
        (status = 400, description = "`validation_failed` naming `id`: not a UUID", body = ErrorBody),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 409, description = "`job_finished`: it already succeeded, failed or was cancelled", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(job_id = %path))]
pub async fn cancel(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id("id", &path)?;
    let job = state
        .db(move |conn| Ok(jobs::cancel(conn, id)))
        .await?
        .map_err(|e| match e {
            CancelError::NotFound => not_found(id),
            CancelError::Finished(status) => ApiError::Conflict {
                code: "job_finished",
                message: format!(
                    "job '{id}' is already {status}; only queued and running jobs can be cancelled"
                ),
            },
            CancelError::Database(e) => DbError::from(e).into(),
        })?;
    let mut response = if job.status == JobStatus::Cancelled {
        HttpResponse::Ok()
    } else {
        tracing::info!("cancellation requested of a running job");
        HttpResponse::Accepted()
    };
    Ok(response.json(JobResponse::from(job)))
}
