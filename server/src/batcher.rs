//! Group commit: requests that arrive while a transaction commits are written together
//! in the next one, so a burst costs a few statements and one commit per batch instead
//! of per request. Each caller still gets its answer only after the commit.
//!
//! Items are routed to a committer by a key (a customer), so the changes to one customer
//! stay in one committer, in arrival order, and two committers never wait on each
//! other's row locks.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::db::{DbError, PgConn, PgPool};
use tokio::sync::{mpsc, oneshot};

/// The most items written in one transaction.
const MAX_BATCH: usize = 256;
/// How long a committer's connection may sit idle before it is tested again.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

type Reply<T, E> = oneshot::Sender<Result<T, E>>;

/// Writes a batch in one transaction: one answer per item, in order. An `Err` fails the
/// whole batch (every caller gets it).
pub type CommitFn<I, T, E> =
    dyn Fn(&mut PgConn, Vec<I>) -> Result<Vec<Result<T, E>>, DbError> + Send + Sync;

/// A handle to the committers.
pub struct GroupCommit<I, T, E> {
    queues: Vec<mpsc::Sender<(I, Reply<T, E>)>>,
}

impl<I, T, E> GroupCommit<I, T, E>
where
    I: Send + 'static,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    /// Starts `committers` committer tasks on `pool` (one connection each).
    pub fn start(pool: PgPool, committers: usize, commit: Arc<CommitFn<I, T, E>>) -> Self {
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
/// replaced.
async fn run_batch<I, T, E>(
    pool: &PgPool,
    held: Option<Held>,
    commit: &Arc<CommitFn<I, T, E>>,
    batch: Vec<(I, Reply<T, E>)>,
) -> Option<Held>
where
    I: Send + 'static,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    let (items, replies): (Vec<I>, Vec<Reply<T, E>>) = batch.into_iter().unzip();
    let commit = commit.clone();
    let pool = pool.clone();
    let held = held.filter(|(_, used)| used.elapsed() < RECHECK_AFTER);
    let outcome = tokio::task::spawn_blocking(move || {
        let mut conn = match held {
            Some((conn, _)) => conn,
            None => pool
                .get()
                .map_err(|e| DbError::Unavailable(e.to_string()))?,
        };
        let answers = commit(&mut conn, items)?;
        // A connection whose transaction state is broken (a failed rollback) goes back to
        // the pool, which discards it.
        let reusable = !diesel::r2d2::R2D2Connection::is_broken(&mut *conn);
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
            let message = e.to_string();
            let unavailable = matches!(e, DbError::Unavailable(_));
            for reply in replies {
                let error = if unavailable {
                    DbError::Unavailable(message.clone())
                } else {
                    DbError::Unexpected(anyhow::anyhow!(message.clone()))
                };
                let _ = reply.send(Err(error.into()));
            }
        }
    }
    keep
}
