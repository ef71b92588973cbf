//! The committers (group commit): requests that arrive while a transaction commits are
//! written together in the next one, so a burst costs a few statements and one commit per
//! batch instead of per request. Each caller still gets its answer only after the commit.
//! Catalog changes (create, update, delete) go through [`Changes`], webhook events
//! through [`Events`].
//!
//! Items are routed to a committer by a key (a customer), so the changes to one customer
//! stay in one committer, in arrival order, and two committers never wait on each
//! other's row locks.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shared::catalog::{self, CatalogError, Change, Command, Origin};
use shared::db::{DbError, PgConn, PgPool};
use shared::domain::Provider;
use shared::inbound::{self, Applied, Source};
use shared::stripe::Event;
use tokio::sync::{mpsc, oneshot};

/// Committers for catalog changes: one. A batch of creates is one statement, so a single
/// committer keeps up and its batches are larger; two and three were slower
/// (`bench/NOTES.md`).
const CHANGE_COMMITTERS: usize = 1;
/// Committers for webhook events: two; three was no faster, and four or more made
/// batches smaller and ingest slower (`bench/NOTES.md`).
const EVENT_COMMITTERS: usize = 2;

/// Group commit for catalog changes, by customer.
pub type Changes = GroupCommit<(Command, Origin), Change, CatalogError>;

/// Starts the catalog committers on their own connections.
pub fn changes(url: &secrecy::SecretString, providers: Vec<Provider>) -> Changes {
    let commit: Arc<CommitFn<(Command, Origin), Change, CatalogError>> = Arc::new(
        move |conn, items| match catalog::commit(conn, items, &providers) {
            Err(DbError::Unexpected(e)) if items.len() > 1 => {
                // One bad command must not fail the others: commit them one at a time.
                tracing::warn!(error = %e, size = items.len(), "batch failed; committing one by one");
                Ok(items
                    .iter()
                    .cloned()
                    .map(|(command, origin)| catalog::commit_one(conn, command, origin, &providers))
                    .collect())
            }
            answers => answers,
        },
    );
    let pool = shared::db::bulk_pool(url, CHANGE_COMMITTERS as u32);
    GroupCommit::start("changes", pool, CHANGE_COMMITTERS, commit)
}

/// What the webhook committers write: a verified event with its raw JSON, as it is
/// stored, or the settling of a same-second tie with the customer as Stripe holds it.
#[derive(Debug, Clone)]
pub enum Inbound {
    Event((Event, Value)),
    SettleTie {
        delivery: (Event, Value),
        current: Value,
    },
}

/// Group commit for webhook events, by Stripe customer: a tie's settling goes through
/// the same committer as the customer's events, in their order.
pub type Events = GroupCommit<Inbound, Applied, DbError>;

/// Starts the webhook committers on their own connections.
pub fn events(url: &secrecy::SecretString, providers: Vec<Provider>) -> Events {
    let commit: Arc<CommitFn<Inbound, Applied, DbError>> = Arc::new(move |conn, items| {
        let mut answers = Vec::with_capacity(items.len());
        let mut rest = items;
        while let Some(first) = rest.first() {
            if let Inbound::SettleTie { delivery, current } = first {
                answers.push(inbound::settle_tie(
                    conn,
                    delivery,
                    current,
                    &providers,
                    Source::Webhook,
                ));
                rest = &rest[1..];
                continue;
            }
            let run = rest
                .iter()
                .position(|item| matches!(item, Inbound::SettleTie { .. }))
                .unwrap_or(rest.len());
            let (events, later) = rest.split_at(run);
            let events: Vec<&(Event, Value)> = events
                .iter()
                .map(|item| match item {
                    Inbound::Event(delivery) => delivery,
                    Inbound::SettleTie { .. } => unreachable!("the run holds events only"),
                })
                .collect();
            match inbound::apply_deliveries(conn, &events, &providers, Source::Webhook) {
                Ok(applied) => answers.extend(applied.into_iter().map(Ok)),
                Err(e) if events.len() > 1 && !matches!(e, DbError::Unavailable(_)) => {
                    // One failing event must not fail the others: apply them one at a time.
                    tracing::warn!(error = %e, size = events.len(), "batch failed; applying one by one");
                    answers.extend(
                        events
                            .iter()
                            .map(|(event, raw)| inbound::apply(conn, event, raw, &providers)),
                    );
                }
                Err(e) if answers.is_empty() => return Err(e),
                Err(e) => answers.extend(events.iter().map(|_| Err(e.replicate()))),
            }
            rest = later;
        }
        Ok(answers)
    });
    let pool = shared::db::bulk_pool(url, EVENT_COMMITTERS as u32);
    GroupCommit::start("events", pool, EVENT_COMMITTERS, commit)
}

/// Whether an item's answer is a failure of the database (and so, perhaps, of the
/// connection it ran on) rather than a refusal of the item.
pub trait DatabaseFault {
    fn is_database_failure(&self) -> bool;
}

impl DatabaseFault for DbError {
    fn is_database_failure(&self) -> bool {
        true
    }
}

impl DatabaseFault for CatalogError {
    fn is_database_failure(&self) -> bool {
        matches!(self, CatalogError::Db(_))
    }
}

/// The most items written in one transaction.
const MAX_BATCH: usize = 256;
/// How long a committer's connection may sit idle before it is tested again.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

type Reply<T, E> = oneshot::Sender<Result<T, E>>;

/// Writes a batch in one transaction: one answer per item, in order. An `Err` fails the
/// whole batch (every caller gets it).
pub type CommitFn<I, T, E> =
    dyn Fn(&mut PgConn, &[I]) -> Result<Vec<Result<T, E>>, DbError> + Send + Sync;

/// A handle to the committers.
pub struct GroupCommit<I, T, E> {
    queues: Vec<mpsc::Sender<(I, Reply<T, E>)>>,
}

impl<I, T, E> GroupCommit<I, T, E>
where
    I: Send + 'static,
    T: Send + 'static,
    E: From<DbError> + DatabaseFault + Send + 'static,
{
    /// Starts `committers` committer tasks on `pool` (one connection each); `name` labels
    /// their batch sizes in the metrics.
    pub fn start(
        name: &'static str,
        pool: PgPool,
        committers: usize,
        commit: Arc<CommitFn<I, T, E>>,
    ) -> Self {
        let queues = (0..committers)
            .map(|_| {
                let (queue, mut rx) = mpsc::channel::<(I, Reply<T, E>)>(MAX_BATCH * 4);
                let (pool, commit) = (pool.clone(), commit.clone());
                tokio::spawn(async move {
                    let mut held = None;
                    while let Some(first) = rx.recv().await {
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(item) => batch.push(item),
                                Err(_) => break,
                            }
                        }
                        metrics::histogram!(shared::metrics::COMMIT_BATCH, "committer" => name)
                            .record(batch.len() as f64);
                        held = run_batch(&pool, held, &commit, batch).await;
                    }
                });
                queue
            })
            .collect();
        Self { queues }
    }

    /// Writes `item` as part of its committer's next batch; resolves after the commit.
    pub async fn submit(&self, key: &str, item: I) -> Result<T, E> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let queue = &self.queues[hasher.finish() as usize % self.queues.len()];
        let (reply, answer) = oneshot::channel();
        let stopped = || DbError::Unexpected(anyhow::anyhow!("committer stopped"));
        queue
            .send((item, reply))
            .await
            .map_err(|_| E::from(stopped()))?;
        answer.await.map_err(|_| E::from(stopped()))?
    }
}

/// A connection a committer keeps between batches, with when it last worked.
type Held = (PgConn, Instant);

/// Writes one batch and answers its callers; returns the connection to keep for the next.
///
/// The pool tests a connection with a round trip each time it is checked out, as many
/// round trips as a small batch takes. A committer under load therefore keeps its
/// connection, and goes back to the pool (and its test) only after an idle second, as
/// when PostgreSQL may have restarted, or after a failure. A connection that PostgreSQL
/// dropped while it was held fails its next batch (a clear `Unavailable`), then is
/// replaced. A connection on which any item failed in the database goes back to the pool
/// too (which tests it before its next use): diesel's own check looks at the transaction
/// state only, and a socket that failed inside a batch whose other items were answered
/// would otherwise fail the next batch as well.
async fn run_batch<I, T, E>(
    pool: &PgPool,
    held: Option<Held>,
    commit: &Arc<CommitFn<I, T, E>>,
    batch: Vec<(I, Reply<T, E>)>,
) -> Option<Held>
where
    I: Send + 'static,
    T: Send + 'static,
    E: From<DbError> + DatabaseFault + Send + 'static,
{
    let (items, replies): (Vec<I>, Vec<Reply<T, E>>) = batch.into_iter().unzip();
    let commit = commit.clone();
    let pool = pool.clone();
    let held = held.filter(|(_, used)| used.elapsed() < RECHECK_AFTER);
    let outcome = tokio::task::spawn_blocking(move || {
        let fresh = || pool.get().map_err(|e| DbError::Unavailable(e.to_string()));
        let (mut conn, was_held) = match held {
            Some((conn, _)) => (conn, true),
            None => (fresh()?, false),
        };
        let mut answers = commit(&mut conn, &items);
        if was_held && matches!(answers, Err(DbError::Unavailable(_))) {
            // The connection died while it was held (PostgreSQL restarted, a proxy cut
            // it): drop it and write the batch on one the pool has just tested. Every
            // item is safe to write again (a create of a taken id with the same fields
            // is a retry, an update or delete to the state held is a no-op, an event id
            // seen is a duplicate, an idempotency key taken is answered as in use).
            tracing::warn!(
                "a committer's connection had failed while idle; writing the batch on a new one"
            );
            drop(conn);
            conn = fresh()?;
            answers = commit(&mut conn, &items);
        }
        let answers = answers?;
        // A connection whose transaction state is broken (a failed rollback, or a socket
        // libpq found dead) goes back to the pool, which discards it; one that failed an
        // item goes back to be tested before its next use.
        let reusable = !diesel::r2d2::R2D2Connection::is_broken(&mut *conn)
            && !answers
                .iter()
                .any(|answer| answer.as_ref().is_err_and(E::is_database_failure));
        Ok((answers, reusable.then_some(conn)))
    })
    .await
    .unwrap_or_else(|e| {
        Err(DbError::Unexpected(anyhow::anyhow!(
            "committer failed: {e}"
        )))
    });
    let (answers, keep) = match outcome {
        Ok((answers, conn)) => (Ok(answers), conn.map(|conn| (conn, Instant::now()))),
        Err(e) => (Err(e), None),
    };
    match answers {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            // A batch that failed as a whole says nothing of each item: every caller hears
            // the database was unavailable, or an internal error.
            for reply in replies {
                let error = match e.replicate() {
                    DbError::Unavailable(message) => DbError::Unavailable(message),
                    other => DbError::Unexpected(anyhow::anyhow!(other)),
                };
                let _ = reply.send(Err(error.into()));
            }
        }
    }
    keep
}
