//! The inward loop end to end: a consumer pushes, the sandbox's signed webhooks come back
//! and the server applies them.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use reqwest::Method;
use sandbox::SandboxConfig;
use serde_json::json;
use shared::testing::eventually;

use crate::helpers::{spawn_loop as stack_with, Loop as Stack, WAIT};

async fn linked_stripe_id(stack: &Stack, id: &str) -> String {
    eventually("the customer to be linked and synced", WAIT, || async {
        let c = stack.customer(id).await;
        let link = &c["links"][0];
        (link["state"] == "synced" && link["external_id"].is_string())
            .then(|| link["external_id"].as_str().unwrap().to_owned())
    })
    .await
}

async fn quiet(stack: &Stack) {
    assert!(
        stack.sandbox.wait_webhooks_idle(WAIT).await,
        "webhooks drained"
    );
    eventually("no task left to run", WAIT, || async {
        stack
            .statuses()
            .iter()
            .all(|(s, _)| s == "succeeded")
            .then_some(())
    })
    .await;
    assert!(
        stack.sandbox.wait_webhooks_idle(WAIT).await,
        "webhooks drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_echo_of_a_local_create_links_it_without_a_new_customer_or_task() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    let consumer = stack.consumer().await;
    stack.create_customer("c-1", "Ada", "ada@example.com").await;
    linked_stripe_id(&stack, "c-1").await;
    quiet(&stack).await;
    let events = stack.sandbox.count_events("customer.created");
    assert_eq!(events, 1, "the echo arrived");
    assert_eq!(
        stack.local_customers().len(),
        1,
        "no customer imported from the echo"
    );
    assert_eq!(
        stack.statuses(),
        [("succeeded".to_owned(), 1)],
        "no task from the echo"
    );
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stripe_side_update_reaches_the_catalog_and_is_not_sent_back() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    let consumer = stack.consumer().await;
    stack.create_customer("c-1", "Ada", "ada@example.com").await;
    let cus = linked_stripe_id(&stack, "c-1").await;
    quiet(&stack).await;
    let calls_before = stack.sandbox.request_log().len();
    stack
        .sandbox
        .dashboard(
            Method::POST,
            &format!("/v1/customers/{cus}"),
            &[("name", "Ada (billing)")],
        )
        .await;
    eventually("the Stripe-side change locally", WAIT, || async {
        (stack.customer("c-1").await["name"] == "Ada (billing)").then_some(())
    })
    .await;
    quiet(&stack).await;
    let c = stack.customer("c-1").await;
    assert_eq!(c["version"], 2);
    assert_eq!(c["links"][0]["state"], "synced");
    assert_eq!(
        stack.statuses(),
        [("succeeded".to_owned(), 1)],
        "no task back to Stripe"
    );
    assert_eq!(
        stack.sandbox.request_log().len(),
        calls_before + 1,
        "only the Dashboard's call"
    );
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_update_made_while_an_older_echo_is_in_flight_survives() {
    let stack = stack_with(
        SandboxConfig {
            latency_ms: 30,
            ..SandboxConfig::default()
        },
        true,
    )
    .await;
    let consumer = stack.consumer().await;
    stack.create_customer("c-1", "v1", "ada@example.com").await;
    linked_stripe_id(&stack, "c-1").await;
    stack.update_customer("c-1", &json!({"name": "v2"})).await;
    stack.update_customer("c-1", &json!({"name": "v3"})).await;
    quiet(&stack).await;
    let c = stack.customer("c-1").await;
    assert_eq!(c["name"], "v3");
    let remote = stack.sandbox.customers();
    assert_eq!(remote[0].name.as_deref(), Some("v3"));
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_travel_both_ways() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    let consumer = stack.consumer().await;
    stack.create_customer("c-1", "Ada", "ada@example.com").await;
    stack.create_customer("c-2", "Bob", "bob@example.com").await;
    linked_stripe_id(&stack, "c-1").await;
    let cus2 = linked_stripe_id(&stack, "c-2").await;

    stack.delete_customer("c-1").await;
    stack
        .sandbox
        .dashboard(Method::DELETE, &format!("/v1/customers/{cus2}"), &[])
        .await;
    quiet(&stack).await;
    let remote = stack.sandbox.customers();
    assert!(remote.iter().all(|c| c.deleted), "{remote:?}");
    let local = stack.local_customers();
    assert!(local.iter().all(|c| c.3), "{local:?}");
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_created_in_stripe_is_imported_once() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    let consumer = stack.consumer().await;
    let created = stack
        .sandbox
        .dashboard(
            Method::POST,
            "/v1/customers",
            &[("name", "Dash Board"), ("email", "dash@example.com")],
        )
        .await;
    let cus = created["id"].as_str().unwrap().to_owned();
    eventually("the import", WAIT, || async {
        (stack.customer(&cus).await["name"] == "Dash Board").then_some(())
    })
    .await;
    quiet(&stack).await;
    assert_eq!(stack.local_customers().len(), 1);
    assert_eq!(
        stack.sandbox.customers().len(),
        1,
        "not pushed back as a new customer"
    );
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_changes_on_both_sides_converge_despite_duplicate_and_shuffled_webhooks() {
    let stack = stack_with(
        SandboxConfig {
            duplicate_rate: 0.3,
            shuffle: true,
            seed: Some(42),
            ..SandboxConfig::default()
        },
        true,
    )
    .await;
    let consumer = stack.consumer().await;
    let n = 30;
    for i in 0..n {
        stack
            .create_customer(
                &format!("c-{i}"),
                &format!("n{i}-0"),
                &format!("c{i}@example.com"),
            )
            .await;
    }
    let mut stripe_ids = Vec::new();
    for i in 0..n {
        stripe_ids.push(linked_stripe_id(&stack, &format!("c-{i}")).await);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 1..=4 {
        for (i, stripe_id) in stripe_ids.iter().enumerate() {
            let name = format!("n{i}-{round}");
            match rng.gen_range(0..3) {
                0 => {
                    stack
                        .update_customer(
                            &format!("c-{i}"),
                            &json!({"name": format!("{name}-local")}),
                        )
                        .await;
                }
                1 => {
                    stack
                        .sandbox
                        .dashboard(
                            Method::POST,
                            &format!("/v1/customers/{stripe_id}"),
                            &[("name", &format!("{name}-stripe"))],
                        )
                        .await;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    quiet(&stack).await;
    // Let any last echo settle, then compare both sides.
    quiet(&stack).await;
    let remote = stack.sandbox.customers();
    for (id, name, email, deleted) in stack.local_customers() {
        assert!(!deleted);
        let cus = stack.customer(&id).await["links"][0]["external_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = remote.iter().find(|c| c.id == cus).unwrap();
        assert_eq!(
            (r.name.as_deref(), r.email.as_deref()),
            (Some(name.as_str()), Some(email.as_str())),
            "{id}"
        );
    }
    assert_eq!(remote.len(), n, "no duplicate Stripe customers");
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_update_racing_a_stripe_side_delete_ends_deleted_everywhere() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    let consumer = stack.consumer().await;
    stack.create_customer("c-1", "Ada", "ada@example.com").await;
    let cus = linked_stripe_id(&stack, "c-1").await;
    quiet(&stack).await;
    consumer.shutdown().await;
    // The Stripe-side delete happens while the local update waits in the queue.
    stack
        .update_customer("c-1", &json!({"name": "Ada King"}))
        .await;
    stack
        .sandbox
        .dashboard(Method::DELETE, &format!("/v1/customers/{cus}"), &[])
        .await;
    let consumer = stack.consumer().await;
    quiet(&stack).await;
    let local = stack.local_customers();
    assert!(local[0].3, "tombstoned locally: {local:?}");
    assert!(stack.sandbox.customers()[0].deleted);
    assert!(
        stack.statuses().iter().all(|(s, _)| s == "succeeded"),
        "no dead task"
    );
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_for_a_customer_deleted_in_stripe_before_its_webhook_arrives_is_not_dead() {
    // No webhook: the consumer meets Stripe's 404 before any customer.deleted arrives.
    let stack = stack_with(SandboxConfig::default(), false).await;
    let consumer = stack.consumer().await;
    stack.create_customer("c-1", "Ada", "ada@example.com").await;
    let cus = linked_stripe_id(&stack, "c-1").await;
    stack
        .sandbox
        .dashboard(Method::DELETE, &format!("/v1/customers/{cus}"), &[])
        .await;
    stack
        .update_customer("c-1", &json!({"name": "Ada King"}))
        .await;
    stack.drained(2).await;
    let updates: Vec<_> = stack
        .sandbox
        .request_log()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == format!("/v1/customers/{cus}"))
        .collect();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].status, 404, "the update met the deletion");
    consumer.shutdown().await;
}

/// Delivers `event` to the loop's server as the sandbox would sign it.
pub(crate) async fn deliver(stack: &Stack, event: &serde_json::Value) -> (u16, serde_json::Value) {
    let body = serde_json::to_vec(event).unwrap();
    let now = chrono::Utc::now().timestamp();
    let signature = shared::stripe::signature::sign(stack.sandbox.webhook_secret(), now, &body);
    let response = stack
        .client
        .post(format!("{}/api/v1/endpoint/stripe", stack.address))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn customer_event(
    id: &str,
    created: i64,
    customer: &serde_json::Value,
    name: &str,
    previous_name: Option<&str>,
) -> serde_json::Value {
    let mut object = customer.clone();
    object["name"] = json!(name);
    let mut data = json!({"object": object});
    if let Some(previous) = previous_name {
        data["previous_attributes"] = json!({"name": previous});
    }
    let kind = if previous_name.is_some() {
        "customer.updated"
    } else {
        "customer.created"
    };
    json!({"id": id, "object": "event", "type": kind, "created": created, "data": data})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_same_second_tie_is_settled_with_the_customer_as_stripe_holds_it() {
    let stack = stack_with(SandboxConfig::default(), false).await;
    let cus = stack
        .sandbox
        .dashboard(
            Method::POST,
            "/v1/customers",
            &[("name", "As Stripe holds it"), ("email", "tie@example.com")],
        )
        .await;
    let id = cus["id"].as_str().unwrap().to_owned();
    let t = chrono::Utc::now().timestamp();
    let created = customer_event("evt_tie_0", t, &cus, "A", None);
    assert_eq!(deliver(&stack, &created).await.1["outcome"], "imported");
    // Same second, in reverse: C applies, then B ties with it.
    let to_c = customer_event("evt_tie_2", t + 10, &cus, "C", Some("B"));
    let to_b = customer_event("evt_tie_1", t + 10, &cus, "B", Some("A"));
    assert_eq!(deliver(&stack, &to_c).await.1["outcome"], "applied");
    let (status, body) = deliver(&stack, &to_b).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "same-second tie settled from Stripe");
    assert_eq!(stack.customer(&id).await["name"], "As Stripe holds it");
    // Settled once: a redelivery is a duplicate.
    assert_eq!(deliver(&stack, &to_b).await.1["outcome"], "duplicate");
}

/// A customer made in Stripe (imported by its webhook) and a draft invoice of 15.00 for
/// it: (customer, invoice).
async fn draft_invoice(stack: &Stack) -> (String, String) {
    let cus = stack
        .sandbox
        .dashboard(
            Method::POST,
            "/v1/customers",
            &[("name", "Ada"), ("email", "ada@example.com")],
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let invoice = stack
        .sandbox
        .dashboard(Method::POST, "/v1/invoices", &[("customer", &cus)])
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack
        .sandbox
        .dashboard(
            Method::POST,
            "/v1/invoiceitems",
            &[
                ("customer", cus.as_str()),
                ("amount", "1500"),
                ("currency", "usd"),
                ("invoice", invoice.as_str()),
            ],
        )
        .await;
    (cus, invoice)
}

/// The invoice as the catalogue holds it.
async fn catalogued(stack: &Stack, invoice: &str) -> serde_json::Value {
    stack
        .get(&format!("/api/v1/invoices/{invoice}"))
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_payment_reaches_the_invoice_catalogue() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    let (cus, invoice) = draft_invoice(&stack).await;
    let declined = reqwest::Client::new()
        .post(format!(
            "{}/v1/invoices/{invoice}/pay",
            stack.sandbox.base_url()
        ))
        .bearer_auth("sk_test_dashboard")
        .form(&[("payment_method", "pm_card_chargeDeclined")])
        .send()
        .await
        .unwrap();
    assert_eq!(declined.status(), 402);
    quiet(&stack).await;
    assert_eq!(
        stack
            .app
            .db
            .count_where("webhook_events", "event_type = 'invoice.payment_failed'"),
        1
    );
    let stored = catalogued(&stack, &invoice).await;
    assert_eq!(stored["status"], "open", "{stored}");
    assert_eq!(stored["amount_paid"], 0);
    assert_eq!(stored["customer_id"], cus.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invoice_updated_after_finalization_reaches_the_invoice_catalogue() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    let (cus, invoice) = draft_invoice(&stack).await;
    let path = format!("/v1/invoices/{invoice}");
    let finalized = stack
        .sandbox
        .dashboard(Method::POST, &format!("{path}/finalize"), &[])
        .await;
    stack
        .sandbox
        .dashboard(
            Method::POST,
            &path,
            &[("footer", "Thanks"), ("metadata[k]", "v")],
        )
        .await;
    quiet(&stack).await;
    assert_eq!(
        stack.app.db.count_where(
            "webhook_events",
            &format!("event_type = 'invoice.updated' AND payload->'data'->'object'->>'footer' = 'Thanks' AND object_id = '{invoice}'")
        ),
        1,
        "the update after finalization was received"
    );
    let stored = catalogued(&stack, &invoice).await;
    assert_eq!(stored["status"], "open", "{stored}");
    assert_eq!(stored["number"], finalized["number"]);
    assert_eq!(stored["customer_id"], cus.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invoice_with_its_customer_expanded_reaches_the_invoice_catalogue_linked() {
    // Webhooks off: the only invoice the server hears of is the one delivered here, in the
    // shape the sandbox answers `expand[]=customer` with.
    let stack = stack_with(SandboxConfig::default(), false).await;
    let t = chrono::Utc::now().timestamp();
    let (cus, invoice) = draft_invoice(&stack).await;
    let customer = stack
        .sandbox
        .dashboard(Method::GET, &format!("/v1/customers/{cus}"), &[])
        .await;
    let created = customer_event("evt_expand_0", t, &customer, "Ada", None);
    assert_eq!(deliver(&stack, &created).await.1["outcome"], "imported");
    stack
        .sandbox
        .dashboard(
            Method::POST,
            &format!("/v1/invoices/{invoice}/finalize"),
            &[],
        )
        .await;
    let expanded = stack
        .sandbox
        .dashboard(
            Method::GET,
            &format!("/v1/invoices/{invoice}?expand[]=customer"),
            &[],
        )
        .await;
    assert_eq!(expanded["customer"]["object"], "customer", "{expanded}");
    let event = json!({"id": "evt_expand_1", "object": "event", "type": "invoice.finalized",
        "created": t + 1, "data": {"object": expanded}});
    let (status, body) = deliver(&stack, &event).await;
    assert_eq!(status, 200, "{body}");
    let stored = catalogued(&stack, &invoice).await;
    assert_eq!(stored["status"], "open", "{stored}");
    assert_eq!(stored["stripe_customer_id"], cus.as_str(), "{stored}");
    assert_eq!(
        stored["customer_id"],
        cus.as_str(),
        "linked to the imported customer"
    );
}
