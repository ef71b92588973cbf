//! A provider account's rate budget, shared through PostgreSQL by every process that calls
//! it (`shared::db::budgets`). A process reserves slots a slice at a time (about 100 ms
//! of the budget), so a call costs no database round trip of its own, and spends them
//! one per call at the slot's time. Slots are spaced at the budget's rate across all
//! processes; a slot not used within [`LAPSE`] (or one spacing, if longer) of its time
//! lapses, so unused slots never bunch up, and any second holds at most 5% more than the
//! rate, and two calls. A process that dies loses at most its current slice.
//!
//! Live writes (the changes users make) come first: background work (imports,
//! reconciles, catch-up) calls [`Budget::acquire_background`], which takes slots only
//! when live traffic holds none ahead of now, and otherwise [`FLOOR`] of the rate, so it
//! always progresses.

use std::time::Duration;

use sha2::{Digest, Sha256};
use shared::db::{self, budgets, DbError, PgPool};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How much of the budget one reservation takes.
const SLICE: Duration = Duration::from_millis(100);
/// The pause after a 429 that says nothing of its own.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// How late a slot may still be used: a busy process wakes a little late, but slots
/// kept longer would bunch up.
const LAPSE: Duration = Duration::from_millis(50);
/// The share of the rate background work gets however busy live traffic is.
pub const FLOOR: f64 = 0.1;
/// How long to wait before asking again when PostgreSQL cannot be reached.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(1);

/// One account's budget as this process sees it.
pub struct Budget {
    pool: PgPool,
    /// The provider (or account class) the budget is for: the metrics' label.
    class: String,
    account: String,
    /// The spacing of slots: one over the rate.
    spacing: Duration,
    /// Slots per reservation.
    slice: u32,
    held: Mutex<Held>,
    /// Slots reserved for background work.
    background: Mutex<Held>,
}

/// The slots this process holds: `left` of them, the next at `next`.
struct Held {
    next: Instant,
    left: u32,
}

impl Held {
    /// Lets slots more than [`LAPSE`] (or one spacing) past lapse; whether one is left.
    fn usable(&mut self, spacing: Duration) -> bool {
        let now = Instant::now();
        while self.left > 0 && self.next + spacing.max(LAPSE) < now {
            self.next += spacing;
            self.left -= 1;
        }
        self.left > 0
    }

    fn fill(&mut self, starts_in: Duration, slots: u32) {
        self.next = Instant::now() + starts_in;
        self.left = slots;
    }

    fn take(&mut self, spacing: Duration) -> Instant {
        let slot = self.next;
        self.next += spacing;
        self.left -= 1;
        slot
    }
}

impl Budget {
    /// The budget `class` (`stripe`, or `stripe-read` and `stripe-write` when split) of
    /// the account whose API key is `key`, at `per_second` calls, created in PostgreSQL if
    /// new. Only a digest of the key names it there.
    pub async fn open(
        pool: PgPool,
        class: &str,
        key: &str,
        per_second: u32,
    ) -> Result<Self, DbError> {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        let account = format!("{class}:{}", &digest[..16]);
        let per_second = f64::from(per_second.max(1));
        let slice = (per_second * SLICE.as_secs_f64()).ceil().max(1.0) as u32;
        let name = account.clone();
        db::run(&pool, move |conn| Ok(budgets::ensure(conn, &name)?)).await?;
        Ok(Self {
            pool,
            class: class.to_owned(),
            account,
            spacing: Duration::from_secs_f64(1.0 / per_second),
            slice,
            held: Mutex::new(Held {
                next: Instant::now(),
                left: 0,
            }),
            background: Mutex::new(Held {
                next: Instant::now(),
                left: 0,
            }),
        })
    }

    /// Waits for this process's next slot for a live write, reserving a slice when it
    /// holds none.
    pub async fn acquire(&self) {
        let asked = Instant::now();
        let slot = {
            let mut held = self.held.lock().await;
            if !held.usable(self.spacing) {
                let starts_in = self.reserve().await;
                held.fill(starts_in, self.slice);
            }
            held.take(self.spacing)
        };
        tokio::time::sleep_until(slot).await;
        self.granted("live", asked);
    }

    /// Counts a permit and the wait for it (`kind`: live or background).
    fn granted(&self, kind: &'static str, asked: Instant) {
        let budget = self.class.clone();
        metrics::counter!(shared::metrics::BUDGET_PERMITS, "budget" => budget.clone(), "kind" => kind)
            .increment(1);
        metrics::histogram!(shared::metrics::BUDGET_WAIT, "budget" => budget, "kind" => kind)
            .record(asked.elapsed().as_secs_f64());
    }

    /// Waits for a slot for background work: one that live traffic leaves, or the floor's.
    pub async fn acquire_background(&self) {
        let asked = Instant::now();
        let slot = {
            let mut held = self.background.lock().await;
            while !held.usable(self.spacing) {
                match self.reserve_background().await {
                    Some(starts_in) => held.fill(starts_in, self.slice),
                    None => tokio::time::sleep(SLICE).await,
                }
            }
            held.take(self.spacing)
        };
        tokio::time::sleep_until(slot).await;
        self.granted("background", asked);
    }

    async fn reserve_background(&self) -> Option<Duration> {
        let span = self.spacing * self.slice;
        let account = self.account.clone();
        let reserved = db::run(&self.pool, move |conn| {
            Ok(budgets::reserve_background(conn, &account, span, FLOOR)?)
        })
        .await;
        match reserved {
            Ok(slice) => slice.map(|s| s.starts_in),
            Err(e) => {
                tracing::warn!(account = %self.account, error = %e, "cannot reserve rate budget; retrying");
                None
            }
        }
    }

    /// Reserves a slice, retrying while PostgreSQL cannot be reached (no call goes out
    /// without a slot).
    async fn reserve(&self) -> Duration {
        let span = self.spacing * self.slice;
        loop {
            let account = self.account.clone();
            let reserved = db::run(&self.pool, move |conn| {
                Ok(budgets::reserve(conn, &account, span)?)
            })
            .await;
            match reserved {
                Ok(slice) => return slice.starts_in,
                Err(e) => {
                    tracing::warn!(account = %self.account, error = %e, "cannot reserve rate budget; retrying");
                    tokio::time::sleep(UNREACHABLE_RETRY).await;
                }
            }
        }
    }

    /// The provider said 429: every process pauses for `retry_after` (or a second), and
    /// this one drops the slots it holds.
    pub async fn slow_down(&self, retry_after: Option<Duration>) {
        let pause = retry_after.unwrap_or(DEFAULT_PAUSE);
        self.held.lock().await.left = 0;
        self.background.lock().await.left = 0;
        let account = self.account.clone();
        let paused = db::run(&self.pool, move |conn| {
            Ok(budgets::pause(conn, &account, pause)?)
        })
        .await;
        match paused {
            Ok(()) => {
                tracing::warn!(account = %self.account, pause_ms = pause.as_millis() as u64, "provider rate limit hit: every consumer pauses")
            }
            Err(e) => {
                tracing::warn!(account = %self.account, error = %e, "cannot pause the shared rate budget")
            }
        }
    }
}
