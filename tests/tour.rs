//! The README's tour runs against the stack `cargo run` starts, so the README cannot drift.

use clap::Parser;
use shared::config::ServerArgs;
use shared::testing::TestDatabase;

fn readme_tour_lines() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## A tour").nth(1).expect("a tour section");
    let block = section
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| {
            !l.starts_with("export TOKEN") && !l.starts_with("API=") && !l.starts_with("STRIPE=")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_command_of_the_readme_tour_is_in_the_tour_script() {
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tour.sh")).unwrap();
    let script_lines: Vec<&str> = script.lines().map(str::trim).collect();
    let lines = readme_tour_lines();
    assert!(lines.len() >= 10, "{lines:?}");
    for line in lines {
        assert!(
            script_lines.contains(&line.as_str()),
            "README line missing from scripts/tour.sh: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tour_runs_against_the_local_stack() {
    shared::telemetry::init(shared::config::LogFormat::Pretty, "warn");
    let db = tokio::task::spawn_blocking(TestDatabase::create)
        .await
        .unwrap();
    let mut args = ServerArgs::try_parse_from(["customer-sync"]).unwrap();
    args.common.database_url = db.url.clone();
    args.common.zmq_pub_endpoint = "tcp://127.0.0.1:0".into();
    args.common.stripe_api_key = None;
    args.common.salesforce_login_url = None;
    args.common.salesforce_client_id = None;
    args.common.salesforce_client_secret = None;
    args.http_bind = "127.0.0.1:0".into();
    args.api_token = None;
    let stack = customer_sync::start(args, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert!(stack.token_generated);
    let sandbox = stack
        .sandbox
        .as_ref()
        .expect("the sandbox starts without STRIPE_API_KEY");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tour.sh");
    let tour = || {
        tokio::process::Command::new("bash")
            .arg(script)
            .env("TOKEN", stack.token.clone().unwrap())
            .env("API", format!("{}/api/v1", stack.base_url))
            .env("STRIPE", sandbox.base_url())
            .output()
    };
    let output = tour().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tour failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("tour complete"));
    assert!(
        stdout.contains("\"amount_paid\":4200"),
        "the paid invoice reached the catalogue:\n{stdout}"
    );

    // A second run on the same database stops before changing anything, and says why.
    let again = tour().await.unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("deleted by an earlier tour"), "{stderr}");
    assert!(String::from_utf8_lossy(&again.stdout).is_empty());
    stack.stop().await;
}
