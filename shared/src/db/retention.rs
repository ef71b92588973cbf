//! Retention: succeeded tasks and received events older than their time are removed, a
//! small batch per statement, so that no statement holds row locks or a snapshot for
//! long. What is kept, whatever its age:
//!
//! - tasks that did not succeed (dead ones wait for an operator; open ones are work);
//! - tasks finished after an unfinished job was queued (a job may still read them);
//! - for each object, its latest event (what the ordering rules compare against);
//! - any event younger than [`EVENTS_KEPT_DAYS`]: Stripe may still redeliver it (its
//!   retries last 3 days, its Events API and manual resends reach back 30), and the
//!   event id is what refuses a second application.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};

use super::statement::statement;

/// Events are kept at least this long, whatever `RETENTION_DAYS` says.
pub const EVENTS_KEPT_DAYS: u32 = 30;

/// The advisory lock that lets one process at a time prune ("retain" in ASCII).
pub const LOCK: i64 = 0x7265_7461_696e;

/// Takes the retention lock on this session, if no other session holds it.
pub fn try_lock(conn: &mut PgConnection) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Taken {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        taken: bool,
    }
    let row: Taken = statement("SELECT pg_try_advisory_lock($1) AS taken")
        .bind::<BigInt, _>(LOCK)
        .get_result(conn)?;
    Ok(row.taken)
}

/// Releases the retention lock taken by [`try_lock`] on this session.
pub fn unlock(conn: &mut PgConnection) -> QueryResult<()> {
    statement("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(LOCK)
        .execute(conn)
        .map(|_| ())
}

/// Removes up to `limit` succeeded tasks completed before `before` and not before
/// `from`, oldest first: how many, and the latest completion among them (`None` when it
/// removed none). Passing that back as `from` starts the next batch where this one ended:
/// the rows a batch deletes stay in the index until a vacuum, and a walk from the start
/// would step over all of them again (each batch slower than the one before).
pub fn prune_tasks(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    from: Option<DateTime<Utc>>,
    limit: i64,
) -> QueryResult<(usize, Option<DateTime<Utc>>)> {
    #[derive(QueryableByName)]
    struct Step {
        #[diesel(sql_type = BigInt)]
        removed: i64,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        last: Option<DateTime<Utc>>,
    }
    let step: Step = statement(
        // A CTE, run once (a `WHERE id IN (... LIMIT)` may be rescanned per row). Rows
        // are deleted by their place in the heap: the lock the batch holds on each keeps it
        // there, and it saves a walk down the primary key per row.
        "WITH batch AS MATERIALIZED ( \
           SELECT ctid AS tid, completed_at FROM sync_tasks \
           WHERE status = 'succeeded' AND completed_at < $1 AND completed_at >= $2 \
             AND completed_at < COALESCE((SELECT min(created_at) FROM sync_jobs \
                                          WHERE status IN ('queued', 'running')), 'infinity') \
           ORDER BY completed_at LIMIT $3 \
           FOR UPDATE SKIP LOCKED), \
         gone AS (DELETE FROM sync_tasks t USING batch WHERE t.ctid = batch.tid \
                  RETURNING batch.completed_at) \
         SELECT count(*) AS removed, max(completed_at) AS last FROM gone",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<Timestamptz, _>(from.unwrap_or(DateTime::<Utc>::UNIX_EPOCH))
    .bind::<BigInt, _>(limit)
    .get_result(conn)?;
    Ok((step.removed as usize, step.last))
}

/// Where an events walk has got to: the last event it looked at, in (received, id) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsWalk {
    pub received_at: DateTime<Utc>,
    pub id: String,
}

/// Looks at the next `limit` events received before `before`, after `from` (in received
/// order), and removes those created before it too that are not their object's latest.
/// How many it removed, and where it got to (`None`: nothing was left to look at). Kept
/// events are walked past once, not looked at again by every batch.
///
/// Whether a newer event of the same object exists is asked of `webhook_events_object_idx`
/// from the event's own `created` on (`n.created >= b.created` is what makes it a bound
/// of the index scan, whatever the plan), so the probe reads the event and the next one:
/// not all of the object's events, nor the older ones this pass already deleted, which
/// stay in the index until a vacuum. An event is deleted by
/// its place in the heap (events are never updated, so it is where the batch found it),
/// not looked up again through the primary key.
pub fn prune_events(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    from: Option<&EventsWalk>,
    limit: i64,
) -> QueryResult<(usize, Option<EventsWalk>)> {
    #[derive(QueryableByName)]
    struct Step {
        #[diesel(sql_type = BigInt)]
        removed: i64,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        last_at: Option<DateTime<Utc>>,
        #[diesel(sql_type = Nullable<Text>)]
        last_id: Option<String>,
    }
    let step: Step = statement(
        "WITH batch AS ( \
           SELECT ctid AS tid, id, received_at, created, object_id FROM webhook_events \
           WHERE received_at < $1 AND (received_at, id) > ($2, $3) \
           ORDER BY received_at, id LIMIT $4), \
         gone AS ( \
           DELETE FROM webhook_events e USING batch b \
           WHERE e.ctid = b.tid AND b.created < extract(epoch FROM $1)::bigint \
             AND (b.object_id IS NULL OR EXISTS ( \
                   SELECT 1 FROM webhook_events n \
                   WHERE n.object_id = b.object_id AND n.created >= b.created \
                     AND (n.created > b.created OR n.id > b.id))) \
           RETURNING e.id), \
         outcomes AS (DELETE FROM webhook_event_outcomes o USING gone g WHERE o.id = g.id), \
         last AS (SELECT received_at, id FROM batch ORDER BY received_at DESC, id DESC LIMIT 1) \
         SELECT (SELECT count(*) FROM gone) AS removed, \
                (SELECT received_at FROM last) AS last_at, (SELECT id FROM last) AS last_id",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<Timestamptz, _>(
        from.map(|w| w.received_at)
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
    )
    .bind::<Text, _>(from.map(|w| w.id.as_str()).unwrap_or(""))
    .bind::<BigInt, _>(limit)
    .get_result(conn)?;
    let walk = step
        .last_at
        .zip(step.last_id)
        .map(|(received_at, id)| EventsWalk { received_at, id });
    Ok((step.removed as usize, walk))
}
