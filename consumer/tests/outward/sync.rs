use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sandbox::SandboxConfig;
use serde_json::json;

use crate::helpers::{stack, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_update_and_delete_reach_stripe_with_fields_metadata_and_links() {
    let stack = stack(SandboxConfig::default()).await;

    let created = stack.create("c-1", "Ada Lovelace", "ada@example.com").await;
    let task_id = created["tasks"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(stack.drain().await, 1, "one call creates the customer");
    let customer = stack.customer("c-1").await;
    assert_eq!(customer["links"][0]["state"], "synced");
    let stripe_id = customer["links"][0]["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(stripe_id.starts_with("cus_"));
    assert_eq!(customer["links"][0]["synced_version"], 1);
    let task = stack.task(&task_id).await;
    assert_eq!(
        (task["status"].as_str(), task["attempts"].as_i64()),
        (Some("succeeded"), Some(1))
    );

    let remote = stack.sandbox.customers();
    assert_eq!(remote.len(), 1);
    assert_eq!(remote[0].id, stripe_id);
    assert_eq!(remote[0].name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(remote[0].email.as_deref(), Some("ada@example.com"));
    assert_eq!(
        remote[0]
            .metadata
            .get("customer_sync_id")
            .map(String::as_str),
        Some("c-1")
    );

    stack
        .patch("c-1", json!({"name": "Ada King", "email": "ada@king.org"}))
        .await;
    assert_eq!(stack.drain().await, 1, "one call updates it");
    let remote = stack.sandbox.customers();
    assert_eq!(remote[0].name.as_deref(), Some("Ada King"));
    assert_eq!(remote[0].email.as_deref(), Some("ada@king.org"));
    assert_eq!(stack.customer("c-1").await["links"][0]["synced_version"], 2);

    stack.delete("c-1").await;
    assert_eq!(stack.drain().await, 1, "one call deletes it");
    assert!(stack.sandbox.customers()[0].deleted);
    assert_eq!(stack.statuses(), [("succeeded".to_owned(), 3)]);
    // Every call carried the pinned version and a stable key per task.
    let log = stack.sandbox.request_log();
    let posts: Vec<_> = log.iter().filter(|r| r.method == "POST").collect();
    assert!(posts.iter().all(|r| r.idempotency_key.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_to_one_customer_arrive_in_the_order_they_were_accepted() {
    let stack = stack(SandboxConfig::default()).await;
    stack.create("c-1", "v1", "v1@example.com").await;
    assert_eq!(stack.drain().await, 1);
    for i in 2..=6 {
        stack.patch("c-1", json!({"name": format!("v{i}")})).await;
    }
    stack.delete("c-1").await;
    // Created and deleted before any call: its create has nothing to make.
    stack.create("c-2", "Gone", "gone@example.com").await;
    stack.delete("c-2").await;
    assert_eq!(stack.drain().await, 8, "one execution per accepted change");
    let remote = stack.sandbox.customers();
    assert_eq!(remote.len(), 1, "none for c-2: {remote:?}");
    assert!(remote[0].deleted);
    let events: Vec<(String, String)> = stack
        .sandbox
        .events()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["data"]["object"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        events.first().map(|e| e.0.as_str()),
        Some("customer.created")
    );
    assert_eq!(
        events.last().map(|e| e.0.as_str()),
        Some("customer.deleted")
    );
    // Updates carry the current state, so some may be folded together; never out of order.
    let versions: Vec<u32> = events[..events.len() - 1]
        .iter()
        .map(|(_, name)| name.trim_start_matches('v').parse().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{events:?}");
    // Each task pushes the customer's current state, so a burst may fold into fewer calls
    // (even a single create carrying v6): what must hold is that no older state follows a
    // newer one, and that the delete comes last.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_consumers_share_the_work_without_duplicate_calls() {
    for consumers in [2, 3] {
        let stack = stack(SandboxConfig {
            latency_ms: 20,
            ..SandboxConfig::default()
        })
        .await;
        let mut running = Vec::new();
        for _ in 0..consumers {
            running.push(stack.consumer_with(|s| s.concurrency = 4).await);
        }
        for i in 0..60 {
            stack
                .create(&format!("c-{i}"), "Name", &format!("c{i}@example.com"))
                .await;
        }
        stack.drained(60).await;
        let creates = stack.sandbox_requests("POST", "/v1/customers");
        assert_eq!(
            creates, 60,
            "{consumers} consumers: one create call per customer"
        );
        let by_local = stack.sandbox_ids_by_local_id();
        assert_eq!(by_local.len(), 60);
        assert!(by_local.values().all(|ids| ids.len() == 1));
        let owners = stack.db.completed_by();
        assert!(
            owners.len() >= 2,
            "{consumers} consumers, work done by {owners:?}"
        );
        for consumer in running {
            consumer.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_accepted_while_no_consumer_listens_complete_once_one_starts() {
    let stack = stack(SandboxConfig::default()).await;
    for i in 0..10 {
        stack
            .create(&format!("c-{i}"), "Name", &format!("c{i}@example.com"))
            .await;
    }
    assert_eq!(stack.statuses(), [("pending".to_owned(), 10)]);
    let consumer = stack.consumer().await;
    stack.drained(10).await;
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_completes_tasks_whose_messages_never_arrive() {
    let stack = stack(SandboxConfig::default()).await;
    // A consumer subscribed to an endpoint nobody publishes on: only the sweep can find work.
    let consumer = stack
        .consumer_with(|s| {
            s.common.zmq_endpoints = vec!["tcp://127.0.0.1:9".into()];
            s.sweep_interval = Duration::from_millis(300);
        })
        .await;
    for i in 0..5 {
        stack
            .create(&format!("c-{i}"), "Name", &format!("c{i}@example.com"))
            .await;
    }
    stack.drained(5).await;
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stripe_400_kills_the_task_at_once_and_a_retry_after_the_fix_succeeds() {
    let stack = stack(SandboxConfig::default()).await;
    stack.sandbox.fail_next(
        400,
        "parameter_invalid_empty",
        "You passed an empty string for 'name'.",
        1,
    );
    let created = stack.create("c-1", "Ada", "ada@example.com").await;
    let task_id = created["tasks"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(stack.drain().await, 1, "a 400 is not retried");
    let task = stack.task(&task_id).await;
    assert_eq!(task["status"], "dead");
    assert_eq!(task["attempts"], 1, "a 400 is not retried");
    assert!(
        task["last_error"]
            .as_str()
            .unwrap()
            .contains("empty string"),
        "{task}"
    );
    assert_eq!(stack.customer("c-1").await["links"][0]["state"], "dead");

    assert_eq!(stack.retry(&task_id).await, 200);
    assert_eq!(stack.drain().await, 1);
    assert_eq!(stack.statuses(), [("succeeded".to_owned(), 1)]);
    assert_eq!(stack.sandbox_ids_by_local_id().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_on_the_topic_are_skipped_without_crashing_the_consumer() {
    let stack = stack(SandboxConfig::default()).await;
    let context = zmq::Context::new();
    let rogue = context.socket(zmq::PUB).unwrap();
    rogue.bind("tcp://127.0.0.1:0").unwrap();
    let rogue_endpoint = rogue.get_last_endpoint().unwrap().unwrap();
    let mut child = stack.consumer_process(&[(
        "ZMQ_PUB_ENDPOINT",
        &format!("{rogue_endpoint},{}", stack.zmq_endpoint),
    )]);
    let garbage: Vec<Vec<&[u8]>> = vec![
        vec![b"stripe"],
        vec![b"stripe", b"not json"],
        vec![b"stripe", b"{\"task_id\":\"nope\"}"],
        vec![b"stripe", b"{}", b"extra"],
        vec![b"stripe", &[0xff, 0xfe, 0x00]],
        vec![b"stripe", &[b'['; 100_000]],
    ];
    // Keep sending until the subscription is surely up (ZeroMQ drops before that).
    for _ in 0..20 {
        for frames in &garbage {
            rogue.send_multipart(frames, 0).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stack.create("c-1", "Ada", "ada@example.com").await;
    stack.drained(1).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the consumer is still running"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A "server" that answers every connection with a PUB handshake and then a frame
/// announcing 2^44 bytes; returns its endpoint and how many connections it attacked.
async fn hostile_publisher() -> (String, Arc<AtomicUsize>) {
    use shared::testing::zmtp;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    let attacked = Arc::new(AtomicUsize::new(0));
    let count = attacked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let attack = [
                    zmtp::greeting("NULL", true),
                    zmtp::ready("PUB"),
                    zmtp::long_frame(1 << 44),
                    vec![0; 1024],
                ]
                .concat();
                if stream.write_all(&attack).await.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (endpoint, attacked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_publisher_cannot_stop_a_consumer_hearing_the_real_one() {
    let stack = stack(SandboxConfig::default()).await;
    let (hostile, attacked) = hostile_publisher().await;
    // The sweep is ten minutes apart: only a doorbell from the real server gets a task
    // done within the deadlines below.
    let mut child = stack.consumer_process(&[
        (
            "ZMQ_PUB_ENDPOINT",
            &format!("{hostile},{}", stack.zmq_endpoint),
        ),
        ("CONSUMER_SWEEP_INTERVAL_MS", "600000"),
    ]);
    shared::testing::eventually("the consumer to be attacked twice", WAIT, || async {
        (attacked.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    // A doorbell rung before the subscription is up is lost (ZeroMQ's slow joiner): ring
    // until one is heard.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut created: i64 = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no doorbell was heard"
        );
        created += 1;
        stack
            .create(&format!("c-{created}"), "Ada", "ada@example.com")
            .await;
        let heard = tokio::time::timeout(
            Duration::from_secs(2),
            stack.db.wait_all_succeeded(created, WAIT),
        )
        .await;
        if heard.is_ok() {
            break;
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the consumer is still running"
    );
    assert!(attacked.load(Ordering::SeqCst) >= 2);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_provider_call_is_logged_with_the_task_and_request_ids() {
    use std::io::BufRead;
    let stack = stack(SandboxConfig::default()).await;
    let mut child = stack
        .consumer_command(&[("RUST_LOG", "info"), ("LOG_FORMAT", "json")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let created = stack.create("c-1", "Ada", "ada@example.com").await;
    let task_id = created["tasks"][0]["id"].as_str().unwrap().to_owned();
    let request_id = created["tasks"][0]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.drained(1).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let lines: Vec<String> = std::io::BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    let line = lines
        .iter()
        .find(|l| l.contains("task succeeded"))
        .unwrap_or_else(|| panic!("no success line in {lines:?}"));
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    let span = &entry["span"];
    assert_eq!(span["task_id"], task_id.as_str(), "{line}");
    assert_eq!(span["request_id"], request_id.as_str(), "{line}");
    assert!(
        entry["external_id"].as_str().unwrap().starts_with("cus_"),
        "{line}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("sk_test_customer_sync")),
        "the key leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_create_retried_after_the_customer_was_deleted_makes_no_stripe_customer() {
    let stack = stack(SandboxConfig::default()).await;
    stack
        .sandbox
        .fail_next(400, "parameter_invalid_empty", "refused", 1);
    let created = stack.create("c-1", "Ada", "ada@example.com").await;
    let task_id = created["tasks"][0]["id"].as_str().unwrap().to_owned();
    stack.drain().await;
    assert_eq!(stack.task(&task_id).await["status"], "dead");
    // Deleted meanwhile: its delete finds nothing to delete in Stripe.
    stack.delete("c-1").await;
    stack.drain().await;

    assert_eq!(stack.retry(&task_id).await, 200);
    stack.drain().await;
    let task = stack.task(&task_id).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    // No Stripe customer for the tombstone, and no create call made for it.
    let made = stack
        .sandbox
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/customers" && r.status == 200)
        .count();
    assert_eq!(made, 0);
    assert!(stack.sandbox.customers().is_empty());
}

/// An invoice read with its customer expanded (Stripe's `expand[]=customer`) lands in the
/// catalogue linked like one that names the customer by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_with_its_customer_expanded_lands_in_the_catalogue_linked() {
    use shared::stripe::Invoice;
    let stack = stack(SandboxConfig::default()).await;
    let consumer = stack.consumer().await;
    stack.create("c-1", "Ada", "ada@example.com").await;
    stack.drained(1).await;
    let cus = stack.sandbox_ids_by_local_id()["c-1"][0].clone();
    let invoice = stack
        .sandbox
        .dashboard(reqwest::Method::POST, "/v1/invoices", &[("customer", &cus)])
        .await;
    let raw: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/invoices/{}?expand[]=customer",
            stack.sandbox.base_url(),
            invoice["id"].as_str().unwrap()
        ))
        .bearer_auth("sk_test_reader")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(raw["customer"].is_object(), "{raw}");
    let parsed: Invoice = serde_json::from_value(raw).unwrap();
    assert_eq!(parsed.customer_id().as_deref(), Some(cus.as_str()));
    let mut conn = stack.db.connect();
    let stored = shared::inbound::store_invoices(
        &mut conn,
        &[(&parsed, parsed.status.as_deref())],
        chrono::Utc::now().timestamp(),
    )
    .unwrap();
    assert_eq!(stored, 1);
    let listed = stack
        .api
        .get("/api/v1/invoices?customer_id=c-1")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(listed["invoices"][0]["id"], parsed.id.as_str(), "{listed}");
    consumer.shutdown().await;
}
