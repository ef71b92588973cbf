//! Typed settings: `.env` (dotenvy), then the environment, then command-line flags.
//!
//! Every value is read as a string by clap (so a flag overrides its variable) and then
//! validated here, so that a bad value stops the process with one line naming the variable.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::domain::Provider;

/// The database used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/customer_sync";

/// A setting that is missing or cannot be used, named by its environment variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {variable}: {reason}")]
pub struct SettingsError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it, in words the operator can act on.
    pub reason: String,
}

impl SettingsError {
    fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        Self {
            variable,
            reason: reason.into(),
        }
    }
}

/// Loads `.env` from the working directory when there is one; a missing file is fine.
pub fn load_dotenv() -> Result<(), SettingsError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(SettingsError::new(".env", e.to_string())),
    }
}

/// The raw settings every binary shares, as clap reads them from flags and variables.
#[derive(Clone, clap::Args)]
pub struct CommonArgs {
    /// PostgreSQL URL; the database is created if missing and migrated at start-up
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Where the server's ZeroMQ PUB socket binds (consumers: comma-separated list to connect to)
    #[arg(long, env = "ZMQ_PUB_ENDPOINT", default_value = "tcp://127.0.0.1:5555")]
    pub zmq_pub_endpoint: String,
    /// Stripe secret key; without it the stripe provider is disabled
    #[arg(long, env = "STRIPE_API_KEY", hide_env_values = true)]
    pub stripe_api_key: Option<String>,
    /// Stripe API base URL (point it at the sandbox for local runs)
    #[arg(
        long,
        env = "STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub stripe_api_base: String,
    /// Salesforce My Domain login URL; with the client id and secret it enables the salesforce provider
    #[arg(long, env = "SALESFORCE_LOGIN_URL")]
    pub salesforce_login_url: Option<String>,
    /// Salesforce connected app client id
    #[arg(long, env = "SALESFORCE_CLIENT_ID", hide_env_values = true)]
    pub salesforce_client_id: Option<String>,
    /// Salesforce connected app client secret
    #[arg(long, env = "SALESFORCE_CLIENT_SECRET", hide_env_values = true)]
    pub salesforce_client_secret: Option<String>,
    /// Salesforce REST API version
    #[arg(long, env = "SALESFORCE_API_VERSION", default_value = "66.0")]
    pub salesforce_api_version: String,
    /// Contact field (External ID, Unique) that holds the local customer id
    #[arg(
        long,
        env = "SALESFORCE_EXTERNAL_ID_FIELD",
        default_value = "Customer_Id__c"
    )]
    pub salesforce_external_id_field: String,
    /// Percent of the org's daily API allocation (from Sforce-Limit-Info) past which
    /// background work slows; from 95% only live writes call Salesforce
    #[arg(long, env = "SALESFORCE_SLOW_BACKGROUND_PERCENT", default_value = "80")]
    pub salesforce_slow_background_percent: String,
    /// Log format: pretty or json (RUST_LOG filters)
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for a log pipeline.
    Json,
}

/// Stripe credentials and endpoint.
#[derive(Clone)]
pub struct StripeSettings {
    /// The secret key (`sk_...`).
    pub api_key: SecretString,
    /// Base URL, `https://api.stripe.com` or the sandbox.
    pub api_base: String,
}

/// Salesforce credentials.
#[derive(Clone)]
pub struct SalesforceSettings {
    /// The org's My Domain URL.
    pub login_url: String,
    /// OAuth client id.
    pub client_id: SecretString,
    /// OAuth client secret.
    pub client_secret: SecretString,
    /// REST API version, e.g. `66.0`.
    pub api_version: String,
    /// The Contact external-id field holding the local id.
    pub external_id_field: String,
    /// Daily allocation used, in percent, past which background work slows.
    pub slow_background_percent: u64,
}

/// Validated settings shared by the server and the consumers.
#[derive(Clone)]
pub struct CommonSettings {
    /// PostgreSQL URL.
    pub database_url: SecretString,
    /// ZeroMQ endpoints (the server binds the first; consumers connect to all).
    pub zmq_endpoints: Vec<String>,
    /// Stripe, when configured.
    pub stripe: Option<StripeSettings>,
    /// Salesforce, when configured.
    pub salesforce: Option<SalesforceSettings>,
    /// Log format.
    pub log_format: LogFormat,
}

impl std::fmt::Debug for CommonSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommonSettings")
            .field(
                "database_url",
                &redact_url(self.database_url.expose_secret()),
            )
            .field("zmq_endpoints", &self.zmq_endpoints)
            .field("stripe", &self.stripe.as_ref().map(|s| &s.api_base))
            .field(
                "salesforce",
                &self.salesforce.as_ref().map(|s| &s.login_url),
            )
            .field("log_format", &self.log_format)
            .finish()
    }
}

impl CommonSettings {
    /// The providers that get a task for every change, in a stable order.
    pub fn enabled_providers(&self) -> Vec<Provider> {
        let mut providers = Vec::new();
        if self.stripe.is_some() {
            providers.push(Provider::Stripe);
        }
        if self.salesforce.is_some() {
            providers.push(Provider::Salesforce);
        }
        providers
    }
}

impl TryFrom<CommonArgs> for CommonSettings {
    type Error = SettingsError;

    fn try_from(args: CommonArgs) -> Result<Self, SettingsError> {
        let database_url = args.database_url.trim().to_owned();
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(SettingsError::new(
                "DATABASE_URL",
                "must be a postgres:// URL, e.g. postgres://postgres@127.0.0.1:5432/customer_sync",
            ));
        }
        database_name(&database_url)?;

        let zmq_endpoints: Vec<String> = args
            .zmq_pub_endpoint
            .split(',')
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if zmq_endpoints.is_empty() {
            return Err(SettingsError::new("ZMQ_PUB_ENDPOINT", "is empty"));
        }
        for endpoint in &zmq_endpoints {
            if !endpoint.starts_with("tcp://") || endpoint.len() <= "tcp://".len() {
                return Err(SettingsError::new(
                    "ZMQ_PUB_ENDPOINT",
                    format!("'{endpoint}' is not a tcp:// endpoint, e.g. tcp://127.0.0.1:5555"),
                ));
            }
        }

        let stripe = match non_empty(args.stripe_api_key) {
            None => None,
            Some(key) => {
                if !key.starts_with("sk_") && !key.starts_with("rk_") {
                    return Err(SettingsError::new(
                        "STRIPE_API_KEY",
                        "must be a secret key starting with sk_ (or a restricted rk_ key)",
                    ));
                }
                let api_base = args.stripe_api_base.trim().trim_end_matches('/').to_owned();
                if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
                    return Err(SettingsError::new(
                        "STRIPE_API_BASE",
                        "must be an http:// or https:// URL",
                    ));
                }
                Some(StripeSettings {
                    api_key: key.into(),
                    api_base,
                })
            }
        };

        let salesforce = match (
            non_empty(args.salesforce_login_url),
            non_empty(args.salesforce_client_id),
            non_empty(args.salesforce_client_secret),
        ) {
            (None, None, None) => None,
            (Some(login_url), Some(id), Some(secret)) => {
                if !(login_url.starts_with("https://") || login_url.starts_with("http://")) {
                    return Err(SettingsError::new(
                        "SALESFORCE_LOGIN_URL",
                        "must be the org's My Domain URL, e.g. https://acme.my.salesforce.com",
                    ));
                }
                let api_version = args.salesforce_api_version.trim().to_owned();
                let valid_version = api_version.split_once('.').is_some_and(|(major, minor)| {
                    major.parse::<u32>().is_ok_and(|m| m >= 46) && minor == "0"
                });
                if !valid_version {
                    return Err(SettingsError::new(
                        "SALESFORCE_API_VERSION",
                        "must look like 66.0 (46.0 or later, for upsert results)",
                    ));
                }
                let field = args.salesforce_external_id_field.trim().to_owned();
                if field.is_empty()
                    || !field
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(SettingsError::new(
                        "SALESFORCE_EXTERNAL_ID_FIELD",
                        "must be a field API name such as Customer_Id__c",
                    ));
                }
                Some(SalesforceSettings {
                    login_url: login_url.trim_end_matches('/').to_owned(),
                    client_id: id.into(),
                    client_secret: secret.into(),
                    api_version,
                    external_id_field: field,
                    slow_background_percent: number(
                        &args.salesforce_slow_background_percent,
                        "SALESFORCE_SLOW_BACKGROUND_PERCENT",
                        1,
                        94,
                    )?,
                })
            }
            (None, _, _) => {
                return Err(SettingsError::new(
                    "SALESFORCE_LOGIN_URL",
                    "is required when the other SALESFORCE_ settings are set",
                ))
            }
            (_, None, _) => {
                return Err(SettingsError::new(
                    "SALESFORCE_CLIENT_ID",
                    "is required when SALESFORCE_LOGIN_URL is set",
                ))
            }
            (_, _, None) => {
                return Err(SettingsError::new(
                    "SALESFORCE_CLIENT_SECRET",
                    "is required when SALESFORCE_LOGIN_URL is set",
                ))
            }
        };

        let log_format = match args.log_format.trim() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(SettingsError::new(
                    "LOG_FORMAT",
                    format!("'{other}' is neither 'pretty' nor 'json'"),
                ))
            }
        };

        Ok(Self {
            database_url: database_url.into(),
            zmq_endpoints,
            stripe,
            salesforce,
            log_format,
        })
    }
}

/// The raw server settings.
#[derive(Clone, clap::Parser)]
#[command(
    name = "server",
    about = "customer-sync HTTP server: customer and task API, Stripe webhook, ZeroMQ publisher",
    after_help = "Every flag can also be set through the environment variable shown, or in a .env file."
)]
pub struct ServerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address the HTTP server listens on
    #[arg(long, env = "HTTP_BIND", default_value = "127.0.0.1:8000")]
    pub http_bind: String,
    /// Bearer token required by every /api/v1 route except health and the webhook
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Run without API_TOKEN: every caller is trusted (local experiments only)
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Stripe webhook signing secrets (whsec_...), comma-separated during a rotation
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// Maximum age in seconds of a webhook's signed timestamp
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE_SECS", default_value = "300")]
    pub stripe_webhook_tolerance_secs: String,
    /// Open HTTP connections the server serves at once; more wait in the kernel's accept
    /// queue until one closes (bounds memory under a connection storm)
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value = "2048")]
    pub http_max_connections: String,
    /// Seconds a whole request body may take to arrive once its head has; a slower
    /// body is cut with 408 and its connection closed
    #[arg(long, env = "HTTP_BODY_TIMEOUT_SECS", default_value = "10")]
    pub http_body_timeout_secs: String,
    /// Proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed when
    /// logging a client's address; from anyone else the header is ignored
    #[arg(long, env = "HTTP_TRUSTED_PROXIES", default_value = "")]
    pub http_trusted_proxies: String,
}

/// Validated server settings.
#[derive(Clone)]
pub struct ServerSettings {
    /// What the server shares with consumers.
    pub common: CommonSettings,
    /// Listen address.
    pub http_bind: SocketAddr,
    /// The API token; `None` only with `--insecure-no-auth`.
    pub api_token: Option<SecretString>,
    /// Webhook signing secrets, any of which may sign.
    pub webhook_secrets: Vec<SecretString>,
    /// Maximum age of a webhook's signed timestamp.
    pub webhook_tolerance: Duration,
    /// Open HTTP connections served at once.
    pub http_max_connections: usize,
    /// How long a whole request body may take to arrive.
    pub http_body_timeout: Duration,
    /// Peers whose `X-Forwarded-For` names the client.
    pub http_trusted_proxies: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("common", &self.common)
            .field("http_bind", &self.http_bind)
            .field("api_token", &self.api_token.as_ref().map(|_| "[REDACTED]"))
            .field("webhook_secrets", &self.webhook_secrets.len())
            .field("webhook_tolerance", &self.webhook_tolerance)
            .field("http_max_connections", &self.http_max_connections)
            .field("http_body_timeout", &self.http_body_timeout)
            .field("http_trusted_proxies", &self.http_trusted_proxies)
            .finish()
    }
}

impl TryFrom<ServerArgs> for ServerSettings {
    type Error = SettingsError;

    fn try_from(args: ServerArgs) -> Result<Self, SettingsError> {
        let common = CommonSettings::try_from(args.common)?;
        let http_bind: SocketAddr = args.http_bind.trim().parse().map_err(|_| {
            SettingsError::new(
                "HTTP_BIND",
                format!("'{}' is not an address like 127.0.0.1:8000", args.http_bind),
            )
        })?;
        let api_token = match (non_empty(args.api_token), args.insecure_no_auth) {
            (Some(token), _) => {
                if token.len() < 16 {
                    return Err(SettingsError::new(
                        "API_TOKEN",
                        "is shorter than 16 characters; use a long random value (openssl rand -hex 32)",
                    ));
                }
                Some(SecretString::from(token))
            }
            (None, true) if http_bind.ip().is_loopback() => None,
            (None, true) => {
                return Err(SettingsError::new(
                    "HTTP_BIND",
                    format!(
                        "is {http_bind}, but --insecure-no-auth is only allowed on a loopback \
                         address (127.0.0.1 or [::1]); set API_TOKEN to listen there"
                    ),
                ))
            }
            (None, false) => {
                return Err(SettingsError::new(
                    "API_TOKEN",
                    "is not set; set it to a long random value, or pass --insecure-no-auth for a local experiment",
                ))
            }
        };
        let webhook_secrets = match non_empty(args.stripe_webhook_secret) {
            None => Vec::new(),
            Some(list) => {
                let mut secrets = Vec::new();
                for secret in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !secret.starts_with("whsec_") {
                        return Err(SettingsError::new(
                            "STRIPE_WEBHOOK_SECRET",
                            "each secret must start with whsec_",
                        ));
                    }
                    secrets.push(SecretString::from(secret.to_owned()));
                }
                secrets
            }
        };
        let webhook_tolerance = args
            .stripe_webhook_tolerance_secs
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=86_400).contains(s))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                SettingsError::new(
                    "STRIPE_WEBHOOK_TOLERANCE_SECS",
                    "must be a whole number of seconds between 1 and 86400",
                )
            })?;
        let http_max_connections = number(
            &args.http_max_connections,
            "HTTP_MAX_CONNECTIONS",
            1,
            100_000,
        )? as usize;
        let http_body_timeout = Duration::from_secs(number(
            &args.http_body_timeout_secs,
            "HTTP_BODY_TIMEOUT_SECS",
            1,
            3_600,
        )?);
        let http_trusted_proxies = args
            .http_trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        SettingsError::new(
                            "HTTP_TRUSTED_PROXIES",
                            format!("'{p}' is not an IP address or a CIDR like 10.0.0.0/8"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            common,
            http_bind,
            api_token,
            webhook_secrets,
            webhook_tolerance,
            http_max_connections,
            http_body_timeout,
            http_trusted_proxies,
        })
    }
}

/// The raw consumer settings.
#[derive(Clone, clap::Parser)]
#[command(
    name = "consumer",
    about = "customer-sync consumer: claims provider tasks from PostgreSQL and calls Stripe (and Salesforce)",
    after_help = "Every flag can also be set through the environment variable shown, or in a .env file.\n\
                  Run several consumers per topic to share the work; each claims tasks in PostgreSQL,\n\
                  so no call is made twice.\n\n\
                  Foreground jobs: `consumer import --provider stripe` adopts an existing Stripe account;\n\
                  `consumer reconcile --provider stripe [--repair]` compares it with the catalog and exits\n\
                  0 when in sync, 1 when drift remains, 2 on error.",
    subcommand_negates_reqs = true
)]
pub struct ConsumerArgs {
    /// A job to run in the foreground instead of serving topics
    #[command(subcommand)]
    pub command: Option<JobCommand>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Provider topic to serve: stripe or salesforce (repeat for several)
    #[arg(long = "topic", required = true, value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Provider calls in flight in this process
    #[arg(long, env = "CONSUMER_CONCURRENCY", default_value = "16")]
    pub concurrency: String,
    /// Stripe requests per second for the whole deployment: every consumer calling the
    /// same account shares this budget through PostgreSQL (set the same value on each)
    #[arg(long, env = "STRIPE_MAX_RPS", default_value = "25")]
    pub stripe_max_rps: String,
    /// Stripe's separate read limit (lists, searches), when reads and writes should have
    /// budgets of their own; unset, every call shares STRIPE_MAX_RPS
    #[arg(long, env = "STRIPE_MAX_READ_RPS")]
    pub stripe_max_read_rps: Option<String>,
    /// Stripe's separate write limit (creates, updates, deletes), as STRIPE_MAX_READ_RPS
    #[arg(long, env = "STRIPE_MAX_WRITE_RPS")]
    pub stripe_max_write_rps: Option<String>,
    /// Attempts before a task goes dead and waits for a manual retry
    #[arg(long, env = "TASK_MAX_ATTEMPTS", default_value = "12")]
    pub task_max_attempts: String,
    /// How often PostgreSQL is swept for due tasks whose message was lost, in milliseconds
    #[arg(long, env = "CONSUMER_SWEEP_INTERVAL_MS", default_value = "1000")]
    pub sweep_interval_ms: String,
    /// How long a claimed task stays ours before another consumer may take it, in seconds
    #[arg(long, env = "CONSUMER_LEASE_SECS", default_value = "30")]
    pub lease_secs: String,
    /// The longest wait between two attempts of a failing task, in milliseconds
    #[arg(long, env = "CONSUMER_BACKOFF_MAX_MS", default_value = "60000")]
    pub backoff_max_ms: String,
    /// How often Stripe's Events API is polled for events the webhook missed, in seconds
    /// (0 turns the catch-up off)
    #[arg(long, env = "STRIPE_EVENTS_POLL_SECS", default_value = "60")]
    pub stripe_events_poll_secs: String,
    /// How often a repairing reconcile is queued, in hours (0 turns the schedule off)
    #[arg(long, env = "RECONCILE_INTERVAL_HOURS", default_value = "24")]
    pub reconcile_interval_hours: String,
    /// Whether a create adopts the one existing Stripe customer with the same email and no
    /// customer_sync_id instead of creating a second one (true or false)
    #[arg(long, env = "STRIPE_ADOPT_BY_EMAIL", default_value = "true")]
    pub stripe_adopt_by_email: String,
    /// Succeeded tasks and received events older than this many days are removed, hourly,
    /// by one consumer at a time; events are kept at least 30 days whatever this says
    /// (0 keeps everything)
    #[arg(long, env = "RETENTION_DAYS", default_value = "30")]
    pub retention_days: String,
    /// Where this consumer serves GET /metrics (Prometheus's text format), as
    /// 127.0.0.1:9101; unset, it serves none
    #[arg(long, env = "CONSUMER_METRICS_BIND")]
    pub metrics_bind: Option<String>,
}

/// A job run in the foreground.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Adopt an existing provider account: link customers by our metadata or by email,
    /// import the provider's others, queue creates for local customers it lacks, and fill
    /// the invoice catalogue; prints the report at the end
    Import {
        /// The provider account to import (stripe)
        #[arg(long)]
        provider: String,
    },
    /// Compare the provider's customers with the catalog and report the drift; exits 0 in
    /// sync, 1 when drift remains (after --repair: drift it could not repair), 2 on error
    Reconcile {
        /// The provider account to compare (stripe)
        #[arg(long)]
        provider: String,
        /// Repair what can be repaired: push local changes, apply Stripe's, link what can
        /// be linked (never deletes at the provider)
        #[arg(long)]
        repair: bool,
    },
}

/// A foreground job: what to run, at which provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobRequest {
    pub kind: crate::domain::JobKind,
    pub provider: Provider,
    pub repair: bool,
}

/// Validated consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// What the consumer shares with the server.
    pub common: CommonSettings,
    /// The providers (topics) this process serves.
    pub providers: Vec<Provider>,
    /// Calls in flight.
    pub concurrency: usize,
    /// Stripe requests per second.
    pub stripe_max_rps: u32,
    /// Separate read and write budgets, `(reads, writes)` per second, when either is set.
    pub stripe_read_write_rps: Option<(u32, u32)>,
    /// Attempts before `dead`.
    pub max_attempts: i32,
    /// Sweep interval.
    pub sweep_interval: Duration,
    /// Lease length.
    pub lease: Duration,
    /// Longest backoff between attempts.
    pub max_backoff: Duration,
    /// The Events API catch-up's interval; `None` when off.
    pub events_poll: Option<Duration>,
    /// The repairing reconcile's schedule; `None` when off.
    pub reconcile_interval: Option<Duration>,
    /// Adoption by email on create.
    pub adopt_by_email: bool,
    /// Days succeeded tasks and events are kept; `None` keeps everything.
    pub retention_days: Option<u32>,
    /// Where `GET /metrics` is served; `None`: nowhere.
    pub metrics_bind: Option<SocketAddr>,
    /// A job to run in the foreground instead of serving topics.
    pub job: Option<JobRequest>,
}

impl TryFrom<ConsumerArgs> for ConsumerSettings {
    type Error = SettingsError;

    fn try_from(args: ConsumerArgs) -> Result<Self, SettingsError> {
        let common = CommonSettings::try_from(args.common)?;
        let job = match &args.command {
            None => None,
            Some(JobCommand::Import { provider }) => {
                Some((crate::domain::JobKind::Import, provider, false))
            }
            Some(JobCommand::Reconcile { provider, repair }) => {
                Some((crate::domain::JobKind::Reconcile, provider, *repair))
            }
        };
        let job = match job {
            None => None,
            Some((kind, provider, repair)) => {
                let provider = Provider::parse(provider.trim())
                    .map_err(|e| SettingsError::new("--provider", e.0))?;
                if provider != Provider::Stripe {
                    return Err(SettingsError::new(
                        "--provider",
                        "only stripe has imports and reconciles (Salesforce is keyed by our id)",
                    ));
                }
                Some(JobRequest {
                    kind,
                    provider,
                    repair,
                })
            }
        };
        let topics: Vec<String> = match job {
            Some(job) => vec![job.provider.as_str().to_owned()],
            None => args.topics.clone(),
        };
        let mut providers = Vec::new();
        for topic in &topics {
            let provider =
                Provider::parse(topic.trim()).map_err(|e| SettingsError::new("--topic", e.0))?;
            let configured = match provider {
                Provider::Stripe => common.stripe.is_some(),
                Provider::Salesforce => common.salesforce.is_some(),
            };
            if !configured {
                let variable = match provider {
                    Provider::Stripe => "STRIPE_API_KEY",
                    Provider::Salesforce => "SALESFORCE_LOGIN_URL",
                };
                let what = match job {
                    Some(job) => format!("is required to run a {provider} {}", job.kind),
                    None => format!("is required to serve the {provider} topic"),
                };
                return Err(SettingsError::new(variable, what));
            }
            if !providers.contains(&provider) {
                providers.push(provider);
            }
        }
        let stripe_max_rps = number(&args.stripe_max_rps, "STRIPE_MAX_RPS", 1, 10_000)? as u32;
        Ok(Self {
            common,
            providers,
            concurrency: number(&args.concurrency, "CONSUMER_CONCURRENCY", 1, 1024)? as usize,
            stripe_max_rps,
            stripe_read_write_rps: match (
                non_empty(args.stripe_max_read_rps),
                non_empty(args.stripe_max_write_rps),
            ) {
                (None, None) => None,
                (read, write) => {
                    let rps = |value: Option<String>, variable| match value {
                        Some(v) => number(&v, variable, 1, 10_000).map(|n| n as u32),
                        None => Ok(stripe_max_rps),
                    };
                    Some((
                        rps(read, "STRIPE_MAX_READ_RPS")?,
                        rps(write, "STRIPE_MAX_WRITE_RPS")?,
                    ))
                }
            },
            max_attempts: number(&args.task_max_attempts, "TASK_MAX_ATTEMPTS", 1, 1000)? as i32,
            sweep_interval: Duration::from_millis(number(
                &args.sweep_interval_ms,
                "CONSUMER_SWEEP_INTERVAL_MS",
                10,
                600_000,
            )?),
            lease: Duration::from_secs(number(&args.lease_secs, "CONSUMER_LEASE_SECS", 5, 3600)?),
            max_backoff: Duration::from_millis(number(
                &args.backoff_max_ms,
                "CONSUMER_BACKOFF_MAX_MS",
                10,
                3_600_000,
            )?),
            events_poll: match number(
                &args.stripe_events_poll_secs,
                "STRIPE_EVENTS_POLL_SECS",
                0,
                86_400,
            )? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            reconcile_interval: match number(
                &args.reconcile_interval_hours,
                "RECONCILE_INTERVAL_HOURS",
                0,
                8_760,
            )? {
                0 => None,
                hours => Some(Duration::from_secs(hours * 3600)),
            },
            adopt_by_email: boolean(&args.stripe_adopt_by_email, "STRIPE_ADOPT_BY_EMAIL")?,
            retention_days: match number(&args.retention_days, "RETENTION_DAYS", 0, 36_500)? {
                0 => None,
                days => Some(days as u32),
            },
            metrics_bind: match args.metrics_bind.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(bind) => Some(bind.parse().map_err(|_| {
                    SettingsError::new(
                        "CONSUMER_METRICS_BIND",
                        format!("'{bind}' is not an address like 127.0.0.1:9101"),
                    )
                })?),
            },
            job,
        })
    }
}

fn boolean(value: &str, variable: &'static str) -> Result<bool, SettingsError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(SettingsError::new(
            variable,
            format!("'{other}' is neither true nor false"),
        )),
    }
}

fn number(value: &str, variable: &'static str, min: u64, max: u64) -> Result<u64, SettingsError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            SettingsError::new(
                variable,
                format!("'{value}' is not a whole number between {min} and {max}"),
            )
        })
}

/// The database name in a PostgreSQL URL (the path after the host).
pub fn database_name(url: &str) -> Result<String, SettingsError> {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let after_scheme = without_query
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(without_query);
    let name = after_scheme
        .split_once('/')
        .map(|(_, name)| name)
        .unwrap_or("");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(SettingsError::new(
            "DATABASE_URL",
            "must name a database of letters, digits, _ or -, e.g. .../customer_sync",
        ));
    }
    Ok(name.to_owned())
}

/// The same URL pointing at another database on the same server.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let host = rest.split_once('/').map(|(host, _)| host).unwrap_or(rest);
    match query {
        Some(q) => format!("{scheme}://{host}/{database}?{q}"),
        None => format!("{scheme}://{host}/{database}"),
    }
}

/// The URL with any password replaced, fit for a log line: in the user information and
/// in the `password` and `sslpassword` query parameters libpq also accepts.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = redact_userinfo(base);
    let Some(query) = query else {
        return base;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_password(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

fn is_password(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "password" || key == "sslpassword"
}

fn redact_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                if userinfo.contains(':') {
                    format!("{scheme}://{user}:***@{host}")
                } else {
                    format!("{scheme}://{user}@{host}")
                }
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_helpers_swap_and_redact() {
        let url = "postgres://u:pw@h:5432/app?sslmode=disable";
        assert_eq!(database_name(url).unwrap(), "app");
        assert_eq!(
            with_database(url, "postgres"),
            "postgres://u:pw@h:5432/postgres?sslmode=disable"
        );
        assert_eq!(
            redact_url(url),
            "postgres://u:***@h:5432/app?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://u@h/app?sslmode=require&password=pw&PassWord=x&sslpassword=k"),
            "postgres://u@h/app?sslmode=require&password=***&PassWord=***&sslpassword=***"
        );
        assert_eq!(
            redact_url("postgres://u:a%40b@h/app?password"),
            "postgres://u:***@h/app?password"
        );
        assert!(database_name("postgres://h:5432/").is_err());
        assert!(database_name("postgres://h/a;drop").is_err());
    }
}
