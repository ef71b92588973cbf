//! Malformed, oversized, missing and hostile input: a clear 4xx and nothing written.

use serde_json::{json, Value};

use crate::helpers::{error_of, spawn_app, TOKEN};

#[tokio::test]
async fn each_invalid_field_on_create_is_a_400_naming_it_and_writes_nothing() {
    let app = spawn_app().await;
    let ok = json!({"id": "c-1", "name": "Ada", "email": "ada@example.com"});
    let cases: Vec<(&str, Value)> = vec![
        (
            "name",
            json!({"id": "c-1", "name": "", "email": "ada@example.com"}),
        ),
        (
            "name",
            json!({"id": "c-1", "name": "   ", "email": "ada@example.com"}),
        ),
        (
            "name",
            json!({"id": "c-1", "name": "x".repeat(257), "email": "ada@example.com"}),
        ),
        (
            "name",
            json!({"id": "c-1", "name": "Ada\u{0}", "email": "ada@example.com"}),
        ),
        (
            "name",
            json!({"id": "c-1", "name": "Ada\nDROP TABLE", "email": "ada@example.com"}),
        ),
        ("name", json!({"id": "c-1", "email": "ada@example.com"})),
        // Only dots: "." and ".." would be path segments at Salesforce.
        (
            "id",
            json!({"id": ".", "name": "Ada", "email": "ada@example.com"}),
        ),
        (
            "id",
            json!({"id": "..", "name": "Ada", "email": "ada@example.com"}),
        ),
        (
            "id",
            json!({"id": "...", "name": "Ada", "email": "ada@example.com"}),
        ),
        (
            "email",
            json!({"id": "c-1", "name": "Ada", "email": "not-an-email"}),
        ),
        ("email", json!({"id": "c-1", "name": "Ada", "email": "a@b"})),
        (
            "email",
            json!({"id": "c-1", "name": "Ada", "email": "ada @example.com"}),
        ),
        (
            "email",
            json!({"id": "c-1", "name": "Ada", "email": format!("{}@example.com", "a".repeat(250))}),
        ),
        ("email", json!({"id": "c-1", "name": "Ada"})),
        (
            "id",
            json!({"id": "", "name": "Ada", "email": "ada@example.com"}),
        ),
        (
            "id",
            json!({"id": "c/1", "name": "Ada", "email": "ada@example.com"}),
        ),
        (
            "id",
            json!({"id": "c 1", "name": "Ada", "email": "ada@example.com"}),
        ),
        (
            "id",
            json!({"id": "'; DROP TABLE customers; --", "name": "Ada", "email": "ada@example.com"}),
        ),
        (
            "id",
            json!({"id": "x".repeat(65), "name": "Ada", "email": "ada@example.com"}),
        ),
    ];
    for (field, body) in cases {
        let response = app.post("/api/v1/customers", &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let (code, named) = error_of(response).await;
        assert_eq!(code, "validation_failed", "{body}");
        assert_eq!(named.as_deref(), Some(field), "{body}");
    }
    assert_eq!(app.counts(), (0, 0));
    assert_eq!(app.post("/api/v1/customers", &ok).await.status(), 202);
}

#[tokio::test]
async fn names_and_emails_at_their_limits_are_accepted() {
    let app = spawn_app().await;
    let email = format!("{}@{}.com", "a".repeat(64), "b".repeat(63));
    let body = json!({"id": "x".repeat(64), "name": "é".repeat(256), "email": email});
    assert_eq!(app.post("/api/v1/customers", &body).await.status(), 202);
}

#[tokio::test]
async fn invalid_fields_on_patch_are_400s_that_change_nothing() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    for (field, body) in [
        ("name", json!({"name": ""})),
        ("name", json!({"name": "tab\there"})),
        ("email", json!({"email": "nope"})),
        ("email", json!({"name": "Fine", "email": "nope"})),
    ] {
        let response = app.patch("/api/v1/customers/c-1", &body).await;
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(error_of(response).await.1.as_deref(), Some(field));
    }
    let response = app
        .patch("/api/v1/customers/bad%20id", &json!({"name": "X"}))
        .await;
    assert_eq!(response.status(), 400);
    let customer: Value = app.get("/api/v1/customers/c-1").await.json().await.unwrap();
    assert_eq!(
        (customer["name"].as_str(), customer["version"].as_i64()),
        (Some("Ada"), Some(1))
    );
    assert_eq!(app.counts(), (1, 1));
}

#[tokio::test]
async fn unknown_or_mistyped_fields_are_400s() {
    let app = spawn_app().await;
    for body in [
        json!({"id": "c-1", "name": "Ada", "email": "ada@example.com", "admin": true}),
        json!({"id": 7, "name": "Ada", "email": "ada@example.com"}),
        json!({"id": "c-1", "name": ["Ada"], "email": "ada@example.com"}),
        json!(null),
        json!("a string"),
    ] {
        let response = app.post("/api/v1/customers", &body).await;
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(error_of(response).await.0, "malformed_json");
    }
    // serde reads a struct from an array positionally; it still fails validation here.
    let response = app
        .post("/api/v1/customers", &json!(["not", "an", "object"]))
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(app.counts(), (0, 0));
}

#[tokio::test]
async fn malformed_json_is_a_400_that_writes_nothing() {
    let app = spawn_app().await;
    for raw in [
        "{",
        "{\"id\": \"c-1\",}",
        "",
        "\u{0}\u{1}",
        "{\"name\": \"\\ud800\"}",
    ] {
        let response = app
            .request(reqwest::Method::POST, "/api/v1/customers")
            .header("content-type", "application/json")
            .body(raw.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{raw:?}");
        assert_eq!(error_of(response).await.0, "malformed_json");
    }
    assert_eq!(app.counts(), (0, 0));
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415() {
    let app = spawn_app().await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = app
            .request(reqwest::Method::POST, "/api/v1/customers")
            .body(r#"{"id":"c-1","name":"Ada","email":"ada@example.com"}"#);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
        assert_eq!(error_of(response).await.0, "unsupported_media_type");
    }
    assert_eq!(app.counts(), (0, 0));
}

#[tokio::test]
async fn a_body_over_64_kib_is_a_413() {
    let app = spawn_app().await;
    let body = json!({"id": "c-1", "name": "x".repeat(70 * 1024), "email": "ada@example.com"});
    let response = app.post("/api/v1/customers", &body).await;
    assert_eq!(response.status(), 413);
    assert_eq!(error_of(response).await.0, "payload_too_large");
    assert_eq!(app.counts(), (0, 0));
}

#[tokio::test]
async fn requests_without_the_right_token_are_401s_that_write_nothing() {
    let app = spawn_app().await;
    let body = json!({"id": "c-1", "name": "Ada", "email": "ada@example.com"});
    let url = format!("{}/api/v1/customers", app.address);
    let attempts = [
        app.client.post(&url).json(&body),
        app.client
            .post(&url)
            .bearer_auth("wrong-token-0123456789abcdef")
            .json(&body),
        app.client
            .post(&url)
            .bearer_auth(&TOKEN[..TOKEN.len() - 1])
            .json(&body),
        app.client
            .post(&url)
            .header("authorization", TOKEN)
            .json(&body),
        app.client
            .post(&url)
            .basic_auth(TOKEN, Some(""))
            .json(&body),
        app.client.get(&url),
        app.client.get(format!("{}/api/v1/tasks", app.address)),
    ];
    for attempt in attempts {
        let response = attempt.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(error_of(response).await.0, "unauthorized");
    }
    assert_eq!(app.counts(), (0, 0));
}

#[tokio::test]
async fn insecure_no_auth_admits_requests_without_a_token() {
    let app = crate::helpers::spawn_app_with(|s| s.api_token = None).await;
    let response = app
        .client
        .post(format!("{}/api/v1/customers", app.address))
        .json(&json!({"id": "c-1", "name": "Ada", "email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn unknown_routes_are_json_404s_and_wrong_methods_405s() {
    let app = spawn_app().await;
    let response = app.get("/api/v1/nothing-here").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(response).await.0, "not_found");
    let response = app
        .client
        .get(format!("{}/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = app
        .request(reqwest::Method::PUT, "/api/v1/customers/c-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(error_of(response).await.0, "method_not_allowed");
}

#[tokio::test]
async fn every_response_carries_a_request_id_that_the_tasks_keep() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/api/v1/customers",
            &json!({"id": "c-1", "name": "Ada", "email": "ada@example.com"}),
        )
        .await;
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tasks"][0]["request_id"], request_id.as_str());
    let response = app.get("/api/v1/customers/none").await;
    assert!(response.headers().contains_key("x-request-id"));
}
