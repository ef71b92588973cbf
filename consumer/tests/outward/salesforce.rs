//! The salesforce topic: Contacts upserted by external id in the sandbox's Salesforce mode.

use reqwest::Method;
use sandbox::SandboxConfig;
use serde_json::json;
use shared::testing::eventually;

use crate::helpers::{stack_full, Stack, WAIT};

fn contact(stack: &Stack, id: &str) -> Option<sandbox::salesforce::Contact> {
    stack
        .sandbox
        .salesforce()
        .contacts()
        .into_iter()
        .find(|c| c.external_id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_update_and_delete_reach_salesforce() {
    let stack = stack_full(SandboxConfig::default(), false, true).await;
    let consumer = stack.consumer().await;
    let created = stack
        .create("c-1", "Ada King Lovelace", "ada@example.com")
        .await;
    let providers: Vec<&str> = created["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers, ["stripe", "salesforce"]);
    stack.drained(2).await;
    let c = contact(&stack, "c-1").expect("the contact");
    assert_eq!(c.first_name.as_deref(), Some("Ada King"));
    assert_eq!(c.last_name, "Lovelace");
    assert_eq!(c.email.as_deref(), Some("ada@example.com"));
    let customer = stack.customer("c-1").await;
    let link = customer["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["provider"] == "salesforce")
        .unwrap()
        .clone();
    assert_eq!(link["external_id"], c.id.as_str());
    assert_eq!(link["state"], "synced");

    stack
        .patch("c-1", json!({"name": "Ada", "email": "ada@king.org"}))
        .await;
    stack.drained(4).await;
    let c = contact(&stack, "c-1").unwrap();
    assert_eq!(
        (c.first_name.as_deref(), c.last_name.as_str()),
        (None, "Ada")
    );
    assert_eq!(c.email.as_deref(), Some("ada@king.org"));

    stack.delete("c-1").await;
    stack.drained(6).await;
    assert!(contact(&stack, "c-1").unwrap().deleted);
    assert_eq!(stack.sandbox.salesforce().contacts().len(), 1);
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stripe_side_change_reaches_salesforce_and_not_back_to_stripe() {
    let stack = stack_full(SandboxConfig::default(), true, true).await;
    let consumer = stack.consumer().await;
    stack.create("c-1", "Ada Lovelace", "ada@example.com").await;
    stack.drained(2).await;
    let cus = stack.customer("c-1").await["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["provider"] == "stripe")
        .unwrap()["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack
        .sandbox
        .dashboard(
            Method::POST,
            &format!("/v1/customers/{cus}"),
            &[("email", "billing@lovelace.org")],
        )
        .await;
    eventually("the Stripe-side change in Salesforce", WAIT, || async {
        (contact(&stack, "c-1")?.email.as_deref() == Some("billing@lovelace.org")).then_some(())
    })
    .await;
    let stripe_tasks: Vec<_> = stack
        .request(Method::GET, "/api/v1/tasks?provider=stripe")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["tasks"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(stripe_tasks.len(), 1, "only the create went to Stripe");
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_expiring_mid_run_is_refreshed_once_and_nothing_fails() {
    let stack = stack_full(SandboxConfig::default(), false, true).await;
    let consumer = stack.consumer_with(|s| s.concurrency = 8).await;
    for i in 0..10 {
        stack
            .create(
                &format!("c-{i}"),
                "Ada Lovelace",
                &format!("c{i}@example.com"),
            )
            .await;
    }
    stack.drained(20).await;
    assert_eq!(stack.sandbox.salesforce().tokens_issued(), 1);
    stack.sandbox.salesforce().expire_tokens();
    for i in 10..30 {
        stack
            .create(
                &format!("c-{i}"),
                "Ada Lovelace",
                &format!("c{i}@example.com"),
            )
            .await;
    }
    stack.drained(60).await;
    assert_eq!(
        stack.sandbox.salesforce().tokens_issued(),
        2,
        "one shared refresh"
    );
    assert_eq!(stack.sandbox.salesforce().contacts().len(), 30);
    let attempts = stack.db.max_attempts(shared::domain::Provider::Salesforce);
    assert_eq!(attempts, 1, "the refresh happened inside the first attempt");
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_required_field_error_sends_the_task_dead_with_salesforce_s_message() {
    let stack = stack_full(SandboxConfig::default(), false, true).await;
    let consumer = stack.consumer().await;
    stack.sandbox.salesforce().fail_next(
        400,
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [LastName]",
        1,
    );
    let created = stack.create("c-1", "Ada", "ada@example.com").await;
    let task_id = created["tasks"][1]["id"].as_str().unwrap().to_owned();
    let task = eventually("the salesforce task to die", WAIT, || async {
        let t = stack.task(&task_id).await;
        (t["status"] == "dead").then_some(t)
    })
    .await;
    assert_eq!(task["attempts"], 1);
    let error = task["last_error"].as_str().unwrap();
    assert!(
        error.contains("REQUIRED_FIELD_MISSING") && error.contains("[LastName]"),
        "{error}"
    );
    let response = stack
        .request(Method::POST, &format!("/api/v1/tasks/{task_id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    stack.drained(2).await;
    assert!(contact(&stack, "c-1").is_some());
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_killed_mid_run_leaves_exactly_one_contact_per_customer() {
    let stack = stack_full(
        SandboxConfig {
            latency_ms: 100,
            ..SandboxConfig::default()
        },
        false,
        true,
    )
    .await;
    let env = [
        ("SALESFORCE_LOGIN_URL", stack.sandbox.base_url()),
        (
            "SALESFORCE_CLIENT_ID",
            sandbox::salesforce::CLIENT_ID.to_owned(),
        ),
        (
            "SALESFORCE_CLIENT_SECRET",
            sandbox::salesforce::CLIENT_SECRET.to_owned(),
        ),
        ("CONSUMER_LEASE_SECS", "5".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = |env: &[(&str, &str)]| {
        let mut command = stack.consumer_command(env);
        command.args(["--topic", "salesforce"]);
        command.spawn().unwrap()
    };
    let mut first = start(&env);
    for i in 0..20 {
        stack
            .create(
                &format!("c-{i}"),
                "Ada Lovelace",
                &format!("c{i}@example.com"),
            )
            .await;
    }
    eventually("some contacts", WAIT, || async {
        (stack.sandbox.salesforce().contacts().len() >= 3).then_some(())
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = start(&env);
    stack.drained(40).await;
    second.kill().unwrap();
    second.wait().unwrap();
    let contacts = stack.sandbox.salesforce().contacts();
    assert_eq!(contacts.len(), 20);
    let mut ids: Vec<_> = contacts.iter().map(|c| c.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daily_allocation_reported_by_salesforce_sets_what_calls_may_still_go() {
    use shared::salesforce::SalesforceClient;
    use shared::salesforce_allocation::Allowance;
    let stack = stack_full(SandboxConfig::default(), false, true).await;
    let settings = stack.consumer_settings();
    let client = SalesforceClient::new(settings.common.salesforce.as_ref().unwrap()).unwrap();
    let org = stack.sandbox.salesforce();
    // The sandbox counts this call too before it answers: usage is calls + 1 of 15,000.
    for (calls, expected) in [
        (11_000, Allowance::Everything),
        (11_999, Allowance::SlowBackground),
        (14_249, Allowance::LiveWritesOnly),
        (100, Allowance::Everything),
    ] {
        org.set_api_calls(calls);
        client
            .upsert_contact("c-1", "Ada Lovelace", "ada@example.com", None)
            .await
            .unwrap();
        assert_eq!(client.allowance(), expected, "after {calls} calls");
    }
}

/// The Salesforce task of the customer among `created`.
fn salesforce_task(created: &serde_json::Value) -> String {
    created["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["provider"] == "salesforce")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_differing_only_in_case_are_refused_not_merged_when_the_field_ignores_case() {
    let stack = stack_full(SandboxConfig::default(), false, true).await;
    let org = stack.sandbox.salesforce();
    org.set_case_insensitive(true);
    let consumer = stack.consumer().await;
    stack
        .create("Ada-1", "Ada Lovelace", "ada@example.com")
        .await;
    stack.drained(2).await;
    let first = contact(&stack, "Ada-1").expect("Ada-1's contact");

    let created = stack
        .create("ada-1", "Grace Hopper", "grace@example.com")
        .await;
    let task_id = salesforce_task(&created);
    let task = eventually("ada-1's Salesforce create to be refused", WAIT, || async {
        let t = stack.task(&task_id).await;
        (t["status"] == "dead").then_some(t)
    })
    .await;
    let error = task["last_error"].as_str().unwrap();
    assert!(
        error.contains("CASE_ONLY_COLLISION") && error.contains("case sensitive"),
        "{error}"
    );
    assert_eq!(
        contact(&stack, "Ada-1"),
        Some(first.clone()),
        "Ada-1's contact is not merged"
    );
    assert_eq!(org.contacts().len(), 1);

    // Deleting ada-1 leaves Ada-1's contact alone.
    let deleted = stack.delete("ada-1").await;
    let task_id = salesforce_task(&deleted);
    eventually("ada-1's Salesforce delete", WAIT, || async {
        (stack.task(&task_id).await["status"] == "succeeded").then_some(())
    })
    .await;
    assert_eq!(contact(&stack, "Ada-1"), Some(first));
    let describes = org
        .calls()
        .iter()
        .filter(|(method, path, _)| method == "GET" && path.ends_with("/describe"))
        .count();
    assert_eq!(describes, 1, "the field is described once per process");
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_differing_only_in_case_each_get_a_contact_when_the_field_is_case_sensitive() {
    let stack = stack_full(SandboxConfig::default(), false, true).await;
    let consumer = stack.consumer().await;
    stack
        .create("Ada-1", "Ada Lovelace", "ada@example.com")
        .await;
    stack
        .create("ada-1", "Grace Hopper", "grace@example.com")
        .await;
    stack.drained(4).await;
    assert_eq!(contact(&stack, "Ada-1").unwrap().last_name, "Lovelace");
    assert_eq!(contact(&stack, "ada-1").unwrap().last_name, "Hopper");
    // No lookup before the upserts: a case-sensitive field costs no extra call.
    let gets = stack
        .sandbox
        .salesforce()
        .calls()
        .iter()
        .filter(|(method, path, _)| method == "GET" && !path.ends_with("/describe"))
        .count();
    assert_eq!(gets, 0);
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_case_variant_created_between_the_look_up_and_the_upsert_is_refused() {
    use shared::salesforce::{SalesforceClient, SalesforceError, CASE_COLLISION};
    let stack = stack_full(SandboxConfig::default(), false, true).await;
    let settings = stack.consumer_settings();
    let client = SalesforceClient::new(settings.common.salesforce.as_ref().unwrap()).unwrap();
    let org = stack.sandbox.salesforce();
    org.set_case_insensitive(true);

    // Another customer's first push lands between our look-up and our upsert.
    org.create_after_next_lookup("Ada-1", "Lovelace");
    let refused = client
        .upsert_contact("ada-1", "Grace Hopper", "grace@example.com", None)
        .await;
    assert!(
        matches!(&refused, Err(SalesforceError::Api { code, .. }) if code == CASE_COLLISION),
        "{refused:?}"
    );

    // Another attempt of our own push lands there: ours, no refusal.
    org.create_after_next_lookup("bob-1", "Bob");
    let id = client
        .upsert_contact("bob-1", "Bob Builder", "bob@example.com", None)
        .await
        .unwrap();
    assert_eq!(id, contact(&stack, "bob-1").map(|c| c.id));
}
