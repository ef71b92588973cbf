use sandbox::SandboxConfig;
use shared::testing::eventually;

use crate::helpers::{stack, WAIT};

/// Every local customer exists exactly once (alive) in the sandbox.
fn assert_exactly_once(stack: &crate::helpers::Stack, n: usize) {
    let by_local = stack.sandbox_ids_by_local_id();
    assert_eq!(by_local.len(), n, "{by_local:?}");
    let duplicated: Vec<_> = by_local.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(duplicated.is_empty(), "duplicates: {duplicated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_before_and_after_commit_leave_every_customer_exactly_once() {
    let stack = stack(SandboxConfig {
        fail_rate: 0.25,
        fail_after_commit_rate: 0.25,
        seed: Some(7),
        ..SandboxConfig::default()
    })
    .await;
    let consumer = stack.consumer_with(|s| s.max_attempts = 50).await;
    for i in 0..30 {
        stack
            .create(&format!("c-{i}"), "Name", &format!("c{i}@example.com"))
            .await;
    }
    stack.drained(30).await;
    assert_exactly_once(&stack, 30);
    let log = stack.sandbox.request_log();
    assert!(
        log.iter().any(|r| r.status == 500 && !r.replayed),
        "the knobs fired"
    );
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limited_calls_all_complete_and_none_die() {
    let stack = stack(SandboxConfig {
        max_rps: Some(20),
        ..SandboxConfig::default()
    })
    .await;
    // The client-side limit is set above the sandbox's, so 429s must happen and be absorbed.
    let consumer = stack
        .consumer_with(|s| {
            s.stripe_max_rps = 200;
            s.concurrency = 16;
        })
        .await;
    for i in 0..40 {
        stack
            .create(&format!("c-{i}"), "Name", &format!("c{i}@example.com"))
            .await;
    }
    stack.drained(40).await;
    assert!(
        stack.sandbox.request_log().iter().any(|r| r.status == 429),
        "429s happened"
    );
    assert_exactly_once(&stack, 40);
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_killed_mid_call_loses_and_duplicates_nothing_after_a_restart() {
    let stack = stack(SandboxConfig {
        latency_ms: 150,
        ..SandboxConfig::default()
    })
    .await;
    let lease = [("CONSUMER_LEASE_SECS", "5"), ("CONSUMER_CONCURRENCY", "8")];
    let mut first = stack.consumer_process(&lease);
    for i in 0..40 {
        stack
            .create(&format!("c-{i}"), "Name", &format!("c{i}@example.com"))
            .await;
    }
    eventually("some calls to be under way", WAIT, || async {
        let in_flight = stack
            .statuses()
            .iter()
            .any(|(s, n)| s == "in_flight" && *n > 0);
        let done = stack
            .statuses()
            .iter()
            .any(|(s, n)| s == "succeeded" && *n >= 3);
        (in_flight && done).then_some(())
    })
    .await;
    first.kill().unwrap(); // SIGKILL: no chance to release anything
    first.wait().unwrap();
    let stranded = stack.statuses();
    assert!(
        stranded.iter().any(|(s, _)| s != "succeeded"),
        "{stranded:?}"
    );

    let mut second = stack.consumer_process(&lease);
    stack.drained(40).await;
    second.kill().unwrap();
    second.wait().unwrap();
    assert_exactly_once(&stack, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_claiming_and_lets_in_flight_calls_finish() {
    let stack = stack(SandboxConfig {
        latency_ms: 300,
        ..SandboxConfig::default()
    })
    .await;
    let mut consumer = stack.consumer_process(&[("CONSUMER_CONCURRENCY", "4")]);
    for i in 0..12 {
        stack
            .create(&format!("c-{i}"), "Name", &format!("c{i}@example.com"))
            .await;
    }
    eventually("calls under way", WAIT, || async {
        stack
            .statuses()
            .iter()
            .any(|(s, n)| s == "in_flight" && *n > 0)
            .then_some(())
    })
    .await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &consumer.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = consumer.try_wait().unwrap() {
            break exit;
        }
        assert!(
            stopped.elapsed() < std::time::Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    let after = stack.statuses();
    assert!(
        after.iter().all(|(s, _)| s != "in_flight"),
        "nothing left leased: {after:?}"
    );
    assert!(
        after.iter().any(|(s, _)| s == "pending"),
        "claiming stopped: {after:?}"
    );

    let mut second = stack.consumer_process(&[]);
    stack.drained(12).await;
    second.kill().unwrap();
    second.wait().unwrap();
    assert_exactly_once(&stack, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_hidden_by_a_500_is_found_under_the_email_it_carried_after_the_email_changed() {
    let stack = stack(SandboxConfig::default()).await;
    stack.sandbox.set_fail_after_commit_rate(1.0);
    let consumer = stack.consumer().await;
    stack.create("c-1", "Ada", "old@example.com").await;
    eventually("the create's 500 after commit", WAIT, || async {
        stack
            .sandbox
            .request_log()
            .iter()
            .any(|r| r.status == 500)
            .then_some(())
    })
    .await;
    consumer.shutdown().await;
    stack.sandbox.set_fail_after_commit_rate(0.0);
    // The email changes before the retry: a reconcile by the current email alone would miss
    // the customer the failed call created, and create a second one.
    stack
        .patch("c-1", serde_json::json!({"email": "new@example.com"}))
        .await;
    let consumer = stack.consumer().await;
    stack.drained(2).await;
    let alive: Vec<_> = stack
        .sandbox
        .customers()
        .into_iter()
        .filter(|c| !c.deleted)
        .collect();
    assert_eq!(alive.len(), 1, "{alive:?}");
    assert_eq!(alive[0].email.as_deref(), Some("new@example.com"));
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_slower_than_the_lease_keeps_its_task_and_is_made_once() {
    // Every Stripe answer takes 2.5 s; the lease is 1 s, and a second consumer sweeps
    // every 200 ms for tasks whose lease ran out.
    let stack = stack(SandboxConfig {
        latency_ms: 2500,
        ..SandboxConfig::default()
    })
    .await;
    let short_lease = |s: &mut shared::config::ConsumerSettings| {
        s.lease = std::time::Duration::from_secs(1);
        s.adopt_by_email = false;
    };
    let first = stack.consumer_with(short_lease).await;
    let second = stack.consumer_with(short_lease).await;
    stack.create("slow-1", "Ada", "ada@example.com").await;
    stack.drained(1).await;

    // The call renewed its lease while it ran: one claim, one call.
    let creates = stack.sandbox_requests("POST", "/v1/customers");
    assert_eq!(creates, 1);
    let attempts = stack.db.count_where(
        "sync_tasks",
        "customer_id = 'slow-1' AND status = 'succeeded' AND attempts = 1",
    );
    assert_eq!(attempts, 1);
    assert_exactly_once(&stack, 1);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stripe_refuses_as_used_for_another_request_leads_to_a_reconcile_and_a_new_key() {
    let stack = stack(SandboxConfig::default()).await;
    let created = stack.create("c-1", "Ada", "ada@example.com").await;
    let task = created["tasks"][0]["id"].as_str().unwrap().to_owned();
    // The task's key was spent on another request (here: other parameters), as when a
    // key outlives Stripe's 24 hours or goes to another endpoint: Stripe answers 400
    // `idempotency_error` to the task's own request.
    let key = format!("customer-sync-{task}");
    let form = &[("name", "Someone Else"), ("email", "else@example.com")];
    assert_eq!(stack.stripe_create_with_key(&key, form).await, 200);
    stack.drain().await;

    let refused = stack
        .sandbox
        .request_log()
        .iter()
        .filter(|r| r.status == 400 && r.path == "/v1/customers")
        .count();
    assert_eq!(refused, 1, "the first attempt met the spent key");
    let task = stack.api.task(&task).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_exactly_once(&stack, 1);
    // The other request's customer is left as it was, and not linked.
    let ids = stack.sandbox_ids_by_local_id();
    let ada = &ids["c-1"][0];
    let others: Vec<_> = stack
        .sandbox
        .customers()
        .into_iter()
        .filter(|c| c.email.as_deref() == Some("else@example.com"))
        .collect();
    assert_eq!(others.len(), 1);
    assert_ne!(&others[0].id, ada);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_older_than_stripe_keeps_keys_is_replaced_after_a_reconcile() {
    let stack = stack(SandboxConfig::default()).await;
    let created = stack.create("c-1", "Ada", "ada@example.com").await;
    let task = created["tasks"][0]["id"].as_str().unwrap().to_owned();
    // A first attempt a day ago reached Stripe and its answer was lost; Stripe has since
    // forgotten the key, so the same key would now make a second customer.
    let key = format!("customer-sync-{task}");
    let form = &[
        ("name", "Ada"),
        ("email", "ada@example.com"),
        ("metadata[customer_sync_id]", "c-1"),
    ];
    assert_eq!(stack.stripe_create_with_key(&key, form).await, 200);
    {
        use diesel::RunQueryDsl;
        diesel::sql_query(format!(
            "UPDATE sync_tasks SET key_sent_at = now() - interval '25 hours', attempts = 1 \
             WHERE id = '{task}'"
        ))
        .execute(&mut stack.db.connect())
        .unwrap();
    }
    assert_eq!(stack.sandbox.expire_idempotency_keys(), 1);

    // Without adoption by email, only the reconcile of a new key can find it.
    let consumer = stack.consumer_with(|s| s.adopt_by_email = false).await;
    stack.drained(1).await;
    assert_exactly_once(&stack, 1);
    let task = stack.api.task(&task).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    consumer.shutdown().await;
}

/// The fault run of issue 19 in small: creates with updates right behind them, two
/// consumer processes on the topic, each SIGKILLed once mid-run and replaced, Stripe
/// failing 10% of calls before and 5% after committing, and its webhooks (the echoes
/// that link a create meanwhile) duplicated and shuffled. Nothing may be lost,
/// duplicated, left dead or left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_consumers_killed_under_both_failure_kinds_lose_duplicate_and_strand_nothing() {
    const CUSTOMERS: usize = 600;
    const UPDATES: usize = 200;
    let stack = crate::helpers::stack_full(
        SandboxConfig {
            latency_ms: 10,
            fail_rate: 0.10,
            fail_after_commit_rate: 0.05,
            duplicate_rate: 0.10,
            shuffle: true,
            ..SandboxConfig::default()
        },
        true,
        false,
    )
    .await;
    let env = [
        ("CONSUMER_LEASE_SECS", "5"),
        ("CONSUMER_CONCURRENCY", "8"),
        ("CONSUMER_BACKOFF_MAX_MS", "300"),
        ("TASK_MAX_ATTEMPTS", "1000"),
    ];
    let mut consumers = vec![stack.consumer_process(&env), stack.consumer_process(&env)];
    let tasks = (CUSTOMERS + UPDATES) as i64;
    let succeeded = || {
        stack
            .statuses()
            .iter()
            .find(|(s, _)| s == "succeeded")
            .map_or(0, |(_, n)| *n)
    };
    let every = CUSTOMERS / UPDATES;
    let mut kills = 0;
    for i in 0..CUSTOMERS {
        let id = format!("f-{i}");
        stack
            .create(&id, "Fault", &format!("f{i}@example.com"))
            .await;
        if i % every == every - 1 {
            stack
                .patch(
                    &id,
                    serde_json::json!({"name": format!("Fault {i} updated")}),
                )
                .await;
        }
        // Kill the older consumer once a third, then two thirds, of the work is done.
        if kills < 2 && succeeded() >= tasks * (kills + 1) / 3 {
            let mut victim = consumers.remove(0);
            victim.kill().unwrap(); // SIGKILL
            victim.wait().unwrap();
            consumers.push(stack.consumer_process(&env));
            kills += 1;
        }
    }
    while kills < 2 {
        let target = tasks * (kills + 1) / 3;
        let deadline = std::time::Instant::now() + WAIT;
        while succeeded() < target {
            assert!(
                std::time::Instant::now() < deadline,
                "no progress to kill a consumer in: {:?}; open: {:?}",
                stack.statuses(),
                stack.db.open_tasks()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut victim = consumers.remove(0);
        victim.kill().unwrap();
        victim.wait().unwrap();
        consumers.push(stack.consumer_process(&env));
        kills += 1;
    }
    stack.drained(tasks).await;
    for mut consumer in consumers {
        consumer.kill().unwrap();
        consumer.wait().unwrap();
    }
    assert!(
        stack.sandbox.wait_webhooks_idle(WAIT).await,
        "webhooks drained"
    );
    assert_exactly_once(&stack, CUSTOMERS);
    let remote: std::collections::BTreeMap<String, Option<String>> = stack
        .sandbox
        .customers()
        .into_iter()
        .filter(|c| !c.deleted)
        .filter_map(|c| {
            let local = c.metadata.get("customer_sync_id")?.clone();
            Some((local, c.name))
        })
        .collect();
    for i in 0..CUSTOMERS {
        let local = stack.customer(&format!("f-{i}")).await;
        assert_eq!(
            remote.get(&format!("f-{i}")).cloned().flatten().as_deref(),
            local["name"].as_str(),
            "f-{i} converged"
        );
    }
    let failed = stack
        .sandbox
        .request_log()
        .iter()
        .filter(|r| r.status == 500)
        .count();
    assert!(failed > 10, "the failure knobs fired: {failed} 500s");
}

/// A consumer claims only what it can start: with two permits and both providers' loops
/// claiming at once, no more than two tasks are ever leased (a task leased without a
/// permit would wait with its lease running, and be taken over by another consumer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_never_holds_more_leases_than_it_has_permits() {
    let stack = crate::helpers::stack_full(
        SandboxConfig {
            latency_ms: 300,
            ..SandboxConfig::default()
        },
        false,
        true,
    )
    .await;
    for i in 0..6 {
        stack
            .create(&format!("c-{i}"), "Name", &format!("c{i}@example.com"))
            .await;
    }
    // Both providers' loops wake at start-up with due tasks and two free permits.
    let consumer = stack.consumer_with(|s| s.concurrency = 2).await;
    let mut most = 0;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let statuses = stack.statuses();
        let leased = statuses
            .iter()
            .find(|(s, _)| s == "in_flight")
            .map_or(0, |(_, n)| *n);
        most = most.max(leased);
        if statuses == [("succeeded".to_owned(), 12)] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not drained: {statuses:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(most >= 1, "tasks were seen in flight");
    assert!(most <= 2, "{most} tasks leased with 2 permits");
    consumer.shutdown().await;
}

/// Issue 19's first fault: a create reached Stripe and committed but its answer was lost
/// (the task keeps its key for the retry), and the webhook echo, delayed, linked the
/// customer before the retry ran. The retry then finds the link and updates the customer:
/// under the create's own key Stripe would refuse it (a key first used on
/// `POST /v1/customers` cannot go to `POST /v1/customers/cus_...`) and the task would die.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_a_lost_answer_and_a_delayed_echo_updates_under_a_key_of_its_own() {
    let stack = crate::helpers::stack_with(SandboxConfig::default(), true).await;
    stack.sandbox.pause_webhooks();
    let created = stack.create("c-1", "Ada", "ada@example.com").await;
    let task = created["tasks"][0]["id"].as_str().unwrap().to_owned();
    // The first attempt, as it reached Stripe under the task's key; its answer was lost.
    let key = format!("customer-sync-{task}");
    let form = &[
        ("name", "Ada"),
        ("email", "ada@example.com"),
        ("metadata[customer_sync_id]", "c-1"),
    ];
    assert_eq!(stack.stripe_create_with_key(&key, form).await, 200);
    // Meanwhile the customer changes, and the delayed echo links it.
    stack
        .patch("c-1", serde_json::json!({"name": "Ada Lovelace"}))
        .await;
    stack.sandbox.resume_webhooks();
    eventually("the echo to link the customer", WAIT, || async {
        let c = stack.api.customer("c-1").await;
        c["links"][0]["external_id"].is_string().then_some(())
    })
    .await;

    let consumer = stack.consumer().await;
    stack.drained(2).await;
    let task = stack.api.task(&task).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["attempts"], 1);
    assert_exactly_once(&stack, 1);
    let refused = stack
        .sandbox
        .request_log()
        .iter()
        .filter(|r| r.status == 400)
        .count();
    assert_eq!(refused, 0, "no key was refused");
    let ada = stack
        .sandbox
        .customers()
        .into_iter()
        .find(|c| !c.deleted)
        .unwrap();
    assert_eq!(ada.name.as_deref(), Some("Ada Lovelace"));
    consumer.shutdown().await;
}
