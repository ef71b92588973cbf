//! The `webhook_events` table: every Stripe event received, once by id.

use std::collections::HashSet;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text};
use serde_json::Value;

use super::statement::statement;
use crate::stripe::Event;

/// How an event reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A signed webhook delivery.
    Webhook,
    /// The Events API catch-up.
    EventsApi,
}

impl Source {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::EventsApi => "events_api",
        }
    }
}

/// Inserts the event rows in one statement; `true` for each event stored now (an id seen
/// before, or earlier in the batch, is a duplicate, whichever way it came).
pub fn insert_many(
    conn: &mut PgConnection,
    events: &[&(Event, Value)],
    source: Source,
) -> QueryResult<Vec<bool>> {
    #[derive(QueryableByName)]
    struct Stored {
        #[diesel(sql_type = Text)]
        id: String,
    }
    let stored: Vec<Stored> = statement(
        "INSERT INTO webhook_events (source, id, event_type, created, object_id, payload) \
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::jsonb[]) \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind::<Text, _>(source.as_str())
    .bind::<Array<Text>, _>(
        events
            .iter()
            .map(|(e, _)| e.id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(
        events
            .iter()
            .map(|(e, _)| e.kind.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(events.iter().map(|(e, _)| e.created).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        events
            .iter()
            .map(|(e, _)| e.object_id())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Jsonb>, _>(events.iter().map(|(_, raw)| raw).collect::<Vec<_>>())
    .load(conn)?;
    let mut stored: HashSet<String> = stored.into_iter().map(|row| row.id).collect();
    // The first occurrence of an id takes it; later ones are duplicates.
    Ok(events.iter().map(|(e, _)| stored.remove(&e.id)).collect())
}

/// When the newest webhook delivery was received, if any was.
pub fn last_webhook_at(
    conn: &mut PgConnection,
) -> QueryResult<Option<chrono::DateTime<chrono::Utc>>> {
    use super::schema::webhook_events;
    webhook_events::table
        .filter(webhook_events::source.eq(Source::Webhook.as_str()))
        .select(diesel::dsl::max(webhook_events::received_at))
        .first(conn)
}

/// Removes event rows stored by the current transaction that were not applied after all
/// (a same-second tie the caller settles later): a redelivery is then decided anew.
pub fn forget(conn: &mut PgConnection, ids: &[&str]) -> QueryResult<usize> {
    statement("DELETE FROM webhook_events WHERE id = ANY($1)")
        .bind::<Array<Text>, _>(ids)
        .execute(conn)
}
