//! `GET /metrics` at `CONSUMER_METRICS_BIND`: this process's counters in Prometheus's text
//! format (provider calls, task outcomes, the budget, retention). One worker, a small
//! connection limit and nothing but that route: a scraper's port, not an API.

use std::net::{SocketAddr, TcpListener};

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;

/// Connections the metrics port serves at once.
const MAX_CONNECTIONS: usize = 64;

/// A metrics listener serving in the background.
pub struct MetricsServer {
    /// Where it listens (the port chosen when the setting said 0).
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl MetricsServer {
    /// Installs the recorder and serves it at `bind`.
    pub fn start(bind: SocketAddr) -> anyhow::Result<Self> {
        shared::metrics::install();
        let listener = TcpListener::bind(bind).with_context(|| {
            format!("binding the metrics listener at {bind} (CONSUMER_METRICS_BIND)")
        })?;
        let addr = listener.local_addr()?;
        let server = HttpServer::new(|| {
            App::new()
                .route("/metrics", web::get().to(scrape))
                .default_service(web::to(|| async {
                    HttpResponse::NotFound()
                        .content_type("text/plain; charset=utf-8")
                        .body("only GET /metrics is served here\n")
                }))
        })
        .workers(1)
        .max_connections(MAX_CONNECTIONS)
        .client_request_timeout(std::time::Duration::from_secs(5))
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        tracing::info!(url = %format!("http://{addr}/metrics"), "serving metrics");
        Ok(Self { addr, handle })
    }

    /// Stops the listener.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

async fn scrape() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(shared::metrics::CONTENT_TYPE)
        .body(shared::metrics::render())
}
