//! The task queue in PostgreSQL: enqueue inside a change's transaction.

use diesel::prelude::*;

use crate::db::schema::sync_tasks;
use crate::db::tasks::TaskRow;
use crate::domain::{CustomerId, Operation, Provider, TaskId};

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
            // Stable per task, so every retry of the same call is recognised by Stripe.
            sync_tasks::idempotency_key.eq(format!("customer-sync-{id}")),
            sync_tasks::request_id.eq(request_id),
        ))
        .returning(TaskRow::as_returning())
        .get_result(conn)
}
