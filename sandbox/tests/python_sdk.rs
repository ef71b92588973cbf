//! Compatibility: the official Stripe SDK for Python, pointed at the sandbox, works unchanged
//! (customers, idempotent replay, errors, invoices, events) and verifies the webhooks the
//! sandbox delivered with its own `stripe.Webhook.construct_event`.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use sandbox::{Sandbox, SandboxConfig};

type Recorded = Arc<Mutex<Vec<(String, String)>>>;

/// A venv with `stripe` under the target dir, made once and reused.
fn python_with_stripe() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-stripe-venv");
    let python = venv.join("bin").join("python");
    let has_stripe = |python: &Path| {
        Command::new(python)
            .args(["-c", "import stripe"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_stripe(&python) {
        return python;
    }
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output();
    match created {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Stripe SDK for Python could not be installed: python3 -m venv failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("the Stripe SDK for Python could not be installed: no python3 ({e})"),
    }
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "stripe"])
        .output()
        .expect("running pip");
    assert!(
        pip.status.success() && has_stripe(&python),
        "the Stripe SDK for Python could not be installed (pip install stripe): {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    python
}

async fn record(req: HttpRequest, body: web::Bytes, seen: web::Data<Recorded>) -> HttpResponse {
    let signature = req
        .headers()
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = String::from_utf8(body.to_vec()).expect("UTF-8 JSON");
    seen.lock().unwrap().push((body, signature));
    HttpResponse::Ok().finish()
}

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

    let seen: Recorded = Arc::default();
    let data = web::Data::new(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let receiver_url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(record))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(receiver);

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
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-sdk-webhooks.jsonl");
    {
        let mut out = std::fs::File::create(&file).unwrap();
        for (body, signature) in seen.lock().unwrap().iter() {
            let line = serde_json::json!({"body": body, "signature": signature});
            writeln!(out, "{line}").unwrap();
        }
    }
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
