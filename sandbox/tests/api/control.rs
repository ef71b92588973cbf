//! The `/_sandbox/...` controls: pausing webhooks, expiring events, silent updates.

use std::time::Duration;

use sandbox::{ControlError, SandboxConfig};
use serde_json::{json, Value};

use crate::helpers::{eventually, start, Receiver, Stripe, WAIT};

/// Long enough for a delivery that was going to happen to have happened.
const QUIET: Duration = Duration::from_millis(400);

fn config(receiver: &Receiver) -> SandboxConfig {
    SandboxConfig {
        webhook_url: Some(receiver.url.clone()),
        ..SandboxConfig::default()
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|o| o["id"].as_str().expect("an id").to_owned())
        .collect()
}

fn received_ids(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.event()["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A POST without any API key.
async fn post_without_key(stripe: &Stripe, path: &str) -> crate::helpers::Answer {
    stripe
        .send(stripe.http.post(format!("{}{path}", stripe.base)))
        .await
}

#[tokio::test]
async fn paused_webhooks_hold_deliveries_as_pending_and_send_them_in_order_after_resume() {
    let receiver = Receiver::start().await;
    let (sandbox, stripe) = start(config(&receiver)).await;

    let paused = stripe.post("/_sandbox/webhooks/pause", &[]).await;
    assert_eq!(
        (paused.status, &paused.body),
        (200, &json!({"paused": true}))
    );
    let ada = stripe.customer("Ada", "ada@example.com").await;
    stripe
        .post(&format!("/v1/customers/{ada}"), &[("name", "Ada King")])
        .await;
    stripe.customer("Grace", "grace@example.com").await;

    let listed = stripe.get("/v1/events").await;
    assert_eq!(
        ids(&listed.body).len(),
        3,
        "events are still created and listed"
    );
    assert_eq!(
        sandbox.pending_webhooks(),
        3,
        "held deliveries count as pending"
    );
    assert!(!sandbox.wait_webhooks_idle(QUIET).await);
    assert!(
        receiver.received().is_empty(),
        "nothing is delivered while paused"
    );

    let resumed = stripe.post("/_sandbox/webhooks/resume", &[]).await;
    assert_eq!(
        (resumed.status, &resumed.body),
        (200, &json!({"paused": false}))
    );
    assert!(sandbox.wait_webhooks_idle(WAIT).await);
    let oldest_first: Vec<String> = ids(&listed.body).into_iter().rev().collect();
    assert_eq!(received_ids(&receiver), oldest_first, "in event order");
    assert!(sandbox.events().iter().all(|e| e["pending_webhooks"] == 0));
}

#[tokio::test]
async fn a_retry_falling_due_during_a_pause_waits_for_the_resume() {
    let receiver = Receiver::start().await;
    // The first attempt is answered slowly, so that the pause starts while it is in flight.
    receiver.script(&[500]);
    receiver.set_delay(Duration::from_millis(300));
    let (sandbox, stripe) = start(config(&receiver)).await;
    stripe.customer("Ada", "ada@example.com").await;
    eventually("the first attempt", WAIT, || async {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    sandbox.pause_webhooks();
    receiver.set_delay(Duration::ZERO);

    assert!(!sandbox.wait_webhooks_idle(QUIET * 2).await);
    assert_eq!(receiver.received().len(), 1, "the retry is held");
    assert_eq!(sandbox.pending_webhooks(), 1);

    sandbox.resume_webhooks();
    assert!(sandbox.wait_webhooks_idle(WAIT).await);
    let received = received_ids(&receiver);
    assert_eq!(received.len(), 2);
    assert_eq!(received[0], received[1], "the same event, retried");
    assert_eq!(sandbox.events()[0]["pending_webhooks"], 0);
}

#[tokio::test]
async fn expiring_events_forgets_them_and_drops_their_pending_deliveries() {
    let receiver = Receiver::start().await;
    let (sandbox, stripe) = start(config(&receiver)).await;
    sandbox.pause_webhooks();
    stripe.customer("Ada", "ada@example.com").await;
    stripe.customer("Grace", "grace@example.com").await;
    let old = sandbox.events()[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(sandbox.pending_webhooks(), 2);

    let expired = stripe.post("/_sandbox/events/expire", &[]).await;
    assert_eq!(expired.status, 200);
    assert_eq!(
        expired.body,
        json!({"expired_events": 2, "dropped_deliveries": 2})
    );
    assert_eq!(
        sandbox.pending_webhooks(),
        0,
        "their deliveries are dropped"
    );
    assert!(ids(&stripe.get("/v1/events").await.body).is_empty());
    let gone = stripe.get(&format!("/v1/events/{old}")).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error(), ("invalid_request_error", "resource_missing"));
    assert_eq!(sandbox.customers().len(), 2, "the objects stay");

    // What happens afterwards has events, and they are delivered.
    let grace = sandbox.customers()[1].id.clone();
    stripe
        .post(
            &format!("/v1/customers/{grace}"),
            &[("name", "Grace Hopper")],
        )
        .await;
    let listed = ids(&stripe.get("/v1/events").await.body);
    assert_eq!(listed.len(), 1);
    sandbox.resume_webhooks();
    assert!(sandbox.wait_webhooks_idle(WAIT).await);
    assert_eq!(
        received_ids(&receiver),
        listed,
        "only the new event went out"
    );
    assert_eq!(
        sandbox.expire_events(),
        1,
        "the method counts as the route does"
    );
}

#[tokio::test]
async fn a_cursor_naming_an_expired_event_is_a_404_resource_missing() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    stripe.customer("Ada", "ada@example.com").await;
    let old = sandbox.events()[0]["id"].as_str().unwrap().to_owned();
    sandbox.expire_events();
    stripe.customer("Grace", "grace@example.com").await;
    for param in ["ending_before", "starting_after"] {
        let answer = stripe
            .get(&format!(
                "/v1/events?{param}={old}&types[]=customer.created"
            ))
            .await;
        assert_eq!(answer.status, 404, "{param}");
        assert_eq!(
            answer.error(),
            ("invalid_request_error", "resource_missing")
        );
        assert_eq!(answer.body["error"]["param"], param);
        assert_eq!(
            answer.body["error"]["message"],
            format!("No such event: '{old}'")
        );
    }
}

#[tokio::test]
async fn a_silent_update_changes_the_customer_without_an_event() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let created = stripe
        .post(
            "/v1/customers",
            &[
                ("name", "Ada"),
                ("email", "ada@example.com"),
                ("metadata[customer_sync_id]", "c-1"),
                ("metadata[team]", "math"),
            ],
        )
        .await;
    let id = created.id();

    let silent = stripe
        .post(
            &format!("/_sandbox/customers/{id}/silent"),
            &[
                ("name", "Ada King"),
                ("email", "ada.king@example.com"),
                ("metadata[customer_sync_id]", ""),
                ("metadata[era]", "victorian"),
            ],
        )
        .await;
    assert_eq!(silent.status, 200, "{:?}", silent.body);
    assert_eq!(silent.body["name"], "Ada King");

    let fetched = stripe.get(&format!("/v1/customers/{id}")).await;
    assert_eq!(
        fetched.body, silent.body,
        "the answer is the stored customer"
    );
    assert_eq!(fetched.body["email"], "ada.king@example.com");
    assert_eq!(
        fetched.body["metadata"],
        json!({"team": "math", "era": "victorian"}),
        "an empty metadata value unsets the key"
    );
    assert_eq!(sandbox.events().len(), 1, "only customer.created");
    let by_new = stripe.get("/v1/customers?email=ada.king@example.com").await;
    assert_eq!(
        ids(&by_new.body),
        [id.as_str()],
        "the email filter sees the change"
    );
    let by_old = stripe.get("/v1/customers?email=ada@example.com").await;
    assert!(ids(&by_old.body).is_empty());

    let again = sandbox
        .silent_update(&id, &[("name", "Augusta Ada King")])
        .expect("the method updates too");
    assert_eq!(again["name"], "Augusta Ada King");
    assert_eq!(
        sandbox.customers()[0].name.as_deref(),
        Some("Augusta Ada King")
    );
    assert_eq!(sandbox.events().len(), 1);
}

#[tokio::test]
async fn a_silent_update_is_validated_as_the_real_update_is() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let id = stripe.customer("Ada", "ada@example.com").await;

    let unknown = stripe
        .post("/_sandbox/customers/cus_nope/silent", &[("name", "X")])
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.error(),
        ("invalid_request_error", "resource_missing")
    );
    assert_eq!(
        unknown.body["error"]["message"],
        "No such customer: 'cus_nope'"
    );
    assert_eq!(
        sandbox.silent_update("cus_nope", &[("name", "X")]),
        Err(ControlError::NotFound(
            "No such customer: 'cus_nope'".into()
        ))
    );

    let path = format!("/_sandbox/customers/{id}/silent");
    let bad_email = stripe.post(&path, &[("email", "not an email")]).await;
    assert_eq!(bad_email.status, 400);
    assert_eq!(
        bad_email.error(),
        ("invalid_request_error", "email_invalid")
    );
    let unknown_param = stripe.post(&path, &[("nickname", "Ada")]).await;
    assert_eq!(unknown_param.status, 400);
    assert_eq!(unknown_param.error().1, "parameter_unknown");
    assert!(matches!(
        sandbox.silent_update(&id, &[("email", "not an email")]),
        Err(ControlError::Invalid { param: Some(p), .. }) if p == "email"
    ));
    assert_eq!(
        sandbox.customers()[0].email.as_deref(),
        Some("ada@example.com")
    );

    stripe.delete(&format!("/v1/customers/{id}")).await;
    let deleted = stripe.post(&path, &[("name", "X")]).await;
    assert_eq!(deleted.status, 404, "a deleted customer cannot be updated");
}

#[tokio::test]
async fn controls_skip_the_rate_limit_injected_failures_and_the_api_key() {
    let (sandbox, stripe) = start(SandboxConfig {
        fail_rate: 1.0,
        max_rps: Some(1),
        ..SandboxConfig::default()
    })
    .await;
    sandbox.fail_next(400, "parameter_invalid_empty", "injected", 5);
    for path in [
        "/_sandbox/webhooks/pause",
        "/_sandbox/webhooks/resume",
        "/_sandbox/events/expire",
        "/_sandbox/idempotency/expire",
    ] {
        for _ in 0..3 {
            assert_eq!(
                stripe.post(path, &[]).await.status,
                200,
                "{path} with a key"
            );
            assert_eq!(post_without_key(&stripe, path).await.status, 200, "{path}");
        }
    }
    assert!(
        sandbox.request_log().is_empty(),
        "controls are not API requests"
    );
    let api = stripe.get("/v1/customers").await;
    assert_ne!(api.status, 200, "the API's own knobs still apply to it");
}

#[tokio::test]
async fn unknown_sandbox_paths_get_a_404_json_error() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    for (method, path) in [
        (reqwest::Method::POST, "/_sandbox/webhooks/stop"),
        (reqwest::Method::POST, "/_sandbox"),
        (reqwest::Method::GET, "/_sandbox/webhooks/pause"),
        (reqwest::Method::POST, "/_sandbox/customers/cus_x"),
    ] {
        let answer = stripe.send(stripe.request(method.clone(), path)).await;
        assert_eq!(answer.status, 404, "{method} {path}");
        assert_eq!(answer.error().0, "invalid_request_error");
        assert!(answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Unrecognized request URL"));
    }
}

#[tokio::test]
async fn expiring_idempotency_keys_makes_a_key_sent_again_a_new_request() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let form = [("name", "Ada"), ("email", "ada@example.com")];
    let first = stripe.post_with_key("/v1/customers", &form, "k-1").await;
    let replayed = stripe.post_with_key("/v1/customers", &form, "k-1").await;
    assert_eq!(
        first.body["id"], replayed.body["id"],
        "replayed within 24 hours"
    );

    let expired = stripe.post("/_sandbox/idempotency/expire", &[]).await;
    assert_eq!(expired.body, json!({"expired_keys": 1}));
    let again = stripe.post_with_key("/v1/customers", &form, "k-1").await;
    assert_eq!(again.status, 200);
    assert_ne!(
        again.body["id"], first.body["id"],
        "a new request: a second customer"
    );
    assert_eq!(
        sandbox.expire_idempotency_keys(),
        1,
        "the new answer, kept again"
    );
    assert_eq!(sandbox.customers().len(), 2);
}
