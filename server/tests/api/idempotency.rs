//! `Idempotency-Key` on POST, PATCH and DELETE (README "Retrying a request safely").

use diesel::prelude::*;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{error_of, spawn_app, TestApp};

async fn keyed(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut request = app.request(method, path).header("Idempotency-Key", key);
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

async fn status_replayed_and_body(response: reqwest::Response) -> (u16, bool, Value) {
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    (status, replayed, response.json().await.unwrap())
}

/// Puts every stored key back in the state a request leaves while it runs, with its time
/// to run ending `running_ends_in_secs` from now (negative: it has passed).
fn mark_running(app: &TestApp, running_ends_in_secs: i64) {
    diesel::sql_query(format!(
        "UPDATE api_idempotency SET status = NULL, body = NULL, content_type = NULL, \
         running_until = now() + make_interval(secs => {running_ends_in_secs})"
    ))
    .execute(&mut app.conn())
    .unwrap();
}

#[tokio::test]
async fn a_retried_create_is_answered_from_the_first_response_and_writes_nothing() {
    let app = spawn_app().await;
    let body = json!({"name": "Ada Lovelace", "email": "ada@example.com"});
    let first = keyed(&app, Method::POST, "/api/v1/customers", "k-1", Some(&body)).await;
    assert_eq!(first.headers()["idempotency-key"], "k-1");
    let (status, replayed, first) = status_replayed_and_body(first).await;
    assert_eq!((status, replayed), (202, false));
    let counts = app.counts();
    assert_eq!(counts, (1, 1));

    let again = keyed(&app, Method::POST, "/api/v1/customers", "k-1", Some(&body)).await;
    let (status, replayed, again) = status_replayed_and_body(again).await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(again, first, "the first response, byte for byte");
    assert_eq!(app.counts(), counts);

    // Another key is another request.
    let other = keyed(&app, Method::POST, "/api/v1/customers", "k-2", Some(&body)).await;
    let (status, replayed, other) = status_replayed_and_body(other).await;
    assert_eq!((status, replayed), (202, false));
    assert_ne!(other["customer"]["id"], first["customer"]["id"]);
    assert_eq!(app.counts(), (2, 2));
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_after_its_commit_is_found_by_its_retry() {
    let app = spawn_app().await;
    let body = json!({"name": "Ada Lovelace", "email": "ada@example.com"});
    let first = keyed(&app, Method::POST, "/api/v1/customers", "k-1", Some(&body)).await;
    let (_, _, first) = status_replayed_and_body(first).await;
    // What a 503 after the commit (or a crash before the answer was stored) leaves: the
    // customer is written, the key holds no answer and its running time has passed.
    mark_running(&app, -1);

    let retry = keyed(&app, Method::POST, "/api/v1/customers", "k-1", Some(&body)).await;
    let (status, replayed, retry) = status_replayed_and_body(retry).await;
    assert_eq!(
        (status, replayed),
        (200, false),
        "ran again and found the customer: {retry}"
    );
    assert_eq!(retry["customer"]["id"], first["customer"]["id"]);
    assert_eq!(app.counts(), (1, 1), "one customer, one task");
}

#[tokio::test]
async fn a_key_used_for_another_request_is_refused_with_422_and_changes_nothing() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    let patch = json!({"name": "Ada King"});
    let first = keyed(
        &app,
        Method::PATCH,
        "/api/v1/customers/c-1",
        "k-1",
        Some(&patch),
    )
    .await;
    assert_eq!(first.status(), 202);
    let counts = app.counts();

    for (method, path, body) in [
        (
            Method::PATCH,
            "/api/v1/customers/c-1",
            json!({"name": "Ada Byron"}),
        ),
        (Method::PATCH, "/api/v1/customers/c-2", patch.clone()),
        (
            Method::POST,
            "/api/v1/customers",
            json!({"name": "Ada King", "email": "a@b.co"}),
        ),
    ] {
        let response = keyed(&app, method.clone(), path, "k-1", Some(&body)).await;
        assert_eq!(response.status(), 422, "{method} {path}");
        assert_eq!(
            error_of(response).await,
            (
                "idempotency_key_reused".into(),
                Some("idempotency-key".into())
            )
        );
    }
    let deleted = keyed(&app, Method::DELETE, "/api/v1/customers/c-1", "k-1", None).await;
    assert_eq!(deleted.status(), 422);
    assert_eq!(app.counts(), counts);
    let customer = app.customer("c-1").await;
    assert_eq!(
        (customer["name"].as_str(), customer["version"].as_i64()),
        (Some("Ada King"), Some(2))
    );
}

#[tokio::test]
async fn a_retry_while_the_first_request_runs_is_refused_with_409() {
    let app = spawn_app().await;
    let body = json!({"name": "Ada", "email": "ada@example.com"});
    let first = keyed(&app, Method::POST, "/api/v1/customers", "k-1", Some(&body)).await;
    assert_eq!(first.status(), 202);
    mark_running(&app, 3600);

    let retry = keyed(&app, Method::POST, "/api/v1/customers", "k-1", Some(&body)).await;
    assert_eq!(retry.status(), 409);
    assert_eq!(error_of(retry).await.0, "idempotency_key_in_use");
    assert_eq!(app.counts(), (1, 1));
}

#[tokio::test]
async fn a_running_request_holds_its_key_until_it_answers() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    // Hold the customer's row so that the keyed update waits in its commit.
    let mut holder = app.conn();
    diesel::sql_query("BEGIN").execute(&mut holder).unwrap();
    diesel::sql_query("SELECT 1 FROM customers WHERE id = 'c-1' FOR UPDATE")
        .execute(&mut holder)
        .unwrap();
    let patch = json!({"name": "Ada King"});
    let first = {
        let request = app
            .request(Method::PATCH, "/api/v1/customers/c-1")
            .header("Idempotency-Key", "k-1")
            .json(&patch);
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    shared::testing::eventually(
        "the first request to hold its key",
        std::time::Duration::from_secs(10),
        || async { (app.count("api_idempotency") == 1).then_some(()) },
    )
    .await;
    let retry = keyed(
        &app,
        Method::PATCH,
        "/api/v1/customers/c-1",
        "k-1",
        Some(&patch),
    )
    .await;
    assert_eq!(retry.status(), 409);
    assert_eq!(error_of(retry).await.0, "idempotency_key_in_use");

    diesel::sql_query("COMMIT").execute(&mut holder).unwrap();
    let (status, replayed, first) = status_replayed_and_body(first.await.unwrap()).await;
    assert_eq!((status, replayed), (202, false));
    let retry = keyed(
        &app,
        Method::PATCH,
        "/api/v1/customers/c-1",
        "k-1",
        Some(&patch),
    )
    .await;
    let (status, replayed, retry) = status_replayed_and_body(retry).await;
    assert_eq!((status, replayed, &retry), (202, true, &first));
    assert_eq!(app.customer("c-1").await["version"], 2, "applied once");
}

#[tokio::test]
async fn refusals_of_the_request_are_not_kept_and_outcomes_are() {
    let app = spawn_app().await;
    // A validation failure: nothing ran, so the key is free for the corrected request.
    let bad = json!({"name": "Ada", "email": "not-an-email"});
    let refused = keyed(&app, Method::POST, "/api/v1/customers", "k-1", Some(&bad)).await;
    assert_eq!(refused.status(), 400);
    let good = json!({"name": "Ada", "email": "ada@example.com"});
    let created = keyed(&app, Method::POST, "/api/v1/customers", "k-1", Some(&good)).await;
    assert_eq!(created.status(), 202);

    // A 404 says what the request did: it is kept and replayed.
    let missing = keyed(
        &app,
        Method::DELETE,
        "/api/v1/customers/nobody",
        "k-2",
        None,
    )
    .await;
    assert_eq!(missing.status(), 404);
    app.create_customer("nobody", "No Body", "no@example.com")
        .await;
    let (status, replayed, _) = status_replayed_and_body(
        keyed(
            &app,
            Method::DELETE,
            "/api/v1/customers/nobody",
            "k-2",
            None,
        )
        .await,
    )
    .await;
    assert_eq!((status, replayed), (404, true));
    assert!(app.customer("nobody").await["deleted_at"].is_null());
}

#[tokio::test]
async fn a_key_is_kept_for_24_hours_then_free_again() {
    let app = spawn_app().await;
    let first = json!({"name": "Ada", "email": "ada@example.com"});
    let response = keyed(&app, Method::POST, "/api/v1/customers", "k-1", Some(&first)).await;
    assert_eq!(response.status(), 202);
    shared::db::idempotency::age_all(&mut app.conn(), std::time::Duration::from_secs(25 * 3600))
        .unwrap();
    let other = json!({"id": "c-2", "name": "Grace", "email": "grace@example.com"});
    let response = keyed(&app, Method::POST, "/api/v1/customers", "k-1", Some(&other)).await;
    let (status, replayed, body) = status_replayed_and_body(response).await;
    assert_eq!((status, replayed), (202, false));
    assert_eq!(body["customer"]["id"], "c-2");
    assert_eq!(
        shared::db::idempotency::prune(&mut app.conn(), 100).unwrap(),
        0,
        "the key was taken over, not left to prune"
    );
}

#[tokio::test]
async fn keys_and_bodies_that_cannot_be_kept_are_refused_before_anything_is_written() {
    let app = spawn_app().await;
    let body = json!({"name": "Ada", "email": "ada@example.com"});
    for key in ["".to_owned(), "k".repeat(256), "two words".to_owned()] {
        let response = keyed(&app, Method::POST, "/api/v1/customers", &key, Some(&body)).await;
        assert_eq!(response.status(), 400, "key {key:?}");
        assert_eq!(
            error_of(response).await.1.as_deref(),
            Some("idempotency-key")
        );
    }
    let big = json!({"name": "A".repeat(70 * 1024), "email": "ada@example.com"});
    let response = keyed(&app, Method::POST, "/api/v1/customers", "k-big", Some(&big)).await;
    assert_eq!(response.status(), 413);
    // Without a token the key is never looked at.
    let response = app
        .client
        .post(format!("{}/api/v1/customers", app.address))
        .header("Idempotency-Key", "k-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(app.counts(), (0, 0));
    assert_eq!(app.count("api_idempotency"), 0);

    // GET ignores the header.
    let response = keyed(&app, Method::GET, "/api/v1/customers", "k-1", None).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.count("api_idempotency"), 0);
}

#[tokio::test]
async fn concurrent_requests_under_one_key_run_it_once() {
    let app = spawn_app().await;
    let body = json!({"name": "Ada", "email": "ada@example.com"});
    let sends: Vec<_> = (0..32)
        .map(|_| {
            app.request(Method::POST, "/api/v1/customers")
                .header("Idempotency-Key", "k-same")
                .json(&body)
                .send()
        })
        .collect();
    let mut ran = 0;
    for response in futures_util::future::join_all(sends).await {
        let response = response.unwrap();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        match (response.status().as_u16(), replayed) {
            (202, false) => ran += 1,
            (202, true) => {}
            (409, false) => assert_eq!(error_of(response).await.0, "idempotency_key_in_use"),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(ran, 1, "one request ran");
    assert_eq!(app.counts(), (1, 1));

    // Distinct keys sent together each run.
    let sends: Vec<_> = (0..32)
        .map(|i| {
            app.request(Method::POST, "/api/v1/customers")
                .header("Idempotency-Key", format!("k-{i}"))
                .json(&json!({"name": "Ada", "email": format!("a{i}@example.com")}))
                .send()
        })
        .collect();
    for response in futures_util::future::join_all(sends).await {
        assert_eq!(response.unwrap().status(), 202);
    }
    assert_eq!(app.counts(), (33, 33));
}

#[tokio::test]
async fn a_key_given_twice_in_one_batch_is_taken_once_and_a_different_request_under_it_is_refused()
{
    use shared::db::idempotency::{begin_many, Begun, Keyed};
    let app = spawn_app().await;
    let keyed = |request: &[u8]| Keyed {
        token_hash: b"token".to_vec(),
        key: "k-1".into(),
        request_hash: request.to_vec(),
    };
    let (first, other, same) = (keyed(b"a"), keyed(b"b"), keyed(b"a"));
    let begun = begin_many(
        &mut app.conn(),
        &[&first, &other, &same],
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(begun, [Begun::Run, Begun::OtherRequest, Begun::Running]);
}
