//! The contract test: every operation the sandbox serves, driven by raw HTTP, the official
//! stripe-python SDK and the official stripe-node SDK, and every answer and every event
//! (listed, retrieved or delivered as a webhook) validated against Stripe's own OpenAPI
//! description (the extract in `sandbox/contract/stripe-contract.json`). The checks are in
//! `sandbox/contract/contract.py`; a mismatch fails the test with its path in the body.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sandbox::{Sandbox, SandboxConfig};

mod tools;
use tools::{node_with_stripe, python_with_stripe, webhook_receiver, write_deliveries, Recorded};

const CONTRACT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contract");

fn output(what: &str, out: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_and_event_matches_stripes_openapi_description() {
    let (python, node_modules) =
        tokio::task::spawn_blocking(|| (python_with_stripe(), node_with_stripe()))
            .await
            .unwrap();
    let seen = Recorded::default();
    let sandbox = Sandbox::start(SandboxConfig {
        webhook_url: Some(webhook_receiver(seen.clone())),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let base = sandbox.base_url();
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let node_records = tmp.join("contract-node.jsonl");

    let node = {
        let (base, node_records) = (base.clone(), node_records.clone());
        tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(Path::new(CONTRACT).join("drive.cjs"))
                .arg(&node_records)
                .env("SANDBOX_URL", &base)
                .env("NODE_PATH", &node_modules)
                .output()
                .expect("running node")
        })
        .await
        .unwrap()
    };
    let node = output("the stripe-node driver", node);
    assert!(node.contains("calls recorded"), "{node}");

    let checked = {
        let python = python.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(&python)
                .arg(Path::new(CONTRACT).join("contract.py"))
                .env("SANDBOX_URL", &base)
                .env("NODE_RECORDS", &node_records)
                .output()
                .expect("running python")
        })
        .await
        .unwrap()
    };
    let checked = output("the contract check", checked);
    // Every event was also delivered as a webhook: those bodies are checked too.
    assert!(
        sandbox.wait_webhooks_idle(Duration::from_secs(60)).await,
        "webhooks still pending"
    );
    assert_eq!(seen.lock().unwrap().len(), sandbox.events().len());
    let delivered = write_deliveries(&seen, "contract-webhooks.jsonl");
    let hooks = Command::new(&python)
        .arg(Path::new(CONTRACT).join("contract.py"))
        .arg("--webhooks")
        .arg(&delivered)
        .output()
        .expect("running python");
    let hooks = output("the webhook check", hooks);
    println!("{checked}{hooks}");
    assert!(
        checked.contains("contract: 22 of 22 operations answered 200"),
        "{checked}"
    );
}
