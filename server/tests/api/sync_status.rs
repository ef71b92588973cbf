//! `GET /api/v1/sync/status`: the catch-up cursor, the last jobs, the last webhook heard.

use std::time::Duration;

use diesel::prelude::*;
use serde_json::{json, Value};
use shared::db::cursors;
use shared::domain::Provider;
use shared::stripe::signature::sign;

use crate::helpers::{error_of, salesforce, spawn_app, spawn_app_with, TestApp};

const SECRET: &str = "whsec_test_0123456789";
const POLLER: &str = "test-poller";

async fn status(app: &TestApp) -> Value {
    let response = app.get("/api/v1/sync/status").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn sql(app: &TestApp, statement: &str) {
    diesel::sql_query(statement)
        .execute(&mut app.conn())
        .unwrap();
}

/// One poll as the catch-up records it: it applied `applied` events up to `evt_9`.
fn poll(app: &TestApp, applied: i64, error: Option<&str>) {
    let mut conn = app.conn();
    cursors::claim_poll(&mut conn, Provider::Stripe, POLLER, Duration::from_secs(60))
        .unwrap()
        .expect("the poll is free");
    assert!(cursors::advance(
        &mut conn,
        Provider::Stripe,
        POLLER,
        "evt_9",
        1_700_000_009,
        applied
    )
    .unwrap());
    let caught_up = error.is_none().then(chrono::Utc::now);
    cursors::finish_poll(&mut conn, Provider::Stripe, POLLER, caught_up, error).unwrap();
}

#[tokio::test]
async fn before_any_poll_job_or_webhook_stripe_has_no_cursor_no_jobs_and_is_not_heard() {
    let app = spawn_app().await;

    let body = status(&app).await;

    assert_eq!(
        body,
        json!({"providers": {"stripe": {
            "enabled": true,
            "jobs": true,
            "events_cursor": null,
            "warning": null,
            "last_import": null,
            "last_reconcile": null,
            "webhook": {"last_heard_at": null, "seconds_since_last": null, "heard_recently": false},
        }}})
    );
}

#[tokio::test]
async fn only_the_enabled_providers_are_listed_and_salesforce_has_no_jobs() {
    let both = spawn_app_with(|s| s.common.salesforce = Some(salesforce())).await;
    let body = status(&both).await;
    assert_eq!(
        body["providers"]["salesforce"],
        json!({"enabled": true, "jobs": false})
    );
    assert_eq!(body["providers"]["stripe"]["jobs"], true);

    let salesforce_only = spawn_app_with(|s| {
        s.common.stripe = None;
        s.common.salesforce = Some(salesforce());
    })
    .await;
    let body = status(&salesforce_only).await;
    let names: Vec<&String> = body["providers"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["salesforce"]);
}

#[tokio::test]
async fn after_a_poll_the_cursor_is_shown_and_an_old_one_is_warned_about() {
    let app = spawn_app().await;
    poll(&app, 3, None);

    let body = status(&app).await;

    let stripe = &body["providers"]["stripe"];
    let cursor = &stripe["events_cursor"];
    assert_eq!(cursor["last_event_id"], "evt_9");
    assert_eq!(cursor["last_event_created"], 1_700_000_009);
    assert_eq!(cursor["last_poll_applied"], 3);
    assert!(cursor["last_poll_error"].is_null());
    assert!(cursor["last_poll_at"].is_string());
    assert!(cursor["caught_up_at"].is_string());
    assert!(cursor["age_seconds"].as_u64().unwrap() < 60, "{cursor}");
    assert!(stripe["warning"].is_null());

    sql(
        &app,
        "UPDATE sync_cursors SET caught_up_at = now() - interval '27 days 1 hour'",
    );
    poll(&app, 0, Some("Stripe answered 500: boom"));
    let body = status(&app).await;
    let stripe = &body["providers"]["stripe"];
    let age = stripe["events_cursor"]["age_seconds"].as_u64().unwrap();
    assert!((27 * 86_400..28 * 86_400).contains(&age), "{age}");
    assert_eq!(
        stripe["events_cursor"]["last_poll_error"],
        "Stripe answered 500: boom"
    );
    let warning = stripe["warning"].as_str().expect("a warning");
    assert!(
        warning.starts_with("catch-up is 27 days behind"),
        "{warning}"
    );
    assert!(warning.contains("a reconcile is needed"), "{warning}");
}

#[tokio::test]
async fn the_last_import_and_reconcile_are_summarised_with_their_counts() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/api/v1/jobs",
            &json!({"kind": "import", "provider": "stripe"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let import: Value = response.json().await.unwrap();

    let body = status(&app).await;

    let stripe = &body["providers"]["stripe"];
    assert_eq!(
        stripe["last_import"],
        json!({
            "id": import["id"],
            "status": "queued",
            "repair": false,
            "created_at": import["created_at"],
            "finished_at": null,
            "error": null,
            "counts": {},
        })
    );
    assert!(stripe["last_reconcile"].is_null());

    let response = app
        .post(
            "/api/v1/jobs",
            &json!({"kind": "reconcile", "provider": "stripe", "repair": true}),
        )
        .await;
    let reconcile: Value = response.json().await.unwrap();
    app.post(
        &format!("/api/v1/jobs/{}/cancel", reconcile["id"].as_str().unwrap()),
        &json!({}),
    )
    .await;
    let body = status(&app).await;
    let last = &body["providers"]["stripe"]["last_reconcile"];
    assert_eq!(last["id"], reconcile["id"]);
    assert_eq!(last["status"], "cancelled");
    assert_eq!(last["repair"], true);
    assert!(last["finished_at"].is_string());
}

#[tokio::test]
async fn a_webhook_heard_within_the_hour_counts_and_catch_up_events_do_not() {
    let app = spawn_app_with(|s| s.webhook_secrets = vec![SECRET.to_owned().into()]).await;
    sql(
        &app,
        "INSERT INTO webhook_events (id, event_type, created, object_id, payload, source) \
         VALUES ('evt_polled', 'customer.updated', 1, 'cus_1', '{}', 'events_api')",
    );
    let body = status(&app).await;
    assert_eq!(
        body["providers"]["stripe"]["webhook"]["heard_recently"], false,
        "an event the catch-up fetched is no webhook"
    );

    let event = json!({
        "id": "evt_hook", "object": "event", "api_version": "2026-10-28.endive",
        "created": chrono::Utc::now().timestamp(), "data": {"object": {"id": "x", "object": "plan"}},
        "livemode": false, "pending_webhooks": 1, "request": {"id": null}, "type": "plan.created"
    });
    let raw = serde_json::to_vec(&event).unwrap();
    let response = app
        .client
        .post(format!("{}/api/v1/endpoint/stripe", app.address))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            sign(SECRET, chrono::Utc::now().timestamp(), &raw),
        )
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let body = status(&app).await;
    let webhook = &body["providers"]["stripe"]["webhook"];
    assert_eq!(webhook["heard_recently"], true);
    assert!(webhook["last_heard_at"].is_string());
    assert!(
        webhook["seconds_since_last"].as_u64().unwrap() < 60,
        "{webhook}"
    );

    sql(
        &app,
        "UPDATE webhook_events SET received_at = now() - interval '2 hours' WHERE id = 'evt_hook'",
    );
    let body = status(&app).await;
    let webhook = &body["providers"]["stripe"]["webhook"];
    assert_eq!(webhook["heard_recently"], false);
    let since = webhook["seconds_since_last"].as_u64().unwrap();
    assert!((7_200..7_260).contains(&since), "{since}");
}

#[tokio::test]
async fn sync_status_requires_the_token_and_answers_only_get() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/api/v1/sync/status", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(error_of(response).await.0, "unauthorized");
    let response = app
        .request(reqwest::Method::POST, "/api/v1/sync/status")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}
