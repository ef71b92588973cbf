//! Starts the real release binaries against a fresh database and stops them afterwards.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use diesel::prelude::*;
use shared::testing::TestDatabase;

/// A running server (and later consumers and sandbox) on a throw-away database.
pub struct Stack {
    pub db: TestDatabase,
    pub base_url: String,
    pub token: String,
    pub webhook_secret: String,
    pub zmq_endpoint: String,
    processes: Vec<(&'static str, Child)>,
}

/// A loopback port nobody uses right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The directory of this executable, where the other release binaries are.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?
        .parent()
        .context("executable directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run cargo build --release first",
            path.display()
        );
    }
    Ok(path)
}

/// An HTTP client with a connection per worker.
pub fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// What the server talks to.
pub struct Options {
    /// Enable the stripe provider against this base URL.
    pub stripe_base: Option<String>,
    /// Webhook secret (the sandbox's, for end-to-end runs).
    pub webhook_secret: String,
    /// Port for the HTTP server (bound by the caller's plan, e.g. for the sandbox's webhook URL).
    pub port: u16,
    /// `HTTP_MAX_CONNECTIONS` for the server, when not its default.
    pub http_max_connections: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            stripe_base: Some("http://127.0.0.1:9".into()),
            webhook_secret: "whsec_bench_0123456789".into(),
            port: free_port(),
            http_max_connections: None,
        }
    }
}

impl Stack {
    /// Starts `server` with the stripe provider enabled (nothing consumes its tasks).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Starts `server` with these options.
    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        let db = tokio::task::spawn_blocking(TestDatabase::create).await?;
        let port = options.port;
        let zmq_endpoint = format!("tcp://127.0.0.1:{}", free_port());
        let token = "bench-token-0123456789abcdef".to_owned();
        let webhook_secret = options.webhook_secret.clone();
        let mut server = Command::new(bin("server")?);
        server
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db.url)
            .env("HTTP_BIND", format!("127.0.0.1:{port}"))
            .env("ZMQ_PUB_ENDPOINT", &zmq_endpoint)
            .env("API_TOKEN", &token)
            .env("STRIPE_WEBHOOK_SECRET", &webhook_secret)
            .env("RUST_LOG", "error")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null());
        if let Some(limit) = &options.http_max_connections {
            server.env("HTTP_MAX_CONNECTIONS", limit);
        }
        if let Some(base) = &options.stripe_base {
            server
                .env("STRIPE_API_KEY", "sk_test_bench")
                .env("STRIPE_API_BASE", base);
        }
        let child = server.spawn().context("starting the server")?;
        let stack = Self {
            db,
            base_url: format!("http://127.0.0.1:{port}"),
            token,
            webhook_secret,
            zmq_endpoint,
            processes: vec![("server", child)],
        };
        stack.wait_healthy().await?;
        Ok(stack)
    }

    /// Starts a `consumer --topic stripe` process; returns its index for [`Stack::kill`].
    pub fn add_consumer(
        &mut self,
        stripe_base: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<usize> {
        let mut consumer = Command::new(bin("consumer")?);
        consumer
            .args(["--topic", "stripe"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.db.url)
            .env("ZMQ_PUB_ENDPOINT", &self.zmq_endpoint)
            .env("STRIPE_API_KEY", "sk_test_bench")
            .env("STRIPE_API_BASE", stripe_base)
            .env("RUST_LOG", "error")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null());
        for (k, v) in env {
            consumer.env(k, v);
        }
        self.processes
            .push(("consumer", consumer.spawn().context("starting a consumer")?));
        Ok(self.processes.len() - 1)
    }

    /// SIGKILLs process `index` (no chance to release anything).
    pub fn kill(&mut self, index: usize) {
        let (_, child) = &mut self.processes[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(r) = client
                .get(format!("{}/api/v1/health", self.base_url))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the server did not become healthy within 30 s")
    }

    /// Rows in a table of the bench database.
    pub fn count(&self, table: &str) -> anyhow::Result<i64> {
        self.count_where(table, "true")
    }

    /// Rows of `table` matching `condition` (SQL).
    pub fn count_where(&self, table: &str, condition: &str) -> anyhow::Result<i64> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        Ok(diesel::sql_query(format!(
            "SELECT count(*) AS n FROM {table} WHERE {condition}"
        ))
        .get_result::<Count>(&mut self.db.connect())?
        .n)
    }

    /// Peak resident memory of each process so far (VmHWM).
    pub fn peak_memory_kib(&self) -> BTreeMap<String, u64> {
        self.processes
            .iter()
            .filter_map(|(name, child)| {
                let status =
                    std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
                let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
                let kib = line.split_whitespace().nth(1)?.parse().ok()?;
                Some((name.to_string(), kib))
            })
            .collect()
    }

    /// Stops every process.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Stack {
    /// Never leaves a server or consumer behind, even when the run ends in an error.
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
