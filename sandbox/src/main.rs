//! `sandbox`: a local Stripe on 127.0.0.1:12111 (see `sandbox --help`).

use clap::Parser;
use sandbox::{Cli, Sandbox};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (config, generated_secret) = Cli::parse().into_config();
    let secret = config.webhook_secret.clone();
    let webhook_url = config.webhook_url.clone();
    let seeded = (config.seed_customers, config.seed_invoices);
    let sandbox = Sandbox::start(config).await?;

    println!("Stripe sandbox listening on {}", sandbox.base_url());
    println!("  API key:  any sk_test_... key (Bearer, or -u sk_test_...:)");
    match webhook_url {
        Some(url) => println!("  Webhooks: {url}"),
        None => println!("  Webhooks: not delivered (set --webhook-url)"),
    }
    if seeded != (0, 0) {
        println!(
            "  Seeded:   {} customers and {} invoices, older than 30 days, without events",
            seeded.0, seeded.1
        );
    }
    if generated_secret {
        // Printed on purpose: the receiver needs it, and it was generated for this run only.
        println!("  Webhook secret (generated): {secret}");
    }
    tokio::signal::ctrl_c().await?;
    println!("stopping the sandbox");
    sandbox.stop().await;
    Ok(())
}
