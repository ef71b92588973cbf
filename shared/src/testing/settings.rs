//! Settings for a test server and its consumers, wired to one test database.

use std::time::Duration;

use super::{TestDatabase, TOKEN};
use crate::config::{
    CommonSettings, ConsumerSettings, LogFormat, SalesforceSettings, ServerSettings, StripeSettings,
};

/// The Stripe key every test stack uses (the sandbox accepts any `sk_test_`).
pub const STRIPE_KEY: &str = "sk_test_customer_sync";

/// What a test server and its consumers share: the database, one ZeroMQ endpoint (port 0
/// for a server that binds it) and Stripe at `stripe_base`; Salesforce off.
pub fn common(db: &TestDatabase, zmq_endpoint: &str, stripe_base: &str) -> CommonSettings {
    CommonSettings {
        database_url: db.url.clone().into(),
        zmq_endpoints: vec![zmq_endpoint.to_owned()],
        stripe: Some(StripeSettings {
            api_key: STRIPE_KEY.to_owned().into(),
            api_base: stripe_base.to_owned(),
        }),
        salesforce: None,
        log_format: LogFormat::Pretty,
    }
}

/// Salesforce at `login_url` with these client credentials and the default field.
pub fn salesforce(login_url: &str, client_id: &str, client_secret: &str) -> SalesforceSettings {
    SalesforceSettings {
        login_url: login_url.to_owned(),
        client_id: client_id.to_owned().into(),
        client_secret: client_secret.to_owned().into(),
        api_version: "66.0".into(),
        external_id_field: "Customer_Id__c".into(),
        slow_background_percent: 80,
    }
}

/// A server on port 0 with the test token, accepting webhooks signed with `secrets`.
pub fn server(common: CommonSettings, secrets: &[&str]) -> ServerSettings {
    ServerSettings {
        common,
        http_bind: "127.0.0.1:0".parse().expect("a socket address"),
        api_token: Some(TOKEN.to_owned().into()),
        webhook_secrets: secrets.iter().map(|s| s.to_string().into()).collect(),
        webhook_tolerance: Duration::from_secs(300),
        http_max_connections: 2048,
        http_body_timeout: Duration::from_secs(10),
        http_trusted_proxies: Vec::new(),
    }
}

/// A consumer of every enabled provider with a fast sweep and quick retries (failure
/// tests draw long losing streaks).
pub fn consumer(common: CommonSettings) -> ConsumerSettings {
    ConsumerSettings {
        providers: common.enabled_providers(),
        common,
        concurrency: 8,
        stripe_max_rps: 1000,
        stripe_read_write_rps: None,
        max_attempts: 12,
        sweep_interval: Duration::from_millis(200),
        lease: Duration::from_secs(30),
        max_backoff: Duration::from_millis(500),
        events_poll: None,
        reconcile_interval: None,
        adopt_by_email: true,
        // Tests prune by calling a pass themselves.
        retention_days: None,
        metrics_bind: None,
        job: None,
    }
}
