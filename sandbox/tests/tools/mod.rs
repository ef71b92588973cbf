//! What the SDK tests need beyond Rust, installed under the target dir on first use: a
//! Python venv with the official Stripe SDK and a JSON Schema validator, and the official
//! Stripe SDK for Node.js. Pinned, so a new SDK release cannot change what the tests mean;
//! both pin API version 2026-10-28.endive, the one our client sends.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

pub const STRIPE_PYTHON: &str = "stripe==16.1.0";
pub const JSONSCHEMA: &str = "jsonschema==4.26.0";
pub const STRIPE_NODE: &str = "stripe@23.1.0";

/// The venv's python, with stripe-python and jsonschema, made once and reused.
pub fn python_with_stripe() -> PathBuf {
    shared::testing::python::venv(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-stripe-venv"),
        &[STRIPE_PYTHON, JSONSCHEMA],
        "import stripe, jsonschema, sys; sys.exit(stripe.VERSION != '16.1.0')",
    )
}

/// A `node_modules` directory holding stripe-node, installed once with npm.
pub fn node_with_stripe() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-stripe-node");
    let modules = dir.join("node_modules");
    let version = modules.join("stripe").join("VERSION");
    let wanted = STRIPE_NODE.trim_start_matches("stripe@");
    if std::fs::read_to_string(&version).is_ok_and(|v| v.trim() == wanted) {
        return modules;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let aside = dir.with_extension(format!("{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&aside);
    std::fs::create_dir_all(&aside).unwrap();
    let npm = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&aside)
        .arg(STRIPE_NODE)
        .output();
    match npm {
        Ok(out) if out.status.success() => {
            if std::fs::rename(&aside, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&aside);
            }
            modules
        }
        Ok(out) => panic!(
            "the Stripe SDK for Node.js could not be installed (npm install {STRIPE_NODE}; \
             the npm registry must be reachable): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "the Stripe SDK for Node.js could not be installed: no npm ({e}); install Node.js \
             20 or later"
        ),
    }
}

/// Webhook deliveries as received: (body, Stripe-Signature).
pub type Recorded = Arc<Mutex<Vec<(String, String)>>>;

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

/// A webhook receiver that answers 200 and keeps every delivery; its URL.
pub fn webhook_receiver(seen: Recorded) -> String {
    let data = web::Data::new(seen);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
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
    url
}

/// Writes the deliveries as JSON lines of {"body", "signature"} to a file under the target
/// dir; its path.
pub fn write_deliveries(seen: &Recorded, name: &str) -> PathBuf {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let mut out = std::fs::File::create(&file).unwrap();
    for (body, signature) in seen.lock().unwrap().iter() {
        let line = serde_json::json!({"body": body, "signature": signature});
        writeln!(out, "{line}").unwrap();
    }
    file
}
