use diesel::prelude::*;
use serde_json::{json, Value};

use crate::helpers::{error_of, salesforce, spawn_app, spawn_app_with};

#[tokio::test]
async fn health_answers_ok_while_the_database_is_up() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/api/v1/health", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok", "database": "ok"}));
}

#[tokio::test]
async fn health_answers_503_when_the_database_is_gone() {
    let app = spawn_app().await;
    let admin = shared::testing::admin_url();
    let name = app.db.url.rsplit('/').next().unwrap().to_owned();
    let mut conn = PgConnection::establish(admin).unwrap();
    diesel::sql_query(format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .unwrap();
    // Health answers from a probe that runs every 250 ms (hostile.rs times the turn).
    let response = shared::testing::eventually(
        "health to turn 503",
        std::time::Duration::from_secs(5),
        || async {
            let response = app.get("/api/v1/health").await;
            (response.status() == 503).then_some(response)
        },
    )
    .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["database"], "unreachable");
}

#[tokio::test]
async fn create_commits_the_customer_and_one_task_per_enabled_provider() {
    let app = spawn_app_with(|s| s.common.salesforce = Some(salesforce())).await;
    let body = app
        .create_customer("c-1", "Ada Lovelace", "ada@example.com")
        .await;

    let customer = &body["customer"];
    assert_eq!(customer["id"], "c-1");
    assert_eq!(customer["name"], "Ada Lovelace");
    assert_eq!(customer["email"], "ada@example.com");
    assert_eq!(customer["version"], 1);
    assert!(customer["deleted_at"].is_null());
    let tasks = body["tasks"].as_array().unwrap();
    let mut providers: Vec<&str> = tasks
        .iter()
        .map(|t| t["provider"].as_str().unwrap())
        .collect();
    providers.sort();
    assert_eq!(providers, ["salesforce", "stripe"]);
    for task in tasks {
        assert_eq!(task["operation"], "create");
        assert_eq!(task["status"], "pending");
        assert_eq!(task["version"], 1);
        assert!(task["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    }
    let links = customer["links"].as_array().unwrap();
    assert_eq!(links.len(), 2);
    assert!(links
        .iter()
        .all(|l| l["state"] == "pending" && l["external_id"].is_null()));
    assert_eq!(app.counts(), (1, 2));
}

#[tokio::test]
async fn the_seed_compatible_route_creates_like_the_customers_route() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/api/v1/task/create/customer",
            &json!({"id": "489703215467608", "email": "adit@example.com", "name": "adit"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["customer"]["id"], "489703215467608");
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(app.counts(), (1, 1));
}

#[tokio::test]
async fn a_create_without_an_id_gets_a_generated_one() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/api/v1/customers",
            &json!({"name": "No Id", "email": "noid@example.com"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let id = body["customer"]["id"].as_str().unwrap();
    assert!(id.starts_with("cs_") && id.len() > 10, "{id}");
    let fetched = app.get(&format!("/api/v1/customers/{id}")).await;
    assert_eq!(fetched.status(), 200);
}

#[tokio::test]
async fn repeating_a_create_with_the_same_fields_returns_200_and_queues_nothing() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    let response = app
        .post(
            "/api/v1/customers",
            &json!({"id": "c-1", "name": "Ada", "email": "ada@example.com"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tasks"], json!([]));
    assert_eq!(body["customer"]["version"], 1);
    assert_eq!(app.counts(), (1, 1));
}

#[tokio::test]
async fn a_create_with_a_taken_id_and_other_fields_is_a_409_that_changes_nothing() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    for body in [
        json!({"id": "c-1", "name": "Bob", "email": "ada@example.com"}),
        json!({"id": "c-1", "name": "Ada", "email": "bob@example.com"}),
    ] {
        let response = app.post("/api/v1/customers", &body).await;
        assert_eq!(response.status(), 409);
        assert_eq!(error_of(response).await.0, "customer_exists");
    }
    let customer: Value = app.get("/api/v1/customers/c-1").await.json().await.unwrap();
    assert_eq!(customer["name"], "Ada");
    assert_eq!(customer["version"], 1);
    assert_eq!(app.counts(), (1, 1));
}

#[tokio::test]
async fn concurrent_creates_of_one_id_commit_it_once() {
    let app = spawn_app().await;
    let body = json!({"id": "race", "name": "Racer", "email": "race@example.com"});
    let responses = futures_join(&app, &body, 8).await;
    let accepted = responses.iter().filter(|s| **s == 202).count();
    let replayed = responses.iter().filter(|s| **s == 200).count();
    assert_eq!((accepted, replayed), (1, 7), "{responses:?}");
    assert_eq!(app.counts(), (1, 1));
}

async fn futures_join(app: &crate::helpers::TestApp, body: &Value, n: usize) -> Vec<u16> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let request = app
            .request(reqwest::Method::POST, "/api/v1/customers")
            .json(body);
        handles.push(tokio::spawn(async move {
            request.send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn get_shows_version_timestamps_and_links_and_404s_for_unknown_ids() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    let response = app.get("/api/v1/customers/c-1").await;
    assert_eq!(response.status(), 200);
    let customer: Value = response.json().await.unwrap();
    assert_eq!(customer["version"], 1);
    assert!(customer["created_at"].is_string() && customer["updated_at"].is_string());
    assert_eq!(
        customer["links"],
        json!([{"provider": "stripe", "external_id": null, "synced_version": 0, "state": "pending"}])
    );

    let response = app.get("/api/v1/customers/nobody").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(response).await.0, "customer_not_found");
}

#[tokio::test]
async fn list_pages_by_id_filters_by_email_and_hides_tombstones() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create_customer(
            &format!("c-{i}"),
            &format!("N{i}"),
            &format!("n{i}@example.com"),
        )
        .await;
    }
    app.create_customer("c-5", "Twin", "n1@example.com").await;
    assert_eq!(app.delete("/api/v1/customers/c-4").await.status(), 202);

    let mut seen = Vec::new();
    let mut path = "/api/v1/customers?limit=2".to_owned();
    loop {
        let page: Value = app.get(&path).await.json().await.unwrap();
        let customers = page["customers"].as_array().unwrap();
        assert!(customers.len() <= 2);
        seen.extend(
            customers
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
        match page["next_after"].as_str() {
            Some(after) => path = format!("/api/v1/customers?limit=2&after={after}"),
            None => break,
        }
    }
    assert_eq!(seen, ["c-0", "c-1", "c-2", "c-3", "c-5"]);

    let page: Value = app
        .get("/api/v1/customers?email=n1%40example.com")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = page["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c-1", "c-5"]);

    let page: Value = app
        .get("/api/v1/customers?include_deleted=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["customers"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn list_refuses_bad_parameters() {
    let app = spawn_app().await;
    for query in [
        "limit=0",
        "limit=501",
        "limit=abc",
        "after=bad%20id",
        "email=nope",
        "bogus=1",
    ] {
        let response = app.get(&format!("/api/v1/customers?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        error_of(response).await;
    }
}

#[tokio::test]
async fn patch_bumps_the_version_and_queues_an_update() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    let response = app
        .patch("/api/v1/customers/c-1", &json!({"name": "Ada King"}))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["customer"]["name"], "Ada King");
    assert_eq!(body["customer"]["email"], "ada@example.com");
    assert_eq!(body["customer"]["version"], 2);
    let tasks = body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["operation"], "update");
    assert_eq!(tasks[0]["version"], 2);

    let response = app
        .patch("/api/v1/customers/c-1", &json!({"email": "ada@king.org"}))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["customer"]["version"], 3);
    assert_eq!(app.counts(), (1, 3));
}

#[tokio::test]
async fn patch_without_a_change_returns_200_and_queues_nothing() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    for body in [
        json!({}),
        json!({"name": "Ada"}),
        json!({"name": "Ada", "email": "ada@example.com"}),
    ] {
        let response = app.patch("/api/v1/customers/c-1", &body).await;
        assert_eq!(response.status(), 200, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["tasks"], json!([]));
        assert_eq!(answer["customer"]["version"], 1);
    }
    assert_eq!(app.counts(), (1, 1));
}

#[tokio::test]
async fn patch_of_an_unknown_customer_is_404_and_of_a_deleted_one_409() {
    let app = spawn_app().await;
    let response = app
        .patch("/api/v1/customers/ghost", &json!({"name": "X"}))
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(app.counts(), (0, 0));

    app.create_customer("c-1", "Ada", "ada@example.com").await;
    app.delete("/api/v1/customers/c-1").await;
    let response = app
        .patch("/api/v1/customers/c-1", &json!({"name": "X"}))
        .await;
    assert_eq!(response.status(), 409);
    assert_eq!(error_of(response).await.0, "customer_deleted");
    assert_eq!(app.counts(), (1, 2));
}

#[tokio::test]
async fn delete_leaves_a_tombstone_and_queues_a_delete_once() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    let response = app.delete("/api/v1/customers/c-1").await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert!(body["customer"]["deleted_at"].is_string());
    assert_eq!(body["customer"]["version"], 2);
    assert_eq!(body["tasks"][0]["operation"], "delete");
    assert_eq!(body["tasks"][0]["version"], 2);

    let response = app.delete("/api/v1/customers/c-1").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tasks"], json!([]));
    assert_eq!(app.counts(), (1, 2));

    let tombstone: Value = app.get("/api/v1/customers/c-1").await.json().await.unwrap();
    assert!(tombstone["deleted_at"].is_string());

    let response = app.delete("/api/v1/customers/ghost").await;
    assert_eq!(response.status(), 404);
    assert_eq!(app.counts(), (1, 2));
}

#[tokio::test]
async fn a_recreate_of_a_deleted_id_is_a_409() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    app.delete("/api/v1/customers/c-1").await;
    let response = app
        .post(
            "/api/v1/customers",
            &json!({"id": "c-1", "name": "Ada", "email": "ada@example.com"}),
        )
        .await;
    assert_eq!(response.status(), 409);
    assert_eq!(app.counts(), (1, 2));
}

#[tokio::test]
async fn without_providers_a_change_is_accepted_with_no_tasks() {
    let app = spawn_app_with(|s| s.common.stripe = None).await;
    let body = app.create_customer("c-1", "Ada", "ada@example.com").await;
    assert_eq!(body["tasks"], json!([]));
    assert_eq!(app.counts(), (1, 0));
}

#[tokio::test]
async fn a_change_and_its_tasks_commit_together_or_not_at_all() {
    let app = spawn_app().await;
    app.create_customer("c-1", "Ada", "ada@example.com").await;
    // Make every task insert fail, as a crash between the two writes would.
    let mut conn = app.conn();
    diesel::sql_query(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
    )
    .execute(&mut conn)
    .unwrap();
    diesel::sql_query(
        "CREATE TRIGGER refuse_tasks BEFORE INSERT ON sync_tasks FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    .execute(&mut conn)
    .unwrap();

    let response = app
        .post(
            "/api/v1/customers",
            &json!({"id": "c-2", "name": "Bob", "email": "bob@example.com"}),
        )
        .await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal_error");
    assert!(
        !body.to_string().contains("injected"),
        "5xx bodies are opaque: {body}"
    );

    let response = app
        .patch("/api/v1/customers/c-1", &json!({"name": "Changed"}))
        .await;
    assert_eq!(response.status(), 500);
    let response = app.delete("/api/v1/customers/c-1").await;
    assert_eq!(response.status(), 500);

    assert_eq!(app.counts(), (1, 1));
    let customer: Value = app.get("/api/v1/customers/c-1").await.json().await.unwrap();
    assert_eq!(customer["name"], "Ada");
    assert_eq!(customer["version"], 1);
    assert!(customer["deleted_at"].is_null());
}

/// A committer keeps its connection between busy batches; when PostgreSQL drops it (a
/// restart, a failover), the create on it gets a clear 503 and writes nothing, and the
/// committer takes a tested connection for the next.
#[tokio::test]
async fn creates_recover_when_postgresql_drops_the_connections() {
    let app = spawn_app().await;
    app.create_customer("before", "Before", "before@example.com")
        .await;
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut app.conn())
    .unwrap();

    let mut failed = Vec::new();
    for i in 0..10 {
        let id = format!("after-{i}");
        let body = json!({"id": id, "name": "After", "email": "after@example.com"});
        let response = app.post("/api/v1/customers", &body).await;
        match response.status().as_u16() {
            202 => {}
            503 => {
                assert_eq!(error_of(response).await.0, "database_unavailable");
                failed.push(id);
            }
            other => panic!("creating {id}: {other}"),
        }
    }
    // At most one failure per committer (two), and none once they have reconnected.
    assert!(failed.len() <= 2, "{failed:?}");
    assert!(!failed.contains(&"after-9".to_owned()), "{failed:?}");
    assert_eq!(app.counts().0, 11 - failed.len() as i64);
    for id in &failed {
        assert_eq!(
            app.get(&format!("/api/v1/customers/{id}")).await.status(),
            404
        );
        app.create_customer(id, "After", "after@example.com").await;
    }
    assert_eq!(app.counts().0, 11);
}
