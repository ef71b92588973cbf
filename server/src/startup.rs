//! Wiring: the pools, the publisher, the committers, the shared state, the middleware and
//! the HTTP server on a given listener (the socket itself is `listener.rs`'s).

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{middleware, web, App, HttpMessage, HttpServer};
use anyhow::Context;
use shared::config::ServerSettings;
use shared::db::{self, DbError, PgConn, PgPool};
use shared::domain::Provider;
use tracing_actix_web::{RequestId, TracingLogger};

use crate::auth::ApiToken;
use crate::client_ip::{self, TrustedProxies};
use crate::committers;
use crate::deadline::{self, BodyDeadline};
use crate::listener::listen;
use crate::probe::DatabaseProbe;
use crate::publisher::{Limits, Publisher};
use crate::routes::{self, webhook::WebhookSettings};

/// actix refuses more HTTP workers than this.
const MAX_WORKERS: usize = 512;

/// What every handler shares.
pub struct AppState {
    /// The PostgreSQL pool.
    pub pool: PgPool,
    /// Providers that get a task for every change.
    pub providers: Vec<Provider>,
    /// The ZeroMQ publisher.
    pub publisher: Publisher,
    /// Group commit for catalog changes.
    pub changes: committers::Changes,
    /// Group commit for webhook events.
    pub events: committers::Events,
    /// Group commit for the API's idempotency keys.
    pub keys: crate::idempotency::Keys,
}

impl AppState {
    /// Runs Diesel work off the async executor.
    pub async fn db<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConn) -> Result<T, DbError> + Send + 'static,
    {
        db::run(&self.pool, work).await
    }

    /// Announces tasks that are already committed.
    pub fn publish(&self, tasks: &[shared::db::tasks::TaskRow]) {
        self.publisher.announce(tasks);
    }
}

/// Stops a running server (graceful with `stop(true)`).
pub type StopHandle = actix_web::dev::ServerHandle;

/// A built, bound server ready to run.
pub struct Application {
    port: u16,
    zmq_endpoint: String,
    server: Server,
}

impl Application {
    /// Connects to (and migrates) the database, binds the ZeroMQ socket and the HTTP listener.
    pub async fn build(settings: ServerSettings) -> anyhow::Result<Self> {
        let listener = listen(settings.http_bind).with_context(|| {
            format!(
                "binding the HTTP listener at {} (HTTP_BIND): is another server running?",
                settings.http_bind
            )
        })?;
        Self::build_on(settings, listener).await
    }

    /// Same as [`Application::build`] on a listener the caller bound (tests use port 0).
    pub async fn build_on(settings: ServerSettings, listener: TcpListener) -> anyhow::Result<Self> {
        let url = settings.common.database_url.clone();
        let pool = tokio::task::spawn_blocking(move || db::connect(&url, 32))
            .await
            .context("database set-up task")??;
        let (publisher, zmq_endpoint) =
            Publisher::bind(&settings.common.zmq_endpoints[0], Limits::default())?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            providers: settings.common.enabled_providers(),
            publisher,
            changes: committers::changes(
                &settings.common.database_url,
                settings.common.enabled_providers(),
            ),
            events: committers::events(
                &settings.common.database_url,
                settings.common.enabled_providers(),
            ),
            keys: crate::idempotency::committers(&settings.common.database_url),
        });
        tokio::spawn(crate::idempotency::prune_forever(
            state.clone(),
            std::time::Duration::from_secs(3600),
        ));
        shared::metrics::install();
        tokio::spawn(crate::metrics::refresh_forever(
            pool.clone(),
            settings.common.enabled_providers(),
        ));
        let probe = web::Data::from(DatabaseProbe::start(&settings.common.database_url));
        let body_deadline = web::Data::new(BodyDeadline(settings.http_body_timeout));
        let proxies = web::Data::new(TrustedProxies(settings.http_trusted_proxies.clone()));
        let token = web::Data::new(ApiToken::new(settings.api_token.as_ref()));
        if settings.webhook_secrets.is_empty() {
            tracing::warn!(
                "STRIPE_WEBHOOK_SECRET is not set: every webhook delivery will be refused"
            );
        }
        let hooks = web::Data::new(WebhookSettings {
            secrets: settings.webhook_secrets.clone(),
            tolerance_secs: settings.webhook_tolerance.as_secs() as i64,
            stripe: match &settings.common.stripe {
                Some(stripe) => Some(shared::stripe::StripeClient::new(stripe)?),
                None => None,
            },
        });
        // actix counts connections per worker: the limit is shared out between them, and
        // there are never more workers than connections to share (nor than actix allows).
        let workers = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .min(MAX_WORKERS)
            .min(settings.http_max_connections);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(middleware::from_fn(deadline::limit_body_time))
                .wrap(middleware::from_fn(echo_request_id))
                .wrap(TracingLogger::default())
                .wrap(middleware::from_fn(client_ip::resolve))
                .wrap(middleware::from_fn(crate::metrics::record))
                .app_data(state.clone())
                .app_data(probe.clone())
                .app_data(body_deadline.clone())
                .app_data(proxies.clone())
                .app_data(token.clone())
                .app_data(hooks.clone())
                .app_data(routes::json_config())
                .app_data(routes::query_config())
                .app_data(web::PathConfig::default())
                .configure(crate::metrics::configure)
                .configure(crate::console::configure)
                .configure(routes::configure)
                .default_service(web::to(routes::no_route))
        })
        .workers(workers)
        .max_connections(settings.http_max_connections / workers)
        .listen(listener)?
        .run();
        Ok(Self {
            port,
            zmq_endpoint,
            server,
        })
    }

    /// A handle that stops the HTTP server.
    pub fn stop_handle(&self) -> StopHandle {
        self.server.handle()
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The endpoint the ZeroMQ PUB socket is bound to.
    pub fn zmq_endpoint(&self) -> &str {
        &self.zmq_endpoint
    }

    /// Serves until the process is told to stop (SIGINT/SIGTERM).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Returns the request id in `X-Request-Id`, so a caller can quote it.
async fn echo_request_id(
    req: actix_web::dev::ServiceRequest,
    next: middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let id = req.extensions().get::<RequestId>().map(|id| id.to_string());
    let mut response = next.call(req).await?;
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    Ok(response)
}
