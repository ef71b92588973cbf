//! The task queue's rules over `sync_tasks` and `provider_links`: tasks are queued inside
//! the change's transaction, claimed under a lease, and finished by recording the
//! provider's state and the task's outcome together.

use diesel::prelude::*;

use crate::db::customers::CustomerRow;
use crate::db::links;
use crate::db::tasks::{self, NewTask, TaskRow};
use crate::domain::{Operation, Provider, TaskId, TaskStatus};

pub use crate::db::tasks::{claim, key_for, next_due, release, renew};

/// Queues one `operation` task per customer and provider (and the links they need), in
/// two statements, in the order given; call it inside the transaction that made the
/// changes. `request_id` is the API request that caused them, when one did.
pub fn enqueue_for(
    conn: &mut PgConnection,
    customers: &[&CustomerRow],
    operation: Operation,
    providers: &[Provider],
    request_id: Option<&str>,
) -> QueryResult<Vec<TaskRow>> {
    if providers.is_empty() || customers.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, kinds): (Vec<_>, Vec<_>) = customers
        .iter()
        .flat_map(|c| providers.iter().map(move |p| (&c.id, *p)))
        .unzip();
    links::ensure_many(conn, &ids, &kinds)?;
    let new: Vec<NewTask<'_>> = customers
        .iter()
        .flat_map(|c| {
            providers.iter().map(move |&provider| NewTask {
                provider,
                customer_id: &c.id,
                operation,
                version: c.version,
                request_id,
            })
        })
        .collect();
    tasks::insert_many(conn, &new)
}

/// Marks the task succeeded and records the provider's id and the version it now holds,
/// in one transaction; `false`, and nothing written, when the claim no longer holds the
/// task (a late outcome: another consumer took it over).
pub fn complete(
    conn: &mut PgConnection,
    task: &TaskRow,
    external_id: Option<&str>,
    synced_version: i64,
) -> QueryResult<bool> {
    conn.transaction(|conn| {
        if !tasks::mark_succeeded(conn, task)? {
            return Ok(false);
        }
        links::record_synced(
            conn,
            &task.customer_id,
            task.provider,
            external_id,
            synced_version,
        )?;
        Ok(true)
    })
}

/// Puts the task back to `pending` until `delay` has passed, or `dead` when it has used
/// `max_attempts`; `None` when the claim no longer holds the task (nothing written).
pub fn retry_later(
    conn: &mut PgConnection,
    task: &TaskRow,
    error: &str,
    delay: std::time::Duration,
    max_attempts: i32,
) -> QueryResult<Option<TaskStatus>> {
    if task.attempts >= max_attempts {
        let error = format!("gave up after {} attempts: {error}", task.attempts);
        return Ok(tasks::mark_dead(conn, task, &error)?.then_some(TaskStatus::Dead));
    }
    Ok(tasks::mark_pending(conn, task, error, delay)?.then_some(TaskStatus::Pending))
}

/// Marks the task `dead` with the provider's message (it waits for a manual retry);
/// `false` when the claim no longer holds the task.
pub fn kill(conn: &mut PgConnection, task: &TaskRow, error: &str) -> QueryResult<bool> {
    tasks::mark_dead(conn, task, error)
}

/// Gives the task a new idempotency-key generation: after a 500 the old key is spent.
/// `sent_email` is the email a create call carried, for the reconcile to search. `None`
/// when the claim no longer holds the task.
pub fn next_key_generation(
    conn: &mut PgConnection,
    task: &TaskRow,
    sent_email: Option<&str>,
) -> QueryResult<Option<i32>> {
    let mut emails = task.reconcile_emails.clone();
    if let Some(email) = sent_email {
        if !emails.iter().any(|e| e == email) {
            emails.push(email.to_owned());
        }
    }
    tasks::next_key_generation(conn, task, emails)
}

/// Why a manual retry was refused.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No such task.
    #[error("no task with id '{0}'")]
    NotFound(TaskId),
    /// Only `dead` tasks can be retried.
    #[error("task '{0}' is {1}, not dead; only dead tasks can be retried")]
    NotDead(TaskId, TaskStatus),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// Puts a `dead` task back to `pending` with a fresh attempt budget.
pub fn retry_dead(conn: &mut PgConnection, id: TaskId) -> Result<TaskRow, RetryError> {
    match tasks::revive(conn, id)? {
        Some(task) => Ok(task),
        None => match tasks::find(conn, id)? {
            Some(task) => Err(RetryError::NotDead(id, task.status)),
            None => Err(RetryError::NotFound(id)),
        },
    }
}

/// The idempotency key for the task's current generation.
pub fn idempotency_key(task: &TaskRow) -> String {
    if task.key_generation == 0 {
        task.idempotency_key.clone()
    } else {
        format!("{}-g{}", task.idempotency_key, task.key_generation)
    }
}
