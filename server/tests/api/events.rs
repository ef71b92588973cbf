//! What the console reads besides the resources: `GET /api/v1/events` (what each Stripe
//! event did), `GET /api/v1/queue` (the queue and the 429s), a customer's timeline, and the
//! console's own files.

use diesel::prelude::*;
use sandbox::SandboxConfig;
use serde_json::{json, Value};
use shared::testing::eventually;

use crate::helpers::{error_of, spawn_app, spawn_loop, WAIT};
use crate::webhook::{app, customer, deliver_ok, event, invoice, now};

async fn json_of(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn events_are_listed_newest_first_with_what_applying_each_did() {
    let app = app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    let t = now();
    let ada = |name: &str| customer("cus_1", name, "ada@example.com", Some("c-1"));
    let delivered = [
        event("evt_1", "customer.created", t - 10, ada("Ada"), None),
        event(
            "evt_2",
            "customer.updated",
            t - 5,
            ada("Ada L"),
            Some(json!({"name": "Ada"})),
        ),
        event(
            "evt_3",
            "customer.updated",
            t - 8,
            ada("Ada Old"),
            Some(json!({"name": "Ada"})),
        ),
        event("evt_4", "ping.unhandled", t, json!({"id": "x"}), None),
        event(
            "evt_5",
            "invoice.created",
            t,
            invoice("in_1", "cus_1", "draft", 0),
            None,
        ),
    ];
    let mut answers = Vec::new();
    for e in &delivered {
        answers.push(deliver_ok(&app, e).await);
    }
    // A redelivery stores nothing and changes no outcome.
    assert_eq!(deliver_ok(&app, &delivered[0]).await, "duplicate");
    assert_eq!(answers[2], "stale");
    assert_eq!(answers[3], "unhandled");

    let all = json_of(app.get("/api/v1/events").await).await;
    let listed = all["events"].as_array().unwrap();
    let ids: Vec<&str> = listed.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["evt_5", "evt_4", "evt_3", "evt_2", "evt_1"]);
    assert_eq!(all["next_after"], Value::Null);
    for (e, answer) in delivered.iter().zip(&answers) {
        let row = listed.iter().find(|r| r["id"] == e["id"]).unwrap();
        // The webhook's answer, as a code: what the listing filters on.
        assert_eq!(row["outcome"], answer.replace(' ', "_"), "{row}");
        assert_eq!(row["type"], e["type"]);
        assert_eq!(row["source"], "webhook");
        assert_eq!(row["created"], e["created"]);
    }
    let of = |id: &str| listed.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(of("evt_1")["customer_id"], "c-1");
    assert_eq!(of("evt_5")["customer_id"], "c-1", "an invoice's customer");
    assert_eq!(of("evt_5")["object_id"], "in_1");
    assert_eq!(of("evt_4")["customer_id"], Value::Null);

    let filtered = |q: String| {
        let app = &app;
        async move {
            let page = json_of(app.get(&format!("/api/v1/events?{q}")).await).await;
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        filtered("type=customer.updated".into()).await,
        ["evt_3", "evt_2"]
    );
    assert_eq!(filtered("outcome=stale".into()).await, ["evt_3"]);
    let applied = answers[1].replace(' ', "_");
    assert_ne!(applied, "stale");
    assert_eq!(
        filtered(format!("type=customer.updated&outcome={applied}")).await,
        ["evt_2"]
    );
    assert!(filtered("type=invoice.paid".into()).await.is_empty());

    // Pages of two walk every event once, newest first.
    let mut walked = Vec::new();
    let mut after = String::new();
    loop {
        let page = json_of(app.get(&format!("/api/v1/events?limit=2{after}")).await).await;
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 2);
        walked.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match page["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(walked, ids);
}

#[tokio::test]
async fn bad_event_filters_are_400s_naming_the_parameter_and_the_listing_needs_the_token() {
    let app = app().await;
    for (query, field) in [
        ("type=Customer.updated", "type"),
        ("type=customer", "type"),
        ("type=customer.updated%27--", "type"),
        ("outcome=nope", "outcome"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("after=", "after"),
        ("after=evt_never_seen", "after"),
    ] {
        let response = app.get(&format!("/api/v1/events?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let (code, named) = error_of(response).await;
        assert_eq!(code, "validation_failed", "{query}");
        assert_eq!(named.as_deref(), Some(field), "{query}");
    }
    let unknown = app.get("/api/v1/events?colour=red").await;
    assert_eq!(unknown.status(), 400);
    let anonymous = app
        .client
        .get(format!("{}/api/v1/events", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn the_queue_counts_open_and_dead_tasks_and_every_429() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    app.create_customer("c-2", "Bob", "bob@example.com").await;
    let queue = json_of(app.get("/api/v1/queue").await).await;
    assert_eq!(queue["tasks"].as_array().unwrap().len(), 1, "{queue}");
    assert_eq!(queue["tasks"][0]["provider"], "stripe");
    assert_eq!(queue["tasks"][0]["status"], "pending");
    assert_eq!(queue["tasks"][0]["count"], 2);
    assert!(queue["tasks"][0]["oldest_due_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(queue["rate_limits"], json!([]));

    let mut conn = app.conn();
    diesel::sql_query(
        "UPDATE sync_tasks SET status = 'dead', last_error = 'refused' WHERE customer_id = 'c-2'",
    )
    .execute(&mut conn)
    .unwrap();
    shared::db::budgets::ensure(&mut conn, "stripe:test").unwrap();
    for _ in 0..2 {
        shared::db::budgets::pause(&mut conn, "stripe:test", std::time::Duration::from_secs(60))
            .unwrap();
    }
    let queue = json_of(app.get("/api/v1/queue").await).await;
    let count = |status: &str| {
        queue["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["status"] == status)
            .map(|t| t["count"].clone())
    };
    assert_eq!(count("pending"), Some(json!(1)), "{queue}");
    assert_eq!(count("dead"), Some(json!(1)), "{queue}");
    let limits = &queue["rate_limits"][0];
    assert_eq!(limits["account"], "stripe:test");
    assert_eq!(limits["rate_limited_total"], 2);
    let paused: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(limits["paused_until"].clone()).unwrap();
    assert!(paused > chrono::Utc::now(), "{limits}");
    assert!(limits["last_rate_limited_at"].is_string());

    let anonymous = app
        .client
        .get(format!("{}/api/v1/queue", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timeline_follows_each_change_from_its_request_through_the_stripe_call_to_the_echo() {
    let stack = spawn_loop(SandboxConfig::default(), true).await;
    let consumer = stack.consumer().await;
    let created = stack
        .post(
            "/api/v1/customers",
            &json!({"id": "c-1", "name": "Ada", "email": "ada@example.com"}),
        )
        .await;
    assert_eq!(created.status(), 202);
    let create_request = created.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let echoes = |n: usize| {
        let stack = &stack;
        async move {
            eventually("the echoes to be applied", WAIT, || async {
                let t = json_of(stack.get("/api/v1/customers/c-1/timeline").await).await;
                let entries = t["entries"].as_array().unwrap().clone();
                let events = entries.iter().filter(|e| e["kind"] == "event").count();
                let done = entries.iter().all(|e| {
                    e["kind"] == "event"
                        || e["tasks"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .all(|t| t["task"]["status"] == "succeeded")
                });
                (events == n && done).then_some(t)
            })
            .await
        }
    };
    echoes(1).await;
    let updated = stack
        .patch("/api/v1/customers/c-1", &json!({"name": "Ada L"}))
        .await;
    assert_eq!(updated.status(), 202);
    let update_request = updated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let t = echoes(2).await;

    let cus = t["customer"]["links"][0]["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let entries = t["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["change", "event", "change", "event"], "{t:#}");
    let (create, create_echo, update, update_echo) =
        (&entries[0], &entries[1], &entries[2], &entries[3]);
    assert_eq!(create["operation"], "create");
    assert_eq!(create["version"], 1);
    assert_eq!(create["request_id"], create_request.as_str());
    let task = &create["tasks"][0];
    assert_eq!(task["task"]["provider"], "stripe");
    assert_eq!(task["task"]["attempts"], 1);
    assert_eq!(task["task"]["request_id"], create_request.as_str());
    assert_eq!(task["external_id"], cus.as_str());
    assert_eq!(create_echo["event"]["type"], "customer.created");
    assert_eq!(create_echo["event"]["object_id"], cus.as_str());
    assert_eq!(create_echo["event"]["customer_id"], "c-1");
    assert!(create_echo["event"]["outcome"].is_string());
    assert_eq!(update["operation"], "update");
    assert_eq!(update["version"], 2);
    assert_eq!(update["request_id"], update_request.as_str());
    assert_eq!(update_echo["event"]["type"], "customer.updated");
    // Times never go backwards.
    let times: Vec<&str> = entries.iter().map(|e| e["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by_key(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap());
    assert_eq!(times, sorted);
    assert_eq!(t["truncated"], false);

    let missing = stack.get("/api/v1/customers/c-404/timeline").await;
    assert_eq!(missing.status(), 404);
    let bad = stack.get("/api/v1/customers/bad%20id/timeline").await;
    assert_eq!(bad.status(), 400);
    consumer.shutdown().await;
}

#[tokio::test]
async fn the_console_s_files_need_no_token_load_nothing_from_elsewhere_and_build_no_html_from_data()
{
    let app = spawn_app().await;
    let get = |path: &'static str| {
        let app = &app;
        async move {
            app.client
                .get(format!("{}{path}", app.address))
                .send()
                .await
                .unwrap()
        }
    };
    let mut bodies = Vec::new();
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let response = get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        bodies.push(response.text().await.unwrap());
    }
    for body in &bodies {
        // Offline: no URL of another host.
        assert!(!body.contains("http://") && !body.contains("https://"));
    }
    let script = &bodies[1];
    for unsafe_sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!script.contains(unsafe_sink), "{unsafe_sink}");
    }
    assert!(bodies[0].contains("/console/app.js"));

    let posted = app
        .client
        .post(format!("{}/console", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 405);
    assert_eq!(posted.headers()["allow"], "GET");
    assert_eq!(get("/console/secrets.json").await.status(), 404);
}
