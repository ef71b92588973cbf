//! `cargo run`: a complete local stack in one command.
//!
//! PostgreSQL from `DATABASE_URL` when it answers, else a private cluster under `./.data/`;
//! the server; a consumer per enabled topic; and, without `STRIPE_API_KEY`, the sandbox
//! Stripe wired to the server's webhook. Prints the URLs, the token and a curl line.

use std::process::ExitCode;

use clap::Parser;
use consumer::startup::{stop_signal, Consumer};
use shared::config::{
    load_dotenv, redact_url, ConsumerArgs, ConsumerSettings, ServerArgs, ServerSettings,
    DEFAULT_DATABASE_URL,
};
use shared::local_pg::{url_answers, LocalCluster};

/// The port of the private cluster under `./.data/`.
const LOCAL_PG_PORT: u16 = 54320;
/// Where the sandbox listens (stripe-mock's port).
const SANDBOX_BIND: &str = "127.0.0.1:12111";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("customer-sync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    load_dotenv()?;
    let mut args = ServerArgs::parse();
    shared::telemetry::init(shared::config::LogFormat::Pretty, "info,actix_server=warn");

    args.common.database_url = database(&args.common.database_url).await?;

    let generated_token = args.api_token.is_none() && !args.insecure_no_auth;
    if generated_token {
        args.api_token = Some(random_hex(24));
    }
    let token = args.api_token.clone().unwrap_or_default();

    let sandbox = if args.common.stripe_api_key.is_none() {
        let secret = format!("whsec_{}", random_hex(24));
        let config = sandbox::SandboxConfig {
            bind: SANDBOX_BIND.parse()?,
            webhook_url: Some(format!("http://{}/api/v1/endpoint/stripe", args.http_bind)),
            webhook_secret: secret.clone(),
            ..sandbox::SandboxConfig::default()
        };
        let sandbox = sandbox::Sandbox::start(config).await.map_err(|e| {
            anyhow::anyhow!(
                "starting the sandbox Stripe on {SANDBOX_BIND}: {e:#} (is the port in use?)"
            )
        })?;
        args.common.stripe_api_key = Some("sk_test_customer_sync_sandbox".into());
        args.common.stripe_api_base = sandbox.base_url();
        args.stripe_webhook_secret = Some(secret);
        Some(sandbox)
    } else {
        None
    };

    let settings = ServerSettings::try_from(args.clone())?;
    let app = server::startup::Application::build(settings.clone()).await?;
    let zmq_endpoint = app.zmq_endpoint().to_owned();

    let providers = settings.common.enabled_providers();
    let mut consumer_argv = vec!["consumer".to_owned()];
    for provider in &providers {
        consumer_argv.extend(["--topic".to_owned(), provider.to_string()]);
    }
    let mut consumer_args = ConsumerArgs::try_parse_from(&consumer_argv)?;
    consumer_args.common = args.common.clone();
    consumer_args.common.zmq_pub_endpoint = zmq_endpoint.clone();
    let consumer = Consumer::start(ConsumerSettings::try_from(consumer_args)?).await?;

    let base = format!("http://{}", settings.http_bind);
    println!();
    println!("customer-sync is running");
    println!("  API:        {base}/api/v1  (health: {base}/api/v1/health)");
    println!("  Webhook:    {base}/api/v1/endpoint/stripe");
    println!("  ZeroMQ:     {zmq_endpoint}");
    println!("  Consumer:   topics {providers:?}");
    match &sandbox {
        Some(sandbox) => println!(
            "  Stripe:     sandbox at {} (no account needed; set STRIPE_API_KEY for real Stripe)",
            sandbox.base_url()
        ),
        None => println!(
            "  Stripe:     {}",
            settings
                .common
                .stripe
                .as_ref()
                .map_or("disabled", |s| s.api_base.as_str())
        ),
    }
    if generated_token {
        println!("  API token:  {token}  (generated; set API_TOKEN to choose one)");
    }
    println!();
    println!("Try:");
    println!(
        "  curl -s -X POST {base}/api/v1/customers -H 'Authorization: Bearer {token}' \\\n       -H 'Content-Type: application/json' -d '{{\"id\":\"c-1\",\"name\":\"Ada Lovelace\",\"email\":\"ada@example.com\"}}'"
    );
    println!("  curl -s {base}/api/v1/customers/c-1 -H 'Authorization: Bearer {token}'");
    println!();
    println!("Ctrl-C stops everything.");

    let server = tokio::spawn(app.run_until_stopped());
    stop_signal().await;
    println!(
        "stopping: consumer, server{}",
        if sandbox.is_some() { ", sandbox" } else { "" }
    );
    consumer.shutdown().await;
    // actix stops the server on the same signal.
    let _ = server.await;
    if let Some(sandbox) = sandbox {
        sandbox.stop().await;
    }
    Ok(())
}

/// The database URL to use: the configured one when it answers, else a private cluster.
async fn database(configured: &str) -> anyhow::Result<String> {
    if url_answers(configured) {
        println!("PostgreSQL: using {}", redact_url(configured));
        return Ok(configured.to_owned());
    }
    if std::env::var_os("DATABASE_URL").is_some() {
        anyhow::bail!(
            "DATABASE_URL is set but no PostgreSQL answers at {}; start it or unset DATABASE_URL",
            redact_url(configured)
        );
    }
    let dir = std::env::current_dir()?.join(".data").join("postgres");
    let cluster = LocalCluster {
        dir: dir.clone(),
        port: LOCAL_PG_PORT,
    };
    let started = tokio::task::spawn_blocking(move || cluster.start()).await??;
    println!(
        "PostgreSQL: nothing answers at {DEFAULT_DATABASE_URL}; {} a private cluster in {} on port {LOCAL_PG_PORT}",
        if started { "started" } else { "using" },
        dir.display()
    );
    Ok(format!(
        "postgres://postgres@127.0.0.1:{LOCAL_PG_PORT}/customer_sync"
    ))
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}
