//! `PUT /api/v1/customers/{id}/links/stripe`: a Stripe customer linked by hand.

use diesel::prelude::*;
use diesel::sql_types::Text;
use reqwest::Method;
use sandbox::SandboxConfig;
use serde_json::{json, Value};

use crate::helpers::{error_of, salesforce, spawn_app, spawn_app_with, spawn_loop, TestApp};

const SHARED_EMAIL: &str = "ada@example.com";

fn path(id: &str) -> String {
    format!("/api/v1/customers/{id}/links/stripe")
}

async fn link(app: &TestApp, id: &str, external_id: &str) -> reqwest::Response {
    app.request(Method::PUT, &path(id))
        .json(&json!({"external_id": external_id}))
        .send()
        .await
        .unwrap()
}

/// The customer's tasks go dead as a create does when several Stripe customers share its
/// email.
fn kill_tasks(app: &TestApp, id: &str, error: &str) {
    diesel::sql_query(
        "UPDATE sync_tasks SET status = 'dead', attempts = 12, last_error = $2 WHERE customer_id = $1",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(error)
    .execute(&mut app.conn())
    .unwrap();
}

/// The Stripe link row: (external_id, synced_version, remote fields set).
fn stripe_link(app: &TestApp, id: &str) -> (Option<String>, i64, bool) {
    use shared::db::schema::provider_links as l;
    l::table
        .filter(l::customer_id.eq(id))
        .filter(l::provider.eq("stripe"))
        .select((
            l::external_id,
            l::synced_version,
            l::remote_event_created
                .is_not_null()
                .or(l::remote_event_id.is_not_null())
                .or(l::remote_name.is_not_null())
                .or(l::remote_email.is_not_null()),
        ))
        .first(&mut app.conn())
        .unwrap()
}

/// The customer's tasks as (operation, status, last_error), oldest first.
fn tasks_of(app: &TestApp, id: &str) -> Vec<(String, String, Option<String>)> {
    use shared::db::schema::sync_tasks as t;
    t::table
        .filter(t::customer_id.eq(id))
        .order(t::seq)
        .select((t::operation, t::status, t::last_error))
        .load(&mut app.conn())
        .unwrap()
}

async fn stripe_customer(sandbox: &sandbox::Sandbox, name: &str) -> String {
    let created = sandbox
        .dashboard(
            Method::POST,
            "/v1/customers",
            &[("name", name), ("email", SHARED_EMAIL)],
        )
        .await;
    created["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_manual_link_settles_the_dead_create_and_queues_one_stripe_update() {
    let stack = spawn_loop(SandboxConfig::default(), false).await;
    stack.create_customer("c-1", "Ada", SHARED_EMAIL).await;
    let first = stripe_customer(&stack.sandbox, "Ada (billing)").await;
    let chosen = stripe_customer(&stack.sandbox, "Ada (old)").await;
    let reason = format!("several Stripe customers share {SHARED_EMAIL}: {first}, {chosen}");
    kill_tasks(&stack, "c-1", &reason);

    let response = link(&stack, "c-1", &chosen).await;

    assert_eq!(response.status(), 202);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["customer"]["links"],
        json!([{"provider": "stripe", "external_id": chosen, "synced_version": 0, "state": "pending"}])
    );
    assert_eq!(body["customer"]["id"], "c-1");
    let tasks = body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["provider"], "stripe");
    assert_eq!(tasks[0]["operation"], "update");
    assert_eq!(tasks[0]["version"], 1);
    assert_eq!(tasks[0]["status"], "pending");
    assert_eq!(tasks[0]["request_id"], request_id.as_str());
    assert_eq!(
        tasks_of(&stack, "c-1"),
        [
            (
                "create".to_owned(),
                "succeeded".to_owned(),
                Some(format!("superseded by a manual link: {reason}"))
            ),
            ("update".to_owned(), "pending".to_owned(), None),
        ]
    );
    assert_eq!(stack.customer("c-1").await, body["customer"]);

    let response = link(&stack, "c-1", &chosen).await;
    assert_eq!(
        response.status(),
        200,
        "linking the same id again is a no-op"
    );
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["tasks"], json!([]));
    assert_eq!(again["customer"], body["customer"]);
    assert_eq!(stack.count("sync_tasks"), 2, "the no-op wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_a_consumer_runs_the_link_task_the_stripe_customer_carries_our_id_and_state() {
    let stack = spawn_loop(SandboxConfig::default(), false).await;
    stack.create_customer("c-1", "Ada", SHARED_EMAIL).await;
    kill_tasks(&stack, "c-1", "several Stripe customers share the email");
    let chosen = stripe_customer(&stack.sandbox, "Ada (old)").await;
    assert_eq!(link(&stack, "c-1", &chosen).await.status(), 202);

    let consumer = stack.consumer().await;
    stack.drained(2).await;

    let customers = stack.sandbox.customers();
    assert_eq!(customers.len(), 1, "no Stripe customer was created");
    let linked = &customers[0];
    assert_eq!(linked.id, chosen);
    assert_eq!(linked.name.as_deref(), Some("Ada"));
    assert_eq!(
        linked
            .metadata
            .get(shared::stripe::METADATA_KEY)
            .map(String::as_str),
        Some("c-1")
    );
    let customer = stack.customer("c-1").await;
    assert_eq!(customer["links"][0]["state"], "synced");
    assert_eq!(customer["links"][0]["synced_version"], 1);
    consumer.shutdown().await;
}

#[tokio::test]
async fn a_stripe_id_linked_to_another_customer_is_a_409_link_taken_that_writes_nothing() {
    let stack = spawn_loop(SandboxConfig::default(), false).await;
    stack.create_customer("c-1", "Ada", SHARED_EMAIL).await;
    stack.create_customer("c-2", "Ada B", SHARED_EMAIL).await;
    let cus = stripe_customer(&stack.sandbox, "Ada").await;
    assert_eq!(link(&stack, "c-1", &cus).await.status(), 202);
    kill_tasks(&stack, "c-2", "ambiguous");
    let tasks = stack.count("sync_tasks");

    let response = link(&stack, "c-2", &cus).await;

    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "link_taken");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("c-1"),
        "{body}"
    );
    assert_eq!(stack.count("sync_tasks"), tasks);
    assert_eq!(stripe_link(&stack, "c-2"), (None, 0, false));
    assert_eq!(
        tasks_of(&stack, "c-2"),
        [(
            "create".to_owned(),
            "dead".to_owned(),
            Some("ambiguous".to_owned())
        )],
        "the dead task waits on"
    );
}

#[tokio::test]
async fn replacing_a_link_forgets_the_previous_stripe_customers_remote_state() {
    let stack = spawn_loop(SandboxConfig::default(), false).await;
    stack.create_customer("c-1", "Ada", SHARED_EMAIL).await;
    diesel::sql_query(
        "UPDATE provider_links SET external_id = 'cus_previous', synced_version = 1, \
           remote_event_created = 1700000000, remote_event_id = 'evt_1', \
           remote_name = 'Ada', remote_email = 'ada@example.com' \
         WHERE customer_id = 'c-1'",
    )
    .execute(&mut stack.conn())
    .unwrap();
    let chosen = stripe_customer(&stack.sandbox, "Ada").await;

    let response = link(&stack, "c-1", &chosen).await;

    assert_eq!(response.status(), 202);
    assert_eq!(stripe_link(&stack, "c-1"), (Some(chosen), 0, false));
    assert_eq!(
        stack
            .db
            .count_where("provider_links", "external_id = 'cus_previous'"),
        0
    );
}

#[tokio::test]
async fn an_unknown_or_deleted_stripe_customer_is_a_422_naming_external_id_that_writes_nothing() {
    let stack = spawn_loop(SandboxConfig::default(), false).await;
    stack.create_customer("c-1", "Ada", SHARED_EMAIL).await;
    kill_tasks(&stack, "c-1", "ambiguous");
    let deleted = stripe_customer(&stack.sandbox, "Gone").await;
    stack
        .sandbox
        .dashboard(Method::DELETE, &format!("/v1/customers/{deleted}"), &[])
        .await;

    for external_id in ["cus_doesnotexist", deleted.as_str()] {
        let response = link(&stack, "c-1", external_id).await;
        assert_eq!(response.status(), 422, "{external_id}");
        let (code, field) = error_of(response).await;
        assert_eq!(code, "stripe_customer_not_found");
        assert_eq!(field.as_deref(), Some("external_id"));
    }

    assert_eq!(stripe_link(&stack, "c-1"), (None, 0, false));
    assert_eq!(
        tasks_of(&stack, "c-1"),
        [(
            "create".to_owned(),
            "dead".to_owned(),
            Some("ambiguous".to_owned())
        )]
    );
}

#[tokio::test]
async fn unknown_and_deleted_customers_are_refused_before_stripe_is_asked() {
    // Stripe does not answer here: a refusal that asked it would be a 502.
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", SHARED_EMAIL).await;
    app.delete_customer("c-1").await;
    let counts = app.counts();

    let response = link(&app, "c-9", "cus_123").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(response).await.0, "customer_not_found");

    let response = link(&app, "c-1", "cus_123").await;
    assert_eq!(response.status(), 409);
    assert_eq!(error_of(response).await.0, "customer_deleted");

    assert_eq!(app.counts(), counts);
    assert_eq!(stripe_link(&app, "c-1"), (None, 0, false));
}

#[tokio::test]
async fn when_stripe_cannot_be_asked_the_link_is_a_502_that_writes_nothing() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", SHARED_EMAIL).await;
    kill_tasks(&app, "c-1", "ambiguous");

    let response = link(&app, "c-1", "cus_123").await;

    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "stripe_unavailable");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "no internals in the body: {body}"
    );
    assert_eq!(stripe_link(&app, "c-1"), (None, 0, false));
    assert_eq!(app.db.count_where("sync_tasks", "status = 'dead'"), 1);
    assert_eq!(app.count("sync_tasks"), 1);
}

#[tokio::test]
async fn invalid_link_requests_are_400s_naming_the_field_and_write_nothing() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", SHARED_EMAIL).await;
    let long = "x".repeat(256);
    for body in [
        json!({"external_id": ""}),
        json!({"external_id": "cus-1"}),
        json!({"external_id": "cus 1"}),
        json!({"external_id": "cus_1/../x"}),
        json!({"external_id": "cus_é"}),
        json!({"external_id": long}),
        json!({}),
        json!({"external_id": null}),
    ] {
        let response = app
            .request(Method::PUT, &path("c-1"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let (code, field) = error_of(response).await;
        assert_eq!(code, "validation_failed", "{body}");
        assert_eq!(field.as_deref(), Some("external_id"), "{body}");
    }
    for body in [
        json!({"external_id": 5}),
        json!({"external_id": ["cus_1"]}),
        json!({"external_id": "cus_1", "force": true}),
        json!("cus_1"),
    ] {
        let response = app
            .request(Method::PUT, &path("c-1"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(error_of(response).await.0, "malformed_json", "{body}");
    }
    let response = link(&app, "c%201", "cus_1").await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await.1.as_deref(), Some("id"));
    let response = app
        .request(Method::PUT, &path("c-1"))
        .header("content-type", "text/plain")
        .body(r#"{"external_id": "cus_1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let response = app.get(&path("c-1")).await;
    assert_eq!(response.status(), 405);
    let response = app
        .request(Method::PUT, "/api/v1/customers/c-1/links/salesforce")
        .json(&json!({"external_id": "003xx"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    assert_eq!(app.counts(), (1, 1));
    assert_eq!(stripe_link(&app, "c-1"), (None, 0, false));
}

#[tokio::test]
async fn without_stripe_a_link_is_a_409_provider_disabled() {
    let app = spawn_app_with(|s| {
        s.common.stripe = None;
        s.common.salesforce = Some(salesforce());
    })
    .await;
    app.create_customer("c-1", "Ada", SHARED_EMAIL).await;

    let response = link(&app, "c-1", "cus_123").await;

    assert_eq!(response.status(), 409);
    assert_eq!(error_of(response).await.0, "provider_disabled");
    assert_eq!(app.counts(), (1, 1));
    assert_eq!(
        app.db.count_where("provider_links", "provider = 'stripe'"),
        0
    );
}

#[tokio::test]
async fn a_link_requires_the_token_and_writes_nothing_without_it() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", SHARED_EMAIL).await;
    kill_tasks(&app, "c-1", "ambiguous");

    for token in [None, Some("wrong-token-0123456789abcdef")] {
        let mut request = app
            .client
            .put(format!("{}{}", app.address, path("c-1")))
            .json(&json!({"external_id": "cus_123"}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(error_of(response).await.0, "unauthorized");
    }

    assert_eq!(stripe_link(&app, "c-1"), (None, 0, false));
    assert_eq!(app.db.count_where("sync_tasks", "status = 'dead'"), 1);
}
