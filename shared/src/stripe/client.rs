//! One typed client for Stripe's API: form-encoded calls with the pinned version and a
//! stable idempotency key per call, and errors sorted by what the caller should do next.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{Customer, ErrorBody, List, API_VERSION};
use crate::config::StripeSettings;

/// The form field that carries [`super::METADATA_KEY`].
const METADATA_FIELD: &str = "metadata[customer_sync_id]";

/// What went wrong with a call, and so what to do next.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// The request may not have arrived (connect error, timeout): retry with the same key.
    #[error("network error: {0}")]
    Transport(String),
    /// Stripe answered with an error.
    #[error("Stripe answered {status}: {message}")]
    Api {
        status: u16,
        code: Option<String>,
        /// The error's `type` (`invalid_request_error`, `idempotency_error`, ...).
        kind: Option<String>,
        message: String,
        /// `Stripe-Should-Retry`, when Stripe knows.
        should_retry: Option<bool>,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
}

/// The caller's next step after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Retry later with the same idempotency key.
    RetrySameKey,
    /// The outcome is unknown and the key is spent (Stripe stored the 500): reconcile,
    /// then retry under a new key.
    ReconcileThenNewKey,
    /// Will never work as is: the task goes dead with Stripe's message.
    GiveUp,
}

impl StripeError {
    /// Sorts the error as README "Operations" describes.
    pub fn next(&self) -> Next {
        match self {
            StripeError::Transport(_) => Next::RetrySameKey,
            StripeError::Api {
                status,
                should_retry,
                kind,
                ..
            } => match (*status, *should_retry) {
                (500..=599, _) => Next::ReconcileThenNewKey,
                // The key was first used for another request (another endpoint or other
                // parameters, or a key kept past Stripe's 24 hours and reused): whether
                // that request did this one's work is unknown.
                (400 | 404, _) if kind.as_deref() == Some("idempotency_error") => {
                    Next::ReconcileThenNewKey
                }
                (_, Some(true)) | (409 | 429, None) => Next::RetrySameKey,
                (_, Some(false)) => Next::GiveUp,
                _ => Next::GiveUp,
            },
        }
    }

    /// The status, when Stripe answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            StripeError::Api { status, .. } => Some(*status),
            StripeError::Transport(_) => None,
        }
    }

    /// A 429 for the account's request rate, which every caller of the account should
    /// heed; not `lock_timeout`, which concerns one object written concurrently.
    pub fn is_rate_limit(&self) -> bool {
        matches!(self, StripeError::Api { status: 429, code, .. } if code.as_deref() != Some("lock_timeout"))
    }

    /// `Retry-After`, when given.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StripeError::Api { retry_after, .. } => *retry_after,
            StripeError::Transport(_) => None,
        }
    }
}

/// A Stripe API client for one account.
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: SecretString,
}

impl StripeClient {
    /// A client with connect and request timeouts.
    pub fn new(settings: &StripeSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("customer-sync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: settings.api_base.clone(),
            key: settings.api_key.clone(),
        })
    }

    /// `POST /v1/customers` with `metadata[customer_sync_id]`.
    pub async fn create_customer(
        &self,
        local_id: &str,
        name: &str,
        email: &str,
        idempotency_key: &str,
    ) -> Result<Customer, StripeError> {
        let form = [("name", name), ("email", email), (METADATA_FIELD, local_id)];
        self.send(
            "create_customer",
            self.http
                .post(format!("{}/v1/customers", self.base))
                .header("Idempotency-Key", idempotency_key)
                .form(&form),
        )
        .await
    }

    /// `POST /v1/customers/{id}` with the current name and email, and our metadata (so a
    /// customer adopted by email, or linked by hand, carries it from then on).
    pub async fn update_customer(
        &self,
        stripe_id: &str,
        local_id: &str,
        name: &str,
        email: &str,
        idempotency_key: &str,
    ) -> Result<Customer, StripeError> {
        let form = [("name", name), ("email", email), (METADATA_FIELD, local_id)];
        self.send(
            "update_customer",
            self.http
                .post(format!(
                    "{}/v1/customers/{}",
                    self.base,
                    path_segment(stripe_id)
                ))
                .header("Idempotency-Key", idempotency_key)
                .form(&form),
        )
        .await
    }

    /// `DELETE /v1/customers/{id}`; a 404 counts as done.
    pub async fn delete_customer(&self, stripe_id: &str) -> Result<(), StripeError> {
        let result: Result<serde_json::Value, StripeError> = self
            .send(
                "delete_customer",
                self.http.delete(format!(
                    "{}/v1/customers/{}",
                    self.base,
                    path_segment(stripe_id)
                )),
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(StripeError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/customers/{id}`: the customer as Stripe holds it now (a deleted one as its
    /// stub, `deleted: true`), and its raw JSON.
    pub async fn retrieve_customer(
        &self,
        stripe_id: &str,
    ) -> Result<(Customer, serde_json::Value), StripeError> {
        let raw: serde_json::Value = self
            .send(
                "retrieve_customer",
                self.http.get(format!(
                    "{}/v1/customers/{}",
                    self.base,
                    path_segment(stripe_id)
                )),
            )
            .await?;
        let customer = serde_json::from_value(raw.clone()).map_err(|e| StripeError::Api {
            status: 200,
            code: None,
            kind: None,
            message: format!("unreadable customer: {e}"),
            should_retry: Some(true),
            retry_after: None,
        })?;
        Ok((customer, raw))
    }

    /// The live Stripe customer created for `local_id`, found by email and metadata.
    pub async fn find_customer(
        &self,
        local_id: &str,
        email: &str,
    ) -> Result<Option<Customer>, StripeError> {
        Ok(self
            .customers_with_email(email)
            .await?
            .into_iter()
            .find(|c| c.local_id() == Some(local_id)))
    }

    /// One page of every customer, newest first, after `starting_after`.
    pub async fn list_customers(
        &self,
        starting_after: Option<&str>,
        limit: u8,
    ) -> Result<List<Customer>, StripeError> {
        self.list(
            "list_customers",
            "/v1/customers",
            starting_after,
            limit,
            &[],
        )
        .await
    }

    /// The live customers with exactly this email (Stripe's filter is exact), up to a
    /// thousand: a handful of pages covers any real set of duplicates.
    pub async fn customers_with_email(&self, email: &str) -> Result<Vec<Customer>, StripeError> {
        let mut found = Vec::new();
        let mut starting_after: Option<String> = None;
        for _ in 0..10 {
            let page: List<Customer> = self
                .list(
                    "list_customers",
                    "/v1/customers",
                    starting_after.as_deref(),
                    100,
                    &[("email", email)],
                )
                .await?;
            let last = page.data.last().map(|c| c.id.clone());
            found.extend(page.data.into_iter().filter(|c| !c.deleted));
            match (page.has_more, last) {
                (true, Some(last)) => starting_after = Some(last),
                _ => break,
            }
        }
        Ok(found)
    }

    /// One page of every invoice, newest first, after `starting_after`.
    pub async fn list_invoices(
        &self,
        starting_after: Option<&str>,
        limit: u8,
    ) -> Result<List<super::Invoice>, StripeError> {
        self.list("list_invoices", "/v1/invoices", starting_after, limit, &[])
            .await
    }

    /// One page of the customer and invoice events, raw: the `limit` events just after
    /// `ending_before` (still newest first), or the newest ones without it.
    pub async fn list_events(
        &self,
        ending_before: Option<&str>,
        limit: u8,
    ) -> Result<List<serde_json::Value>, StripeError> {
        self.events(ending_before.map(|id| ("ending_before", id)), limit)
            .await
    }

    /// One page of the customer and invoice events older than `starting_after`, newest
    /// first.
    pub async fn list_events_after(
        &self,
        starting_after: Option<&str>,
        limit: u8,
    ) -> Result<List<serde_json::Value>, StripeError> {
        self.events(starting_after.map(|id| ("starting_after", id)), limit)
            .await
    }

    async fn events(
        &self,
        cursor: Option<(&str, &str)>,
        limit: u8,
    ) -> Result<List<serde_json::Value>, StripeError> {
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some((name, id)) = cursor {
            query.push((name, id.to_owned()));
        }
        for kind in super::CUSTOMER_EVENTS.iter().chain(super::INVOICE_EVENTS) {
            query.push(("types[]", (*kind).to_owned()));
        }
        self.send(
            "list_events",
            self.http
                .get(format!("{}/v1/events", self.base))
                .query(&query),
        )
        .await
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        starting_after: Option<&str>,
        limit: u8,
        filters: &[(&str, &str)],
    ) -> Result<List<T>, StripeError> {
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        query.extend(filters.iter().map(|(k, v)| (*k, (*v).to_owned())));
        self.send(
            operation,
            self.http.get(format!("{}{path}", self.base)).query(&query),
        )
        .await
    }

    /// Sends one request, recording it under `operation` (a fixed name, never an id).
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, StripeError> {
        let started = std::time::Instant::now();
        let answered = request
            .bearer_auth(self.key.expose_secret())
            .header("Stripe-Version", API_VERSION)
            .send()
            .await;
        let response = match answered {
            Ok(response) => response,
            Err(e) => {
                crate::metrics::provider_call("stripe", operation, None, started.elapsed());
                return Err(StripeError::Transport(without_url(e)));
            }
        };
        let status = response.status().as_u16();
        crate::metrics::provider_call("stripe", operation, Some(status), started.elapsed());
        let headers = response.headers().clone();
        let request_id = headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response
            .bytes()
            .await
            .map_err(|e| StripeError::Transport(without_url(e)))?;
        tracing::debug!(status, stripe_request_id = %request_id, "stripe answered");
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|e| StripeError::Api {
                status,
                code: None,
                kind: None,
                message: format!("unreadable answer: {e}"),
                should_retry: Some(true),
                retry_after: None,
            });
        }
        let detail = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .map(|b| b.error);
        let should_retry = headers
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("true"));
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let message = match &detail {
            Some(d) => format!(
                "{}{}",
                d.message.clone().unwrap_or_else(|| "no message".into()),
                d.kind
                    .as_deref()
                    .map(|k| format!(" ({k})"))
                    .unwrap_or_default()
            ),
            None => format!("HTTP {status} without a Stripe error body"),
        };
        let kind = detail.as_ref().and_then(|d| d.kind.clone());
        Err(StripeError::Api {
            status,
            kind,
            code: detail.and_then(|d| d.code),
            message,
            should_retry,
            retry_after,
        })
    }
}

/// A Stripe id is `[A-Za-z0-9_]`; anything else is percent-encoded to keep the path intact.
pub fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// reqwest's message without the URL (which may carry nothing secret, but is noise).
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    format!("{kind}: {}", e.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, should_retry: Option<bool>) -> StripeError {
        StripeError::Api {
            status,
            code: None,
            kind: None,
            message: String::new(),
            should_retry,
            retry_after: None,
        }
    }

    #[test]
    fn only_a_rate_limit_429_slows_the_whole_account() {
        let with_code = |code: &str| StripeError::Api {
            status: 429,
            code: Some(code.to_owned()),
            kind: None,
            message: String::new(),
            should_retry: None,
            retry_after: None,
        };
        assert!(with_code("rate_limit").is_rate_limit());
        assert!(api(429, None).is_rate_limit());
        // One object written concurrently: that task retries, the account does not slow.
        assert!(!with_code("lock_timeout").is_rate_limit());
        assert_eq!(with_code("lock_timeout").next(), Next::RetrySameKey);
        assert!(!api(409, None).is_rate_limit());
        assert!(!api(500, None).is_rate_limit());
    }

    #[test]
    fn errors_are_sorted_as_spec_says() {
        assert_eq!(
            StripeError::Transport("t".into()).next(),
            Next::RetrySameKey
        );
        assert_eq!(api(409, None).next(), Next::RetrySameKey);
        assert_eq!(api(429, None).next(), Next::RetrySameKey);
        assert_eq!(api(500, None).next(), Next::ReconcileThenNewKey);
        assert_eq!(api(503, Some(false)).next(), Next::ReconcileThenNewKey);
        assert_eq!(api(400, None).next(), Next::GiveUp);
        assert_eq!(api(400, Some(true)).next(), Next::RetrySameKey);
        assert_eq!(api(401, None).next(), Next::GiveUp);
        assert_eq!(api(403, None).next(), Next::GiveUp);
        assert_eq!(api(429, Some(false)).next(), Next::GiveUp);
        let idempotency = |status| StripeError::Api {
            status,
            code: None,
            kind: Some("idempotency_error".into()),
            message: String::new(),
            should_retry: None,
            retry_after: None,
        };
        assert_eq!(idempotency(400).next(), Next::ReconcileThenNewKey);
        assert_eq!(idempotency(404).next(), Next::ReconcileThenNewKey);
        // Another request still running under the key: wait for it.
        assert_eq!(idempotency(409).next(), Next::RetrySameKey);
        assert_eq!(path_segment("cus_1/../x"), "cus_1%2F%2E%2E%2Fx");
    }

    #[test]
    fn the_create_form_carries_the_metadata_key() {
        assert_eq!(
            METADATA_FIELD,
            format!("metadata[{}]", super::super::METADATA_KEY)
        );
    }
}
