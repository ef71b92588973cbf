//! The Events API catch-up: every `STRIPE_EVENTS_POLL_SECS`, one consumer at a time (a
//! lease on the cursor row) walks Stripe's customer and invoice events forward from the
//! cursor kept in PostgreSQL and applies them through the webhook's inbound path, so an
//! event is applied once whichever way it came, and a missed webhook is healed within the
//! poll interval. Stripe keeps events for 30 days: a cursor older than 25 days is warned
//! about, and beyond 30 the catch-up cannot be trusted, so it queues a repairing
//! reconcile and starts again from the newest event.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use shared::db::cursors::{self, CursorRow};
use shared::db::jobs::{self, NewJob};
use shared::db::{self, DbError, PgPool};
use shared::domain::{JobKind, Provider};
use shared::inbound::{self, Applied, Effect, Source};
use shared::stripe::{Event, StripeError};
use tokio::sync::watch;

use crate::jobs::Reader;

/// Events per page.
const PAGE: u8 = 100;
/// How long one poll may hold the cursor before another consumer may take it.
const LEASE: Duration = Duration::from_secs(300);
/// A cursor this old is warned about.
pub const WARN_AGE: Duration = Duration::from_secs(25 * 86_400);
/// Stripe keeps events this long: a cursor older than this may have missed some.
pub const EVENTS_KEPT: Duration = Duration::from_secs(30 * 86_400);
/// When the first poll of a new cursor looks back (events just before it was created).
const FIRST_LOOK_BACK: i64 = 5;

/// What the catch-up needs.
pub struct CatchUp {
    pub pool: PgPool,
    pub reader: Arc<Reader>,
    pub owner: String,
    /// Every provider of the deployment (changes are passed on to the others).
    pub providers: Vec<Provider>,
    pub every: Duration,
}

/// What one poll did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// Events read from Stripe.
    pub read: usize,
    /// Events applied now (not heard by webhook before).
    pub applied: usize,
    /// Whether the cursor had fallen beyond Stripe's 30 days (a reconcile was queued).
    pub expired: bool,
}

impl CatchUp {
    /// Creates the cursor (caught up as of now) without asking Stripe, then polls every
    /// interval until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let owner = self.owner.clone();
        let started = db::run(&self.pool, move |conn| {
            if cursors::find(conn, Provider::Stripe)?.is_none() {
                // Claiming creates the row; letting go keeps it.
                cursors::claim_poll(conn, Provider::Stripe, &owner, LEASE)?;
                cursors::finish_poll(conn, Provider::Stripe, &owner, None, None)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = started {
            tracing::warn!(error = %e, "creating the events cursor failed; the first poll will");
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            match self.poll().await {
                Ok(Some(polled)) if polled.applied > 0 => tracing::info!(
                    read = polled.read,
                    applied = polled.applied,
                    "catch-up applied events the webhook had not delivered"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "events catch-up failed; the next poll retries")
                }
            }
        }
    }

    /// One poll, if no other consumer is polling: `None` when one is.
    pub async fn poll(&self) -> anyhow::Result<Option<Polled>> {
        let owner = self.owner.clone();
        let claimed = db::run(&self.pool, move |conn| {
            Ok(cursors::claim_poll(conn, Provider::Stripe, &owner, LEASE)?)
        })
        .await?;
        let Some(cursor) = claimed else {
            return Ok(None);
        };
        let began = Utc::now();
        let outcome = self.walk(&cursor).await;
        let owner = self.owner.clone();
        let (caught_up, error) = match &outcome {
            Ok(_) => (Some(began), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        db::run(&self.pool, move |conn| {
            Ok(cursors::finish_poll(
                conn,
                Provider::Stripe,
                &owner,
                caught_up,
                error.as_deref(),
            )?)
        })
        .await?;
        outcome.map(Some)
    }

    async fn walk(&self, cursor: &CursorRow) -> anyhow::Result<Polled> {
        let age = cursor.age();
        if age > EVENTS_KEPT {
            return self.expired(cursor).await;
        }
        if age > WARN_AGE {
            tracing::error!(
                days = age.as_secs() / 86_400,
                "the events catch-up is more than 25 days behind: Stripe forgets events after 30; \
                 run a consumer for the stripe topic, or a reconcile"
            );
        }
        let mut polled = Polled::default();
        let Some(mut last) = cursor.last_event_id.clone() else {
            return self.first_walk(cursor).await;
        };
        loop {
            let before = last.clone();
            let read = self
                .reader
                .read(|client| {
                    let before = before.clone();
                    async move { client.list_events(Some(&before), PAGE).await }
                })
                .await;
            let page = match read {
                Ok(page) => page,
                // The cursor's event is gone: Stripe forgot it (30 days), so did we.
                Err(e) if is_missing(&e) => return self.expired(cursor).await,
                Err(e) => return Err(e.into()),
            };
            let mut events = page.data;
            // A page after `ending_before` is still newest first.
            events.reverse();
            let Some(newest) = events
                .last()
                .and_then(|e| e["id"].as_str())
                .map(str::to_owned)
            else {
                return Ok(polled);
            };
            polled.read += events.len();
            polled.applied += self.apply(events).await?;
            last = newest;
            if !page.has_more {
                return Ok(polled);
            }
        }
    }

    /// A cursor with no event yet: the events since it was created, newest first until
    /// older ones, then applied oldest first.
    async fn first_walk(&self, cursor: &CursorRow) -> anyhow::Result<Polled> {
        let since = cursor.caught_up_at.timestamp() - FIRST_LOOK_BACK;
        let mut collected: Vec<Value> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let from = after.clone();
            let page = self
                .reader
                .read(|client| {
                    let from = from.clone();
                    async move { client.list_events_after(from.as_deref(), PAGE).await }
                })
                .await?;
            let older = page
                .data
                .iter()
                .any(|e| e["created"].as_i64().unwrap_or(0) < since);
            after = page
                .data
                .last()
                .and_then(|e| e["id"].as_str())
                .map(str::to_owned);
            collected.extend(
                page.data
                    .into_iter()
                    .filter(|e| e["created"].as_i64().unwrap_or(0) >= since),
            );
            if older || !page.has_more || after.is_none() {
                break;
            }
        }
        collected.reverse();
        let read = collected.len();
        let applied = if collected.is_empty() {
            0
        } else {
            self.apply(collected).await?
        };
        Ok(Polled {
            read,
            applied,
            expired: false,
        })
    }

    /// Beyond Stripe's 30 days: queue a repairing reconcile and start again at the
    /// newest event.
    async fn expired(&self, cursor: &CursorRow) -> anyhow::Result<Polled> {
        tracing::error!(
            days = cursor.age().as_secs() / 86_400,
            "the events catch-up is beyond Stripe's 30 days of events: a repairing reconcile is queued"
        );
        let newest = self
            .reader
            .read(|client| async move { client.list_events(None, 1).await })
            .await?;
        let newest = newest
            .data
            .first()
            .and_then(|e| Some((e["id"].as_str()?.to_owned(), e["created"].as_i64()?)));
        let owner = self.owner.clone();
        db::run(&self.pool, move |conn| {
            let job = NewJob {
                kind: JobKind::Reconcile,
                provider: Provider::Stripe,
                repair: true,
                requested_by: "catch-up",
            };
            // Unless one is open already: that one will find the same.
            let _ = jobs::queue_unless_open(conn, job)?;
            cursors::restart(
                conn,
                Provider::Stripe,
                &owner,
                newest.as_ref().map(|(id, created)| (id.as_str(), *created)),
            )?;
            Ok(())
        })
        .await?;
        Ok(Polled {
            expired: true,
            ..Polled::default()
        })
    }

    /// Applies a chronological page of events and moves the cursor, in one transaction;
    /// settles same-second ties from Stripe as the webhook does. Answers how many were
    /// new.
    async fn apply(&self, page: Vec<Value>) -> anyhow::Result<usize> {
        let mut events = Vec::with_capacity(page.len());
        for raw in page {
            match Event::from_value(raw) {
                Ok(event) => events.push(event),
                Err(e) => tracing::warn!(error = %e, "skipping an event the catch-up cannot read"),
            }
        }
        let Some((last, _)) = events.last() else {
            return Ok(0);
        };
        let (last_id, last_created) = (last.id.clone(), last.created);
        let (owner, providers) = (self.owner.clone(), self.providers.clone());
        let applied = db::run(&self.pool, move |conn| {
            use diesel::Connection;
            conn.transaction(|conn| {
                let answers =
                    inbound::apply_batch_from(conn, &events, &providers, Source::EventsApi)?;
                let fresh = answers.iter().filter(|a| **a != Applied::Duplicate).count();
                if !cursors::advance(
                    conn,
                    Provider::Stripe,
                    &owner,
                    &last_id,
                    last_created,
                    fresh as i64,
                )? {
                    return Err(DbError::Conflict("the poll's lease was lost".into()));
                }
                let ties: Vec<(Event, Value)> = answers
                    .iter()
                    .zip(&events)
                    .filter(|(a, _)| **a == Applied::Handled(Effect::Tie))
                    .map(|(_, delivery)| delivery.clone())
                    .collect();
                Ok((fresh, ties))
            })
        })
        .await?;
        let (fresh, ties) = applied;
        for tie in ties {
            self.settle_tie(tie).await;
        }
        Ok(fresh)
    }

    /// Settles a same-second tie with the customer as Stripe holds it now (which also
    /// records the event); left unrecorded when Stripe cannot be read, for a redelivery.
    async fn settle_tie(&self, delivery: (Event, Value)) {
        let Some(id) = delivery.0.object_id().map(str::to_owned) else {
            return;
        };
        let current = match self
            .reader
            .read(|client| {
                let id = id.clone();
                async move { client.retrieve_customer(&id).await }
            })
            .await
        {
            Ok((_, raw)) => raw,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the customer to settle a same-second tie");
                return;
            }
        };
        let providers = self.providers.clone();
        let applied = db::run(&self.pool, move |conn| {
            inbound::settle_tie(conn, &delivery, &current, &providers, Source::EventsApi)
        })
        .await;
        if let Err(e) = applied {
            tracing::warn!(error = %e, "settling a same-second tie failed");
        }
    }
}

/// Stripe's answer for a cursor naming an object it no longer has.
fn is_missing(e: &StripeError) -> bool {
    matches!(e, StripeError::Api { status: 404, .. })
        || matches!(e, StripeError::Api { code: Some(code), .. } if code == "resource_missing")
}
