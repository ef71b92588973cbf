//! `consumer --topic stripe [--topic salesforce] [--concurrency N]`, or a job in the
//! foreground: `consumer import --provider stripe`, `consumer reconcile --provider stripe
//! [--repair]`.

use std::process::ExitCode;

use clap::Parser;
use consumer::startup::{stop_signal, Consumer};
use shared::config::{load_dotenv, ConsumerArgs, ConsumerSettings};

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = load_dotenv() {
        eprintln!("consumer: {e}");
        return ExitCode::from(2);
    }
    let settings = match ConsumerSettings::try_from(ConsumerArgs::parse()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("consumer: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(job) = settings.job {
        // The progress and the report are the output; the log says only what goes wrong.
        shared::telemetry::init(settings.common.log_format, "warn");
        return consumer::foreground::run(settings, job).await;
    }
    shared::telemetry::init(settings.common.log_format, "info");
    let consumer = match Consumer::start(settings).await {
        Ok(consumer) => consumer,
        Err(e) => {
            eprintln!("consumer: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    stop_signal().await;
    tracing::info!("stop signal received: no new claims, draining in-flight calls");
    consumer.shutdown().await;
    ExitCode::SUCCESS
}
