//! The task queue in PostgreSQL: enqueue inside a change's transaction, claim under a
//! lease, complete, retry, kill, release.

use diesel::prelude::*;

use crate::db::schema::sync_tasks;
use crate::db::tasks::TaskRow;
use crate::domain::{CustomerId, Operation, Provider, TaskId, TaskStatus};

/// Adds a pending task; call it inside the transaction that made the change.
pub fn enqueue(
    conn: &mut PgConnection,
    provider: Provider,
    customer: &CustomerId,
    operation: Operation,
    version: i64,
    request_id: Option<&str>,
) -> QueryResult<TaskRow> {
    let id = TaskId::generate();
    diesel::insert_into(sync_tasks::table)
        .values((
            sync_tasks::id.eq(id.as_uuid()),
            sync_tasks::provider.eq(provider.as_str()),
            sync_tasks::customer_id.eq(customer.as_str()),
            sync_tasks::operation.eq(operation.as_str()),
            sync_tasks::version.eq(version),
            sync_tasks::idempotency_key.eq(key_for(id)),
            sync_tasks::request_id.eq(request_id),
        ))
        .returning(TaskRow::as_returning())
        .get_result(conn)
}

/// A task to add with [`enqueue_many`].
#[derive(Debug, Clone, Copy)]
pub struct NewTask<'a> {
    pub provider: Provider,
    pub customer_id: &'a str,
    pub operation: Operation,
    pub version: i64,
    pub request_id: Option<&'a str>,
}

/// Adds pending tasks in one statement, in the order given (so their `seq` follows it);
/// call it inside the transaction that made the changes.
pub fn enqueue_many(conn: &mut PgConnection, tasks: &[NewTask<'_>]) -> QueryResult<Vec<TaskRow>> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text, Uuid};
    let ids: Vec<TaskId> = tasks.iter().map(|_| TaskId::generate()).collect();
    crate::db::statement::statement(
        "INSERT INTO sync_tasks \
         (id, provider, customer_id, operation, version, idempotency_key, request_id) \
         SELECT i, p, c, o, v, k, r FROM unnest($1::uuid[], $2::text[], $3::text[], \
           $4::text[], $5::bigint[], $6::text[], $7::text[]) WITH ORDINALITY AS t(i, p, c, o, v, k, r, n) \
         ORDER BY n RETURNING *",
    )
    .bind::<Array<Uuid>, _>(ids.iter().map(|id| id.as_uuid()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(tasks.iter().map(|t| t.provider.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(tasks.iter().map(|t| t.customer_id).collect::<Vec<_>>())
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
pub fn claim(
    conn: &mut PgConnection,
    provider: Provider,
    limit: i64,
    owner: &str,
    lease: std::time::Duration,
) -> QueryResult<Vec<TaskRow>> {
    diesel::sql_query(
        "UPDATE sync_tasks t
            SET status = 'in_flight', lease_owner = $3,
                lease_expires_at = now() + make_interval(secs => $4),
                attempts = t.attempts + 1, updated_at = now()
          WHERE t.id IN (
                SELECT h.id FROM sync_tasks h
                 WHERE h.provider = $1
                   AND h.status IN ('pending', 'in_flight')
                   AND ((h.status = 'pending' AND h.next_attempt_at <= now())
                     OR (h.status = 'in_flight' AND h.lease_expires_at < now()))
                   -- Only the oldest unfinished task of its customer: one index probe
                   -- per candidate, and the scan in seq order stops at the limit.
                   AND h.seq = (
                       SELECT min(o.seq) FROM sync_tasks o
                        WHERE o.provider = h.provider AND o.customer_id = h.customer_id
                          AND o.status IN ('pending', 'in_flight'))
                 ORDER BY h.seq
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)
            AND t.status IN ('pending', 'in_flight')
      RETURNING t.*",
    )
    .bind::<diesel::sql_types::Text, _>(provider.as_str())
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .bind::<diesel::sql_types::Text, _>(owner)
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .load::<TaskRow>(conn)
    .map(|mut rows| {
        rows.sort_by_key(|t| t.seq);
        rows
    })
}

/// Marks the task succeeded and records the provider's id and the version it now holds,
/// in one transaction.
pub fn complete(
    conn: &mut PgConnection,
    task: &TaskRow,
    external_id: Option<&str>,
    synced_version: i64,
) -> QueryResult<()> {
    use crate::db::schema::provider_links as links;
    conn.transaction(|conn| {
        diesel::insert_into(links::table)
            .values((
                links::customer_id.eq(&task.customer_id),
                links::provider.eq(&task.provider),
                links::external_id.eq(external_id),
                links::synced_version.eq(synced_version),
            ))
            .on_conflict((links::customer_id, links::provider))
            .do_update()
            .set((
                links::external_id.eq(diesel::dsl::sql::<
                    diesel::sql_types::Nullable<diesel::sql_types::Text>,
                >(
                    "COALESCE(excluded.external_id, provider_links.external_id)",
                )),
                links::synced_version.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                    "GREATEST(provider_links.synced_version, excluded.synced_version)",
                )),
                links::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
        diesel::update(sync_tasks::table.find(task.id))
            .set((
                sync_tasks::status.eq(TaskStatus::Succeeded.as_str()),
                // The lease owner stays: it tells which consumer did the work.
                sync_tasks::lease_expires_at.eq(None::<chrono::DateTime<chrono::Utc>>),
                sync_tasks::last_error.eq(None::<String>),
                sync_tasks::completed_at.eq(diesel::dsl::now),
                sync_tasks::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
        Ok(())
    })
}

/// Puts the task back to `pending` until `delay` has passed, or `dead` when it has used
/// `max_attempts`.
pub fn retry_later(
    conn: &mut PgConnection,
    task: &TaskRow,
    error: &str,
    delay: std::time::Duration,
    max_attempts: i32,
) -> QueryResult<TaskStatus> {
    if task.attempts >= max_attempts {
        kill(
            conn,
            task,
            &format!("gave up after {} attempts: {error}", task.attempts),
        )?;
        return Ok(TaskStatus::Dead);
    }
    diesel::sql_query(
        "UPDATE sync_tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                last_error = $2, next_attempt_at = now() + make_interval(secs => $3),
                updated_at = now()
          WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(task.id)
    .bind::<diesel::sql_types::Text, _>(truncate(error))
    .bind::<diesel::sql_types::Double, _>(delay.as_secs_f64())
    .execute(conn)?;
    Ok(TaskStatus::Pending)
}

/// Marks the task `dead` with the provider's message; it waits for a manual retry.
pub fn kill(conn: &mut PgConnection, task: &TaskRow, error: &str) -> QueryResult<()> {
    diesel::update(sync_tasks::table.find(task.id))
        .set((
            sync_tasks::status.eq(TaskStatus::Dead.as_str()),
            sync_tasks::lease_owner.eq(None::<String>),
            sync_tasks::lease_expires_at.eq(None::<chrono::DateTime<chrono::Utc>>),
            sync_tasks::last_error.eq(truncate(error)),
            sync_tasks::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// Gives the task a new idempotency-key generation: after a 500 the old key is spent.
/// `sent_email` is the email a create call carried, for the reconcile to search.
pub fn next_key_generation(
    conn: &mut PgConnection,
    task: &TaskRow,
    sent_email: Option<&str>,
) -> QueryResult<i32> {
    let mut emails = task.reconcile_emails.clone();
    if let Some(email) = sent_email {
        if !emails.iter().any(|e| e == email) {
            emails.push(email.to_owned());
        }
    }
    diesel::update(sync_tasks::table.find(task.id))
        .set((
            sync_tasks::key_generation.eq(sync_tasks::key_generation + 1),
            sync_tasks::reconcile_emails.eq(emails),
        ))
        .returning(sync_tasks::key_generation)
        .get_result(conn)
}

/// Hands an unfinished task back (graceful shutdown) without counting the attempt.
pub fn release(conn: &mut PgConnection, task: &TaskRow, owner: &str) -> QueryResult<()> {
    diesel::update(
        sync_tasks::table
            .find(task.id)
            .filter(sync_tasks::status.eq(TaskStatus::InFlight.as_str()))
            .filter(sync_tasks::lease_owner.eq(owner)),
    )
    .set((
        sync_tasks::status.eq(TaskStatus::Pending.as_str()),
        sync_tasks::attempts.eq(sync_tasks::attempts - 1),
        sync_tasks::lease_owner.eq(None::<String>),
        sync_tasks::lease_expires_at.eq(None::<chrono::DateTime<chrono::Utc>>),
        sync_tasks::next_attempt_at.eq(diesel::dsl::now),
        sync_tasks::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .map(|_| ())
}

/// Why a manual retry was refused.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No such task.
    #[error("no task with id '{0}'")]
    NotFound(TaskId),
    /// Only `dead` tasks can be retried.
    #[error("task '{0}' is {1}, not dead; only dead tasks can be retried")]
    NotDead(TaskId, String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// Puts a `dead` task back to `pending` with a fresh attempt budget.
pub fn retry_dead(conn: &mut PgConnection, id: TaskId) -> Result<TaskRow, RetryError> {
    let updated: Option<TaskRow> = diesel::update(
        sync_tasks::table
            .find(id.as_uuid())
            .filter(sync_tasks::status.eq(TaskStatus::Dead.as_str())),
    )
    .set((
        sync_tasks::status.eq(TaskStatus::Pending.as_str()),
        sync_tasks::attempts.eq(0),
        sync_tasks::next_attempt_at.eq(diesel::dsl::now),
        sync_tasks::updated_at.eq(diesel::dsl::now),
    ))
    .returning(TaskRow::as_returning())
    .get_result(conn)
    .optional()?;
    match updated {
        Some(task) => Ok(task),
        None => match crate::db::tasks::find(conn, id)? {
            Some(task) => Err(RetryError::NotDead(id, task.status)),
            None => Err(RetryError::NotFound(id)),
        },
    }
}

/// A task's base idempotency key: stable per task, so every retry of the same call is
/// recognised by Stripe.
pub fn key_for(id: TaskId) -> String {
    format!("customer-sync-{id}")
}

/// The idempotency key for the task's current generation.
pub fn idempotency_key(task: &TaskRow) -> String {
    if task.key_generation == 0 {
        task.idempotency_key.clone()
    } else {
        format!("{}-g{}", task.idempotency_key, task.key_generation)
    }
}

fn truncate(error: &str) -> String {
    error.chars().take(2000).collect()
}
