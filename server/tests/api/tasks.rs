use serde_json::{json, Value};

use crate::helpers::{error_of, salesforce, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_task_is_visible_by_id_and_unknown_or_bad_ids_are_refused() {
    let app = spawn_app().await;
    let body = app.create_customer("c-1", "Ada", "ada@example.com").await;
    let task_id = body["tasks"][0]["id"].as_str().unwrap();

    let response = app.get(&format!("/api/v1/tasks/{task_id}")).await;
    assert_eq!(response.status(), 200);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["id"], task_id);
    assert_eq!(task["customer_id"], "c-1");
    assert_eq!(task["provider"], "stripe");
    assert_eq!(task["operation"], "create");
    assert_eq!(task["status"], "pending");
    assert_eq!(task["attempts"], 0);
    assert!(task["last_error"].is_null());
    assert!(task["next_attempt_at"].is_string());

    let response = app
        .get("/api/v1/tasks/0190a0a0-0000-7000-8000-000000000000")
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(response).await.0, "task_not_found");
    let response = app.get("/api/v1/tasks/not-a-uuid").await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await.1.as_deref(), Some("id"));
}

#[tokio::test]
async fn tasks_list_in_acceptance_order_with_filters_and_pages() {
    let app = spawn_app_with(|s| s.common.salesforce = Some(salesforce())).await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    app.create_customer("c-2", "Bob", "bob@example.com").await;
    app.patch("/api/v1/customers/c-1", &json!({"name": "Ada K"}))
        .await;
    app.delete("/api/v1/customers/c-1").await;

    let page: Value = app
        .get("/api/v1/tasks?customer_id=c-1&provider=stripe")
        .await
        .json()
        .await
        .unwrap();
    let ops: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["create", "update", "delete"]);

    let page: Value = app
        .get("/api/v1/tasks?status=pending")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["tasks"].as_array().unwrap().len(), 8);
    let page: Value = app
        .get("/api/v1/tasks?status=dead")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["tasks"], json!([]));
    let page: Value = app
        .get("/api/v1/tasks?provider=salesforce&customer_id=c-2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);

    let mut all = Vec::new();
    let mut path = "/api/v1/tasks?limit=3".to_owned();
    loop {
        let page: Value = app.get(&path).await.json().await.unwrap();
        all.extend(
            page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned()),
        );
        match page["next_after"].as_str() {
            Some(after) => path = format!("/api/v1/tasks?limit=3&after={after}"),
            None => break,
        }
    }
    assert_eq!(all.len(), 8);
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(unique.len(), 8);
}

#[tokio::test]
async fn tasks_list_refuses_bad_filters() {
    let app = spawn_app().await;
    for (query, field) in [
        ("status=done", Some("status")),
        ("provider=hubspot", Some("provider")),
        ("customer_id=a%20b", Some("customer_id")),
        ("after=zzz", Some("after")),
        ("limit=-1", Some("limit")),
        ("colour=red", None),
    ] {
        let response = app.get(&format!("/api/v1/tasks?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(error_of(response).await.1.as_deref(), field, "{query}");
    }
}

#[tokio::test]
async fn retry_revives_only_dead_tasks() {
    let app = spawn_app().await;
    let body = app.create_customer("c-1", "Ada", "ada@example.com").await;
    let task_id = body["tasks"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tasks/{task_id}/retry");

    let response = app.post(&path, &json!({})).await;
    assert_eq!(response.status(), 409);
    assert_eq!(error_of(response).await.0, "task_not_dead");

    {
        use diesel::prelude::*;
        diesel::sql_query(
            "UPDATE sync_tasks SET status = 'dead', attempts = 12, last_error = 'boom' WHERE id = $1::uuid",
        )
        .bind::<diesel::sql_types::Text, _>(&task_id)
        .execute(&mut app.conn())
        .unwrap();
    }
    let customer: Value = app.get("/api/v1/customers/c-1").await.json().await.unwrap();
    assert_eq!(customer["links"][0]["state"], "dead");

    let response = app.post(&path, &json!({})).await;
    assert_eq!(response.status(), 200);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["status"], "pending");
    assert_eq!(task["attempts"], 0);

    let response = app
        .post(
            "/api/v1/tasks/0190a0a0-0000-7000-8000-000000000000/retry",
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 404);
    let response = app.post("/api/v1/tasks/nope/retry", &json!({})).await;
    assert_eq!(response.status(), 400);
    let response = app.get(&path).await;
    assert_eq!(response.status(), 405);
}
