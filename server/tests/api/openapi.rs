//! `GET /api/v1/openapi.json`: served without a token, and equal to the routes: each
//! documented path serves exactly its documented methods (any other gets 405 with an
//! `Allow` naming them), and asks for the token exactly where it says so. The unit test
//! `openapi::tests` checks that it has every registered path.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{error_of, spawn_app};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn document(app: &crate::helpers::TestApp) -> Value {
    let response = app
        .client
        .get(format!("{}/api/v1/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "served without a token");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "as JSON"
    );
    response.json().await.unwrap()
}

/// A concrete URL for a documented path: every `{param}` becomes a value that parses.
fn concrete(address: &str, path: &str) -> String {
    let path = path
        .replace("/tasks/{id}", "/tasks/0190a4a8-0000-7000-8000-000000000000")
        .replace("/jobs/{id}", "/jobs/0190a4a8-0000-7000-8000-000000000000")
        .replace("{id}", "doc_probe");
    format!("{address}{path}")
}

/// `method` (lower case, as the document has it) on a concrete URL for `path`, with an
/// empty JSON body, with or without the token.
async fn probe(
    app: &crate::helpers::TestApp,
    method: &str,
    path: &str,
    token: bool,
) -> reqwest::Response {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut request = app
        .client
        .request(method, concrete(&app.address, path))
        .json(&serde_json::json!({}));
    if token {
        request = request.bearer_auth(crate::helpers::TOKEN);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_document_is_openapi_3_1_with_every_operation_described() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 21, "every path of the README's table");
    let mut operations = 0;
    for (path, item) in paths {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} documents its success"
            );
            if op.get("security").is_none() {
                assert!(
                    responses.contains_key("401"),
                    "{method} {path} documents 401"
                );
                assert_eq!(
                    responses["401"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path}: errors have the error shape"
                );
            }
        }
    }
    assert_eq!(operations, 25);
    let error = &doc["components"]["schemas"]["ErrorDetail"];
    assert_eq!(error["required"], serde_json::json!(["code", "message"]));
    assert!(error["properties"].get("field").is_some());
}

#[tokio::test]
async fn every_documented_path_serves_exactly_its_documented_methods() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let documented: Vec<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_uppercase())
            .collect();
        for method in METHODS {
            let upper = method.to_uppercase();
            let response = probe(&app, method, path, true).await;
            let status = response.status().as_u16();
            if documented.contains(&upper) {
                assert_ne!(status, 405, "{upper} {path} is documented and served");
                if status == 404 {
                    let (code, _) = error_of(response).await;
                    assert_ne!(code, "not_found", "{upper} {path} has a route");
                }
            } else {
                assert_eq!(
                    status, 405,
                    "{upper} {path} is neither documented nor served"
                );
                assert_eq!(
                    response.headers()["allow"].to_str().unwrap(),
                    documented.join(", "),
                    "{upper} {path}: Allow names the documented methods"
                );
                let (code, _) = error_of(response).await;
                assert_eq!(code, "method_not_allowed");
            }
        }
    }
}

#[tokio::test]
async fn the_token_is_asked_for_exactly_where_the_document_says() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let upper = method.to_uppercase();
            let response = probe(&app, method, path, false).await;
            let public = op.get("security") == Some(&serde_json::json!([{}]));
            assert_eq!(
                response.status() != 401,
                public,
                "{upper} {path}: public in the document exactly when served without a token"
            );
        }
    }
}

#[tokio::test]
async fn a_keyed_request_with_a_method_the_path_does_not_serve_gets_405_not_a_key_error() {
    let app = spawn_app().await;
    let keyed = |method: Method| {
        app.client
            .request(method, format!("{}/api/v1/customers", app.address))
            .bearer_auth(crate::helpers::TOKEN)
            .header("Idempotency-Key", "one-key")
            .json(&serde_json::json!({"name": "Ada", "email": "ada@example.com"}))
    };
    let created = keyed(Method::POST).send().await.unwrap();
    assert_eq!(created.status(), 202);
    // The same key on a method /customers does not serve: no route runs, so the key is
    // not consulted (it would answer 422 idempotency_key_reused).
    let response = keyed(Method::PATCH).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    assert_eq!(app.count("api_idempotency"), 1, "only the create's key");
}

#[tokio::test]
async fn a_job_s_repair_may_be_null_in_the_document_as_on_the_server() {
    // The server reads `"repair": null` as not given (false); a document that said
    // boolean only made schemathesis send null as an invalid value and fail on the 202.
    let app = spawn_app().await;
    let doc = document(&app).await;
    let repair = &doc["components"]["schemas"]["NewJob"]["properties"]["repair"];
    let types = repair["type"]
        .as_array()
        .unwrap_or_else(|| panic!("{repair}"));
    assert!(
        types.contains(&json!("boolean")) && types.contains(&json!("null")),
        "{repair}"
    );
    let response = app
        .post(
            "/api/v1/jobs",
            &json!({"kind": "import", "provider": "stripe", "repair": null}),
        )
        .await;
    assert_eq!(response.status(), 202);
}
