//! The retention pass: every [`EVERY`], the one consumer that takes the advisory lock
//! removes succeeded tasks older than `RETENTION_DAYS` and events older than that (and
//! than Stripe's 30 days) in batches of [`BATCH`], resting between batches so that live
//! traffic keeps the disk and the locks. See `shared::db::retention` for what is kept.

use std::time::{Duration, Instant};

use chrono::Utc;
use shared::db::retention::{self, EventsWalk, EVENTS_KEPT_DAYS};
use shared::db::{DbError, PgPool};
use tokio::sync::watch;

/// How often a pass starts (the first one a minute after start-up).
pub const EVERY: Duration = Duration::from_secs(3600);
/// Rows per statement. A live request that meets a batch waits for it, so the batch's
/// length is what a pass adds to the live p99: `loadgen history`, in alternation with an
/// empty database, measured 1.86x (median of 8 pairs of windows) with 250 rows and 1.32x
/// (of 145) with 100 (BENCHMARKS.md, runs 12 and 13).
pub const BATCH: i64 = 100;
/// The least rest between two batches (with 100 rows a batch, a pass removed about 7,000
/// rows a second on the 2-core machine of BENCHMARKS.md).
const REST: Duration = Duration::from_millis(10);
/// A batch that took `t` rests at least `t` times this before the next one, so a pass
/// keeps PostgreSQL busy at most a quarter of the time, however slow its batches get.
const REST_PER_BUSY: u32 = 3;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub tasks: usize,
    pub events: usize,
}

/// The retention settings of one consumer.
#[derive(Clone)]
pub struct Retention {
    pub pool: PgPool,
    /// Succeeded tasks older than this many days go; events older than this and than
    /// [`EVENTS_KEPT_DAYS`].
    pub days: u32,
    /// Rows per statement.
    pub batch: i64,
    /// The least rest between batches (tests set none).
    pub rest: Duration,
    /// A batch that took `t` is followed by a rest of at least `t` times this.
    pub rest_per_busy: u32,
    /// While this reads `true`, the pass waits before its next batch (`loadgen history`
    /// holds it to measure the same load with and without a pass in alternation). `None`
    /// in production.
    pub hold: Option<watch::Receiver<bool>>,
}

impl Retention {
    pub fn new(pool: PgPool, days: u32) -> Self {
        Self {
            pool,
            days,
            batch: BATCH,
            rest: REST,
            rest_per_busy: REST_PER_BUSY,
            hold: None,
        }
    }

    /// Passes every [`EVERY`] until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut wait = Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = EVERY;
            match self.pass(Some(&mut shutdown)).await {
                Ok(None) => tracing::debug!("retention: another process is pruning"),
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(error = %e, "retention pass failed; next one in an hour"),
            }
        }
    }

    /// One pass, if no other process is running one: what it removed, or `None`.
    /// Stops between batches when `shutdown` fires.
    pub async fn pass(
        &self,
        shutdown: Option<&mut watch::Receiver<bool>>,
    ) -> Result<Option<Pruned>, DbError> {
        let pool = self.pool.clone();
        let conn = tokio::task::spawn_blocking(move || pool.get())
            .await
            .map_err(|e| DbError::Unexpected(anyhow::anyhow!("retention task failed: {e}")))?
            .map_err(|e| DbError::Unavailable(e.to_string()))?;
        // The lock lives on this session: every batch runs on it, and it is released at
        // the end, failed or not (a session that died took the lock with it).
        let mut conn = Some(conn);
        if !blocking(&mut conn, retention::try_lock).await? {
            return Ok(None);
        }
        let result = self.batches(&mut conn, shutdown).await;
        let outcome = if result.is_ok() { "done" } else { "failed" };
        metrics::counter!(shared::metrics::RETENTION_PASSES, "outcome" => outcome).increment(1);
        let unlocked = blocking(&mut conn, retention::unlock).await;
        let pruned = result?;
        unlocked?;
        Ok(Some(pruned))
    }

    async fn batches(
        &self,
        conn: &mut Option<shared::db::PgConn>,
        mut shutdown: Option<&mut watch::Receiver<bool>>,
    ) -> Result<Pruned, DbError> {
        let started = Instant::now();
        let now = Utc::now();
        let tasks_before = now - chrono::Duration::days(i64::from(self.days));
        let events_before =
            now - chrono::Duration::days(i64::from(self.days.max(EVENTS_KEPT_DAYS)));
        tracing::info!(%tasks_before, %events_before, "retention pass started");
        let mut pruned = Pruned::default();
        let stopping = |shutdown: &mut Option<&mut watch::Receiver<bool>>| {
            shutdown.as_deref().is_some_and(|s| *s.borrow())
        };
        let mut hold = self.hold.clone();
        let mut from = None;
        loop {
            released(&mut hold).await;
            let batch = Instant::now();
            let size = self.batch;
            let (removed, last) = blocking(conn, move |c| {
                retention::prune_tasks(c, tasks_before, from, size)
            })
            .await?;
            pruned.tasks += removed;
            removed_rows("sync_tasks", removed);
            if removed < size as usize || stopping(&mut shutdown) {
                break;
            }
            from = last;
            self.progress(&pruned, started);
            tokio::time::sleep(self.pause(batch.elapsed())).await;
        }
        let mut walk: Option<EventsWalk> = None;
        while !stopping(&mut shutdown) {
            released(&mut hold).await;
            let from = walk.clone();
            let batch = Instant::now();
            let size = self.batch;
            let (removed, next) = blocking(conn, move |c| {
                retention::prune_events(c, events_before, from.as_ref(), size)
            })
            .await?;
            pruned.events += removed;
            removed_rows("webhook_events", removed);
            let Some(next) = next else { break };
            walk = Some(next);
            self.progress(&pruned, started);
            tokio::time::sleep(self.pause(batch.elapsed())).await;
        }
        tracing::info!(
            tasks = pruned.tasks,
            events = pruned.events,
            seconds = started.elapsed().as_secs_f64(),
            "retention pass done"
        );
        Ok(pruned)
    }

    /// The rest after a batch that took `took`: [`REST`], or `rest_per_busy` times the
    /// batch when that is longer (none when `rest` is zero).
    fn pause(&self, took: Duration) -> Duration {
        if self.rest.is_zero() {
            Duration::ZERO
        } else {
            self.rest.max(took * self.rest_per_busy)
        }
    }

    fn progress(&self, pruned: &Pruned, started: Instant) {
        let total = pruned.tasks + pruned.events;
        let every = 100_000;
        let batch = self.batch.max(1) as usize;
        if total > 0 && total % every < batch {
            tracing::info!(
                tasks = pruned.tasks,
                events = pruned.events,
                seconds = started.elapsed().as_secs_f64(),
                "retention pass under way"
            );
        }
    }
}

/// Returns when nothing holds the pass (at once without a hold, or once its sender is gone).
async fn released(hold: &mut Option<watch::Receiver<bool>>) {
    if let Some(hold) = hold {
        // An error means the sender is gone: nobody can hold the pass any more.
        let _ = hold.wait_for(|held| !*held).await;
    }
}

fn removed_rows(table: &'static str, rows: usize) {
    metrics::counter!(shared::metrics::RETENTION_REMOVED, "table" => table).increment(rows as u64);
}

/// Runs `work` on the pass's own connection on the blocking pool.
async fn blocking<T, F>(conn: &mut Option<shared::db::PgConn>, work: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce(&mut diesel::PgConnection) -> diesel::QueryResult<T> + Send + 'static,
{
    let mut c = conn
        .take()
        .ok_or_else(|| DbError::Unavailable("the retention connection was lost".into()))?;
    let (c, result) = tokio::task::spawn_blocking(move || {
        let result = work(&mut c);
        (c, result)
    })
    .await
    .map_err(|e| DbError::Unexpected(anyhow::anyhow!("retention task failed: {e}")))?;
    *conn = Some(c);
    result.map_err(DbError::from)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;

    fn ready<F: Future>(future: std::pin::Pin<&mut F>) -> bool {
        future
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn a_held_pass_waits_until_released_and_an_unheld_one_does_not() {
        assert!(ready(pin!(released(&mut None))));

        let (hold, held) = watch::channel(true);
        let mut held = Some(held);
        let mut waiting = pin!(released(&mut held));
        assert!(!ready(waiting.as_mut()), "ran on while held");
        hold.send_replace(false);
        assert!(ready(waiting.as_mut()), "still waiting once released");

        // A dropped sender can never release it again: the pass goes on.
        let (hold, held) = watch::channel(true);
        let mut held = Some(held);
        let mut waiting = pin!(released(&mut held));
        assert!(!ready(waiting.as_mut()));
        drop(hold);
        assert!(
            ready(waiting.as_mut()),
            "still waiting with nobody to release it"
        );
    }
}
