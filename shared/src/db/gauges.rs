//! What the metrics' gauges read from PostgreSQL: a few small queries over the partial
//! indexes (unfinished and dead tasks, jobs), never over succeeded tasks or events.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};

/// Tasks of one provider in one status, and for pending ones how long the oldest due one
/// has been due.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct TaskCount {
    #[diesel(sql_type = Text)]
    pub provider: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = BigInt)]
    pub count: i64,
    /// Seconds since the oldest due pending task became due (`None`: none is due).
    #[diesel(sql_type = Nullable<Double>)]
    pub oldest_due_seconds: Option<f64>,
}

/// Unfinished and dead tasks by provider and status (succeeded ones are not counted: they
/// are most of the table).
pub fn tasks(conn: &mut PgConnection) -> QueryResult<Vec<TaskCount>> {
    diesel::sql_query(
        "SELECT provider, status, count(*) AS count, \
           EXTRACT(EPOCH FROM now() - min(next_attempt_at) \
             FILTER (WHERE status = 'pending' AND next_attempt_at <= now()))::float8 \
             AS oldest_due_seconds \
         FROM sync_tasks WHERE status IN ('pending', 'in_flight') GROUP BY provider, status \
         UNION ALL \
         SELECT provider, status, count(*), NULL FROM sync_tasks WHERE status = 'dead' \
         GROUP BY provider, status",
    )
    .load(conn)
}

/// Jobs of one kind in one status.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct JobCount {
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = BigInt)]
    pub count: i64,
}

/// Jobs by kind and status.
pub fn jobs(conn: &mut PgConnection) -> QueryResult<Vec<JobCount>> {
    diesel::sql_query("SELECT kind, status, count(*) AS count FROM sync_jobs GROUP BY kind, status")
        .load(conn)
}

/// One count of a running job's progress.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct JobProgress {
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub count: String,
    #[diesel(sql_type = Double)]
    pub value: f64,
}

/// The numeric counts of the running jobs' progress, by kind.
pub fn running_progress(conn: &mut PgConnection) -> QueryResult<Vec<JobProgress>> {
    diesel::sql_query(
        "SELECT j.kind, p.key AS count, sum((p.value #>> '{}')::float8) AS value \
         FROM sync_jobs j, jsonb_each(CASE WHEN jsonb_typeof(j.progress) = 'object' \
                                          THEN j.progress ELSE '{}' END) p \
         WHERE j.status = 'running' AND jsonb_typeof(p.value) = 'number' \
         GROUP BY j.kind, p.key",
    )
    .load(conn)
}

/// When the newest webhook delivery was received.
pub fn last_webhook(conn: &mut PgConnection) -> QueryResult<Option<DateTime<Utc>>> {
    super::events::last_webhook_at(conn)
}
