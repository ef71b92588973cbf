//! `cargo run`: a complete local stack in one command.
//!
//! Uses `DATABASE_URL` (or the default) when PostgreSQL answers there, else starts a
//! private cluster under `./.data/`; generates an API token when none is set; then
//! runs the server and prints how to reach it.

use std::process::ExitCode;

use clap::Parser;
use shared::config::{load_dotenv, ServerArgs, ServerSettings, DEFAULT_DATABASE_URL};
use shared::local_pg::{url_answers, LocalCluster};

/// The port of the private cluster under `./.data/`.
const LOCAL_PG_PORT: u16 = 54320;

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

    if !url_answers(&args.common.database_url) {
        if std::env::var_os("DATABASE_URL").is_some() {
            anyhow::bail!(
                "DATABASE_URL is set but no PostgreSQL answers there; start it or unset DATABASE_URL"
            );
        }
        let cluster = LocalCluster {
            dir: std::env::current_dir()?.join(".data").join("postgres"),
            port: LOCAL_PG_PORT,
        };
        let started = tokio::task::spawn_blocking({
            let cluster = LocalCluster {
                dir: cluster.dir.clone(),
                port: cluster.port,
            };
            move || cluster.start()
        })
        .await??;
        println!(
            "PostgreSQL: nothing answers at {DEFAULT_DATABASE_URL}; {} a private cluster in {} on port {LOCAL_PG_PORT}",
            if started { "started" } else { "using" },
            cluster.dir.display()
        );
        args.common.database_url = cluster.url("customer_sync");
    } else {
        println!(
            "PostgreSQL: using {}",
            shared::config::redact_url(&args.common.database_url)
        );
    }

    let generated_token = args.api_token.is_none() && !args.insecure_no_auth;
    if generated_token {
        args.api_token = Some(random_token());
    }
    let token = args.api_token.clone().unwrap_or_default();
    let settings = ServerSettings::try_from(args)?;
    let app = server::startup::Application::build(settings.clone()).await?;
    let base = format!("http://{}", settings.http_bind);
    println!();
    println!("customer-sync is running");
    println!("  API:        {base}/api/v1  (health: {base}/api/v1/health)");
    println!("  Webhook:    {base}/api/v1/endpoint/stripe");
    println!("  ZeroMQ:     {}", app.zmq_endpoint());
    if generated_token {
        println!("  API token:  {token}  (generated; set API_TOKEN to choose one)");
    }
    println!();
    println!("Try:");
    println!(
        "  curl -s -X POST {base}/api/v1/customers -H 'Authorization: Bearer {token}' \\\n       -H 'Content-Type: application/json' -d '{{\"id\":\"c-1\",\"name\":\"Ada Lovelace\",\"email\":\"ada@example.com\"}}'"
    );
    println!();
    println!("Ctrl-C stops everything.");
    app.run_until_stopped().await?;
    Ok(())
}

fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
