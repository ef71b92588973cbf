//! `server`: load settings, init telemetry, build, run.

use std::process::ExitCode;

use clap::Parser;
use server::startup::Application;
use shared::config::{load_dotenv, ServerArgs, ServerSettings};

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = load_dotenv() {
        eprintln!("server: {e}");
        return ExitCode::from(2);
    }
    let settings = match ServerSettings::try_from(ServerArgs::parse()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("server: {e}");
            return ExitCode::from(2);
        }
    };
    shared::telemetry::init(settings.common.log_format, "info,actix_server=warn");
    server::listener::ensure_file_descriptors(settings.http_max_connections);
    if settings.api_token.is_none() {
        tracing::warn!("running with --insecure-no-auth: every caller is trusted");
    }
    let app = match Application::build(settings.clone()).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("server: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        http = %settings.http_bind,
        zmq = app.zmq_endpoint(),
        providers = ?settings.common.enabled_providers(),
        "customer-sync server listening"
    );
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server: {e}");
            ExitCode::FAILURE
        }
    }
}
