//! The `sync_cursors` table: per provider, how far the Events API catch-up has applied
//! events, when it last reached the newest one, and which consumer polls now (one at a
//! time, under a lease). Every write to the table is here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Double, Nullable, Text};

use super::schema::sync_cursors;
use super::statement::statement;
use crate::domain::Provider;

/// A row of `sync_cursors`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = sync_cursors)]
pub struct CursorRow {
    pub provider: Provider,
    /// The last event applied; `None` until one was.
    pub last_event_id: Option<String>,
    pub last_event_created: Option<i64>,
    /// When a poll last reached the newest event: what the cursor's age counts from.
    pub caught_up_at: DateTime<Utc>,
    pub last_poll_at: Option<DateTime<Utc>>,
    pub last_poll_error: Option<String>,
    /// Events the last poll applied that had not come by webhook first.
    pub last_poll_applied: i64,
    pub poll_owner: Option<String>,
    pub poll_lease_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CursorRow {
    /// How long ago the catch-up last reached the newest event.
    pub fn age(&self) -> Duration {
        (Utc::now() - self.caught_up_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// The provider's cursor, or `None` before the first poll.
pub fn find(conn: &mut PgConnection, provider: Provider) -> QueryResult<Option<CursorRow>> {
    sync_cursors::table
        .find(provider)
        .select(CursorRow::as_select())
        .first(conn)
        .optional()
}

/// Takes the right to poll for `lease` when nobody holds it (the first poll creates the
/// cursor, caught up as of now); `None` while another consumer polls.
pub fn claim_poll(
    conn: &mut PgConnection,
    provider: Provider,
    owner: &str,
    lease: Duration,
) -> QueryResult<Option<CursorRow>> {
    statement(
        "INSERT INTO sync_cursors (provider, poll_owner, poll_lease_until) \
           VALUES ($1, $2, now() + make_interval(secs => $3)) \
         ON CONFLICT (provider) DO UPDATE SET poll_owner = excluded.poll_owner, \
           poll_lease_until = excluded.poll_lease_until, last_poll_applied = 0 \
         WHERE sync_cursors.poll_lease_until IS NULL OR sync_cursors.poll_lease_until < now() \
           OR sync_cursors.poll_owner = excluded.poll_owner \
         RETURNING *",
    )
    .bind::<Text, _>(provider.as_str())
    .bind::<Text, _>(owner)
    .bind::<Double, _>(lease.as_secs_f64())
    .get_result(conn)
    .optional()
}

/// Moves the cursor to the last event of an applied page; call it in the transaction that
/// applied the page. `false` when `owner` no longer holds the poll.
pub fn advance(
    conn: &mut PgConnection,
    provider: Provider,
    owner: &str,
    last_event_id: &str,
    last_event_created: i64,
    applied: i64,
) -> QueryResult<bool> {
    let moved = statement(
        "UPDATE sync_cursors SET last_event_id = $1, last_event_created = $2, \
           last_poll_applied = last_poll_applied + $3, updated_at = now() \
         WHERE provider = $4 AND poll_owner = $5",
    )
    .bind::<Text, _>(last_event_id)
    .bind::<diesel::sql_types::BigInt, _>(last_event_created)
    .bind::<diesel::sql_types::BigInt, _>(applied)
    .bind::<Text, _>(provider.as_str())
    .bind::<Text, _>(owner)
    .execute(conn)?;
    Ok(moved == 1)
}

/// Ends a poll: when it reached the newest event, the cursor is caught up as of
/// `walk_began` (the moment the walk began: anything later is the next poll's); the
/// poll's error otherwise. The lease is let go.
pub fn finish_poll(
    conn: &mut PgConnection,
    provider: Provider,
    owner: &str,
    caught_up_as_of: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> QueryResult<()> {
    statement(
        "UPDATE sync_cursors SET last_poll_at = now(), last_poll_error = $1, \
           caught_up_at = COALESCE($2, caught_up_at), poll_owner = NULL, \
           poll_lease_until = NULL, updated_at = now() \
         WHERE provider = $3 AND poll_owner = $4",
    )
    .bind::<Nullable<Text>, _>(error)
    .bind::<Nullable<diesel::sql_types::Timestamptz>, _>(caught_up_as_of)
    .bind::<Text, _>(provider.as_str())
    .bind::<Text, _>(owner)
    .execute(conn)
    .map(drop)
}

/// Starts the cursor again at `event` (the newest event now, or none), caught up as of
/// now: after the events it pointed at expired, only a reconcile can find what they held.
pub fn restart(
    conn: &mut PgConnection,
    provider: Provider,
    owner: &str,
    event: Option<(&str, i64)>,
) -> QueryResult<()> {
    statement(
        "UPDATE sync_cursors SET last_event_id = $1, last_event_created = $2, \
           caught_up_at = now(), updated_at = now() \
         WHERE provider = $3 AND poll_owner = $4",
    )
    .bind::<Nullable<Text>, _>(event.map(|e| e.0))
    .bind::<Nullable<diesel::sql_types::BigInt>, _>(event.map(|e| e.1))
    .bind::<Text, _>(provider.as_str())
    .bind::<Text, _>(owner)
    .execute(conn)
    .map(drop)
}
