//! Adopting an existing Stripe account: creates that adopt by email, and the import job on
//! real binaries, killed midway and resumed by another consumer.

use std::collections::BTreeSet;
use std::time::Duration;

use sandbox::{Sandbox, SandboxConfig};
use serde_json::{json, Value};
use shared::testing::eventually;
use shared::testing::processes::Processes;

use crate::helpers::{stack, stack_with, Stack, WAIT};

/// Creates a customer in Stripe as the Dashboard (or an earlier integration) would.
pub async fn stripe_customer(
    sandbox: &Sandbox,
    name: &str,
    email: &str,
    local_id: Option<&str>,
) -> String {
    let mut form = vec![("name", name), ("email", email)];
    if let Some(local) = local_id {
        form.push(("metadata[customer_sync_id]", local));
    }
    let created = sandbox
        .dashboard(reqwest::Method::POST, "/v1/customers", &form)
        .await;
    created["id"].as_str().expect("an id").to_owned()
}

/// Bills a Stripe customer: an item, an invoice, finalized.
async fn invoice(sandbox: &Sandbox, customer: &str, amount: &str) {
    let post = reqwest::Method::POST;
    sandbox
        .dashboard(
            post.clone(),
            "/v1/invoiceitems",
            &[
                ("customer", customer),
                ("amount", amount),
                ("currency", "usd"),
            ],
        )
        .await;
    let invoice = sandbox
        .dashboard(
            post.clone(),
            "/v1/invoices",
            &[
                ("customer", customer),
                ("pending_invoice_items_behavior", "include"),
            ],
        )
        .await;
    let path = format!("/v1/invoices/{}/finalize", invoice["id"].as_str().unwrap());
    sandbox.dashboard(post, &path, &[]).await;
}

/// Queues a job through the API; its id.
pub async fn start_job(stack: &Stack, body: Value) -> String {
    let response = stack.api.post("/api/v1/jobs", &body).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

/// The job as the API shows it.
pub async fn job(stack: &Stack, id: &str) -> Value {
    let response = stack.api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Waits for the job to end; the job.
pub async fn finished(stack: &Stack, id: &str, timeout: Duration) -> Value {
    eventually("the job to end", timeout, || async {
        let job = job(stack, id).await;
        matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
        .then_some(job)
    })
    .await
}

/// The Stripe id linked to a local customer, if any.
pub fn linked_stripe_id(stack: &Stack, customer: &str) -> Option<String> {
    use diesel::prelude::*;
    use shared::db::schema::provider_links as l;
    let mut conn = stack.db.connect();
    l::table
        .filter(l::customer_id.eq(customer))
        .filter(l::provider.eq("stripe"))
        .select(l::external_id)
        .first::<Option<String>>(&mut conn)
        .optional()
        .unwrap()
        .flatten()
}

fn with_email(sandbox: &Sandbox, email: &str) -> Vec<sandbox::CustomerSnapshot> {
    sandbox
        .customers()
        .into_iter()
        .filter(|c| !c.deleted && c.email.as_deref() == Some(email))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_adopts_the_one_stripe_customer_with_its_email_and_refuses_to_guess_between_several(
) {
    let stack = stack(SandboxConfig::default()).await;
    let ann = stripe_customer(&stack.sandbox, "Ann Stripe", "ann@example.com", None).await;
    let ben_1 = stripe_customer(&stack.sandbox, "Ben", "ben@example.com", None).await;
    let ben_2 = stripe_customer(&stack.sandbox, "Ben B", "ben@example.com", None).await;
    let cat = stripe_customer(&stack.sandbox, "Cat", "cat@example.com", None).await;
    stack.create("c-ann", "Ann", "ann@example.com").await;
    let ben = stack.create("c-ben", "Ben", "ben@example.com").await;
    stack.drain().await;

    // Adopted: no second Stripe customer, our metadata and the local state written on it.
    assert_eq!(
        linked_stripe_id(&stack, "c-ann").as_deref(),
        Some(ann.as_str())
    );
    let anns = with_email(&stack.sandbox, "ann@example.com");
    assert_eq!(anns.len(), 1, "{anns:?}");
    assert_eq!(
        anns[0].metadata.get("customer_sync_id").map(String::as_str),
        Some("c-ann")
    );
    assert_eq!(anns[0].name.as_deref(), Some("Ann"));

    // Two candidates: the task waits, dead, naming both; nothing is written to either.
    let task = stack
        .api
        .task(ben["tasks"][0]["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "dead", "{task}");
    let error = task["last_error"].as_str().unwrap();
    assert!(error.contains(&ben_1) && error.contains(&ben_2), "{error}");
    assert!(error.contains("/links/stripe"), "{error}");
    assert_eq!(linked_stripe_id(&stack, "c-ben"), None);
    for ben in with_email(&stack.sandbox, "ben@example.com") {
        assert!(ben.metadata.is_empty(), "{ben:?}");
    }
    assert_eq!(
        stack.sandbox.customers().len(),
        4,
        "no customer was created"
    );

    // The operator links one by hand: it gets our metadata, the dead task is superseded.
    let response = stack
        .api
        .request(reqwest::Method::PUT, "/api/v1/customers/c-ben/links/stripe")
        .json(&json!({"external_id": ben_2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    stack.drain().await;
    assert_eq!(
        linked_stripe_id(&stack, "c-ben").as_deref(),
        Some(ben_2.as_str())
    );
    let stripe_ben = stack
        .sandbox
        .customers()
        .into_iter()
        .find(|c| c.id == ben_2)
        .unwrap();
    assert_eq!(
        stripe_ben
            .metadata
            .get("customer_sync_id")
            .map(String::as_str),
        Some("c-ben")
    );

    // Off, creates are blind: a second Stripe customer with the same email.
    let blind = consumer::startup::drain({
        let mut settings = stack.consumer_settings();
        settings.adopt_by_email = false;
        settings
    });
    stack.create("c-cat", "Cat", "cat@example.com").await;
    blind.await.unwrap();
    let cats = with_email(&stack.sandbox, "cat@example.com");
    assert_eq!(cats.len(), 2, "{cats:?}");
    assert_ne!(
        linked_stripe_id(&stack, "c-cat").as_deref(),
        Some(cat.as_str())
    );
}

/// Stripe customers seeded before the import, beyond the named ones.
const SEEDED: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_account_is_adopted_by_an_import_killed_midway_and_resumed_elsewhere() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    let sandbox = &stack.sandbox;
    // The account as it was before customer-sync: its events are long gone.
    sandbox.pause_webhooks();
    let ours = stripe_customer(sandbox, "Ada", "ada@example.com", Some("local-ada")).await;
    let by_email = stripe_customer(sandbox, "Bob Stripe", "bob@example.com", None).await;
    let twin_1 = stripe_customer(sandbox, "Cy", "cy@example.com", None).await;
    let twin_2 = stripe_customer(sandbox, "Cy Two", "cy@example.com", None).await;
    let only = stripe_customer(sandbox, "Dee", "dee@example.com", None).await;
    // Two with an email no local customer has: nobody to match, so both are imported.
    let fay_1 = stripe_customer(sandbox, "Fay", "fay@example.com", None).await;
    let fay_2 = stripe_customer(sandbox, "Fay Two", "Fay@Example.com", None).await;
    invoice(sandbox, &only, "1500").await;
    sandbox.seed(SEEDED, 40).unwrap();
    sandbox.expire_events();
    sandbox.resume_webhooks();
    let stripe_before: BTreeSet<String> = sandbox.customers().into_iter().map(|c| c.id).collect();

    let env = [
        ("CONSUMER_LEASE_SECS", "5"),
        ("STRIPE_MAX_RPS", "6"),
        ("STRIPE_EVENTS_POLL_SECS", "0"),
    ];
    let mut processes = Processes::default();
    let first = processes
        .spawn("consumer-1", &mut stack.consumer_command(&env))
        .unwrap();
    // The user loads its catalog while the consumer runs.
    for (id, name, email) in [
        ("local-ada", "Ada", "ada@example.com"),
        ("local-bob", "Bob", "bob@example.com"),
        ("local-cy", "Cy", "cy@example.com"),
        ("local-eve", "Eve", "eve@example.com"),
    ] {
        stack.create(id, name, email).await;
    }
    let id = start_job(&stack, json!({"kind": "import", "provider": "stripe"})).await;
    eventually("the walk to pass 500 customers", WAIT, || async {
        let job = job(&stack, &id).await;
        (job["progress"]["customers_walked"].as_i64().unwrap_or(0) >= 500).then_some(())
    })
    .await;
    let before_kill = job(&stack, &id).await;
    assert_eq!(before_kill["status"], "running");
    // The walk decides as it goes what no later page can change: the seeded customers
    // (the newest, walked first) are imported in the walk's own steps.
    assert_eq!(before_kill["phase"], "customers", "{before_kill}");
    assert!(
        before_kill["progress"]["imported"].as_i64().unwrap_or(0) >= 400,
        "{before_kill}"
    );
    processes.kill(first);
    processes
        .spawn("consumer-2", &mut stack.consumer_command(&env))
        .unwrap();
    let ended = finished(&stack, &id, Duration::from_secs(180)).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(
        ended["started_at"], before_kill["started_at"],
        "resumed, not restarted"
    );
    eventually("every task to finish", WAIT, || async {
        let open = stack
            .db
            .count_where("sync_tasks", "status IN ('pending', 'in_flight')");
        (open == 0).then_some(())
    })
    .await;

    // Linked by metadata, adopted by email (our metadata written), created for the one
    // Stripe lacked; the ambiguous one untouched, its create dead naming both.
    assert_eq!(
        linked_stripe_id(&stack, "local-ada").as_deref(),
        Some(ours.as_str())
    );
    assert_eq!(
        linked_stripe_id(&stack, "local-bob").as_deref(),
        Some(by_email.as_str())
    );
    let bob = sandbox
        .customers()
        .into_iter()
        .find(|c| c.id == by_email)
        .unwrap();
    assert_eq!(
        bob.metadata.get("customer_sync_id").map(String::as_str),
        Some("local-bob")
    );
    assert_eq!(linked_stripe_id(&stack, "local-cy"), None);
    for twin in [&twin_1, &twin_2] {
        let twin = sandbox
            .customers()
            .into_iter()
            .find(|c| &c.id == twin)
            .unwrap();
        assert!(twin.metadata.is_empty(), "{twin:?}");
    }
    let dead_cy = stack.db.count_where(
        "sync_tasks",
        &format!(
            "customer_id = 'local-cy' AND status = 'dead' AND last_error LIKE '%{twin_1}%' \
             AND last_error LIKE '%{twin_2}%'"
        ),
    );
    assert_eq!(dead_cy, 1);
    let eve =
        linked_stripe_id(&stack, "local-eve").expect("a Stripe customer was created for local-eve");
    assert!(!stripe_before.contains(&eve));
    // Stripe-only customers became local ones, linked to themselves.
    assert_eq!(
        linked_stripe_id(&stack, &only).as_deref(),
        Some(only.as_str())
    );
    for fay in [&fay_1, &fay_2] {
        assert_eq!(linked_stripe_id(&stack, fay).as_deref(), Some(fay.as_str()));
    }
    assert_eq!(stack.db.count("customers") as usize, 4 + 3 + SEEDED);

    // One Stripe customer was created (Eve's), none for an email the account held.
    let stripe_after: BTreeSet<String> = sandbox.customers().into_iter().map(|c| c.id).collect();
    assert_eq!(stripe_after.difference(&stripe_before).count(), 1);
    // Each local customer has one Stripe customer, each Stripe customer one local one.
    let unlinked = stack.db.count_where(
        "customers c",
        "NOT EXISTS (SELECT 1 FROM provider_links l WHERE l.customer_id = c.id \
           AND l.provider = 'stripe' AND l.external_id IS NOT NULL)",
    );
    assert_eq!(unlinked, 1, "only local-cy waits for the operator");
    let shared_links = stack.db.count_where(
        "(SELECT external_id FROM provider_links WHERE provider = 'stripe' \
           AND external_id IS NOT NULL GROUP BY external_id HAVING count(*) > 1) d",
        "true",
    );
    assert_eq!(shared_links, 0);

    // The report's counts match the walk and the job's rows.
    let counts = &ended["report"]["counts"];
    let count = |kind: &str| counts[kind].as_i64().unwrap_or(0);
    // Every Stripe customer was walked once (Eve's may have been created before the walk
    // began, as the user's creates run beside the import).
    let walked = count("customers_walked");
    let staged = stack
        .db
        .count_where("sync_job_objects", &format!("job_id = '{id}'"));
    assert_eq!(walked, staged, "{counts}");
    assert!(
        (stripe_before.len()..=stripe_after.len()).contains(&(walked as usize)),
        "{counts}"
    );
    let decided: i64 = [
        "linked",
        "adopted",
        "already_linked",
        "ambiguous",
        "imported",
        "orphaned",
        "duplicate",
        "id_taken",
        "unusable_id",
    ]
    .iter()
    .map(|k| count(k))
    .sum();
    assert_eq!(decided, count("customers_walked"), "{counts}");
    assert_eq!(count("ambiguous"), 2, "{counts}");
    assert_eq!(count("imported") as usize, SEEDED + 3, "{counts}");
    for kind in [
        "linked",
        "adopted",
        "ambiguous",
        "imported",
        "create_queued",
    ] {
        let rows = stack.db.count_where(
            "sync_job_findings",
            &format!("job_id = '{id}' AND kind = '{kind}'"),
        );
        assert_eq!(rows, count(kind), "{kind}: {counts}");
    }
    let ambiguous: BTreeSet<&str> = ended["report"]["findings"]["ambiguous"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["external_id"].as_str())
        .collect();
    assert_eq!(
        ambiguous,
        BTreeSet::from([twin_1.as_str(), twin_2.as_str()])
    );
    assert_eq!(
        ended["report"]["findings"]["imported"]
            .as_array()
            .unwrap()
            .len(),
        100,
        "the report lists the first 100 of a kind"
    );
    assert_eq!(count("invoices_walked") as usize, sandbox.invoices().len());
    assert_eq!(
        stack.db.count("invoices") as usize,
        sandbox.invoices().len()
    );

    // The walk resumed at its checkpoint: only one list of customers started from the top.
    let from_the_top = sandbox
        .request_log()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/v1/customers")
        .filter(|r| {
            !r.params
                .iter()
                .any(|(k, _)| k == "starting_after" || k == "email")
        })
        .count();
    assert_eq!(from_the_top, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_import_cancelled_through_the_api_stops_at_its_next_step() {
    let stack = stack(SandboxConfig::default()).await;
    stack.sandbox.seed(3000, 0).unwrap();
    let consumer = stack.consumer_with(|s| s.stripe_max_rps = 5).await;
    let id = start_job(&stack, json!({"kind": "import", "provider": "stripe"})).await;
    eventually("the walk to start", WAIT, || async {
        let job = job(&stack, &id).await;
        (job["progress"]["customers_walked"].as_i64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    let response = stack
        .api
        .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let ended = finished(&stack, &id, WAIT).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    let walked = ended["report"]["counts"]["customers_walked"]
        .as_i64()
        .unwrap();
    assert!(walked < 3000, "{ended}");
    // Each page walked was decided in its own step, and nothing after the cancel.
    assert_eq!(stack.db.count("customers"), walked, "{ended}");
    assert_eq!(ended["report"]["counts"]["imported"].as_i64(), Some(walked));
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_lost_first_attempt_made_the_customer_adopts_it_under_a_key_of_its_own() {
    let stack = stack(SandboxConfig::default()).await;
    let created = stack.create("c-1", "Ada", "ada@example.com").await;
    let task = created["tasks"][0]["id"].as_str().unwrap();
    // The first attempt reached Stripe, and its answer was lost with its consumer.
    let key = format!("customer-sync-{task}");
    let form = &[
        ("name", "Ada"),
        ("email", "ada@example.com"),
        ("metadata[customer_sync_id]", "c-1"),
    ];
    assert_eq!(stack.stripe_create_with_key(&key, form).await, 200);
    stack.patch("c-1", json!({"name": "Ada King"})).await;
    stack.drain().await;
    let task = stack.api.task(task).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let adas = with_email(&stack.sandbox, "ada@example.com");
    assert_eq!(adas.len(), 1, "{adas:?}");
    assert_eq!(adas[0].name.as_deref(), Some("Ada King"));
    assert_eq!(linked_stripe_id(&stack, "c-1"), Some(adas[0].id.clone()));
}
