//! The sandbox's settings: [`SandboxConfig`] for the library, [`Cli`] for the binary (each
//! flag also read from `SANDBOX_<NAME>`).

use std::net::SocketAddr;

use anyhow::{bail, Context};
use rand::Rng;

/// How the sandbox behaves.
#[derive(Clone)]
pub struct SandboxConfig {
    /// Listen address (port 0 picks a free one).
    pub bind: SocketAddr,
    /// Where events are delivered as signed webhooks; none means no delivery.
    pub webhook_url: Option<String>,
    /// The `whsec_` secret webhooks are signed with.
    pub webhook_secret: String,
    /// Added to every API response.
    pub latency_ms: u64,
    /// Requests per second before 429 `rate_limit` (a token bucket).
    pub max_rps: Option<u32>,
    /// Share of requests answered 500 before anything happens (not stored under the key).
    pub fail_rate: f64,
    /// Share of changes that are made and emit their event, then answer a 500 that is stored
    /// under the idempotency key.
    pub fail_after_commit_rate: f64,
    /// Share of events delivered twice.
    pub duplicate_rate: f64,
    /// Deliver webhooks out of order (random order within small windows).
    pub shuffle: bool,
    /// Seed for every random choice, for reproducible runs.
    pub seed: Option<u64>,
    /// Customers the account starts with, older than 30 days of events and without any.
    pub seed_customers: usize,
    /// Invoices the account starts with, spread over the seeded customers, without events.
    pub seed_invoices: usize,
    /// How long a customer's write takes to reach search (Stripe's search is eventually
    /// consistent, up to a minute); 0: at once.
    pub search_delay_ms: u64,
}

/// A fresh random `whsec_` secret.
pub fn random_webhook_secret() -> String {
    let bytes: [u8; 24] = rand::thread_rng().gen();
    format!("whsec_{}", hex::encode(bytes))
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_url: None,
            webhook_secret: random_webhook_secret(),
            latency_ms: 0,
            max_rps: None,
            fail_rate: 0.0,
            fail_after_commit_rate: 0.0,
            duplicate_rate: 0.0,
            shuffle: false,
            seed: None,
            seed_customers: 0,
            seed_invoices: 0,
            search_delay_ms: 0,
        }
    }
}

// The secret stays out of logs.
impl std::fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("bind", &self.bind)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &"whsec_[redacted]")
            .field("latency_ms", &self.latency_ms)
            .field("max_rps", &self.max_rps)
            .field("fail_rate", &self.fail_rate)
            .field("fail_after_commit_rate", &self.fail_after_commit_rate)
            .field("duplicate_rate", &self.duplicate_rate)
            .field("shuffle", &self.shuffle)
            .field("seed", &self.seed)
            .field("seed_customers", &self.seed_customers)
            .field("seed_invoices", &self.seed_invoices)
            .field("search_delay_ms", &self.search_delay_ms)
            .finish()
    }
}

impl SandboxConfig {
    /// Rejects settings the sandbox cannot honour, naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.webhook_secret.starts_with("whsec_") || self.webhook_secret.len() <= 6 {
            bail!("SANDBOX_WEBHOOK_SECRET must start with whsec_");
        }
        for (name, rate) in [
            ("SANDBOX_FAIL_RATE", self.fail_rate),
            (
                "SANDBOX_FAIL_AFTER_COMMIT_RATE",
                self.fail_after_commit_rate,
            ),
            ("SANDBOX_DUPLICATE_RATE", self.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                bail!("{name} must be between 0 and 1, not {rate}");
            }
        }
        if self.seed_invoices > 0 && self.seed_customers == 0 {
            bail!("SANDBOX_SEED_INVOICES needs SANDBOX_SEED_CUSTOMERS: invoices are billed to seeded customers");
        }
        if self.max_rps == Some(0) {
            bail!("SANDBOX_MAX_RPS must be at least 1");
        }
        if let Some(url) = &self.webhook_url {
            let parsed = reqwest::Url::parse(url)
                .with_context(|| format!("SANDBOX_WEBHOOK_URL is not a URL: {url}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!("SANDBOX_WEBHOOK_URL must be http or https: {url}");
            }
        }
        Ok(())
    }
}

/// A faithful in-memory Stripe (customers, invoices, events, idempotency keys, signed
/// webhooks) for tests, demos and benchmarks. Any `sk_test_...` key is accepted.
#[derive(clap::Parser, Debug)]
#[command(
    name = "sandbox",
    version,
    after_help = "Every flag can also be set in the environment as SANDBOX_<NAME>, e.g. \
                  SANDBOX_FAIL_RATE=0.1.\n\nPoint a client at it: STRIPE_API_BASE=http://127.0.0.1:12111 \
                  with any sk_test_ key; in Python, stripe.api_base = \"http://127.0.0.1:12111\"."
)]
pub struct Cli {
    /// Address to listen on
    #[arg(long, env = "SANDBOX_BIND", default_value = "127.0.0.1:12111")]
    pub bind: SocketAddr,
    /// Deliver every event here as a signed webhook, e.g. http://127.0.0.1:8000/api/v1/endpoint/stripe
    #[arg(long, env = "SANDBOX_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Secret to sign webhooks with (whsec_...); a random one is generated and printed if absent
    #[arg(long, env = "SANDBOX_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Milliseconds added to every API response
    #[arg(long, env = "SANDBOX_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Requests per second before 429 rate_limit (token bucket; unlimited if absent)
    #[arg(long, env = "SANDBOX_MAX_RPS")]
    pub max_rps: Option<u32>,
    /// Share (0-1) of requests failing with 500 before anything happens (not stored under the Idempotency-Key)
    #[arg(long, env = "SANDBOX_FAIL_RATE", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share (0-1) of changes that are made and emit their event, then answer 500 (stored under the key)
    #[arg(long, env = "SANDBOX_FAIL_AFTER_COMMIT_RATE", default_value_t = 0.0)]
    pub fail_after_commit_rate: f64,
    /// Share (0-1) of events delivered twice
    #[arg(long, env = "SANDBOX_DUPLICATE_RATE", default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Deliver webhooks out of order (random order within small windows)
    #[arg(long, env = "SANDBOX_SHUFFLE")]
    pub shuffle: bool,
    /// Seed for every random choice, for reproducible runs
    #[arg(long, env = "SANDBOX_SEED")]
    pub seed: Option<u64>,
    /// Customers the account starts with ("Seed Customer N", seedN@example.com), older than 30 days and without events
    #[arg(long, env = "SANDBOX_SEED_CUSTOMERS", default_value_t = 0)]
    pub seed_customers: usize,
    /// Invoices the account starts with, paid and open, spread over the seeded customers, without events
    #[arg(long, env = "SANDBOX_SEED_INVOICES", default_value_t = 0)]
    pub seed_invoices: usize,
    /// Milliseconds before a customer's create or update shows in /v1/customers/search (Stripe's search lags, up to a minute)
    #[arg(long, env = "SANDBOX_SEARCH_DELAY_MS", default_value_t = 0)]
    pub search_delay_ms: u64,
}

impl Cli {
    /// The configuration, and whether the webhook secret was generated (so it should be shown).
    pub fn into_config(self) -> (SandboxConfig, bool) {
        let generated = self.webhook_secret.is_none();
        let config = SandboxConfig {
            bind: self.bind,
            webhook_url: self.webhook_url.filter(|u| !u.is_empty()),
            webhook_secret: self.webhook_secret.unwrap_or_else(random_webhook_secret),
            latency_ms: self.latency_ms,
            max_rps: self.max_rps,
            fail_rate: self.fail_rate,
            fail_after_commit_rate: self.fail_after_commit_rate,
            duplicate_rate: self.duplicate_rate,
            shuffle: self.shuffle,
            seed: self.seed,
            seed_customers: self.seed_customers,
            seed_invoices: self.seed_invoices,
            search_delay_ms: self.search_delay_ms,
        };
        (config, generated)
    }
}
