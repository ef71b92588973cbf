//! Starts the real release binaries against a fresh database and stops them afterwards,
//! on the shared test stack (`shared::testing`).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use shared::testing::processes::{self, Processes};
use shared::testing::{ApiClient, TestDatabase};

/// A running server (and later consumers and sandbox) on a throw-away database.
pub struct Stack {
    pub db: TestDatabase,
    pub base_url: String,
    pub token: String,
    pub webhook_secret: String,
    pub zmq_endpoint: String,
    processes: Processes,
    server: usize,
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
        let api = ApiClient::new(format!("http://127.0.0.1:{port}"));
        let mut server = processes::binary(bin("server")?);
        server
            .env("DATABASE_URL", &db.url)
            .env("HTTP_BIND", format!("127.0.0.1:{port}"))
            .env("ZMQ_PUB_ENDPOINT", &zmq_endpoint)
            .env("API_TOKEN", &api.token)
            .env("STRIPE_WEBHOOK_SECRET", &options.webhook_secret)
            .env("RUST_LOG", "error");
        if let Some(limit) = &options.http_max_connections {
            server.env("HTTP_MAX_CONNECTIONS", limit);
        }
        if let Some(base) = &options.stripe_base {
            server
                .env("STRIPE_API_KEY", shared::testing::settings::STRIPE_KEY)
                .env("STRIPE_API_BASE", base);
        }
        let mut running = Processes::default();
        let server = running
            .spawn("server", &mut server)
            .context("starting the server")?;
        if !api.wait_healthy(Duration::from_secs(30)).await {
            bail!("the server did not become healthy within 30 s");
        }
        Ok(Self {
            db,
            base_url: api.base_url,
            token: api.token,
            webhook_secret: options.webhook_secret,
            zmq_endpoint,
            processes: running,
            server,
        })
    }

    /// Starts a `consumer --topic stripe` process; returns its index for [`Stack::kill`].
    pub fn add_consumer(
        &mut self,
        stripe_base: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<usize> {
        let mut consumer = processes::consumer(
            bin("consumer")?,
            &self.db.url,
            &self.zmq_endpoint,
            stripe_base,
        );
        consumer.env("RUST_LOG", "error").envs(env.iter().copied());
        self.processes
            .spawn("consumer", &mut consumer)
            .context("starting a consumer")
    }

    /// How the server ended, once it has (a crash, an abort); `None` while it runs.
    pub fn server_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.processes.exit_status(self.server)
    }

    /// SIGKILLs process `index` (no chance to release anything).
    pub fn kill(&mut self, index: usize) {
        self.processes.kill(index);
    }

    /// Rows in a table of the bench database.
    pub fn count(&self, table: &str) -> anyhow::Result<i64> {
        Ok(self.db.count(table))
    }

    /// Rows of `table` matching `condition` (SQL).
    pub fn count_where(&self, table: &str, condition: &str) -> anyhow::Result<i64> {
        Ok(self.db.count_where(table, condition))
    }

    /// Runs SQL (one or more statements) against the bench database (setting a scenario
    /// up).
    pub fn execute(&self, sql: &str) -> anyhow::Result<()> {
        use diesel::connection::SimpleConnection;
        self.db.connect().batch_execute(sql)?;
        Ok(())
    }

    /// Peak resident memory of each process so far (VmHWM).
    pub fn peak_memory_kib(&self) -> BTreeMap<String, u64> {
        self.processes.peak_memory_kib()
    }

    /// Stops every process.
    pub fn stop(self) {
        drop(self);
    }
}
