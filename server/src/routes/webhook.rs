//! `POST /api/v1/endpoint/stripe`: verified on the raw body, stored and applied in one
//! transaction (SPEC "Inward: the Stripe webhook").

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use shared::config::StripeSettings;
use shared::db::DbError;
use shared::domain::Provider;
use shared::inbound::{self, Applied, Event, UNDECIDED_TIE};
use std::sync::Arc;

use crate::batcher::{CommitFn, GroupCommit};
use crate::error::ApiError;
use crate::signature::{self, SignatureHeader};
use crate::startup::AppState;

/// The API version pinned for reads made by the server.
const STRIPE_VERSION: &str = "2026-10-28.endive";

/// The largest webhook body accepted.
pub const WEBHOOK_LIMIT: usize = 1024 * 1024;

/// The secrets deliveries may be signed with, the timestamp tolerance, and a Stripe client
/// to settle same-second ties by reading the customer as Stripe holds it now.
pub struct WebhookSettings {
    pub secrets: Vec<SecretString>,
    pub tolerance_secs: i64,
    pub stripe: Option<(reqwest::Client, StripeSettings)>,
}

/// `GET /v1/customers/{id}` as Stripe holds it now.
async fn fetch_customer(
    (client, stripe): &(reqwest::Client, StripeSettings),
    id: &str,
) -> anyhow::Result<serde_json::Value> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        anyhow::bail!("unexpected Stripe id");
    }
    let response = client
        .get(format!("{}/v1/customers/{id}", stripe.api_base))
        .bearer_auth(stripe.api_key.expose_secret())
        .header("Stripe-Version", STRIPE_VERSION)
        .send()
        .await?;
    if !response.status().is_success() {
        anyhow::bail!("Stripe answered {}", response.status());
    }
    Ok(response.json().await?)
}

async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > WEBHOOK_LIMIT) {
        return Err(ApiError::PayloadTooLarge(WEBHOOK_LIMIT));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::MalformedJson(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > WEBHOOK_LIMIT {
            return Err(ApiError::PayloadTooLarge(WEBHOOK_LIMIT));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A verified event with its raw JSON, as it is stored.
type Delivery = (Event, Value);
/// What applying it did, with the event back (a same-second tie needs it).
type Outcome = (Applied, Event);

/// Group commit for webhook events, by Stripe customer.
pub type Events = GroupCommit<Delivery, Outcome, DbError>;

/// Applies a batch of events with [`inbound::apply_batch`]; when the batch fails, one
/// transaction per event, so that one failing event does not fail the others.
pub fn commit_events(providers: Vec<Provider>) -> Arc<CommitFn<Delivery, Outcome, DbError>> {
    Arc::new(
        move |conn, events| match inbound::apply_batch(conn, &events, &providers) {
            Ok(applied) => Ok(applied
                .into_iter()
                .zip(events)
                .map(|(applied, (event, _))| Ok((applied, event)))
                .collect()),
            Err(e) if events.len() > 1 && !matches!(e, DbError::Unavailable(_)) => {
                tracing::warn!(error = %e, size = events.len(), "batch failed; applying one by one");
                Ok(events
                    .into_iter()
                    .map(|(event, raw)| {
                        inbound::apply(conn, &event, &raw, &providers).map(|a| (a, event))
                    })
                    .collect())
            }
            Err(e) => Err(e),
        },
    )
}

/// Verifies, stores and applies one Stripe event.
#[tracing::instrument(skip_all, fields(event_id, event_type))]
pub async fn stripe(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    hooks: web::Data<WebhookSettings>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let invalid = |e: signature::SignatureError| {
        tracing::warn!(reason = %e, "webhook refused");
        ApiError::BadRequest {
            code: "invalid_signature",
            message: e.to_string(),
        }
    };
    let header = req
        .headers()
        .get("stripe-signature")
        .ok_or(signature::SignatureError::Missing)
        .and_then(|h| {
            h.to_str()
                .map_err(|_| signature::SignatureError::Malformed("not text"))
        })
        .and_then(SignatureHeader::parse)
        .map_err(invalid)?;
    let now = chrono::Utc::now().timestamp();
    signature::verify(&header, &body, &hooks.secrets, hooks.tolerance_secs, now)
        .map_err(invalid)?;

    let (event, raw) = Event::parse(&body).map_err(|message| ApiError::BadRequest {
        code: "invalid_event",
        message,
    })?;
    let span = tracing::Span::current();
    span.record("event_id", event.id.as_str());
    span.record("event_type", event.kind.as_str());
    let key = event.customer_key().to_owned();
    let (applied, event) = state
        .events
        .submit(&key, (event, raw))
        .await
        // Stripe retries anything but a 2xx; the cause goes to the log.
        .map_err(|e: DbError| {
            ApiError::Unexpected(anyhow::anyhow!(e).context("applying a webhook event"))
        })?;
    let mut outcome = match applied {
        Applied::Duplicate => "duplicate",
        Applied::Unhandled => "unhandled",
        Applied::Handled(effect) => effect,
    };
    if outcome == UNDECIDED_TIE {
        outcome = settle_tie(&state, &hooks, event).await;
    }
    tracing::info!(outcome, "webhook event received");
    Ok(HttpResponse::Ok().json(json!({"received": true, "outcome": outcome})))
}

/// Applies the customer as Stripe holds it now; without a Stripe key the tie stays with
/// the state we hold.
async fn settle_tie(state: &AppState, hooks: &WebhookSettings, event: Event) -> &'static str {
    let Some(stripe) = &hooks.stripe else {
        return "same-second tie kept";
    };
    let Some(id) = event.data.object.get("id").and_then(|v| v.as_str()) else {
        return "same-second tie kept";
    };
    let current = match fetch_customer(stripe, id).await {
        Ok(current) => current,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the customer to settle a same-second tie");
            return "same-second tie kept";
        }
    };
    let providers = state.providers.clone();
    let applied = state
        .db(move |conn| {
            inbound::apply_current_customer(conn, &current, event.created, &event.id, &providers)
        })
        .await;
    match applied {
        Ok(_) => "same-second tie settled from Stripe",
        Err(e) => {
            tracing::warn!(error = %e, "applying the current customer failed");
            "same-second tie kept"
        }
    }
}
