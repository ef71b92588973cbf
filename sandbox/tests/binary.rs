//! The `sandbox` binary: helpful `--help`, flags also read from `SANDBOX_*` variables.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "bind",
        "webhook-url",
        "webhook-secret",
        "latency-ms",
        "max-rps",
        "fail-rate",
        "fail-after-commit-rate",
        "duplicate-rate",
        "shuffle",
        "seed",
        "seed-customers",
        "seed-invoices",
    ] {
        assert!(help.contains(&format!("--{flag}")), "--{flag} in {help}");
        let var = format!("SANDBOX_{}", flag.to_uppercase().replace('-', "_"));
        assert!(help.contains(&var), "{var} in {help}");
    }
    assert!(help.contains("127.0.0.1:12111"));
}

#[test]
fn the_binary_reads_sandbox_variables_and_prints_a_generated_secret() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .env("SANDBOX_BIND", "127.0.0.1:0")
        .env("SANDBOX_FAIL_RATE", "1")
        .env_remove("SANDBOX_WEBHOOK_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let mut base = None;
    let mut secret = None;
    for line in lines.by_ref().take(6) {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("Stripe sandbox listening on ") {
            base = Some(url.to_owned());
        }
        if let Some((_, s)) = line.split_once("Webhook secret (generated): ") {
            secret = Some(s.to_owned());
        }
        printed.push(line);
        if base.is_some() && secret.is_some() {
            break;
        }
    }
    let status = base
        .as_ref()
        .map(|base| reqwest::blocking_get(&format!("{base}/v1/customers")));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(base.is_some(), "no address in {printed:?}");
    assert!(
        secret.is_some_and(|s| s.starts_with("whsec_")),
        "{printed:?}"
    );
    let status = status.unwrap();
    assert_eq!(status, 500, "SANDBOX_FAIL_RATE=1 was honoured");
}

#[test]
fn the_binary_seeds_the_account_from_sandbox_variables_and_says_so() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .env("SANDBOX_BIND", "127.0.0.1:0")
        .env("SANDBOX_SEED_CUSTOMERS", "20")
        .env("SANDBOX_SEED_INVOICES", "10")
        .env("SANDBOX_WEBHOOK_SECRET", "whsec_binary_test")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut printed = Vec::new();
    let mut base = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines().take(6) {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("Stripe sandbox listening on ") {
            base = Some(url.to_owned());
        }
        let seeded = line.contains("Seeded:");
        printed.push(line);
        if seeded {
            break;
        }
    }
    let listed = base.as_ref().map(|base| {
        reqwest::blocking_get_body(&format!("{base}/v1/customers?email=seed20@example.com"))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        printed
            .iter()
            .any(|l| l.contains("20 customers and 10 invoices")),
        "{printed:?}"
    );
    let listed = listed.expect("an address was printed");
    assert!(listed.contains("Seed Customer 20"), "{listed}");
}

mod reqwest {
    /// A GET with a test key, by hand (the workspace's reqwest has no blocking client).
    pub fn blocking_get(url: &str) -> u16 {
        let response = blocking_get_body(url);
        response.split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// The whole response, status line and headers included.
    pub fn blocking_get_body(url: &str) -> String {
        use std::io::{Read, Write};
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap();
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sk_test_bin\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }
}
