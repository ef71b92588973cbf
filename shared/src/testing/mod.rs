//! The one test stack every crate's tests and the benchmark build on: a fresh database
//! per test ([`TestDatabase`]), settings for a server and consumers wired to it
//! ([`settings`]), a typed client for the HTTP API ([`ApiClient`]), the real binaries as
//! processes ([`processes`]), and a bounded poll ([`eventually`]).
//!
//! The server is found in this order: `DATABASE_URL`, a server on 127.0.0.1:5432, or a
//! private cluster started from the installed binaries (as `postgres` when running as
//! root). `CUSTOMER_SYNC_TEST_PG=private` forces the private cluster.

mod api;
mod database;
pub mod metrics;
pub mod processes;
pub mod python;
pub mod settings;
pub mod zmtp;

pub use api::{error_of, ApiClient};
pub use database::{admin_url, index_stat, TestDatabase, PRIVATE_PORT};

/// The API token of every test and benchmark stack.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A TCP port on 127.0.0.1 that was free a moment ago (for a process that must be told
/// its port before it binds).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port on 127.0.0.1")
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
