//! The Salesforce mode: token endpoint, Contact upsert and delete by external id, errors.

use sandbox::salesforce::{CLIENT_ID, CLIENT_SECRET};
use sandbox::{Sandbox, SandboxConfig};
use serde_json::{json, Value};

async fn token(client: &reqwest::Client, base: &str, id: &str, secret: &str) -> reqwest::Response {
    client
        .post(format!("{base}/services/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap()
}

/// A bearer token issued to the sandbox's own client credentials.
async fn access_token(client: &reqwest::Client, base: &str) -> String {
    let issued: Value = token(client, base, CLIENT_ID, CLIENT_SECRET)
        .await
        .json()
        .await
        .unwrap();
    issued["access_token"].as_str().unwrap().to_owned()
}

fn contact_url(base: &str, id: &str) -> String {
    format!("{base}/services/data/v66.0/sobjects/Contact/Customer_Id__c/{id}")
}

#[tokio::test]
async fn the_token_endpoint_checks_grant_and_credentials_and_returns_no_expiry() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let client = reqwest::Client::new();
    let base = sandbox.base_url();
    let wrong = token(&client, &base, CLIENT_ID, "nope").await;
    assert_eq!(wrong.status(), 400);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let grant = client
        .post(format!("{base}/services/oauth2/token"))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(grant.status(), 400);
    assert_eq!(
        grant.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    let good: Value = token(&client, &base, CLIENT_ID, CLIENT_SECRET)
        .await
        .json()
        .await
        .unwrap();
    assert!(good["access_token"].is_string());
    assert_eq!(good["instance_url"], base.as_str());
    assert_eq!(good["token_type"], "Bearer");
    assert!(
        good["issued_at"].as_str().unwrap().len() >= 13,
        "milliseconds"
    );
    assert!(good.get("expires_in").is_none());
    assert_eq!(sandbox.salesforce().tokens_issued(), 1);
}

#[tokio::test]
async fn upsert_creates_then_updates_and_delete_is_by_external_id() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let client = reqwest::Client::new();
    let base = sandbox.base_url();
    let bearer = access_token(&client, &base).await;

    let unauthenticated = client
        .patch(contact_url(&base, "c-1"))
        .json(&json!({"LastName": "L"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let errors: Value = unauthenticated.json().await.unwrap();
    assert_eq!(errors[0]["errorCode"], "INVALID_SESSION_ID");

    let missing = client
        .patch(contact_url(&base, "c-1"))
        .bearer_auth(&bearer)
        .json(&json!({"FirstName": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let errors: Value = missing.json().await.unwrap();
    assert_eq!(errors[0]["errorCode"], "REQUIRED_FIELD_MISSING");
    assert_eq!(errors[0]["fields"], json!(["LastName"]));
    let garbage = client
        .patch(contact_url(&base, "c-1"))
        .bearer_auth(&bearer)
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    assert!(sandbox.salesforce().contacts().is_empty());

    let created = client
        .patch(contact_url(&base, "c-1"))
        .bearer_auth(&bearer)
        .json(&json!({"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert!(created.headers().contains_key("sforce-limit-info"));
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["created"], true);
    let updated = client
        .patch(contact_url(&base, "c-1"))
        .bearer_auth(&bearer)
        .json(&json!({"LastName": "King"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(
        (updated["created"].as_bool(), &updated["id"]),
        (Some(false), &created["id"])
    );
    let contacts = sandbox.salesforce().contacts();
    assert_eq!(contacts.len(), 1);
    assert_eq!(
        (
            contacts[0].first_name.as_deref(),
            contacts[0].last_name.as_str()
        ),
        (Some("Ada"), "King")
    );

    let deleted = client
        .delete(contact_url(&base, "c-1"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let again = client
        .delete(contact_url(&base, "c-1"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    assert_eq!(
        again.json::<Value>().await.unwrap()[0]["errorCode"],
        "ENTITY_IS_DELETED"
    );
    let unknown = client
        .delete(contact_url(&base, "c-9"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    sandbox.salesforce().expire_tokens();
    let expired = client
        .patch(contact_url(&base, "c-2"))
        .bearer_auth(&bearer)
        .json(&json!({"LastName": "X"}))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
}

async fn bearer(client: &reqwest::Client, base: &str) -> String {
    let tok: Value = token(client, base, CLIENT_ID, CLIENT_SECRET)
        .await
        .json()
        .await
        .unwrap();
    tok["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_update_blanking_last_name_is_refused_and_the_org_keeps_answering() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let client = reqwest::Client::new();
    let base = sandbox.base_url();
    let bearer = bearer(&client, &base).await;
    let upsert = |body: Value| {
        let request = client
            .patch(contact_url(&base, "c-1"))
            .bearer_auth(&bearer)
            .json(&body);
        async move {
            tokio::time::timeout(std::time::Duration::from_secs(10), request.send())
                .await
                .expect("the org answers")
                .unwrap()
        }
    };
    assert_eq!(upsert(json!({"LastName": "Lovelace"})).await.status(), 201);
    let blank = upsert(json!({"LastName": " "})).await;
    assert_eq!(blank.status(), 400);
    assert_eq!(
        blank.json::<Value>().await.unwrap()[0]["errorCode"],
        "REQUIRED_FIELD_MISSING"
    );
    assert_eq!(upsert(json!({"FirstName": "Ada"})).await.status(), 200);
    let contacts = sandbox.salesforce().contacts();
    assert_eq!(contacts[0].last_name, "Lovelace");
    assert_eq!(contacts[0].first_name.as_deref(), Some("Ada"));
}

#[tokio::test]
async fn a_case_insensitive_org_matches_ids_ignoring_case_and_describes_it() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let client = reqwest::Client::new();
    let base = sandbox.base_url();
    let bearer = bearer(&client, &base).await;
    let describe = || async {
        let body: Value = client
            .get(format!(
                "{base}/services/data/v66.0/sobjects/Contact/describe"
            ))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "Customer_Id__c")
            .unwrap()["caseSensitive"]
            .clone()
    };
    assert_eq!(describe().await, true);
    sandbox.salesforce().set_case_insensitive(true);
    assert_eq!(describe().await, false);

    let created = client
        .patch(contact_url(&base, "Ada-1"))
        .bearer_auth(&bearer)
        .json(&json!({"LastName": "Lovelace"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let read: Value = client
        .get(contact_url(&base, "ada-1"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["Customer_Id__c"], "Ada-1", "the value first written");
    let merged = client
        .patch(contact_url(&base, "ada-1"))
        .bearer_auth(&bearer)
        .json(&json!({"LastName": "Hopper"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        merged.status(),
        200,
        "matched Ada-1's contact, as Salesforce would"
    );
    let contacts = sandbox.salesforce().contacts();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].external_id, "Ada-1");
    let missing = client
        .get(contact_url(&base, "bob"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn contact_ids_differ_between_two_sandbox_processes() {
    // A second `cargo run` keeps the first one's database, whose links name the first
    // sandbox's Contacts: a new sandbox must not hand out those ids again.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
        let client = reqwest::Client::new();
        let base = sandbox.base_url();
        let bearer = access_token(&client, &base).await;
        let created = client
            .patch(contact_url(&base, "c-1"))
            .bearer_auth(bearer)
            .json(&json!({"LastName": "Lovelace"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let body: Value = created.json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("003") && id.len() == 18, "{id}");
        ids.push(id);
        sandbox.stop().await;
    }
    assert_ne!(ids[0], ids[1]);
}
