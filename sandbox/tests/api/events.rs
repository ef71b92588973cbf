use sandbox::SandboxConfig;
use serde_json::json;
use shared::stripe::API_VERSION;

use crate::helpers::{fixture, keys, start};

#[tokio::test]
async fn every_change_creates_an_event_in_stripes_envelope() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let created = stripe
        .post_with_key(
            "/v1/customers",
            &[("name", "Ada"), ("metadata[a]", "1")],
            "key-1",
        )
        .await;
    let id = created.id();
    let path = format!("/v1/customers/{id}");
    stripe
        .post(&path, &[("name", "Ada King"), ("metadata[b]", "2")])
        .await;
    stripe.post(&path, &[("name", "Ada King")]).await; // no change, no event
    stripe.delete(&path).await;

    let events = sandbox.events();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["customer.created", "customer.updated", "customer.deleted"]
    );
    let created_event = &events[0];
    assert_eq!(
        keys(created_event),
        keys(&fixture("event_customer_created.json"))
    );
    assert!(created_event["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(created_event["object"], "event");
    assert_eq!(created_event["api_version"], API_VERSION);
    assert_eq!(created_event["livemode"], false);
    assert_eq!(
        created_event["pending_webhooks"], 0,
        "no endpoint configured"
    );
    assert_eq!(created_event["data"]["object"], created.body);
    assert_eq!(
        created_event["request"],
        json!({"id": created.header("request-id").unwrap(), "idempotency_key": "key-1"})
    );
    assert!(created_event["data"].get("previous_attributes").is_none());
    let updated = &events[1];
    assert_eq!(updated["data"]["object"]["name"], "Ada King");
    assert_eq!(
        updated["data"]["previous_attributes"],
        json!({"name": "Ada", "metadata": {"b": null}})
    );
    assert_eq!(
        updated["request"]["idempotency_key"],
        serde_json::Value::Null
    );
    assert_eq!(events[2]["data"]["object"]["id"], id.as_str());
    assert_eq!(events[2]["data"]["object"]["name"], "Ada King");

    let fetched = stripe
        .get(&format!("/v1/events/{}", events[1]["id"].as_str().unwrap()))
        .await;
    assert_eq!(fetched.body, events[1]);
}

#[tokio::test]
async fn events_list_filters_by_type_wildcard_and_created_and_pages() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let id = stripe.customer("Ada", "ada@example.com").await;
    stripe
        .post(&format!("/v1/customers/{id}"), &[("name", "Ada King")])
        .await;
    stripe.post("/v1/invoices", &[("customer", &id)]).await;
    let types = |a: &crate::helpers::Answer| -> Vec<String> {
        a.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = stripe.get("/v1/events").await;
    assert_eq!(all.body["url"], "/v1/events");
    assert_eq!(
        types(&all),
        ["invoice.created", "customer.updated", "customer.created"],
        "newest first"
    );
    let customers = stripe.get("/v1/events?type=customer.*").await;
    assert_eq!(types(&customers), ["customer.updated", "customer.created"]);
    let exact = stripe.get("/v1/events?type=customer.created").await;
    assert_eq!(types(&exact), ["customer.created"]);
    let several = stripe
        .get("/v1/events?types[]=customer.created&types[]=invoice.created")
        .await;
    assert_eq!(types(&several), ["invoice.created", "customer.created"]);
    let created = all.body["data"][0]["created"].as_i64().unwrap();
    let future = stripe
        .get(&format!("/v1/events?created[gt]={created}"))
        .await;
    assert_eq!(types(&future).len(), 0);
    let past = stripe
        .get(&format!("/v1/events?created[lte]={created}"))
        .await;
    assert_eq!(types(&past).len(), 3);
    let page = stripe.get("/v1/events?limit=1").await;
    assert_eq!(page.body["has_more"], true);
    let next = stripe
        .get(&format!(
            "/v1/events?limit=1&starting_after={}",
            page.body["data"][0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(types(&next), ["customer.updated"]);
    let bad = stripe.get("/v1/events?created[around]=1").await;
    assert_eq!(bad.status, 400);
}
