//! Compatibility: the official Stripe SDK for Python, pointed at the sandbox, works unchanged
//! (customers, idempotent replay, errors, invoices, events) and verifies the webhooks the
//! sandbox delivered with its own `stripe.Webhook.construct_event`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sandbox::{Sandbox, SandboxConfig};

mod tools;
use tools::{python_with_stripe, webhook_receiver, write_deliveries, Recorded};

fn run(python: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdk_compat.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the SDK script failed ({args:?}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_works_unchanged_against_the_sandbox() {
    let python = tokio::task::spawn_blocking(python_with_stripe)
        .await
        .unwrap();

    let seen = Recorded::default();
    let receiver_url = webhook_receiver(seen.clone());

    let sandbox = Sandbox::start(SandboxConfig {
        webhook_url: Some(receiver_url),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let base = sandbox.base_url();
    let api_out = {
        let python = python.clone();
        tokio::task::spawn_blocking(move || run(&python, &["api"], &[("SANDBOX_URL", &base)]))
            .await
            .unwrap()
    };
    assert!(
        api_out.contains("ok: an idempotent replay returns the same id"),
        "{api_out}"
    );
    let log = sandbox.request_log();
    assert!(
        log.iter().any(|r| r.replayed && r.path == "/v1/customers"),
        "the SDK's replay reached the idempotency layer"
    );
    let sdk_keys = log
        .iter()
        .filter(|r| r.method == "POST" && r.idempotency_key.is_some())
        .count();
    assert!(sdk_keys > 5, "the SDK sends a key on every POST");

    assert!(sandbox.wait_webhooks_idle(Duration::from_secs(30)).await);
    let file = write_deliveries(&seen, "sandbox-sdk-webhooks.jsonl");
    assert_eq!(seen.lock().unwrap().len(), sandbox.events().len());
    let secret = sandbox.webhook_secret().to_owned();
    let file_arg = file.to_string_lossy().into_owned();
    let hooks_out = tokio::task::spawn_blocking(move || {
        run(
            &python,
            &["webhooks", &file_arg],
            &[("WEBHOOK_SECRET", &secret)],
        )
    })
    .await
    .unwrap();
    assert!(
        hooks_out.contains("ok: a tampered body fails verification"),
        "{hooks_out}"
    );
}
