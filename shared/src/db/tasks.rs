//! The `sync_tasks` table: rows and read queries (the queue's writes are in `crate::queue`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::schema::sync_tasks;
use crate::domain::{CustomerId, Provider, TaskId, TaskStatus};

/// A row of `sync_tasks`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = sync_tasks)]
pub struct TaskRow {
    pub id: uuid::Uuid,
    pub seq: i64,
    pub provider: String,
    pub customer_id: String,
    pub operation: String,
    pub version: i64,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub idempotency_key: String,
    pub key_generation: i32,
    pub reconcile_emails: Vec<String>,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// The task, or `None`.
pub fn find(conn: &mut PgConnection, id: TaskId) -> QueryResult<Option<TaskRow>> {
    sync_tasks::table
        .find(id.as_uuid())
        .select(TaskRow::as_select())
        .first(conn)
        .optional()
}

/// Filters for a page of tasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub provider: Option<Provider>,
    pub customer_id: Option<CustomerId>,
    /// Tasks accepted after this one (keyset pagination).
    pub after: Option<TaskId>,
    pub limit: i64,
}

/// A page of tasks in acceptance order.
pub fn list(conn: &mut PgConnection, filter: &TaskFilter) -> QueryResult<Vec<TaskRow>> {
    let mut query = sync_tasks::table
        .select(TaskRow::as_select())
        .order(sync_tasks::seq.asc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(status) = filter.status {
        query = query.filter(sync_tasks::status.eq(status.as_str()));
    }
    if let Some(provider) = filter.provider {
        query = query.filter(sync_tasks::provider.eq(provider.as_str()));
    }
    if let Some(customer) = &filter.customer_id {
        query = query.filter(sync_tasks::customer_id.eq(customer.as_str().to_owned()));
    }
    if let Some(after) = filter.after {
        let after_seq: Option<i64> = sync_tasks::table
            .find(after.as_uuid())
            .select(sync_tasks::seq)
            .first(conn)
            .optional()?;
        // An unknown cursor yields an empty page rather than the first one again.
        query = query.filter(sync_tasks::seq.gt(after_seq.unwrap_or(i64::MAX)));
    }
    query.load(conn)
}

/// The dead tasks' (customer, provider) pairs among these customers, to report link state.
pub fn dead_pairs(conn: &mut PgConnection, ids: &[String]) -> QueryResult<Vec<(String, String)>> {
    sync_tasks::table
        .filter(sync_tasks::customer_id.eq_any(ids))
        .filter(sync_tasks::status.eq(TaskStatus::Dead.as_str()))
        .select((sync_tasks::customer_id, sync_tasks::provider))
        .distinct()
        .load(conn)
}
