//! The `server` binary's start-up: one clear line for a bad or missing setting.

use std::process::{Command, Stdio};

use shared::testing::processes;

fn server() -> Command {
    let mut command = processes::binary(env!("CARGO_BIN_EXE_server"));
    command.stdout(Stdio::piped());
    command
}

fn refused(command: &mut Command) -> String {
    let stderr = processes::refused(command);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn a_missing_api_token_stops_the_server_naming_the_variable() {
    let stderr = refused(&mut server());
    assert!(
        stderr.contains("API_TOKEN") && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
}

#[test]
fn insecure_no_auth_is_refused_on_any_address_but_loopback() {
    for bind in ["0.0.0.0:8000", "[::]:8000", "10.1.2.3:8000"] {
        let stderr = refused(
            server()
                .env("HTTP_BIND", bind)
                .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
                .arg("--insecure-no-auth"),
        );
        assert!(
            stderr.contains("HTTP_BIND") && stderr.contains("loopback"),
            "{bind}: {stderr}"
        );
    }
    // On loopback it gets past its settings (and stops at the closed database port).
    let output = server()
        .env("HTTP_BIND", "127.0.0.1:0")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .arg("--insecure-no-auth")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("loopback"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}

#[test]
fn bad_settings_stop_the_server_naming_the_variable() {
    let token = ("API_TOKEN", "0123456789abcdef0123");
    for (variable, value) in [
        ("HTTP_BIND", "not-an-address"),
        ("DATABASE_URL", "mysql://x/y"),
        ("ZMQ_PUB_ENDPOINT", "ipc:///tmp/x"),
        ("STRIPE_API_KEY", "pk_test_publishable"),
        ("STRIPE_WEBHOOK_SECRET", "not-a-whsec"),
        ("STRIPE_WEBHOOK_TOLERANCE_SECS", "-5"),
        ("HTTP_MAX_CONNECTIONS", "0"),
        ("HTTP_MAX_CONNECTIONS", "lots"),
        ("HTTP_BODY_TIMEOUT_SECS", "0"),
        ("HTTP_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("HTTP_TRUSTED_PROXIES", "the-load-balancer"),
        ("LOG_FORMAT", "xml"),
        ("API_TOKEN", "xq7z"),
        ("SALESFORCE_CLIENT_ID", "only-one-of-three"),
    ] {
        let stderr = refused(server().env(token.0, token.1).env(variable, value));
        let named = if variable == "SALESFORCE_CLIENT_ID" {
            "SALESFORCE_LOGIN_URL"
        } else {
            variable
        };
        assert!(stderr.contains(named), "{variable}: {stderr}");
        let secrets = [
            "API_TOKEN",
            "STRIPE_API_KEY",
            "STRIPE_WEBHOOK_SECRET",
            "SALESFORCE_CLIENT_ID",
        ];
        if secrets.contains(&variable) {
            assert!(!stderr.contains(value), "secret echoed: {stderr}");
        }
    }
}

#[test]
fn help_lists_every_setting_with_its_variable() {
    let output = server().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for variable in [
        "DATABASE_URL",
        "HTTP_BIND",
        "ZMQ_PUB_ENDPOINT",
        "API_TOKEN",
        "STRIPE_API_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "STRIPE_WEBHOOK_TOLERANCE_SECS",
        "HTTP_MAX_CONNECTIONS",
        "HTTP_BODY_TIMEOUT_SECS",
        "HTTP_TRUSTED_PROXIES",
        "LOG_FORMAT",
        "--insecure-no-auth",
    ] {
        assert!(help.contains(variable), "{variable} missing from --help");
    }
}

#[test]
fn a_flag_overrides_its_variable() {
    let stderr = refused(
        server()
            .env("API_TOKEN", "0123456789abcdef0123")
            .env("HTTP_BIND", "127.0.0.1:8000")
            .args(["--http-bind", "nonsense"]),
    );
    assert!(
        stderr.contains("HTTP_BIND") && stderr.contains("nonsense"),
        "{stderr}"
    );
}

#[test]
fn every_setting_in_help_is_documented_in_the_readme_and_env_sample() {
    let output = server().arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    let documented = shared::testing::assert_settings_documented(&help);
    assert!(
        documented.contains(&"HTTP_MAX_CONNECTIONS".to_owned()),
        "{documented:?}"
    );
}

/// Starts the server with the open-file limits `ulimit` sets in `limits` (a shell snippet),
/// against a closed PostgreSQL port so that it stops right after its start-up checks;
/// returns its output, or `None` when the shell may not set those limits here.
fn start_with_file_limits(limits: &str, max_connections: &str) -> Option<String> {
    let script = format!("{limits} 2>/dev/null || exit 77; exec \"$0\"");
    let output = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_server")])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("API_TOKEN", "0123456789abcdef0123")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("HTTP_BIND", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("HTTP_MAX_CONNECTIONS", max_connections)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    if output.status.code() == Some(77) {
        return None;
    }
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    Some(
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[test]
fn a_file_limit_too_low_for_http_max_connections_is_a_warning_that_says_what_to_raise() {
    let output = start_with_file_limits("ulimit -n 300", "2048").expect("lowering is allowed");
    assert!(
        output.contains("open-file limit") && output.contains("LimitNOFILE"),
        "{output}"
    );
    assert!(output.contains("\"needed\":2304"), "{output}");
    let output = start_with_file_limits("ulimit -n 300", "40").expect("lowering is allowed");
    assert!(!output.contains("open-file limit"), "{output}");
}

#[test]
fn a_soft_file_limit_below_the_hard_one_is_raised_without_a_warning() {
    // A soft limit of 300 under a hard one of 4,000: the server raises its own soft limit.
    match start_with_file_limits("ulimit -S -n 300 && ulimit -H -n 4000", "2048") {
        Some(output) => assert!(!output.contains("open-file limit"), "{output}"),
        None => eprintln!("skipped: the hard open-file limit here is below 4,000"),
    }
}
