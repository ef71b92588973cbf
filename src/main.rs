//! `cargo run`: a complete local stack in one command (see `lib.rs`).

use std::process::ExitCode;

use customer_sync::{database, start, SANDBOX_BIND};
use shared::config::load_dotenv;

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
    let mut args = customer_sync::args();
    shared::telemetry::init(shared::config::LogFormat::Pretty, "info,actix_server=warn");

    let explicit = std::env::var_os("DATABASE_URL").is_some();
    let data_dir = std::env::current_dir()?.join(".data").join("postgres");
    let database = database(&args.common.database_url, explicit, data_dir).await?;
    println!("PostgreSQL: {}", database.how);
    args.common.database_url = database.url.clone();

    let stack = start(args, SANDBOX_BIND.parse()?).await?;
    let base = &stack.base_url;
    let token = stack.token.clone().unwrap_or_default();
    println!();
    println!("customer-sync is running");
    println!("  API:        {base}/api/v1  (health: {base}/api/v1/health)");
    println!("  OpenAPI:    {base}/api/v1/openapi.json  (no token)");
    println!("  Console:    {base}/console  (sign in with the token below)");
    println!("  Webhook:    {base}/api/v1/endpoint/stripe");
    println!("  ZeroMQ:     {}", stack.zmq_endpoint);
    println!("  Consumer:   topics {:?}", stack.providers);
    println!("  Metrics:    {base}/metrics  (server and consumer: one process here)");
    match (&stack.sandbox, &stack.stripe_base) {
        (Some(sandbox), _) => println!(
            "  Stripe:     sandbox at {} (no account needed; set STRIPE_API_KEY for real Stripe)",
            sandbox.base_url()
        ),
        (None, Some(base)) => println!("  Stripe:     {base}"),
        (None, None) => println!("  Stripe:     disabled"),
    }
    if stack.sandbox.is_some() && stack.providers.len() > 1 {
        println!("  Salesforce: the sandbox's Salesforce mode (Contacts by Customer_Id__c)");
    }
    if stack.token_generated {
        println!("  API token:  {token}  (generated; set API_TOKEN to choose one)");
    }
    println!();
    println!("Try:");
    println!(
        "  curl -s -X POST {base}/api/v1/customers -H 'Authorization: Bearer {token}' \\\n       -H 'Content-Type: application/json' -d '{{\"id\":\"c-1\",\"name\":\"Ada Lovelace\",\"email\":\"ada@example.com\"}}'"
    );
    println!("  curl -s {base}/api/v1/customers/c-1 -H 'Authorization: Bearer {token}'");
    println!("The tour in README.md goes further: TOKEN={token} scripts/tour.sh");
    println!();
    println!("Ctrl-C stops everything.");

    consumer::startup::stop_signal().await;
    println!(
        "stopping: consumer, server{}",
        if stack.sandbox.is_some() {
            ", sandbox"
        } else {
            ""
        }
    );
    stack.stop().await;
    if let Some(cluster) = database.started {
        // Started by this run, so stopped by it too.
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
        println!("stopped the private PostgreSQL");
    }
    Ok(())
}
