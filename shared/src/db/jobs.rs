//! The `sync_jobs` table and a job's findings: jobs are queued by the API, a schedule or
//! the catch-up, claimed by one consumer at a time under a lease, checkpointed with the
//! counts of what they found, and finished with a report. Every write to these tables is
//! here.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text, Uuid};
use serde_json::{json, Value};

use super::schema::{sync_job_findings, sync_jobs};
use super::statement::statement;
use crate::domain::{JobKind, JobStatus, Provider};

/// How many findings of each kind the report itself lists; the rest are in the rows.
pub const REPORT_IDS: i64 = 100;

/// A row of `sync_jobs`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = sync_jobs)]
pub struct JobRow {
    pub id: uuid::Uuid,
    pub kind: JobKind,
    pub provider: Provider,
    pub repair: bool,
    pub status: JobStatus,
    pub requested_by: String,
    pub cancel_requested: bool,
    pub phase: String,
    pub checkpoint: Option<String>,
    pub progress: Value,
    pub report: Option<Value>,
    pub error: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub walk_started_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A job to queue.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub kind: JobKind,
    pub provider: Provider,
    pub repair: bool,
    /// `api`, `cli`, `schedule` or `catch-up`.
    pub requested_by: &'a str,
}

/// Queues a job.
pub fn insert(conn: &mut PgConnection, job: NewJob<'_>) -> QueryResult<JobRow> {
    diesel::insert_into(sync_jobs::table)
        .values((
            sync_jobs::id.eq(uuid::Uuid::now_v7()),
            sync_jobs::kind.eq(job.kind),
            sync_jobs::provider.eq(job.provider),
            sync_jobs::repair.eq(job.repair),
            sync_jobs::requested_by.eq(job.requested_by),
        ))
        .returning(JobRow::as_returning())
        .get_result(conn)
}

/// The job, or `None`.
pub fn find(conn: &mut PgConnection, id: uuid::Uuid) -> QueryResult<Option<JobRow>> {
    sync_jobs::table
        .find(id)
        .select(JobRow::as_select())
        .first(conn)
        .optional()
}

/// Filters for a page of jobs, newest first.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<JobKind>,
    /// Jobs older than this one (keyset pagination, newest first).
    pub after: Option<uuid::Uuid>,
    pub limit: i64,
}

/// A page of jobs, newest first (ids are time-ordered).
pub fn list(conn: &mut PgConnection, filter: &JobFilter) -> QueryResult<Vec<JobRow>> {
    let mut query = sync_jobs::table.select(JobRow::as_select()).into_boxed();
    if let Some(status) = filter.status {
        query = query.filter(sync_jobs::status.eq(status));
    }
    if let Some(kind) = filter.kind {
        query = query.filter(sync_jobs::kind.eq(kind));
    }
    if let Some(after) = filter.after {
        query = query.filter(sync_jobs::id.lt(after));
    }
    query
        .order(sync_jobs::id.desc())
        .limit(filter.limit)
        .load(conn)
}

/// Why a job could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no such job")]
    NotFound,
    #[error("the job is already {0}")]
    Finished(JobStatus),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// Cancels a queued job at once; asks a running one to stop at its next checkpoint.
pub fn cancel(conn: &mut PgConnection, id: uuid::Uuid) -> Result<JobRow, CancelError> {
    conn.transaction(|conn| {
        let job: JobRow = sync_jobs::table
            .find(id)
            .select(JobRow::as_select())
            .for_update()
            .first(conn)
            .optional()?
            .ok_or(CancelError::NotFound)?;
        let update = diesel::update(sync_jobs::table.find(id));
        let job = match job.status {
            JobStatus::Queued => update
                .set((
                    sync_jobs::status.eq(JobStatus::Cancelled),
                    sync_jobs::cancel_requested.eq(true),
                    sync_jobs::finished_at.eq(diesel::dsl::now),
                    sync_jobs::updated_at.eq(diesel::dsl::now),
                ))
                .returning(JobRow::as_returning())
                .get_result(conn)?,
            JobStatus::Running => update
                .set((
                    sync_jobs::cancel_requested.eq(true),
                    sync_jobs::updated_at.eq(diesel::dsl::now),
                ))
                .returning(JobRow::as_returning())
                .get_result(conn)?,
            finished => return Err(CancelError::Finished(finished)),
        };
        Ok(job)
    })
}

/// Claims the provider's next job for `owner`: a running job whose consumer stopped
/// renewing its lease (resumed from its checkpoint), else the oldest queued one, unless
/// another consumer runs one now.
pub fn claim(
    conn: &mut PgConnection,
    provider: Provider,
    owner: &str,
    lease: Duration,
) -> QueryResult<Option<JobRow>> {
    conn.transaction(|conn| {
        // Leases are judged by PostgreSQL's clock, as the tasks' are: hosts' clocks need
        // not agree.
        let running: Option<(JobRow, bool)> = sync_jobs::table
            .filter(sync_jobs::provider.eq(provider))
            .filter(sync_jobs::status.eq(JobStatus::Running))
            .select((JobRow::as_select(), lease_ran_out()))
            .for_update()
            .skip_locked()
            .first(conn)
            .optional()?;
        let candidate = match running {
            Some((_, false)) => return Ok(None),
            Some((job, true)) => {
                tracing::warn!(job_id = %job.id, previous_owner = job.lease_owner.as_deref().unwrap_or(""),
                    "resuming a job whose consumer stopped renewing its lease");
                job
            }
            None => {
                // A running job locked by another claim is not seen above: the unique
                // index turns a second start into an error, answered as "none".
                let queued: Option<JobRow> = sync_jobs::table
                    .filter(sync_jobs::provider.eq(provider))
                    .filter(sync_jobs::status.eq(JobStatus::Queued))
                    .order(sync_jobs::created_at)
                    .select(JobRow::as_select())
                    .for_update()
                    .skip_locked()
                    .first(conn)
                    .optional()?;
                match queued {
                    Some(job) => job,
                    None => return Ok(None),
                }
            }
        };
        start(conn, candidate.id, owner, lease)
    })
    .or_else(|e| match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => Ok(None),
        e => Err(e),
    })
}

/// Claims this queued job (or this running one whose lease ran out) for `owner`: how a
/// foreground command runs the job it queued.
pub fn claim_id(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    owner: &str,
    lease: Duration,
) -> QueryResult<Option<JobRow>> {
    conn.transaction(|conn| {
        let job: Option<(JobRow, bool)> = sync_jobs::table
            .find(id)
            .select((JobRow::as_select(), lease_ran_out()))
            .for_update()
            .first(conn)
            .optional()?;
        match job {
            Some((job, ran_out))
                if job.status == JobStatus::Queued
                    || (job.status == JobStatus::Running && ran_out) =>
            {
                start(conn, id, owner, lease)
            }
            _ => Ok(None),
        }
    })
    .or_else(|e| match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => Ok(None),
        e => Err(e),
    })
}

/// Whether a job's lease has run out (or it never had one), by PostgreSQL's clock.
fn lease_ran_out() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql("COALESCE(sync_jobs.lease_expires_at <= now(), true)")
}

fn start(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    owner: &str,
    lease: Duration,
) -> QueryResult<Option<JobRow>> {
    statement(
        "UPDATE sync_jobs SET status = 'running', lease_owner = $1, \
           lease_expires_at = now() + make_interval(secs => $2), \
           started_at = COALESCE(started_at, now()), updated_at = now() \
         WHERE id = $3 RETURNING *",
    )
    .bind::<Text, _>(owner)
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .bind::<Uuid, _>(id)
    .get_result(conn)
    .optional()
}

/// What a lease renewal learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours; go on.
    Held,
    /// Still ours, and cancellation was asked for.
    CancelRequested,
    /// Another consumer took the job over (our lease had run out): stop without writing.
    Lost,
}

/// Extends `owner`'s lease on a running job.
pub fn renew(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    owner: &str,
    lease: Duration,
) -> QueryResult<Renewal> {
    let renewed: Option<bool> = statement(
        "UPDATE sync_jobs SET lease_expires_at = now() + make_interval(secs => $1) \
         WHERE id = $2 AND lease_owner = $3 AND status = 'running' RETURNING cancel_requested",
    )
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .bind::<Uuid, _>(id)
    .bind::<Text, _>(owner)
    .get_result::<CancelFlag>(conn)
    .optional()?
    .map(|row| row.cancel_requested);
    Ok(match renewed {
        None => Renewal::Lost,
        Some(true) => Renewal::CancelRequested,
        Some(false) => Renewal::Held,
    })
}

#[derive(QueryableByName)]
struct CancelFlag {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    cancel_requested: bool,
}

/// Records when the job's walk of the provider began (kept across resumes).
pub fn mark_walk_started(conn: &mut PgConnection, id: uuid::Uuid) -> QueryResult<DateTime<Utc>> {
    diesel::update(sync_jobs::table.find(id))
        .set(sync_jobs::walk_started_at.eq(diesel::dsl::sql::<
            Nullable<diesel::sql_types::Timestamptz>,
        >("COALESCE(walk_started_at, now())")))
        .returning(sync_jobs::walk_started_at)
        .get_result::<Option<DateTime<Utc>>>(conn)
        .map(|at| at.unwrap_or_else(Utc::now))
}

/// One thing a job found about one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// `linked`, `adopted`, `ambiguous`, `imported`, `differs`, `missing`, ...
    pub kind: &'static str,
    /// What it is about, unique within the kind (a Stripe id or a local id).
    pub subject: String,
    pub customer_id: Option<String>,
    pub external_id: Option<String>,
    pub detail: Option<Value>,
}

/// Where a job stands after a step: its phase and the last object done in it.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint<'a> {
    pub phase: &'a str,
    pub checkpoint: Option<&'a str>,
}

/// Records a step's findings (each once, however often a resumed job redoes the step),
/// adds them and `counted` to the progress, and moves the checkpoint; call it in the
/// transaction that made the step's changes. `false` when the job is no longer
/// `owner`'s: the caller rolls back and stops.
pub fn record_step(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    owner: &str,
    findings: &[Finding],
    counted: &[(&str, i64)],
    at: Checkpoint<'_>,
) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Kind {
        #[diesel(sql_type = Text)]
        kind: String,
    }
    let fresh: Vec<Kind> = if findings.is_empty() {
        Vec::new()
    } else {
        statement(
            "INSERT INTO sync_job_findings (job_id, kind, subject, customer_id, external_id, detail) \
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[]) \
             ON CONFLICT DO NOTHING RETURNING kind",
        )
        .bind::<Uuid, _>(id)
        .bind::<Array<Text>, _>(findings.iter().map(|f| f.kind).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(findings.iter().map(|f| f.subject.as_str()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(
            findings
                .iter()
                .map(|f| f.customer_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            findings
                .iter()
                .map(|f| f.external_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Jsonb>>, _>(
            findings.iter().map(|f| f.detail.as_ref()).collect::<Vec<_>>(),
        )
        .load(conn)?
    };
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for row in fresh {
        *counts.entry(row.kind).or_default() += 1;
    }
    for (kind, n) in counted {
        *counts.entry((*kind).to_owned()).or_default() += n;
    }
    let (kinds, ns): (Vec<String>, Vec<i64>) = counts.into_iter().unzip();
    let moved = statement(
        "UPDATE sync_jobs j SET progress = j.progress || COALESCE( \
           (SELECT jsonb_object_agg(t.k, COALESCE((j.progress->>t.k)::bigint, 0) + t.n) \
              FROM unnest($1::text[], $2::bigint[]) AS t(k, n)), '{}'::jsonb), \
           phase = $3, checkpoint = $4, updated_at = now() \
         WHERE j.id = $5 AND j.lease_owner = $6 AND j.status = 'running'",
    )
    .bind::<Array<Text>, _>(kinds)
    .bind::<Array<BigInt>, _>(ns)
    .bind::<Text, _>(at.phase)
    .bind::<Nullable<Text>, _>(at.checkpoint)
    .bind::<Uuid, _>(id)
    .bind::<Text, _>(owner)
    .execute(conn)?;
    Ok(moved == 1)
}

/// The report: the counts so far and the first [`REPORT_IDS`] findings of each kind.
pub fn report(conn: &mut PgConnection, job: &JobRow) -> QueryResult<Value> {
    #[derive(QueryableByName)]
    struct Listed {
        #[diesel(sql_type = Text)]
        kind: String,
        #[diesel(sql_type = Nullable<Text>)]
        customer_id: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        external_id: Option<String>,
        #[diesel(sql_type = Nullable<Jsonb>)]
        detail: Option<Value>,
    }
    // $1 twice: not a cached statement.
    let listed: Vec<Listed> = diesel::sql_query(
        "SELECT f.kind, f.customer_id, f.external_id, f.detail FROM \
           (SELECT DISTINCT kind FROM sync_job_findings WHERE job_id = $1) AS k, LATERAL \
           (SELECT * FROM sync_job_findings WHERE job_id = $1 AND kind = k.kind \
            ORDER BY seq LIMIT $2) AS f ORDER BY f.kind, f.seq",
    )
    .bind::<Uuid, _>(job.id)
    .bind::<BigInt, _>(REPORT_IDS)
    .load(conn)?;
    let mut findings: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for row in listed {
        let mut item = json!({"customer_id": row.customer_id, "external_id": row.external_id});
        if let Some(detail) = row.detail {
            item["detail"] = detail;
        }
        findings.entry(row.kind).or_default().push(item);
    }
    Ok(json!({
        "kind": job.kind,
        "repair": job.repair,
        "counts": job.progress,
        "findings": findings,
        "findings_listed_per_kind": REPORT_IDS,
    }))
}

/// A page of one job's findings, in the order they were found.
pub fn findings(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    kind: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<FindingRow>> {
    let mut query = sync_job_findings::table
        .filter(sync_job_findings::job_id.eq(id))
        .select(FindingRow::as_select())
        .into_boxed();
    if let Some(kind) = kind {
        query = query.filter(sync_job_findings::kind.eq(kind.to_owned()));
    }
    if let Some(after) = after {
        query = query.filter(sync_job_findings::seq.gt(after));
    }
    query.order(sync_job_findings::seq).limit(limit).load(conn)
}

/// A row of `sync_job_findings`.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sync_job_findings)]
pub struct FindingRow {
    pub kind: String,
    pub subject: String,
    pub customer_id: Option<String>,
    pub external_id: Option<String>,
    pub detail: Option<Value>,
    pub seq: i64,
}

/// Ends `owner`'s job with `status`, its report and error; `false` when it is no
/// longer `owner`'s.
pub fn finish(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    owner: &str,
    status: JobStatus,
    error: Option<&str>,
) -> QueryResult<Option<JobRow>> {
    conn.transaction(|conn| {
        let job: Option<JobRow> = sync_jobs::table
            .find(id)
            .filter(sync_jobs::lease_owner.eq(owner))
            .filter(sync_jobs::status.eq(JobStatus::Running))
            .select(JobRow::as_select())
            .for_update()
            .first(conn)
            .optional()?;
        let Some(job) = job else {
            return Ok(None);
        };
        let report = report(conn, &job)?;
        diesel::update(sync_jobs::table.find(id))
            .set((
                sync_jobs::status.eq(status),
                sync_jobs::report.eq(report),
                sync_jobs::error.eq(error),
                sync_jobs::lease_owner.eq(None::<String>),
                sync_jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
                sync_jobs::finished_at.eq(diesel::dsl::now),
                sync_jobs::updated_at.eq(diesel::dsl::now),
            ))
            .returning(JobRow::as_returning())
            .get_result(conn)
            .map(Some)
    })
}

/// The newest job of this kind for the provider, any status.
pub fn latest(
    conn: &mut PgConnection,
    provider: Provider,
    kind: JobKind,
) -> QueryResult<Option<JobRow>> {
    sync_jobs::table
        .filter(sync_jobs::provider.eq(provider))
        .filter(sync_jobs::kind.eq(kind))
        .order(sync_jobs::id.desc())
        .select(JobRow::as_select())
        .first(conn)
        .optional()
}

/// Queues a job unless one of its kind is queued or running for its provider; `Err` is
/// that open job. Concurrent callers agree through an advisory lock held for the
/// transaction.
pub fn queue_unless_open(
    conn: &mut PgConnection,
    job: NewJob<'_>,
) -> QueryResult<Result<JobRow, JobRow>> {
    conn.transaction(|conn| {
        statement("SELECT pg_advisory_xact_lock(hashtext('customer-sync:jobs:' || $1))")
            .bind::<Text, _>(job.provider.as_str())
            .execute(conn)?;
        let open: Option<JobRow> = sync_jobs::table
            .filter(sync_jobs::provider.eq(job.provider))
            .filter(sync_jobs::kind.eq(job.kind))
            .filter(sync_jobs::status.eq_any([JobStatus::Queued, JobStatus::Running]))
            .order(sync_jobs::id)
            .select(JobRow::as_select())
            .first(conn)
            .optional()?;
        match open {
            Some(open) => Ok(Err(open)),
            None => insert(conn, job).map(Ok),
        }
    })
}

/// Hands `owner`'s running job back at its checkpoint: its lease ends now, so the next
/// consumer to look resumes it.
pub fn hand_back(conn: &mut PgConnection, id: uuid::Uuid, owner: &str) -> QueryResult<()> {
    diesel::update(
        sync_jobs::table
            .find(id)
            .filter(sync_jobs::lease_owner.eq(owner))
            .filter(sync_jobs::status.eq(JobStatus::Running)),
    )
    .set((
        sync_jobs::lease_expires_at.eq(diesel::dsl::now),
        sync_jobs::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .map(drop)
}

/// Queues a repairing reconcile of the provider when it is due: none is queued or running,
/// and the last one (or, before any, the events cursor's creation: the deployment's
/// first consumer) is older than `every`. Consumers agree through an advisory lock.
pub fn queue_if_due(
    conn: &mut PgConnection,
    provider: Provider,
    every: Duration,
) -> QueryResult<Option<JobRow>> {
    conn.transaction(|conn| {
        statement("SELECT pg_advisory_xact_lock(hashtext('customer-sync:jobs:' || $1))")
            .bind::<Text, _>(provider.as_str())
            .execute(conn)?;
        #[derive(QueryableByName)]
        struct Due {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            due: bool,
        }
        let due: Due = diesel::sql_query(
            "SELECT COALESCE( \
               NOT EXISTS (SELECT 1 FROM sync_jobs WHERE provider = $1 AND kind = 'reconcile' \
                           AND status IN ('queued', 'running')) \
               AND COALESCE((SELECT max(created_at) FROM sync_jobs \
                             WHERE provider = $1 AND kind = 'reconcile'), \
                            (SELECT created_at FROM sync_cursors WHERE provider = $1)) \
                   < now() - make_interval(secs => $2), false) AS due",
        )
        .bind::<Text, _>(provider.as_str())
        .bind::<diesel::sql_types::Double, _>(every.as_secs_f64())
        .get_result(conn)?;
        if !due.due {
            return Ok(None);
        }
        let job = NewJob {
            kind: JobKind::Reconcile,
            provider,
            repair: true,
            requested_by: "schedule",
        };
        insert(conn, job).map(Some)
    })
}
