//! The `webhook_events` table: every Stripe event received, once by id.

use std::collections::HashSet;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text};
use serde_json::Value;

use super::statement::statement;
use crate::stripe::Event;

/// Inserts the event rows in one statement; `true` for each event stored now (an id seen
/// before, or earlier in the batch, is a duplicate).
pub fn insert_many(conn: &mut PgConnection, events: &[(Event, Value)]) -> QueryResult<Vec<bool>> {
    #[derive(QueryableByName)]
    struct Stored {
        #[diesel(sql_type = Text)]
        id: String,
    }
    let stored: Vec<Stored> = statement(
        "INSERT INTO webhook_events (id, event_type, created, object_id, payload) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[]) \
         ON CONFLICT DO NOTHING RETURNING id",
    )
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
