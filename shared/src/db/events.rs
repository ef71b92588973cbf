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

/// Records what applying each event did (event id, outcome code), in one statement.
pub fn record_outcomes(conn: &mut PgConnection, outcomes: &[(&str, &str)]) -> QueryResult<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    statement("INSERT INTO webhook_event_outcomes (id, outcome) SELECT * FROM unnest($1::text[], $2::text[])")
        .bind::<Array<Text>, _>(outcomes.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(outcomes.iter().map(|(_, o)| *o).collect::<Vec<_>>())
        .execute(conn)
        .map(drop)
}

/// An event row without its payload, as the event listing and a customer's timeline show
/// it, with the local customer it concerns when we know one.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct EventSummary {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    /// Stripe's `created` (Unix seconds).
    #[diesel(sql_type = BigInt)]
    pub created: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub object_id: Option<String>,
    #[diesel(sql_type = Text)]
    pub source: String,
    /// `None` for rows stored before outcomes were recorded.
    #[diesel(sql_type = Nullable<Text>)]
    pub outcome: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub received_at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = Nullable<Text>)]
    pub customer_id: Option<String>,
}

/// Which events a listing shows: newest first, from after the event `after`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub outcome: Option<String>,
    /// The last event of the previous page; `None` for the first page.
    pub after: Option<String>,
    pub limit: i64,
}

/// What a listing found: a page, or no event with the id given as `after`.
#[derive(Debug)]
pub enum EventPage {
    Page(Vec<EventSummary>),
    UnknownAfter,
}

/// The summary's columns from `source` (the events table, or a subset of its columns),
/// with the local customer: the customer's own link for a customer event, the invoice's
/// customer for an invoice event.
fn summary(source: &str) -> String {
    format!(
        "SELECT e.id, e.event_type, e.created, e.object_id, e.source, o.outcome, \
           e.received_at, coalesce(l.customer_id, i.customer_id) AS customer_id \
         FROM {source} e \
         LEFT JOIN webhook_event_outcomes o ON o.id = e.id \
         LEFT JOIN provider_links l ON l.provider = 'stripe' AND l.external_id = e.object_id \
           AND e.event_type LIKE 'customer.%' \
         LEFT JOIN invoices i ON i.id = e.object_id AND e.event_type LIKE 'invoice.%' "
    )
}

/// A page of events, newest first. The walk follows `webhook_events_received_all_idx`
/// backwards from the cursor, so a page costs its rows (and the rows a filter skips).
pub fn list(conn: &mut PgConnection, filter: &EventFilter) -> QueryResult<EventPage> {
    use super::schema::webhook_events;
    let from = match &filter.after {
        None => None,
        Some(after) => {
            let at: Option<chrono::DateTime<chrono::Utc>> = webhook_events::table
                .find(after)
                .select(webhook_events::received_at)
                .first(conn)
                .optional()?;
            match at {
                Some(at) => Some((at, after.clone())),
                None => return Ok(EventPage::UnknownAfter),
            }
        }
    };
    let sql = format!(
        "{} WHERE ($1::text IS NULL OR e.event_type = $1) \
           AND ($2::text IS NULL OR o.outcome = $2) \
           AND ($3::timestamptz IS NULL OR (e.received_at, e.id) < ($3, $4)) \
         ORDER BY e.received_at DESC, e.id DESC LIMIT $5",
        summary("webhook_events")
    );
    diesel::sql_query(sql)
        .bind::<Nullable<Text>, _>(filter.event_type.as_deref())
        .bind::<Nullable<Text>, _>(filter.outcome.as_deref())
        .bind::<Nullable<diesel::sql_types::Timestamptz>, _>(from.as_ref().map(|(at, _)| *at))
        .bind::<Text, _>(from.as_ref().map_or("", |(_, id)| id.as_str()))
        .bind::<BigInt, _>(filter.limit)
        .load(conn)
        .map(EventPage::Page)
}

/// The events about a customer's Stripe customer and its invoices, oldest first, at most
/// `limit` (the newest ones when there are more). The customer's events are found first,
/// through `webhook_events_object_idx`, and only then sorted: asked for the newest rows
/// directly, the planner may walk every event by time looking for the customer's few.
pub fn about_customer(
    conn: &mut PgConnection,
    customer_id: &str,
    limit: i64,
) -> QueryResult<Vec<EventSummary>> {
    let sql = format!(
        "WITH mine AS MATERIALIZED ( \
           SELECT id, event_type, created, object_id, source, received_at \
             FROM webhook_events WHERE object_id = ANY(ARRAY( \
               SELECT external_id FROM provider_links \
                WHERE customer_id = $1 AND provider = 'stripe' AND external_id IS NOT NULL \
               UNION ALL SELECT id FROM invoices WHERE customer_id = $1))) \
         SELECT * FROM ({} ORDER BY e.received_at DESC, e.id DESC LIMIT $2) newest \
         ORDER BY received_at, id",
        summary("mine")
    );
    diesel::sql_query(sql)
        .bind::<Text, _>(customer_id)
        .bind::<BigInt, _>(limit)
        .load(conn)
}
