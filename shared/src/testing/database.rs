//! The PostgreSQL harness: each test gets its own database, created from a migrated
//! template and dropped afterwards, and the queries tests use to look inside it.
//!
//! The server is found in this order: `DATABASE_URL`, a server on 127.0.0.1:5432, or a
//! private cluster started from the installed binaries (as `postgres` when running as root).
//! `CUSTOMER_SYNC_TEST_PG=private` forces the private cluster.

use std::net::SocketAddr;
use std::sync::OnceLock;

use diesel::prelude::*;

use crate::config::with_database;
use crate::db::schema::{customers, sync_tasks};
use crate::domain::{Provider, TaskStatus};
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

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection to it.
    pub fn connect(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connecting to the test database")
    }

    /// Rows in `table`.
    pub fn count(&self, table: &str) -> i64 {
        self.count_where(table, "true")
    }

    /// Rows of `table` matching `condition` (SQL).
    pub fn count_where(&self, table: &str, condition: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query(format!(
            "SELECT count(*) AS n FROM {table} WHERE {condition}"
        ))
        .get_result::<Count>(&mut self.connect())
        .expect("counting rows")
        .n
    }

    /// Task counts by status, ordered by status name.
    pub fn task_statuses(&self) -> Vec<(String, i64)> {
        let mut counts: Vec<(String, i64)> = sync_tasks::table
            .group_by(sync_tasks::status)
            .select((sync_tasks::status, diesel::dsl::count_star()))
            .load::<(TaskStatus, i64)>(&mut self.connect())
            .expect("counting tasks")
            .into_iter()
            .map(|(status, n)| (status.to_string(), n))
            .collect();
        counts.sort();
        counts
    }

    /// Waits until every task succeeded and there are `expected` of them (polling with a
    /// deadline); panics with the open tasks after `timeout`. Answers the counts.
    pub async fn wait_all_succeeded(
        &self,
        expected: i64,
        timeout: std::time::Duration,
    ) -> Vec<(String, i64)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let statuses = self.task_statuses();
            if statuses == [("succeeded".to_owned(), expected)] {
                return statuses;
            }
            if tokio::time::Instant::now() >= deadline {
                let open = self.open_tasks();
                panic!("tasks not drained: {statuses:?}; open: {open:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Tasks not succeeded, as (customer, status, attempts, next attempt, last error),
    /// to say what is stuck when a wait times out.
    pub fn open_tasks(&self) -> Vec<String> {
        sync_tasks::table
            .filter(sync_tasks::status.ne(TaskStatus::Succeeded))
            .select((
                sync_tasks::customer_id,
                sync_tasks::status,
                sync_tasks::attempts,
                sync_tasks::next_attempt_at,
                sync_tasks::last_error,
            ))
            .load::<(
                String,
                String,
                i32,
                chrono::DateTime<chrono::Utc>,
                Option<String>,
            )>(&mut self.connect())
            .expect("listing open tasks")
            .into_iter()
            .map(|t| format!("{t:?}"))
            .collect()
    }

    /// The consumers that completed tasks (the lease owner is kept on success).
    pub fn completed_by(&self) -> std::collections::BTreeSet<String> {
        sync_tasks::table
            .filter(sync_tasks::status.eq(TaskStatus::Succeeded))
            .select(sync_tasks::lease_owner)
            .load::<Option<String>>(&mut self.connect())
            .expect("listing lease owners")
            .into_iter()
            .flatten()
            .collect()
    }

    /// The most attempts any task of `provider` took.
    pub fn max_attempts(&self, provider: Provider) -> i32 {
        sync_tasks::table
            .filter(sync_tasks::provider.eq(provider))
            .select(diesel::dsl::max(sync_tasks::attempts))
            .first::<Option<i32>>(&mut self.connect())
            .expect("reading attempts")
            .unwrap_or(0)
    }

    /// Local customers (tombstones included) as (id, name, email, deleted), by id.
    pub fn local_customers(&self) -> Vec<(String, String, String, bool)> {
        customers::table
            .select((
                customers::id,
                customers::name,
                customers::email,
                customers::deleted_at.is_not_null(),
            ))
            .order(customers::id)
            .load(&mut self.connect())
            .expect("listing customers")
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

/// One counter of `index` in `pg_stat_user_indexes` (`idx_scan`, `idx_tup_read`, ...), as
/// PostgreSQL's statistics hold it now: this session's own counts are flushed first.
pub fn index_stat(conn: &mut PgConnection, index: &str, counter: &str) -> i64 {
    use diesel::connection::SimpleConnection;
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Stat {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        value: i64,
    }
    conn.batch_execute("SELECT pg_stat_force_next_flush(); SELECT pg_stat_clear_snapshot()")
        .expect("flushing this session's statistics");
    diesel::sql_query(format!(
        "SELECT {counter} AS value FROM pg_stat_user_indexes WHERE indexrelname = '{index}'"
    ))
    .get_result::<Stat>(conn)
    .expect("reading the index's statistics")
    .value
}
