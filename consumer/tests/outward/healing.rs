//! Healing what the webhooks missed: the Events API catch-up alone converges the catalog
//! while webhooks are paused; changes made without events (silent, or expired) are found
//! only by reconcile, reported exactly by a dry run, fixed by a repair, and a second
//! reconcile finds nothing.

use std::process::{Command, Stdio};
use std::time::Duration;

use sandbox::SandboxConfig;
use serde_json::Value;
use shared::testing::eventually;

use crate::adoption::{linked_stripe_id, stripe_customer};
use crate::helpers::{stack_with, Stack, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_webhooks_paused_the_catch_up_alone_converges_the_catalog() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    let consumer = stack
        .consumer_with(|s| s.events_poll = Some(Duration::from_millis(300)))
        .await;
    stack.create("c-1", "Ada", "ada@example.com").await;
    stack.create("c-2", "Bob", "bob@example.com").await;
    let (ada, bob) = eventually("both customers in Stripe", WAIT, || async {
        Some((
            linked_stripe_id(&stack, "c-1")?,
            linked_stripe_id(&stack, "c-2")?,
        ))
    })
    .await;
    assert!(stack.sandbox.wait_webhooks_idle(WAIT).await);
    // The catch-up may have applied some of our own echoes before their webhooks.
    let caught_before = stack
        .db
        .count_where("webhook_events", "source = 'events_api'");

    stack.sandbox.pause_webhooks();
    let patch = format!("/v1/customers/{ada}");
    stack
        .sandbox
        .dashboard(reqwest::Method::POST, &patch, &[("name", "Ada in Stripe")])
        .await;
    stack
        .sandbox
        .dashboard(
            reqwest::Method::DELETE,
            &format!("/v1/customers/{bob}"),
            &[],
        )
        .await;
    let fresh = stripe_customer(&stack.sandbox, "Cleo", "cleo@example.com", None).await;

    eventually("the catch-up to apply all three changes", WAIT, || async {
        let ada = stack.api.customer("c-1").await;
        let bob = stack.api.customer("c-2").await;
        let cleo = stack.api.get(&format!("/api/v1/customers/{fresh}")).await;
        (ada["name"] == "Ada in Stripe" && !bob["deleted_at"].is_null() && cleo.status() == 200)
            .then_some(())
    })
    .await;
    // It was the catch-up: the deliveries are still held.
    assert!(stack.sandbox.pending_webhooks() >= 3);
    let caught_up = stack
        .db
        .count_where("webhook_events", "source = 'events_api'");
    assert_eq!(caught_up - caught_before, 3);

    // The held deliveries arrive later: duplicates, nothing changes.
    let version = stack.api.customer("c-1").await["version"].clone();
    stack.sandbox.resume_webhooks();
    assert!(stack.sandbox.wait_webhooks_idle(WAIT).await);
    assert_eq!(stack.api.customer("c-1").await["version"], version);
    let caught_after = stack
        .db
        .count_where("webhook_events", "source = 'events_api'");
    assert_eq!(caught_after - caught_before, 3);
    consumer.shutdown().await;
}

/// `consumer reconcile --provider stripe [--repair]` against the stack: its exit code and
/// the report it printed last.
fn reconcile(stack: &Stack, repair: bool) -> (i32, Value) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consumer"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &stack.db.url)
        .env("STRIPE_API_KEY", shared::testing::settings::STRIPE_KEY)
        .env("STRIPE_API_BASE", stack.sandbox.base_url())
        .env("STRIPE_MAX_RPS", "1000")
        .args(["reconcile", "--provider", "stripe"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if repair {
        command.arg("--repair");
    }
    let output = command.output().expect("running consumer reconcile");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().unwrap_or(-1), report)
}

fn subjects(report: &Value, kind: &str) -> Vec<String> {
    let mut subjects: Vec<String> = report["report"]["findings"][kind]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["customer_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    subjects.sort();
    subjects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_without_events_are_found_only_by_reconcile_and_repaired() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    for i in 1..=4 {
        stack
            .create(
                &format!("c-{i}"),
                &format!("Name {i}"),
                &format!("c{i}@example.com"),
            )
            .await;
    }
    stack.drain().await;
    assert!(stack.sandbox.wait_webhooks_idle(WAIT).await);
    let stripe = |i: usize| linked_stripe_id(&stack, &format!("c-{i}")).expect("linked");
    // Changed in Stripe with no event at all, and deleted with its event expired.
    stack
        .sandbox
        .silent_update(&stripe(1), &[("name", "Silent Name")])
        .unwrap();
    stack
        .sandbox
        .silent_update(&stripe(2), &[("email", "silent2@example.com")])
        .unwrap();
    stack.sandbox.pause_webhooks();
    let gone = stripe(3);
    stack
        .sandbox
        .dashboard(
            reqwest::Method::DELETE,
            &format!("/v1/customers/{gone}"),
            &[],
        )
        .await;
    stack.sandbox.expire_events();
    stack.sandbox.resume_webhooks();

    // The dry run reports exactly these and changes nothing.
    let (code, dry) = reconcile(&stack, false);
    assert_eq!(code, 1, "{dry}");
    let counts = &dry["report"]["counts"];
    assert_eq!(counts["differs"], 2, "{counts}");
    assert_eq!(counts["missing"], 1, "{counts}");
    assert_eq!(counts["equal"], 1, "{counts}");
    assert!(
        counts.get("unlinked_ours").is_none() && counts.get("local_unlinked").is_none(),
        "{counts}"
    );
    assert_eq!(subjects(&dry, "differs"), ["c-1", "c-2"]);
    assert_eq!(subjects(&dry, "missing"), ["c-3"]);
    for finding in dry["report"]["findings"]["differs"].as_array().unwrap() {
        assert_eq!(finding["detail"]["newer"], "stripe", "{finding}");
    }
    assert_eq!(
        dry["report"]["findings"]["missing"][0]["detail"]["stripe"],
        "deleted"
    );
    assert_eq!(stack.api.customer("c-1").await["name"], "Name 1");
    assert!(stack.api.customer("c-3").await["deleted_at"].is_null());

    // The repair applies Stripe's state (and passes it on), then nothing is left.
    let (code, repaired) = reconcile(&stack, true);
    assert_eq!(code, 0, "{repaired}");
    assert_eq!(repaired["report"]["counts"]["repaired"], 3, "{repaired}");
    assert_eq!(stack.api.customer("c-1").await["name"], "Silent Name");
    assert_eq!(
        stack.api.customer("c-2").await["email"],
        "silent2@example.com"
    );
    assert!(!stack.api.customer("c-3").await["deleted_at"].is_null());
    stack.drain().await;
    let (code, again) = reconcile(&stack, false);
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["report"]["counts"]["equal"], 3, "{again}");
    assert_eq!(
        again["report"]["findings"],
        serde_json::json!({}),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_stripe_s_thirty_days_queues_a_repairing_reconcile_and_starts_again() {
    let stack = stack_with(SandboxConfig::default(), true).await;
    let consumer = stack
        .consumer_with(|s| s.events_poll = Some(Duration::from_millis(200)))
        .await;
    stack.create("c-1", "Ada", "ada@example.com").await;
    eventually("a poll to move the cursor", WAIT, || async {
        (stack
            .db
            .count_where("sync_cursors", "last_event_id IS NOT NULL")
            == 1)
            .then_some(())
    })
    .await;
    let stale = "caught_up_at < now() - interval '30 days'";
    let mut conn = stack.db.connect();
    use diesel::RunQueryDsl;
    diesel::sql_query(
        "UPDATE sync_cursors SET caught_up_at = now() - interval '31 days', \
           last_event_id = 'evt_long_gone'",
    )
    .execute(&mut conn)
    .unwrap();
    eventually("a reconcile queued by the catch-up", WAIT, || async {
        let rows = stack.db.count_where(
            "sync_jobs",
            "kind = 'reconcile' AND repair AND requested_by = 'catch-up'",
        );
        (rows == 1).then_some(())
    })
    .await;
    eventually("the cursor to start again", WAIT, || async {
        (stack.db.count_where("sync_cursors", stale) == 0
            && stack
                .db
                .count_where("sync_cursors", "last_event_id <> 'evt_long_gone'")
                == 1)
            .then_some(())
    })
    .await;
    eventually("the reconcile to run", WAIT, || async {
        (stack.db.count_where(
            "sync_jobs",
            "requested_by = 'catch-up' AND status = 'succeeded'",
        ) == 1)
            .then_some(())
    })
    .await;
    consumer.shutdown().await;
}
