//! `POST /api/v1/endpoint/stripe`: signatures, idempotency, ordering, effects, invoices.

use diesel::prelude::*;
use serde_json::{json, Value};
use shared::stripe::signature::sign;

use crate::helpers::{error_of, salesforce, spawn_app_with, TestApp};

const SECRET: &str = "whsec_test_0123456789";
const OLD_SECRET: &str = "whsec_old_9876543210";

pub(crate) async fn app() -> TestApp {
    spawn_app_with(|s| s.webhook_secrets = vec![SECRET.to_owned().into()]).await
}

async fn app_with_salesforce() -> TestApp {
    spawn_app_with(|s| {
        s.webhook_secrets = vec![SECRET.to_owned().into()];
        s.common.salesforce = Some(salesforce());
    })
    .await
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn deliver_raw(app: &TestApp, body: &[u8], signature: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/api/v1/endpoint/stripe", app.address))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.send().await.unwrap()
}

async fn deliver(app: &TestApp, event: &Value) -> reqwest::Response {
    let body = serde_json::to_vec(event).unwrap();
    deliver_raw(app, &body, Some(&sign(SECRET, now(), &body))).await
}

pub(crate) async fn deliver_ok(app: &TestApp, event: &Value) -> String {
    let response = deliver(app, event).await;
    assert_eq!(response.status(), 200, "{event}");
    let body: Value = response.json().await.unwrap();
    body["outcome"].as_str().unwrap().to_owned()
}

pub(crate) fn event(
    id: &str,
    kind: &str,
    created: i64,
    object: Value,
    previous: Option<Value>,
) -> Value {
    let mut data = json!({"object": object});
    if let Some(previous) = previous {
        data["previous_attributes"] = previous;
    }
    json!({
        "id": id, "object": "event", "api_version": "2026-10-28.endive", "created": created,
        "data": data, "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": kind
    })
}

pub(crate) fn customer(id: &str, name: &str, email: &str, local: Option<&str>) -> Value {
    let metadata = match local {
        Some(l) => json!({"customer_sync_id": l}),
        None => json!({}),
    };
    json!({"id": id, "object": "customer", "name": name, "email": email, "metadata": metadata, "created": 1_700_000_000})
}

pub(crate) fn invoice(id: &str, customer: &str, status: &str, paid: i64) -> Value {
    json!({
        "id": id, "object": "invoice", "customer": customer, "number": "INV-1", "status": status,
        "currency": "eur", "amount_due": 1000, "amount_paid": paid, "amount_remaining": 1000 - paid,
        "total": 1000, "hosted_invoice_url": "https://invoice.example/x", "due_date": null,
        "period_start": 1_700_000_000, "period_end": 1_700_000_100, "created": 1_700_000_000
    })
}

fn events_stored(app: &TestApp) -> i64 {
    app.count("webhook_events")
}

#[tokio::test]
async fn a_correctly_signed_event_is_stored_once() {
    let app = app().await;
    let e = event("evt_1", "ping.unhandled", now(), json!({"id": "x"}), None);
    assert_eq!(deliver_ok(&app, &e).await, "unhandled");
    assert_eq!(deliver_ok(&app, &e).await, "duplicate");
    assert_eq!(events_stored(&app), 1);
}

#[tokio::test]
async fn every_invalid_signature_is_a_400_that_writes_nothing() {
    let app = app().await;
    let e = event(
        "evt_1",
        "customer.created",
        now(),
        customer("cus_1", "A", "a@example.com", None),
        None,
    );
    let body = serde_json::to_vec(&e).unwrap();
    let good = sign(SECRET, now(), &body);
    let v1 = good.split("v1=").nth(1).unwrap().to_owned();
    let t = now();
    let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        ("missing header", None, body.clone()),
        ("no v1", Some(format!("t={t},v0={v1}")), body.clone()),
        (
            "wrong secret",
            Some(sign("whsec_wrong", t, &body)),
            body.clone(),
        ),
        (
            "tampered body",
            Some(good.clone()),
            body.iter()
                .map(|b| if *b == b'A' { b'B' } else { *b })
                .collect(),
        ),
        (
            "whitespace",
            Some(good.replace(",v1=", ", v1=")),
            body.clone(),
        ),
        (
            "uppercase hex",
            Some(format!("t={t},v1={}", v1.to_uppercase())),
            body.clone(),
        ),
        ("expired", Some(sign(SECRET, t - 301, &body)), body.clone()),
        (
            "far future",
            Some(sign(SECRET, t + 3600, &body)),
            body.clone(),
        ),
        ("no timestamp", Some(format!("v1={v1}")), body.clone()),
        ("garbage", Some("garbage!!".to_owned()), body.clone()),
    ];
    for (case, header, body) in cases {
        let response = deliver_raw(&app, &body, header.as_deref()).await;
        assert_eq!(response.status(), 400, "{case}");
        assert_eq!(error_of(response).await.0, "invalid_signature", "{case}");
    }
    assert_eq!(events_stored(&app), 0);
    assert_eq!(app.counts(), (0, 0));
}

#[tokio::test]
async fn during_a_rotation_either_secret_may_sign() {
    let app = spawn_app_with(|s| {
        s.webhook_secrets = vec![OLD_SECRET.to_owned().into(), SECRET.to_owned().into()]
    })
    .await;
    for (i, secret) in [OLD_SECRET, SECRET].iter().enumerate() {
        let body = serde_json::to_vec(&event(
            &format!("evt_{i}"),
            "x.y",
            now(),
            json!({"id": "x"}),
            None,
        ))
        .unwrap();
        let response = deliver_raw(&app, &body, Some(&sign(secret, now(), &body))).await;
        assert_eq!(response.status(), 200);
    }
    // Stripe sends one v1 per active secret.
    let body =
        serde_json::to_vec(&event("evt_both", "x.y", now(), json!({"id": "x"}), None)).unwrap();
    let t = now();
    let both = format!(
        "{},v1={}",
        sign("whsec_retired", t, &body),
        sign(SECRET, t, &body).split("v1=").nth(1).unwrap()
    );
    assert_eq!(deliver_raw(&app, &body, Some(&both)).await.status(), 200);
    assert_eq!(events_stored(&app), 3);
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_a_413() {
    let app = app().await;
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(1024 * 1024));
    let response = deliver_raw(
        &app,
        body.as_bytes(),
        Some(&sign(SECRET, now(), body.as_bytes())),
    )
    .await;
    assert_eq!(response.status(), 413);
    assert_eq!(events_stored(&app), 0);
}

#[tokio::test]
async fn a_signature_flood_of_thousands_of_entries_is_refused_as_malformed() {
    let app = app().await;
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000 * 1000));
    let good = sign(SECRET, now(), body.as_bytes());
    let flood = format!(
        "{},{good}",
        vec![format!("v1={}", "0".repeat(64)); 1800].join(",")
    );
    let response = deliver_raw(&app, body.as_bytes(), Some(&flood)).await;
    assert_eq!(response.status(), 400);
    let message = error_message(response).await;
    assert!(message.contains("longer than 4096 bytes"), "{message}");
    assert_eq!(events_stored(&app), 0);
}

/// The error's message.
async fn error_message(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_delivery_without_a_signature_is_answered_without_reading_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = app().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // A head announcing a mebibyte, and no body: the answer must not wait for it.
    let head = "POST /api/v1/endpoint/stripe HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered before the body arrived")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_signature"), "{answer}");
    assert_eq!(events_stored(&app), 0);
}

#[tokio::test]
async fn a_signed_body_that_is_not_an_event_is_a_400() {
    let app = app().await;
    for body in [
        "not json".to_owned(),
        "{}".to_owned(),
        json!({"id": "evt_1", "type": "customer.created", "created": 1}).to_string(),
        json!({"id": "evt_1", "object": "customer", "type": "x", "created": 1, "data": {"object": {}}}).to_string(),
        json!({"id": "", "object": "event", "type": "x", "created": 1, "data": {"object": {}}}).to_string(),
        json!({"id": "evt_1", "object": "event", "type": "x", "created": 1, "data": {"object": 5}}).to_string(),
        json!({"id": "evt_1", "object": "event", "type": "customer.created", "created": 1, "data": {"object": {"name": "no id"}}}).to_string(),
        json!({"id": "evt_1", "object": "event", "type": "customer.updated", "created": 1, "data": {"object": {"id": 42}}}).to_string(),
        json!({"id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1, "data": {"object": {"id": "in_1", "amount_due": "lots"}}}).to_string(),
    ] {
        let response = deliver_raw(&app, body.as_bytes(), Some(&sign(SECRET, now(), body.as_bytes()))).await;
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(error_of(response).await.0, "invalid_event");
    }
    assert_eq!(events_stored(&app), 0);
}

#[tokio::test]
async fn a_database_failure_is_a_500_so_stripe_retries_and_nothing_is_written() {
    let app = app().await;
    let mut conn = app.conn();
    diesel::sql_query(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'down'; END $$",
    )
    .execute(&mut conn)
    .unwrap();
    diesel::sql_query("CREATE TRIGGER refuse_customers BEFORE INSERT ON customers FOR EACH ROW EXECUTE FUNCTION refuse()")
        .execute(&mut conn)
        .unwrap();
    let e = event(
        "evt_1",
        "customer.created",
        now(),
        customer("cus_1", "A", "a@example.com", None),
        None,
    );
    assert_eq!(deliver(&app, &e).await.status(), 500);
    assert_eq!(events_stored(&app), 0);
    diesel::sql_query("DROP TRIGGER refuse_customers ON customers")
        .execute(&mut conn)
        .unwrap();
    assert_eq!(deliver_ok(&app, &e).await, "imported");
}

#[tokio::test]
async fn the_echo_of_our_own_create_links_without_a_new_customer_or_task() {
    let app = app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    let e = event(
        "evt_1",
        "customer.created",
        now(),
        customer("cus_A", "Ada", "ada@example.com", Some("c-1")),
        None,
    );
    assert_eq!(deliver_ok(&app, &e).await, "in sync");
    assert_eq!(app.counts(), (1, 1));
    let c: Value = app.get("/api/v1/customers/c-1").await.json().await.unwrap();
    assert_eq!(c["links"][0]["external_id"], "cus_A");
    assert_eq!(c["links"][0]["state"], "synced");
}

#[tokio::test]
async fn a_customer_created_in_stripe_becomes_local_and_goes_to_the_other_providers_only() {
    let app = app_with_salesforce().await;
    let e = event(
        "evt_1",
        "customer.created",
        now(),
        customer("cus_B", "Bob", "bob@example.com", None),
        None,
    );
    assert_eq!(deliver_ok(&app, &e).await, "imported");
    let c: Value = app
        .get("/api/v1/customers/cus_B")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (c["name"].as_str(), c["email"].as_str()),
        (Some("Bob"), Some("bob@example.com"))
    );
    let tasks: Value = app
        .get("/api/v1/tasks?customer_id=cus_B")
        .await
        .json()
        .await
        .unwrap();
    let providers: Vec<&str> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers, ["salesforce"]);
    assert_eq!(tasks["tasks"][0]["operation"], "create");

    let update = event(
        "evt_2",
        "customer.updated",
        now() + 1,
        customer("cus_B", "Bobby", "bob@example.com", None),
        Some(json!({"name": "Bob"})),
    );
    assert_eq!(deliver_ok(&app, &update).await, "applied");
    let tasks: Value = app
        .get("/api/v1/tasks?customer_id=cus_B&provider=stripe")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tasks["tasks"], json!([]), "never sent back to Stripe");
    let c: Value = app
        .get("/api/v1/customers/cus_B")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (c["name"].as_str(), c["version"].as_i64()),
        (Some("Bobby"), Some(2))
    );
}

#[tokio::test]
async fn an_update_delivered_before_its_create_wins_over_it() {
    let app = app().await;
    let t = now();
    let created = event(
        "evt_1",
        "customer.created",
        t,
        customer("cus_C", "Old", "c@example.com", None),
        None,
    );
    let updated = event(
        "evt_2",
        "customer.updated",
        t + 5,
        customer("cus_C", "New", "c@example.com", None),
        Some(json!({"name": "Old"})),
    );
    assert_eq!(deliver_ok(&app, &updated).await, "imported");
    assert_eq!(deliver_ok(&app, &created).await, "stale");
    let c: Value = app
        .get("/api/v1/customers/cus_C")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["name"], "New");
}

#[tokio::test]
async fn an_older_update_never_rolls_state_back_and_same_second_ties_follow_the_chain() {
    let app = app().await;
    let t = now();
    deliver_ok(
        &app,
        &event(
            "evt_0",
            "customer.created",
            t,
            customer("cus_D", "A", "d@example.com", None),
            None,
        ),
    )
    .await;
    let to_b = event(
        "evt_1",
        "customer.updated",
        t + 10,
        customer("cus_D", "B", "d@example.com", None),
        Some(json!({"name": "A"})),
    );
    let to_c = event(
        "evt_2",
        "customer.updated",
        t + 10,
        customer("cus_D", "C", "d@example.com", None),
        Some(json!({"name": "B"})),
    );
    // Same second, delivered in reverse: C is newer than what we hold and applies; B then
    // ties with C and does not follow from it. Neither order can be trusted, so the server
    // reads the customer from Stripe; Stripe is unreachable here, so the delivery is
    // refused (Stripe delivers it again) and not recorded: a redelivery is decided anew.
    assert_eq!(deliver_ok(&app, &to_c).await, "applied");
    let stored = events_stored(&app);
    for _ in 0..2 {
        let response = deliver(&app, &to_b).await;
        assert_eq!(response.status(), 502);
        assert_eq!(error_of(response).await.0, "tie_unsettled");
        assert_eq!(events_stored(&app), stored, "the tie is not recorded");
    }
    let c: Value = app
        .get("/api/v1/customers/cus_D")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["name"], "C");
    // In order, the chain applies both.
    let to_d = event(
        "evt_3",
        "customer.updated",
        t + 20,
        customer("cus_D", "D", "d@example.com", None),
        Some(json!({"name": "C"})),
    );
    let to_e = event(
        "evt_4",
        "customer.updated",
        t + 20,
        customer("cus_D", "E", "d@example.com", None),
        Some(json!({"name": "D"})),
    );
    assert_eq!(deliver_ok(&app, &to_d).await, "applied");
    assert_eq!(deliver_ok(&app, &to_e).await, "applied");
    let older = event(
        "evt_5",
        "customer.updated",
        t + 15,
        customer("cus_D", "Z", "d@example.com", None),
        Some(json!({"name": "B"})),
    );
    assert_eq!(deliver_ok(&app, &older).await, "stale");
    let c: Value = app
        .get("/api/v1/customers/cus_D")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["name"], "E");
}

#[tokio::test]
async fn an_echo_of_an_older_push_never_overwrites_a_newer_local_change() {
    let app = app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    let t = now();
    deliver_ok(
        &app,
        &event(
            "evt_1",
            "customer.created",
            t,
            customer("cus_A", "Ada", "ada@example.com", Some("c-1")),
            None,
        ),
    )
    .await;
    let patched: Value = app
        .patch("/api/v1/customers/c-1", &json!({"name": "Ada Local"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(patched["customer"]["version"], 2);
    let echo = event(
        "evt_2",
        "customer.updated",
        t + 1,
        customer("cus_A", "Ada Remote", "ada@example.com", Some("c-1")),
        Some(json!({"name": "Ada"})),
    );
    assert_eq!(deliver_ok(&app, &echo).await, "older than a local change");
    let c: Value = app.get("/api/v1/customers/c-1").await.json().await.unwrap();
    assert_eq!(
        (c["name"].as_str(), c["version"].as_i64()),
        (Some("Ada Local"), Some(2))
    );
    assert_eq!(app.counts(), (1, 2));
}

#[tokio::test]
async fn a_stripe_side_delete_tombstones_the_customer_in_any_order() {
    let app = app_with_salesforce().await;
    let t = now();
    deliver_ok(
        &app,
        &event(
            "evt_1",
            "customer.created",
            t,
            customer("cus_E", "E", "e@example.com", None),
            None,
        ),
    )
    .await;
    let deleted = json!({"id": "cus_E", "object": "customer", "deleted": true});
    assert_eq!(
        deliver_ok(
            &app,
            &event("evt_2", "customer.deleted", t - 5, deleted.clone(), None)
        )
        .await,
        "deleted"
    );
    let c: Value = app
        .get("/api/v1/customers/cus_E")
        .await
        .json()
        .await
        .unwrap();
    assert!(c["deleted_at"].is_string());
    let tasks: Value = app
        .get("/api/v1/tasks?customer_id=cus_E&provider=salesforce")
        .await
        .json()
        .await
        .unwrap();
    let ops: Vec<&str> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["create", "delete"]);
    // A late update does not revive it.
    let late = event(
        "evt_3",
        "customer.updated",
        t + 10,
        customer("cus_E", "Alive", "e@example.com", None),
        Some(json!({"name": "E"})),
    );
    deliver_ok(&app, &late).await;
    let c: Value = app
        .get("/api/v1/customers/cus_E")
        .await
        .json()
        .await
        .unwrap();
    assert!(c["deleted_at"].is_string());
    assert_eq!(c["name"], "E");
    // A delete for a customer we never knew changes nothing.
    let unknown = json!({"id": "cus_X", "object": "customer", "deleted": true});
    assert_eq!(
        deliver_ok(&app, &event("evt_4", "customer.deleted", t, unknown, None)).await,
        "unknown customer"
    );
}

#[tokio::test]
async fn invoices_never_roll_back_and_link_to_their_customer_when_it_arrives() {
    let app = app().await;
    let t = now();
    let paid = event(
        "evt_1",
        "invoice.paid",
        t + 10,
        invoice("in_1", "cus_F", "paid", 1000),
        None,
    );
    let finalized = event(
        "evt_2",
        "invoice.finalized",
        t + 5,
        invoice("in_1", "cus_F", "open", 0),
        None,
    );
    let tie = event(
        "evt_3",
        "invoice.updated",
        t + 10,
        invoice("in_1", "cus_F", "open", 0),
        None,
    );
    assert_eq!(deliver_ok(&app, &paid).await, "invoice stored");
    assert_eq!(deliver_ok(&app, &finalized).await, "stale");
    assert_eq!(deliver_ok(&app, &tie).await, "stale");
    let inv: Value = app.get("/api/v1/invoices/in_1").await.json().await.unwrap();
    assert_eq!(
        (inv["status"].as_str(), inv["amount_paid"].as_i64()),
        (Some("paid"), Some(1000))
    );
    assert_eq!(inv["amount_remaining"], 0);
    assert!(inv["customer_id"].is_null());

    deliver_ok(
        &app,
        &event(
            "evt_4",
            "customer.created",
            t,
            customer("cus_F", "F", "f@example.com", None),
            None,
        ),
    )
    .await;
    let inv: Value = app.get("/api/v1/invoices/in_1").await.json().await.unwrap();
    assert_eq!(inv["customer_id"], "cus_F");

    deliver_ok(
        &app,
        &event(
            "evt_5",
            "invoice.created",
            t,
            invoice("in_2", "cus_F", "draft", 0),
            None,
        ),
    )
    .await;
    let page: Value = app
        .get("/api/v1/invoices?customer_id=cus_F")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["invoices"].as_array().unwrap().len(), 2);
    let page: Value = app
        .get("/api/v1/invoices?status=draft")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["invoices"][0]["id"], "in_2");
    let page: Value = app
        .get("/api/v1/invoices?limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["next_after"], "in_1");
    let page: Value = app
        .get("/api/v1/invoices?limit=1&after=in_1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["invoices"][0]["id"], "in_2");

    assert_eq!(app.get("/api/v1/invoices/in_nope").await.status(), 404);
    assert_eq!(app.get("/api/v1/invoices/bad%20id").await.status(), 400);
    assert_eq!(app.get("/api/v1/invoices?status=weird").await.status(), 400);
    let unauthorized = app
        .client
        .get(format!("{}/api/v1/invoices", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
}

#[tokio::test]
async fn the_webhook_needs_no_api_token_but_refuses_other_methods() {
    let app = app().await;
    let response = app
        .client
        .get(format!("{}/api/v1/endpoint/stripe", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

/// Deliveries that arrive together are group-committed; each must still be applied once,
/// and one customer's events in the order they were applied (the later update wins).
#[tokio::test]
async fn concurrent_deliveries_and_their_duplicates_are_each_applied_once() {
    let app = app().await;
    let t = now();
    let mut events = Vec::new();
    for i in 0..25 {
        let id = format!("cus_{i}");
        let email = format!("c{i}@example.com");
        events.push(event(
            &format!("evt_{i}_created"),
            "customer.created",
            t,
            customer(&id, "Old", &email, None),
            None,
        ));
        events.push(event(
            &format!("evt_{i}_updated"),
            "customer.updated",
            t + 1,
            customer(&id, "New", &email, None),
            Some(json!({"name": "Old"})),
        ));
    }
    // Every event twice, interleaved so duplicates and both events of a customer tend to
    // share a batch.
    let deliveries: Vec<Value> = events.iter().chain(events.iter().rev()).cloned().collect();
    let mut running = tokio::task::JoinSet::new();
    for e in deliveries {
        let (client, address) = (app.client.clone(), app.address.clone());
        running.spawn(async move {
            let body = serde_json::to_vec(&e).unwrap();
            let response = client
                .post(format!("{address}/api/v1/endpoint/stripe"))
                .header("content-type", "application/json")
                .header("stripe-signature", sign(SECRET, now(), &body))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            (
                e["id"].as_str().unwrap().to_owned(),
                body["outcome"].as_str().unwrap().to_owned(),
            )
        });
    }
    let mut duplicates = std::collections::HashMap::<String, usize>::new();
    while let Some(result) = running.join_next().await {
        let (id, outcome) = result.unwrap();
        *duplicates.entry(id).or_default() += usize::from(outcome == "duplicate");
    }
    assert_eq!(duplicates.len(), 50);
    assert!(duplicates.values().all(|n| *n == 1), "{duplicates:?}");
    assert_eq!(events_stored(&app), 50);
    assert_eq!(app.count("customers"), 25);
    for i in 0..25 {
        let c: Value = app
            .get(&format!("/api/v1/customers/cus_{i}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(c["name"], "New", "cus_{i}");
    }
}
