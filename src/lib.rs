//! The local stack behind `cargo run`: PostgreSQL (given or private), the server, a consumer
//! per enabled topic and, without `STRIPE_API_KEY`, the sandbox Stripe wired to the webhook.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context;
use clap::Parser;
use consumer::startup::Consumer;
use shared::config::{redact_url, ConsumerArgs, ConsumerSettings, ServerArgs, ServerSettings};
use shared::domain::Provider;
use shared::local_pg::{url_answers, LocalCluster};

/// The port of the private cluster under `./.data/`.
pub const LOCAL_PG_PORT: u16 = 54320;
/// Where the sandbox listens by default (stripe-mock's port).
pub const SANDBOX_BIND: &str = "127.0.0.1:12111";

/// A running stack.
pub struct Stack {
    pub base_url: String,
    pub token: Option<String>,
    pub token_generated: bool,
    pub zmq_endpoint: String,
    pub providers: Vec<Provider>,
    pub sandbox: Option<sandbox::Sandbox>,
    pub stripe_base: Option<String>,
    consumer: Consumer,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    server_handle: server::startup::StopHandle,
}

/// Starts everything; `sandbox_bind` is where the sandbox listens when it is needed.
pub async fn start(mut args: ServerArgs, sandbox_bind: SocketAddr) -> anyhow::Result<Stack> {
    let listener = TcpListener::bind(&args.http_bind).with_context(|| {
        format!(
            "binding the HTTP listener at {} (HTTP_BIND): is another server running?",
            args.http_bind
        )
    })?;
    let http = listener.local_addr()?;
    args.http_bind = http.to_string();

    let token_generated = args.api_token.is_none() && !args.insecure_no_auth;
    if token_generated {
        args.api_token = Some(random_hex(24));
    }

    let sandbox = if args.common.stripe_api_key.is_none() {
        let secret = format!("whsec_{}", random_hex(24));
        let config = sandbox::SandboxConfig {
            bind: sandbox_bind,
            webhook_url: Some(format!("http://{http}/api/v1/endpoint/stripe")),
            webhook_secret: secret.clone(),
            ..sandbox::SandboxConfig::default()
        };
        let sandbox = sandbox::Sandbox::start(config).await.map_err(|e| {
            anyhow::anyhow!(
                "starting the sandbox Stripe on {sandbox_bind}: {e:#} (is the port in use?)"
            )
        })?;
        args.common.stripe_api_key = Some("sk_test_customer_sync_sandbox".into());
        args.common.stripe_api_base = sandbox.base_url();
        args.stripe_webhook_secret = Some(secret);
        if args.common.salesforce_login_url.is_none() {
            // The sandbox's Salesforce mode, so the second provider shows too.
            args.common.salesforce_login_url = Some(sandbox.base_url());
            args.common.salesforce_client_id = Some(sandbox::salesforce::CLIENT_ID.into());
            args.common.salesforce_client_secret = Some(sandbox::salesforce::CLIENT_SECRET.into());
        }
        Some(sandbox)
    } else {
        None
    };

    let settings = ServerSettings::try_from(args.clone())?;
    let app = server::startup::Application::build_on(settings.clone(), listener).await?;
    let zmq_endpoint = app.zmq_endpoint().to_owned();
    let server_handle = app.stop_handle();

    let providers = settings.common.enabled_providers();
    let mut argv = vec!["consumer".to_owned()];
    for provider in &providers {
        argv.extend(["--topic".to_owned(), provider.to_string()]);
    }
    let mut consumer_args = ConsumerArgs::try_parse_from(&argv)?;
    consumer_args.common = args.common.clone();
    consumer_args.common.zmq_pub_endpoint = zmq_endpoint.clone();
    let consumer = Consumer::start(ConsumerSettings::try_from(consumer_args)?).await?;

    Ok(Stack {
        base_url: format!("http://{http}"),
        token: args.api_token.clone(),
        token_generated,
        zmq_endpoint,
        providers,
        stripe_base: settings.common.stripe.as_ref().map(|s| s.api_base.clone()),
        sandbox,
        consumer,
        server: tokio::spawn(app.run_until_stopped()),
        server_handle,
    })
}

impl Stack {
    /// Stops the consumer (draining its calls), the server and the sandbox.
    pub async fn stop(self) {
        self.consumer.shutdown().await;
        self.server_handle.stop(true).await;
        let _ = self.server.await;
        if let Some(sandbox) = self.sandbox {
            sandbox.stop().await;
        }
    }
}

/// Where the stack's database comes from.
pub struct Database {
    /// The URL to use.
    pub url: String,
    /// What was done, for the operator.
    pub how: String,
    /// The private cluster this call started, to stop at exit.
    pub started: Option<LocalCluster>,
}

/// The database URL to use: the configured one when it answers, else a private cluster
/// under `data_dir` (unless `DATABASE_URL` was given explicitly).
pub async fn database(
    configured: &str,
    explicit: bool,
    data_dir: std::path::PathBuf,
) -> anyhow::Result<Database> {
    if url_answers(configured) {
        return Ok(Database {
            url: configured.to_owned(),
            how: format!("using {}", redact_url(configured)),
            started: None,
        });
    }
    if explicit {
        anyhow::bail!(
            "DATABASE_URL is set but no PostgreSQL answers at {}; start it or unset DATABASE_URL",
            redact_url(configured)
        );
    }
    let cluster = LocalCluster {
        dir: data_dir.clone(),
        port: LOCAL_PG_PORT,
    };
    let (started, cluster) = tokio::task::spawn_blocking(move || {
        let started = cluster.start()?;
        anyhow::Ok((started, cluster))
    })
    .await??;
    Ok(Database {
        url: cluster.url("customer_sync"),
        how: format!(
            "nothing answers at {}; {} a private cluster in {} on port {LOCAL_PG_PORT}",
            redact_url(configured),
            if started { "started" } else { "using" },
            data_dir.display()
        ),
        started: started.then_some(cluster),
    })
}

/// Random lowercase hex of `bytes` bytes.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses the launcher's flags (the server's).
pub fn args() -> ServerArgs {
    ServerArgs::parse()
}
