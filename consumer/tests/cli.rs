//! The `consumer` binary's start-up: one clear line for a bad or missing setting.

use std::process::{Command, Stdio};

use shared::testing::processes::{self, refused};

fn consumer() -> Command {
    let mut command = processes::binary(env!("CARGO_BIN_EXE_consumer"));
    command.stdout(Stdio::piped());
    command
}

#[test]
fn a_consumer_without_a_topic_says_how_to_name_one() {
    let stderr = refused(&mut consumer());
    assert!(stderr.contains("--topic"), "{stderr}");
}

#[test]
fn bad_topics_and_settings_stop_the_consumer_naming_them() {
    let key = ("STRIPE_API_KEY", "sk_test_123");
    for (args, env, named) in [
        (vec!["--topic", "hubspot"], vec![key], "--topic"),
        (vec!["--topic", "stripe"], vec![], "STRIPE_API_KEY"),
        (
            vec!["--topic", "salesforce"],
            vec![key],
            "SALESFORCE_LOGIN_URL",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("CONSUMER_CONCURRENCY", "0")],
            "CONSUMER_CONCURRENCY",
        ),
        (
            vec!["--topic", "stripe", "--concurrency", "lots"],
            vec![key],
            "CONSUMER_CONCURRENCY",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("STRIPE_MAX_RPS", "-1")],
            "STRIPE_MAX_RPS",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("STRIPE_MAX_READ_RPS", "0")],
            "STRIPE_MAX_READ_RPS",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("STRIPE_MAX_WRITE_RPS", "fast")],
            "STRIPE_MAX_WRITE_RPS",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("TASK_MAX_ATTEMPTS", "x")],
            "TASK_MAX_ATTEMPTS",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("RETENTION_DAYS", "a month")],
            "RETENTION_DAYS",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("RETENTION_DAYS", "-1")],
            "RETENTION_DAYS",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("CONSUMER_METRICS_BIND", "localhost")],
            "CONSUMER_METRICS_BIND",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("CONSUMER_SWEEP_INTERVAL_MS", "1")],
            "CONSUMER_SWEEP_INTERVAL_MS",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("ZMQ_PUB_ENDPOINT", "udp://x")],
            "ZMQ_PUB_ENDPOINT",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("STRIPE_EVENTS_POLL_SECS", "soon")],
            "STRIPE_EVENTS_POLL_SECS",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("RECONCILE_INTERVAL_HOURS", "-1")],
            "RECONCILE_INTERVAL_HOURS",
        ),
        (
            vec!["--topic", "stripe"],
            vec![key, ("STRIPE_ADOPT_BY_EMAIL", "maybe")],
            "STRIPE_ADOPT_BY_EMAIL",
        ),
        (
            vec!["import", "--provider", "salesforce"],
            vec![key],
            "--provider",
        ),
        (
            vec!["reconcile", "--provider", "hubspot"],
            vec![key],
            "--provider",
        ),
        (
            vec!["import", "--provider", "stripe"],
            vec![],
            "STRIPE_API_KEY",
        ),
        (
            vec!["--topic", "stripe"],
            vec![("STRIPE_API_KEY", "pk_live_publishable")],
            "STRIPE_API_KEY",
        ),
        (
            vec!["--topic", "salesforce"],
            vec![
                ("SALESFORCE_LOGIN_URL", "https://acme.my.salesforce.com"),
                ("SALESFORCE_CLIENT_ID", "id"),
                ("SALESFORCE_CLIENT_SECRET", "s3cr3t-value"),
                ("SALESFORCE_API_VERSION", "v66"),
            ],
            "SALESFORCE_API_VERSION",
        ),
    ] {
        let mut command = consumer();
        command.args(&args);
        for (k, v) in &env {
            command.env(k, v);
        }
        let stderr = refused(&mut command);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?} {env:?}: {stderr}");
        assert!(
            !stderr.contains("sk_test_123") && !stderr.contains("s3cr3t-value"),
            "secret echoed: {stderr}"
        );
    }
}

#[test]
fn help_explains_topics_and_every_setting() {
    let output = consumer().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--topic",
        "CONSUMER_CONCURRENCY",
        "STRIPE_MAX_RPS",
        "STRIPE_MAX_READ_RPS",
        "STRIPE_MAX_WRITE_RPS",
        "TASK_MAX_ATTEMPTS",
        "CONSUMER_SWEEP_INTERVAL_MS",
        "CONSUMER_LEASE_SECS",
        "CONSUMER_BACKOFF_MAX_MS",
        "DATABASE_URL",
        "ZMQ_PUB_ENDPOINT",
        "STRIPE_EVENTS_POLL_SECS",
        "RECONCILE_INTERVAL_HOURS",
        "STRIPE_ADOPT_BY_EMAIL",
        "import",
        "reconcile",
    ] {
        assert!(help.contains(needle), "{needle} missing from --help");
    }
}

#[test]
fn the_job_commands_say_what_they_do_and_what_their_exit_codes_mean() {
    let output = consumer().args(["reconcile", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in ["--provider", "--repair", "exits 0", "1 when drift remains"] {
        assert!(help.contains(needle), "{needle} missing: {help}");
    }
    // A job command without its provider is a usage error, not a start.
    let stderr = refused(consumer().arg("import"));
    assert!(stderr.contains("--provider"), "{stderr}");
}

#[test]
fn every_setting_in_help_is_documented_in_the_readme_and_env_sample() {
    let output = consumer().arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    let documented = shared::testing::assert_settings_documented(&help);
    assert!(
        documented.contains(&"CONSUMER_LEASE_SECS".to_owned()),
        "{documented:?}"
    );
}
