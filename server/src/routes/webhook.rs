//! `POST /api/v1/endpoint/stripe`: verified on the raw body, stored and applied in one
//! transaction (README "The Stripe webhook").

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::SecretString;
use serde::Serialize;
use shared::db::DbError;
use shared::inbound::{Applied, Effect};
use shared::stripe::signature::{self, SignatureError, SignatureHeader};
use shared::stripe::{Event, StripeClient};

use crate::committers::Inbound;
use crate::error::{ApiError, ErrorBody};
use crate::startup::AppState;

/// The largest webhook body accepted.
pub const WEBHOOK_LIMIT: usize = 1024 * 1024;

/// Registers `POST /endpoint/stripe` (no token: the signature authenticates it).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/endpoint/stripe")
            .post(stripe)
            .default_service(web::to(super::wrong_method)),
    );
}

/// The secrets deliveries may be signed with, the timestamp tolerance, and a Stripe client
/// to settle same-second ties by reading the customer as Stripe holds it now.
pub struct WebhookSettings {
    pub secrets: Vec<SecretString>,
    pub tolerance_secs: i64,
    pub stripe: Option<StripeClient>,
}

/// What a delivery accepted (2xx) is answered with.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Received {
    received: bool,
    /// What the event did: `duplicate`, `unhandled`, an effect such as `linked` or
    /// `updated`, `stale`, or how a same-second tie was settled.
    #[schema(value_type = String)]
    outcome: &'static str,
}

/// Verifies, stores and applies one Stripe event.
#[utoipa::path(
    post,
    path = "/api/v1/endpoint/stripe",
    operation_id = "receive_stripe_event",
    tag = "webhooks",
    security(()),
    params(("Stripe-Signature" = String, Header, description = "Stripe's signature: `t=<unix time>,v1=<hex HMAC-SHA256>`")),
    request_body(content = Object, description = "A Stripe event, verified on the raw bytes (at most 1 MiB)", content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (and applied) after commit, or already received", body = Received),
        (status = 400, description = "`invalid_signature` (missing, malformed or wrong signature, expired timestamp) or `invalid_event`: nothing written", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over 1 MiB", body = ErrorBody),
        (status = 500, description = "`internal_error`: the event was not stored; Stripe retries", body = ErrorBody),
        (status = 502, description = "`tie_unsettled`: a same-second tie could not be settled from Stripe; nothing written, Stripe retries", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(event_id, event_type))]
pub async fn stripe(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    hooks: web::Data<WebhookSettings>,
) -> Result<HttpResponse, ApiError> {
    let invalid = |e: SignatureError| {
        tracing::warn!(reason = %e, "webhook refused");
        count("unknown", "refused_signature");
        ApiError::BadRequest {
            code: "invalid_signature",
            message: e.to_string(),
        }
    };
    // The cheap checks first: a delivery without a well-formed signature header is
    // answered before its body is read.
    let header = req
        .headers()
        .get("stripe-signature")
        .ok_or(SignatureError::Missing)
        .and_then(|h| {
            h.to_str()
                .map_err(|_| SignatureError::Malformed("not text"))
        })
        .and_then(SignatureHeader::parse)
        .map_err(invalid)?;
    let body = super::read_body_up_to(req.headers(), payload, WEBHOOK_LIMIT).await?;
    let now = chrono::Utc::now().timestamp();
    signature::verify(&header, &body, &hooks.secrets, hooks.tolerance_secs, now)
        .map_err(invalid)?;

    let (event, raw) = Event::parse(&body).map_err(|message| {
        count("unknown", "refused_event");
        ApiError::BadRequest {
            code: "invalid_event",
            message,
        }
    })?;
    let kind = event_type_label(event.kind.as_str());
    let span = tracing::Span::current();
    span.record("event_id", event.id.as_str());
    span.record("event_type", event.kind.as_str());
    let key = event.customer_key().to_owned();
    let applied = state
        .events
        .submit(&key, Inbound::Event((event, raw)))
        .await
        // Stripe retries anything but a 2xx; the cause goes to the log.
        .map_err(|e: DbError| {
            count(kind, "failed");
            ApiError::Unexpected(anyhow::anyhow!(e).context("applying a webhook event"))
        })?;
    let (outcome, label) = match applied {
        Applied::Duplicate => ("duplicate", "duplicate"),
        Applied::Unhandled => ("unhandled", "ignored"),
        Applied::Handled(Effect::Tie) => {
            let settled = settle_tie(&state, &hooks, &key, &body)
                .await
                .inspect_err(|_| count(kind, "failed"))?;
            (settled.0, settled.1)
        }
        Applied::Handled(Effect::Stale) => (Effect::Stale.as_str(), "stale"),
        Applied::Handled(effect) => (effect.as_str(), "applied"),
    };
    count(kind, label);
    tracing::info!(outcome, "webhook event received");
    Ok(HttpResponse::Ok().json(Received {
        received: true,
        outcome,
    }))
}

/// Settles a same-second tie with the customer as Stripe holds it now, through the
/// customer's committer (so in order with its other events). When Stripe cannot be asked
/// the delivery is refused: the tie was not recorded, and Stripe delivers it again.
async fn settle_tie(
    state: &AppState,
    hooks: &WebhookSettings,
    key: &str,
    body: &[u8],
) -> Result<(&'static str, &'static str), ApiError> {
    let unsettled = |why: &str| {
        tracing::warn!(
            why,
            "a same-second tie could not be settled; Stripe will deliver it again"
        );
        ApiError::BadGateway {
            code: "tie_unsettled",
            message: format!(
                "the event ties with the state held and could not be settled ({why}); \
                 it was not recorded, deliver it again"
            ),
        }
    };
    let Some(stripe) = &hooks.stripe else {
        return Err(unsettled("no STRIPE_API_KEY to read the customer"));
    };
    // Parsed again from the verified body: the first parse went to the committer, and
    // cloning every event for the rare tie would cost more than this.
    let (event, raw) = Event::parse(body).map_err(|e| unsettled(&e))?;
    let Some(id) = event.object_id().map(str::to_owned) else {
        return Err(unsettled("the event names no customer"));
    };
    let current = match stripe.retrieve_customer(&id).await {
        Ok((_, current)) => current,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the customer to settle a same-second tie");
            return Err(unsettled("Stripe did not answer"));
        }
    };
    let settled = state
        .events
        .submit(
            key,
            Inbound::SettleTie {
                delivery: (event, raw),
                current,
            },
        )
        .await
        .map_err(|e: DbError| {
            ApiError::Unexpected(anyhow::anyhow!(e).context("settling a same-second tie"))
        })?;
    Ok(match settled {
        Applied::Duplicate => ("duplicate", "duplicate"),
        Applied::Handled(Effect::Stale) => ("same-second tie superseded by a newer event", "stale"),
        _ => ("same-second tie settled from Stripe", "applied"),
    })
}

/// Counts one delivery by its event type and outcome (the metric's labels).
fn count(kind: &'static str, outcome: &'static str) {
    metrics::counter!(shared::metrics::WEBHOOK_EVENTS, "type" => kind, "outcome" => outcome)
        .increment(1);
}

/// The event type as a label: the types we handle by name, any other as `other` (a
/// sender chooses the type, and labels must stay a small set).
fn event_type_label(kind: &str) -> &'static str {
    use shared::stripe::{CUSTOMER_EVENTS, INVOICE_EVENTS};
    CUSTOMER_EVENTS
        .iter()
        .chain(INVOICE_EVENTS)
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}
