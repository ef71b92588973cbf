//! `GET /api/v1/sync/status`: per enabled provider, how far the Events API catch-up got,
//! the last import and reconcile, and when a webhook was last heard.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use shared::db::cursors::{self, CursorRow};
use shared::db::events;
use shared::db::jobs::{self, JobRow};
use shared::domain::{JobKind, Provider};

use crate::error::ApiError;
use crate::startup::AppState;

/// A cursor older than this gets a warning: Stripe keeps events for 30 days.
const WARN_AFTER: Duration = Duration::from_secs(25 * 24 * 3600);

/// A webhook received within this long counts as the endpoint being heard.
const HEARD_RECENTLY: Duration = Duration::from_secs(3600);

/// Registers `GET /sync/status` (inside the authenticated scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/sync/status")
            .get(status)
            .default_service(web::to(super::wrong_method)),
    );
}

/// Every provider the server enables, by name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = SyncStatus)]
pub struct StatusResponse {
    providers: Providers,
}

/// One entry per provider the server enables; only Stripe has a catch-up, jobs and
/// webhooks.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Providers {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = StripeStatus)]
    stripe: Option<Box<StripeStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = OtherProviderStatus)]
    salesforce: Option<OtherProviderStatus>,
}

/// A provider without a catch-up or jobs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OtherProviderStatus {
    enabled: bool,
    jobs: bool,
}

/// Stripe's catch-up, jobs and webhooks.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StripeStatus {
    pub enabled: bool,
    pub jobs: bool,
    /// `null` before the first poll.
    pub events_cursor: Option<CursorResponse>,
    /// Set when the cursor is older than 25 days.
    pub warning: Option<String>,
    pub last_import: Option<JobSummary>,
    pub last_reconcile: Option<JobSummary>,
    pub webhook: WebhookStatus,
}

/// The Events API cursor as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = EventsCursor)]
pub struct CursorResponse {
    pub last_event_id: Option<String>,
    pub last_event_created: Option<i64>,
    /// When a poll last reached the newest event.
    pub caught_up_at: DateTime<Utc>,
    /// Seconds since `caught_up_at`.
    pub age_seconds: u64,
    pub last_poll_at: Option<DateTime<Utc>>,
    pub last_poll_error: Option<String>,
    /// Events the last poll applied that no webhook had brought.
    pub last_poll_applied: i64,
}

impl From<CursorRow> for CursorResponse {
    fn from(c: CursorRow) -> Self {
        Self {
            age_seconds: c.age().as_secs(),
            last_event_id: c.last_event_id,
            last_event_created: c.last_event_created,
            caught_up_at: c.caught_up_at,
            last_poll_at: c.last_poll_at,
            last_poll_error: c.last_poll_error,
            last_poll_applied: c.last_poll_applied,
        }
    }
}

/// The newest job of a kind, in brief (`GET /api/v1/jobs/{id}` has the rest).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: uuid::Uuid,
    pub status: String,
    pub repair: bool,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The job's progress: counts by kind of finding.
    pub counts: Value,
}

impl From<JobRow> for JobSummary {
    fn from(j: JobRow) -> Self {
        Self {
            id: j.id,
            status: j.status.to_string(),
            repair: j.repair,
            created_at: j.created_at,
            finished_at: j.finished_at,
            error: j.error,
            counts: j.progress,
        }
    }
}

/// When the webhook endpoint last received a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookStatus {
    pub last_heard_at: Option<DateTime<Utc>>,
    pub seconds_since_last: Option<u64>,
    /// A delivery arrived within the last hour.
    pub heard_recently: bool,
}

impl WebhookStatus {
    fn at(last_heard_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        let since = last_heard_at.map(|at| (now - at).to_std().unwrap_or_default());
        Self {
            last_heard_at,
            seconds_since_last: since.map(|s| s.as_secs()),
            heard_recently: since.is_some_and(|s| s <= HEARD_RECENTLY),
        }
    }
}

/// The warning for a cursor `age` old, if it is old enough to need one.
fn warning(age: Duration) -> Option<String> {
    (age > WARN_AFTER).then(|| {
        format!(
            "catch-up is {} days behind; events older than 30 days are gone, a reconcile is needed",
            age.as_secs() / (24 * 3600)
        )
    })
}

/// What Stripe's status is read from: one query each.
struct StripeReads {
    cursor: Option<CursorRow>,
    last_import: Option<JobRow>,
    last_reconcile: Option<JobRow>,
    last_webhook: Option<DateTime<Utc>>,
}

impl From<StripeReads> for StripeStatus {
    fn from(r: StripeReads) -> Self {
        let cursor = r.cursor.map(CursorResponse::from);
        Self {
            enabled: true,
            jobs: true,
            warning: cursor
                .as_ref()
                .and_then(|c| warning(Duration::from_secs(c.age_seconds))),
            events_cursor: cursor,
            last_import: r.last_import.map(JobSummary::from),
            last_reconcile: r.last_reconcile.map(JobSummary::from),
            webhook: WebhookStatus::at(r.last_webhook, Utc::now()),
        }
    }
}

/// The sync state of each enabled provider.
#[utoipa::path(
    get,
    path = "/api/v1/sync/status",
    operation_id = "get_sync_status",
    tag = "operations",
    responses((status = 200, description = "The sync state of each enabled provider", body = StatusResponse))
)]
#[tracing::instrument(skip_all)]
pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut providers = Providers::default();
    for provider in state.providers.iter().copied() {
        match provider {
            Provider::Stripe => {
                let reads = state
                    .db(|conn| {
                        Ok(StripeReads {
                            cursor: cursors::find(conn, Provider::Stripe)?,
                            last_import: jobs::latest(conn, Provider::Stripe, JobKind::Import)?,
                            last_reconcile: jobs::latest(
                                conn,
                                Provider::Stripe,
                                JobKind::Reconcile,
                            )?,
                            last_webhook: events::last_webhook_at(conn)?,
                        })
                    })
                    .await?;
                providers.stripe = Some(Box::new(StripeStatus::from(reads)));
            }
            Provider::Salesforce => {
                providers.salesforce = Some(OtherProviderStatus {
                    enabled: true,
                    jobs: false,
                })
            }
        }
    }
    Ok(HttpResponse::Ok().json(StatusResponse { providers }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_cursor_older_than_25_days_is_warned_about() {
        let day = 24 * 3600;
        assert_eq!(warning(Duration::from_secs(25 * day)), None);
        let warned = warning(Duration::from_secs(27 * day + 5)).expect("a warning");
        assert!(warned.starts_with("catch-up is 27 days behind"), "{warned}");
        assert!(warned.contains("reconcile"), "{warned}");
    }

    #[test]
    fn a_webhook_is_heard_recently_for_an_hour() {
        let now = Utc::now();
        let heard = WebhookStatus::at(Some(now - chrono::Duration::seconds(3599)), now);
        assert!(heard.heard_recently);
        assert_eq!(heard.seconds_since_last, Some(3599));
        let old = WebhookStatus::at(Some(now - chrono::Duration::seconds(3601)), now);
        assert!(!old.heard_recently);
        let never = WebhookStatus::at(None, now);
        assert!(!never.heard_recently);
        assert_eq!(never.seconds_since_last, None);
    }
}
