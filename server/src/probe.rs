//! What `GET /api/v1/health` answers from: one thread with its own connection asks
//! PostgreSQL every [`PERIOD`] and notes when it last answered. Health then costs a
//! clock read, so a flood of probes cannot take a connection from the pool the API needs,
//! and it turns 503 once no answer is fresher than [`FRESH`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use secrecy::{ExposeSecret, SecretString};
use shared::db::effective_url;

/// How often the probe asks.
pub const PERIOD: Duration = Duration::from_millis(250);
/// How old the last answer may be for the database to count as up.
pub const FRESH: Duration = Duration::from_secs(1);

/// The latest answer, shared by the probe's thread and the handlers.
pub struct DatabaseProbe {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last answer.
    answered_at: AtomicU64,
}

impl DatabaseProbe {
    /// Starts the probe's thread, which ends once the returned handle is dropped. Call it
    /// once PostgreSQL has answered (start-up connected and migrated), which counts as
    /// the first answer.
    pub fn start(url: &SecretString) -> Arc<Self> {
        let probe = Arc::new(Self {
            epoch: Instant::now(),
            answered_at: AtomicU64::new(0),
        });
        let url = with_connect_timeout(&effective_url(url.expose_secret()));
        let weak = Arc::downgrade(&probe);
        std::thread::Builder::new()
            .name("health-probe".into())
            .spawn(move || run(weak, url))
            .expect("spawning the health probe thread");
        probe
    }

    /// Whether PostgreSQL answered within [`FRESH`].
    pub fn database_up(&self) -> bool {
        let at = self.answered_at.load(Ordering::Acquire);
        self.elapsed_ms().saturating_sub(at) <= FRESH.as_millis() as u64
    }

    fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn answered(&self) {
        self.answered_at.store(self.elapsed_ms(), Ordering::Release);
    }
}

fn run(probe: Weak<DatabaseProbe>, url: String) {
    let mut conn: Option<PgConnection> = None;
    while let Some(probe) = probe.upgrade() {
        if conn.is_none() {
            conn = PgConnection::establish(&url).ok();
        }
        if let Some(c) = conn.as_mut() {
            match diesel::sql_query("SELECT 1").execute(c) {
                Ok(_) => probe.answered(),
                Err(_) => conn = None,
            }
        }
        drop(probe);
        std::thread::sleep(PERIOD);
    }
}

/// A probe must not hang on a host that swallows packets: libpq's connect timeout
/// (whole seconds, at least 2) bounds each attempt.
fn with_connect_timeout(url: &str) -> String {
    if url.contains("connect_timeout=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}connect_timeout=2")
}
