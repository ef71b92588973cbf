//! The operator console in a real browser: headless Chromium (Debian's `chromium`) driven
//! by Playwright (PyPI, pinned) through `server/tests/console/drive.py`, against the
//! server with Stripe in the sandbox, its webhooks and a consumer. The script signs in
//! (a wrong token first), watches dead tasks appear when Stripe refuses creates, retries
//! one from the page and the others with "Retry all shown", follows a customer's timeline
//! from its create through the Stripe call to the webhook echo, filters the events, starts
//! a reconcile and reads its report, and checks every page at a phone's width, for labels,
//! for contrast and for browser errors. It writes the README's screenshots to
//! `docs/console/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sandbox::SandboxConfig;

use crate::helpers::{spawn_loop, TOKEN};

const PLAYWRIGHT: &str = "playwright==1.65.3";

/// The whole drive's bound; it takes about 30 s.
const BOUND: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_signs_in_retries_a_dead_task_follows_a_timeline_and_reads_a_reconcile() {
    let (python, chromium) = tokio::task::spawn_blocking(|| {
        let python = shared::testing::python::venv(
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("playwright-venv"),
            &[PLAYWRIGHT],
            "import importlib.metadata as m, sys; \
             sys.exit(m.version('playwright') != '1.65.3')",
        );
        (python, chromium())
    })
    .await
    .unwrap();
    let stack = spawn_loop(SandboxConfig::default(), true).await;
    let consumer = stack.consumer().await;
    // Stripe refuses the next three calls, whatever they are: each of the three creates
    // the script makes dies at its first call.
    stack
        .sandbox
        .fail_next(400, "parameter_invalid_empty", "refused by the test", 3);
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/drive.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .args([stack.address.as_str(), TOKEN])
        .arg(&chromium)
        .arg(&shots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BOUND, run)
        .await
        .expect("the browser drive finished within its bound")
        .expect("running the browser drive");
    assert!(
        out.status.success(),
        "the console drive failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "overview",
        "dead-tasks",
        "customers",
        "timeline",
        "events",
        "jobs",
    ] {
        assert!(shots.join(format!("{page}.png")).is_file(), "{page}.png");
    }
    consumer.shutdown().await;
}

/// Chromium: `CHROMIUM` if set, else Debian's, installed with apt-get when this runs as
/// root and it is missing; otherwise a panic that says what to install.
fn chromium() -> PathBuf {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.is_file() {
        return debian;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
    if root {
        let installed = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if installed && debian.is_file() {
            return debian;
        }
    }
    panic!(
        "the console test needs Chromium: install Debian's package (apt-get install chromium) \
         or set CHROMIUM to a Chromium or Chrome binary"
    );
}
