//! The `sync_tasks` table: rows, reads and every write (the queue's rules that combine
//! them with the links are in `crate::queue`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Uuid};

use super::schema::sync_tasks;
use super::statement::statement;
use crate::domain::{CustomerId, Operation, Provider, TaskId, TaskStatus};

/// A row of `sync_tasks`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = sync_tasks)]
pub struct TaskRow {
    pub id: uuid::Uuid,
    pub seq: i64,
    pub provider: Provider,
    pub customer_id: CustomerId,
    pub operation: Operation,
    pub version: i64,
    pub status: TaskStatus,
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
    /// The current claim's token: outcomes apply only under it.
    pub claim_token: Option<uuid::Uuid>,
    /// When the current key was first sent (see [`KEY_MAX_AGE`]).
    pub key_sent_at: Option<DateTime<Utc>>,
}

/// The oldest a key may be when it is sent again: Stripe forgets a key after 24 hours,
/// and then a retry under it is a new request (a second customer, for a create).
pub const KEY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(23 * 60 * 60);

/// A task to add with [`insert_many`].
#[derive(Debug, Clone, Copy)]
pub struct NewTask<'a> {
    pub provider: Provider,
    pub customer_id: &'a CustomerId,
    pub operation: Operation,
    pub version: i64,
    pub request_id: Option<&'a str>,
}

/// A task's base idempotency key: stable per task, so every retry of the same call is
/// recognised by Stripe.
pub fn key_for(id: TaskId) -> String {
    format!("customer-sync-{id}")
}

/// Adds pending tasks in one statement, in the order given (so their `seq` follows it);
/// call it inside the transaction that made the changes.
pub fn insert_many(conn: &mut PgConnection, tasks: &[NewTask<'_>]) -> QueryResult<Vec<TaskRow>> {
    let ids: Vec<TaskId> = tasks.iter().map(|_| TaskId::generate()).collect();
    statement(
        "INSERT INTO sync_tasks \
         (id, provider, customer_id, operation, version, idempotency_key, request_id) \
         SELECT i, p, c, o, v, k, r FROM unnest($1::uuid[], $2::text[], $3::text[], \
           $4::text[], $5::bigint[], $6::text[], $7::text[]) WITH ORDINALITY AS t(i, p, c, o, v, k, r, n) \
         ORDER BY n RETURNING *",
    )
    .bind::<Array<Uuid>, _>(ids.iter().map(|id| id.as_uuid()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(tasks.iter().map(|t| t.provider.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(tasks.iter().map(|t| t.customer_id.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(tasks.iter().map(|t| t.operation.as_str()).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(tasks.iter().map(|t| t.version).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(ids.iter().map(|&id| key_for(id)).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(tasks.iter().map(|t| t.request_id).collect::<Vec<_>>())
    .load(conn)
}

/// Claims up to `limit` due tasks of `provider` for `owner` under a lease.
///
/// Only the oldest unfinished task of each customer and provider can be claimed, so one
/// customer never has two calls in flight at a provider and changes reach it in order.
/// A task whose lease expired (its consumer died) is claimable again.
///
/// A customer's unfinished tasks are looked up as `status <> 'succeeded' AND status <>
/// 'dead'`, the predicate of `sync_tasks_open_customer_idx` alone (so here, in
/// [`next_due`] and in the adoption queries). Written as `status IN ('pending',
/// 'in_flight')`, the provider-wide `sync_tasks_open_seq_idx` matches too, and the planner,
/// misled by statistics taken while few tasks were open, may probe with it, filtering by
/// customer: quadratic in the open tasks.
pub fn claim(
    conn: &mut PgConnection,
    provider: Provider,
    limit: i64,
    owner: &str,
    lease: std::time::Duration,
) -> QueryResult<Vec<TaskRow>> {
    // The pick is a materialized CTE, run once: as `WHERE t.id IN (SELECT ... LIMIT $2
    // FOR UPDATE SKIP LOCKED)` the planner may rescan the subquery once per candidate
    // row (a nested-loop semi join, chosen on a large table), each rescan skipping the
    // rows the last one claimed, and so claim every due task, whatever the limit.
    diesel::sql_query(
        "WITH picked AS MATERIALIZED (
                SELECT h.id FROM sync_tasks h
                 WHERE h.provider = $1
                   AND h.status IN ('pending', 'in_flight')
                   AND ((h.status = 'pending' AND h.next_attempt_at <= now())
                     OR (h.status = 'in_flight' AND h.lease_expires_at < now()))
                   -- Only the oldest unfinished task of its customer: one index probe
                   -- per candidate, and the scan in seq order stops at the limit.
                   -- (Unfinished written as not finished: see above.)
                   AND h.seq = (
                       SELECT min(o.seq) FROM sync_tasks o
                        WHERE o.provider = h.provider AND o.customer_id = h.customer_id
                          AND o.status <> 'succeeded' AND o.status <> 'dead')
                 ORDER BY h.seq
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)
         UPDATE sync_tasks t
            SET status = 'in_flight', lease_owner = $3, claim_token = gen_random_uuid(),
                key_sent_at = COALESCE(t.key_sent_at, now()),
                lease_expires_at = now() + make_interval(secs => $4),
                attempts = t.attempts + 1, updated_at = now()
           FROM picked
          WHERE t.id = picked.id AND t.status IN ('pending', 'in_flight')
      RETURNING t.*",
    )
    .bind::<Text, _>(provider)
    .bind::<BigInt, _>(limit)
    .bind::<Text, _>(owner)
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .load::<TaskRow>(conn)
    .map(|mut rows| {
        rows.sort_by_key(|t| t.seq);
        rows
    })
}

/// The task as this claim holds it: in flight under the claim's token. A consumer whose
/// lease ran out (another one claimed the task since) finds nothing here, so its late
/// outcome changes nothing.
macro_rules! held {
    ($task:expr) => {
        sync_tasks::table
            .find($task.id)
            .filter(sync_tasks::status.eq(TaskStatus::InFlight))
            .filter(sync_tasks::claim_token.eq($task.claim_token))
    };
}

/// Marks the task succeeded (keeping the lease owner: it tells which consumer did it);
/// `false` when the claim no longer holds it.
pub fn mark_succeeded(conn: &mut PgConnection, task: &TaskRow) -> QueryResult<bool> {
    diesel::update(held!(task))
        .set((
            sync_tasks::status.eq(TaskStatus::Succeeded),
            sync_tasks::lease_expires_at.eq(None::<DateTime<Utc>>),
            sync_tasks::last_error.eq(None::<String>),
            sync_tasks::completed_at.eq(diesel::dsl::now),
            sync_tasks::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .map(|n| n == 1)
}

/// Puts the task back to `pending` until `delay` has passed, with its error; `false` when
/// the claim no longer holds it.
pub fn mark_pending(
    conn: &mut PgConnection,
    task: &TaskRow,
    error: &str,
    delay: std::time::Duration,
) -> QueryResult<bool> {
    diesel::sql_query(
        "UPDATE sync_tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                last_error = $2, next_attempt_at = now() + make_interval(secs => $3),
                updated_at = now()
          WHERE id = $1 AND status = 'in_flight' AND claim_token = $4",
    )
    .bind::<Uuid, _>(task.id)
    .bind::<Text, _>(truncate(error))
    .bind::<diesel::sql_types::Double, _>(delay.as_secs_f64())
    .bind::<diesel::sql_types::Nullable<Uuid>, _>(task.claim_token)
    .execute(conn)
    .map(|n| n == 1)
}

/// Marks the task `dead` with the provider's message (it waits for a manual retry);
/// `false` when the claim no longer holds it.
pub fn mark_dead(conn: &mut PgConnection, task: &TaskRow, error: &str) -> QueryResult<bool> {
    diesel::update(held!(task))
        .set((
            sync_tasks::status.eq(TaskStatus::Dead),
            sync_tasks::lease_owner.eq(None::<String>),
            sync_tasks::lease_expires_at.eq(None::<DateTime<Utc>>),
            sync_tasks::last_error.eq(truncate(error)),
            sync_tasks::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .map(|n| n == 1)
}

/// Gives the task a new idempotency-key generation and the emails its reconcile must
/// search; the new generation, or `None` when the claim no longer holds the task.
pub fn next_key_generation(
    conn: &mut PgConnection,
    task: &TaskRow,
    reconcile_emails: Vec<String>,
) -> QueryResult<Option<i32>> {
    diesel::update(held!(task))
        .set((
            sync_tasks::key_generation.eq(sync_tasks::key_generation + 1),
            sync_tasks::reconcile_emails.eq(reconcile_emails),
            sync_tasks::key_sent_at.eq(None::<DateTime<Utc>>),
        ))
        .returning(sync_tasks::key_generation)
        .get_result(conn)
        .optional()
}

/// Extends the claim's lease by `lease` from now; `false` when the claim no longer holds
/// the task (its call should be abandoned).
pub fn renew(
    conn: &mut PgConnection,
    task: &TaskRow,
    lease: std::time::Duration,
) -> QueryResult<bool> {
    diesel::sql_query(
        "UPDATE sync_tasks SET lease_expires_at = now() + make_interval(secs => $2)
          WHERE id = $1 AND status = 'in_flight' AND claim_token = $3",
    )
    .bind::<Uuid, _>(task.id)
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .bind::<diesel::sql_types::Nullable<Uuid>, _>(task.claim_token)
    .execute(conn)
    .map(|n| n == 1)
}

/// Hands an unfinished task back (graceful shutdown) without counting the attempt;
/// `false` when the claim no longer holds it.
pub fn release(conn: &mut PgConnection, task: &TaskRow) -> QueryResult<bool> {
    diesel::update(held!(task))
        .set((
            sync_tasks::status.eq(TaskStatus::Pending),
            sync_tasks::attempts.eq(sync_tasks::attempts - 1),
            sync_tasks::lease_owner.eq(None::<String>),
            sync_tasks::lease_expires_at.eq(None::<DateTime<Utc>>),
            sync_tasks::next_attempt_at.eq(diesel::dsl::now),
            sync_tasks::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .map(|n| n == 1)
}

/// Puts a `dead` task back to `pending` with a fresh attempt budget and a new key
/// generation; `None` when the task is not dead (or does not exist).
pub fn revive(conn: &mut PgConnection, id: TaskId) -> QueryResult<Option<TaskRow>> {
    diesel::update(
        sync_tasks::table
            .find(id.as_uuid())
            .filter(sync_tasks::status.eq(TaskStatus::Dead)),
    )
    .set((
        sync_tasks::status.eq(TaskStatus::Pending),
        sync_tasks::attempts.eq(0),
        // A retry may come days later, past Stripe's 24 hours for a key: the next attempt
        // searches for what an earlier one may have made (a create's reconcile), then
        // calls under a key never sent.
        sync_tasks::key_generation.eq(sync_tasks::key_generation + 1),
        sync_tasks::key_sent_at.eq(None::<DateTime<Utc>>),
        sync_tasks::next_attempt_at.eq(diesel::dsl::now),
        sync_tasks::updated_at.eq(diesel::dsl::now),
    ))
    .returning(TaskRow::as_returning())
    .get_result(conn)
    .optional()
}

fn truncate(error: &str) -> String {
    error.chars().take(2000).collect()
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
        query = query.filter(sync_tasks::status.eq(status));
    }
    if let Some(provider) = filter.provider {
        query = query.filter(sync_tasks::provider.eq(provider));
    }
    if let Some(customer) = &filter.customer_id {
        query = query.filter(sync_tasks::customer_id.eq(customer.clone()));
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
pub fn dead_pairs(
    conn: &mut PgConnection,
    ids: &[&CustomerId],
) -> QueryResult<Vec<(CustomerId, Provider)>> {
    sync_tasks::table
        .filter(sync_tasks::customer_id.eq_any(ids))
        .filter(sync_tasks::status.eq(TaskStatus::Dead))
        .select((sync_tasks::customer_id, sync_tasks::provider))
        .distinct()
        .load(conn)
}

/// How long until the next task of `provider` can be claimed: zero when one is due now,
/// `None` when none is pending or in flight. Only the oldest unfinished task of each
/// customer counts, as only it can be claimed.
pub fn next_due(
    conn: &mut PgConnection,
    provider: Provider,
) -> QueryResult<Option<std::time::Duration>> {
    #[derive(QueryableByName)]
    struct Due {
        #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
        seconds: Option<f64>,
    }
    let due: Due = diesel::sql_query(
        "SELECT EXTRACT(EPOCH FROM min(CASE WHEN h.status = 'pending' \
                THEN h.next_attempt_at ELSE h.lease_expires_at END) - now())::float8 AS seconds \
           FROM sync_tasks h \
          WHERE h.provider = $1 AND h.status IN ('pending', 'in_flight') \
            AND h.seq = (SELECT min(o.seq) FROM sync_tasks o \
                          WHERE o.provider = h.provider AND o.customer_id = h.customer_id \
                            AND o.status <> 'succeeded' AND o.status <> 'dead')",
    )
    .bind::<Text, _>(provider)
    .get_result(conn)?;
    // No open task: NULL (GREATEST in SQL would turn it into 0, "due now").
    Ok(due
        .seconds
        .map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
}

/// A customer's newest `limit` tasks, in acceptance order (its timeline).
pub fn newest_of_customer(
    conn: &mut PgConnection,
    customer: &CustomerId,
    limit: i64,
) -> QueryResult<Vec<TaskRow>> {
    let mut newest: Vec<TaskRow> = sync_tasks::table
        .select(TaskRow::as_select())
        .filter(sync_tasks::customer_id.eq(customer.clone()))
        .order(sync_tasks::seq.desc())
        .limit(limit)
        .load(conn)?;
    newest.reverse();
    Ok(newest)
}
