//! The PostgreSQL test harness: each test gets its own database, created from a migrated
//! template and dropped afterwards.
//!
//! The server is found in this order: `DATABASE_URL`, a server on 127.0.0.1:5432, or a
//! private cluster started from the installed binaries (as `postgres` when running as root).
//! `CUSTOMER_SYNC_TEST_PG=private` forces the private cluster.

use std::net::SocketAddr;
use std::sync::OnceLock;

use diesel::prelude::*;

use crate::config::with_database;
use crate::local_pg::{answers, LocalCluster};

/// The port of the harness's private cluster.
pub const PRIVATE_PORT: u16 = 54329;

const TEMPLATE_LOCK: i64 = 0x7465_6d70_6c61_7465; // "template"

/// A throw-away database, dropped when this value is.
pub struct TestDatabase {
    /// Its URL.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates a fresh, migrated database.
    pub fn create() -> Self {
        let admin = admin_url();
        let template = template_name();
        let name = format!("cs_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::establish(admin).expect("connecting to the test server");
        diesel::sql_query(format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
        ))
        .execute(&mut conn)
        .expect("creating a test database from the template");
        Self {
            url: with_database(admin, &name),
            name,
        }
    }

    /// A new connection to it.
    pub fn connect(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connecting to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(admin_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn);
        }
    }
}

/// The URL of the `postgres` database on the server the tests use.
pub fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let forced = std::env::var("CUSTOMER_SYNC_TEST_PG").ok();
        if forced.as_deref() != Some("private") {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                if !url.trim().is_empty() {
                    return with_database(url.trim(), "postgres");
                }
            }
            if answers(SocketAddr::from(([127, 0, 0, 1], 5432))) {
                return "postgres://postgres@127.0.0.1:5432/postgres".to_owned();
            }
        }
        let cluster = LocalCluster {
            dir: std::env::temp_dir().join(format!("customer-sync-test-pg-{PRIVATE_PORT}")),
            port: PRIVATE_PORT,
        };
        cluster
            .start()
            .expect("starting a private PostgreSQL for the tests");
        cluster.url("postgres")
    })
}

/// The migrated template's name, creating it once per migrations hash.
fn template_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let name = format!("cs_template_{}", env!("MIGRATIONS_HASH"));
        let admin = admin_url();
        let mut conn = PgConnection::establish(admin).expect("connecting to the test server");
        // Test binaries run in parallel: one builds the template, the others wait.
        diesel::sql_query(format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"))
            .execute(&mut conn)
            .expect("taking the template lock");
        if !crate::db::database_exists(&mut conn, &name).expect("looking up the template") {
            // Build under a temporary name and rename when complete, so a crash
            // mid-way never leaves a half-migrated template behind.
            let building = format!("{name}_building");
            diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
            ))
            .execute(&mut conn)
            .expect("dropping a stale template");
            diesel::sql_query(format!("CREATE DATABASE \"{building}\""))
                .execute(&mut conn)
                .expect("creating the template database");
            {
                let mut template = PgConnection::establish(&with_database(admin, &building))
                    .expect("connecting to the template database");
                crate::db::migrate(&mut template).expect("migrating the template database");
            }
            diesel::sql_query(format!(
                "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
            ))
            .execute(&mut conn)
            .expect("renaming the template database");
        }
        diesel::sql_query(format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"))
            .execute(&mut conn)
            .expect("releasing the template lock");
        name
    })
}

/// Polls `check` until it returns `Some` or `timeout` passes; panics with `what` on timeout.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Checks that every environment variable a binary's `--help` names (clap's `[env: NAME]`)
/// has a row in the README's settings table and a line in `.env.sample`; returns them.
pub fn assert_settings_documented(help: &str) -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let sample = std::fs::read_to_string(format!("{root}/.env.sample")).expect(".env.sample");
    let variables: Vec<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect();
    for variable in &variables {
        let quoted = format!("`{variable}`");
        assert!(
            readme
                .lines()
                .any(|line| line.starts_with("| `") && line.contains(&quoted)),
            "{variable} has no row in the README's settings table"
        );
        assert!(
            sample.contains(&format!("{variable}=")),
            "{variable} is missing from .env.sample"
        );
    }
    variables
}
