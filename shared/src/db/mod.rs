//! PostgreSQL: the pool, database creation, embedded migrations, and the rows and queries per table.

pub mod adoption;
pub mod budgets;
pub mod cursors;
pub mod customers;
pub mod events;
pub mod gauges;
pub mod idempotency;
pub mod invoices;
pub mod jobs;
pub mod links;
pub mod manual_links;
pub mod retention;
pub mod schema;
pub mod statement;
pub mod tasks;

use std::time::Duration;

use anyhow::Context;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{database_name, redact_url, with_database};

/// The migrations in `migrations/`, compiled into every binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// A pool of synchronous Diesel connections; use it through [`run`].
pub type PgPool = Pool<ConnectionManager<PgConnection>>;
/// One connection out of the pool.
pub type PgConn = PooledConnection<ConnectionManager<PgConnection>>;

/// A constant for `pg_advisory_lock`, so that concurrent start-ups migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6375_7374_7379_6e63; // "custsync"

/// The URL as libpq gets it: on the loopback interface, without `sslmode` given, TLS is
/// turned off (libpq's default `prefer` would encrypt every round trip to a local server,
/// which measured as a large share of the server's CPU under load).
pub fn effective_url(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let loopback = ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|l| host == *l || host.starts_with(&format!("{l}:")));
    if !loopback || url.contains("sslmode=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}sslmode=disable")
}

/// Creates the database when it is missing, migrates it, and returns a pool of `max_size` connections.
pub fn connect(url: &SecretString, max_size: u32) -> anyhow::Result<PgPool> {
    let url = &effective_url(url.expose_secret());
    ensure_database(url)?;
    let mut conn = PgConnection::establish(url)
        .with_context(|| format!("connecting to {}", redact_url(url)))?;
    migrate(&mut conn)?;
    Ok(pool_builder(max_size)
        .connection_customizer(Box::new(SessionSettings))
        .build_unchecked(ConnectionManager::new(url)))
}

/// A pool for the group committers: it keeps PostgreSQL's default plan cache mode, so
/// the plans PostgreSQL caches for its own checks (the invoices' foreign key, the
/// customer probe of the links' and tasks' triggers) are reused instead of planned again
/// on each use (under `force_custom_plan`, when those checks were foreign keys run per
/// row, that planning was a third of PostgreSQL's time in the task API). Their
/// statements are inserts and probes by key (`statement`), whose generic plans stay
/// index lookups whatever the statistics.
/// Call it after [`connect`], which creates and migrates the database.
pub fn bulk_pool(url: &SecretString, max_size: u32) -> PgPool {
    pool_builder(max_size)
        .build_unchecked(ConnectionManager::new(effective_url(url.expose_secret())))
}

fn pool_builder(max_size: u32) -> diesel::r2d2::Builder<ConnectionManager<PgConnection>> {
    Pool::builder()
        .max_size(max_size)
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(5))
}

/// Per-connection settings.
#[derive(Debug)]
struct SessionSettings;

#[cfg(test)]
mod tests {
    use super::effective_url;

    #[test]
    fn tls_is_off_only_for_loopback_urls_that_do_not_choose() {
        assert_eq!(
            effective_url("postgres://postgres@127.0.0.1:5432/db"),
            "postgres://postgres@127.0.0.1:5432/db?sslmode=disable"
        );
        assert_eq!(
            effective_url("postgres://u:p@localhost/db?application_name=x"),
            "postgres://u:p@localhost/db?application_name=x&sslmode=disable"
        );
        assert_eq!(
            effective_url("postgres://u@127.0.0.1/db?sslmode=require"),
            "postgres://u@127.0.0.1/db?sslmode=require"
        );
        assert_eq!(
            effective_url("postgres://u@db.internal/db"),
            "postgres://u@db.internal/db"
        );
    }
}

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for SessionSettings {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        // Diesel prepares its statements once per connection. PostgreSQL's generic plan for
        // them is costed with the statistics of the moment, which for our fast-growing
        // tables can be an empty table: a sequential scan that then grows with every row
        // (measured: a 20x slower task API). Custom plans see the table's current size.
        diesel::sql_query("SET plan_cache_mode = force_custom_plan")
            .execute(conn)
            .map(|_| ())
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Creates the database named in `url` when it does not exist yet.
pub fn ensure_database(url: &str) -> anyhow::Result<()> {
    if PgConnection::establish(url).is_ok() {
        return Ok(());
    }
    let name = database_name(url)?;
    let admin_url = with_database(url, "postgres");
    let mut admin = PgConnection::establish(&admin_url).with_context(|| {
        format!(
            "PostgreSQL does not answer at {}; start it (README: The two commands) or set DATABASE_URL",
            redact_url(url)
        )
    })?;
    if !database_exists(&mut admin, &name).context("looking for the database")? {
        // The name was checked to be [A-Za-z0-9_-]; quoting keeps its case.
        match diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut admin) {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            // Another process created it at the same moment.
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("already exists") => {}
            Err(e) => return Err(e).context(format!("creating database {name}")),
        }
    }
    Ok(())
}

/// Whether a database of this name exists on the server.
pub fn database_exists(conn: &mut PgConnection, name: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Exists>(conn)
        .map(|e| e.exists)
}

/// Applies pending migrations under an advisory lock.
pub fn migrate(conn: &mut PgConnection) -> anyhow::Result<()> {
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .execute(conn)
        .context("taking the migration lock")?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.len())
        .map_err(|e| anyhow::anyhow!("running migrations: {e}"));
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .execute(conn)
        .context("releasing the migration lock")?;
    let applied = applied?;
    if applied > 0 {
        tracing::info!(applied, "applied database migrations");
    }
    Ok(())
}

/// Runs synchronous Diesel work on tokio's blocking pool, inside the caller's span,
/// so that the async executor never waits on PostgreSQL.
pub async fn run<T, F>(pool: &PgPool, work: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce(&mut PgConn) -> Result<T, DbError> + Send + 'static,
{
    let pool = pool.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut conn = pool
            .get()
            .map_err(|e| DbError::Unavailable(e.to_string()))?;
        work(&mut conn)
    })
    .await
    .map_err(|e| DbError::Unexpected(anyhow::anyhow!("database task failed: {e}")))?
}

/// What a database call can fail with, as the callers need to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had: PostgreSQL is down or the pool is exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Anything else.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl DbError {
    /// The same error again, for each caller of a batch that failed as a whole (the cause
    /// of an `Unexpected` error is kept as its message).
    pub fn replicate(&self) -> DbError {
        match self {
            DbError::Unavailable(message) => DbError::Unavailable(message.clone()),
            DbError::Conflict(message) => DbError::Conflict(message.clone()),
            DbError::Unexpected(e) => DbError::Unexpected(anyhow::anyhow!("{e:#}")),
        }
    }
}

impl From<diesel::result::Error> for DbError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                DbError::Conflict(info.message().to_owned())
            }
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                DbError::Unavailable(info.message().to_owned())
            }
            other => DbError::Unexpected(anyhow::Error::new(other)),
        }
    }
}
