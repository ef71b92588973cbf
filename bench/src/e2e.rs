//! End-to-end scenarios: the release server and consumers, the sandbox in this process
//! (so its request log can be read), PostgreSQL.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use sandbox::{Sandbox, SandboxConfig};
use serde_json::json;

use crate::stack::{self, Options, Stack};

/// Starts the sandbox wired to a server port, then the server.
pub(crate) async fn start(config: SandboxConfig) -> anyhow::Result<(Stack, Sandbox)> {
    let port = stack::free_port();
    let sandbox = Sandbox::start(SandboxConfig {
        webhook_url: Some(format!("http://127.0.0.1:{port}/api/v1/endpoint/stripe")),
        ..config
    })
    .await?;
    let stack = Stack::start_with(Options {
        stripe_base: Some(sandbox.base_url()),
        webhook_secret: sandbox.webhook_secret().to_owned(),
        port,
        http_max_connections: None,
    })
    .await?;
    Ok((stack, sandbox))
}

/// Creates `n` customers as fast as 32 connections allow; returns when all are accepted.
async fn create_all(stack: &Stack, n: usize) -> anyhow::Result<()> {
    let client = stack::client(32);
    let url = format!("{}/api/v1/customers", stack.base_url);
    let mut workers = Vec::new();
    for w in 0..32 {
        let (client, url, token) = (client.clone(), url.clone(), stack.token.clone());
        workers.push(tokio::spawn(async move {
            for i in (w..n).step_by(32) {
                let body = json!({"id": format!("e-{i}"), "name": format!("E2E {i}"), "email": format!("e{i}@example.com")});
                loop {
                    match client.post(&url).bearer_auth(&token).json(&body).send().await {
                        Ok(r) if r.status().is_success() => break,
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    Ok(())
}

/// Customers whose Stripe link is synced.
fn linked(stack: &Stack) -> anyhow::Result<i64> {
    use shared::db::schema::provider_links::dsl::*;
    Ok(provider_links
        .filter(provider.eq("stripe"))
        .filter(external_id.is_not_null())
        .filter(synced_version.ge(1))
        .count()
        .get_result(&mut stack.db.connect())?)
}

/// (name, email) of a Stripe customer.
type Fields = (Option<String>, Option<String>);

/// Live sandbox customers per local id.
fn remote_by_local(sandbox: &Sandbox) -> BTreeMap<String, Vec<Fields>> {
    sandbox
        .live_by_local_id()
        .into_iter()
        .map(|(local, customers)| {
            let fields = customers.into_iter().map(|c| (c.name, c.email)).collect();
            (local, fields)
        })
        .collect()
}

pub async fn run(customers: usize, consumers: usize) -> anyhow::Result<()> {
    let (mut stack, sandbox) = start(SandboxConfig {
        latency_ms: 150,
        max_rps: Some(100),
        ..SandboxConfig::default()
    })
    .await?;
    // The sandbox's limit is the deployment's budget, which every consumer shares.
    for _ in 0..consumers {
        stack.add_consumer(
            &sandbox.base_url(),
            &[("STRIPE_MAX_RPS", "100"), ("CONSUMER_CONCURRENCY", "32")],
        )?;
    }
    let started = Instant::now();
    create_all(&stack, customers).await?;
    let accepted_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(customers as u64 / 20 + 120);
    while linked(&stack)? < customers as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let done = linked(&stack)?;
    let log = sandbox.request_log();
    let throttled = log.iter().filter(|r| r.status == 429).count();
    let calls = log
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/customers")
        .count();
    let by_local = remote_by_local(&sandbox);
    let duplicated = by_local.values().filter(|v| v.len() > 1).count();
    let memory = stack.peak_memory_kib();
    let rate = done as f64 / elapsed.as_secs_f64();
    let (slowest, busiest) = calls_per_second(&log);
    let reservations = shared::db::budgets::reservations(&mut stack.db.connect())?;
    let all_calls = log.len();
    let per_reservation = all_calls as f64 / reservations.max(1) as f64;
    println!(
        "end to end ({customers} creates, {consumers} consumer(s), sandbox 150 ms / 100 rps): {rate:.1} customers/s linked, all accepted in {:.1} s, linked {done}/{customers} in {:.1} s, 429s {throttled}, create calls {calls}, calls per whole second {slowest}-{busiest}, {reservations} budget reservations ({per_reservation:.1} calls each), lost {}, duplicated {duplicated}, peak RSS {memory:?} KiB",
        accepted_in.as_secs_f64(),
        elapsed.as_secs_f64(),
        customers as i64 - done,
    );
    println!(
        "{}",
        json!({"scenario": "e2e", "customers": customers, "consumers": consumers, "throughput": rate,
        "seconds": elapsed.as_secs_f64(), "linked": done, "http_429": throttled, "create_calls": calls,
        "duplicated": duplicated, "peak_rss_kib": memory, "calls_per_second_min": slowest,
        "calls_per_second_max": busiest, "budget_reservations": reservations})
    );
    stack.stop();
    sandbox.stop().await;
    Ok(())
}

/// The fewest and most provider calls in the run's whole seconds (the first and the last,
/// partial, are left out).
fn calls_per_second(log: &[sandbox::RequestRecord]) -> (usize, usize) {
    let (Some(first), Some(last)) = (log.first(), log.last()) else {
        return (0, 0);
    };
    let seconds = (first.at_ms / 1000 + 1)..(last.at_ms / 1000);
    let counts: Vec<usize> = seconds
        .map(|s| log.iter().filter(|r| r.at_ms / 1000 == s).count())
        .collect();
    (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    )
}

pub async fn idle(samples: usize) -> anyhow::Result<()> {
    let (mut stack, sandbox) = start(SandboxConfig::default()).await?;
    stack.add_consumer(&sandbox.base_url(), &[("STRIPE_MAX_RPS", "1000")])?;
    let latencies = idle_samples(&stack, &sandbox, "idle", samples).await?;
    let ms = |q: f64| crate::stats::quantile(&latencies, q);
    println!(
        "idle latency, accepted create to provider call ({samples} samples, polled every 0.2 ms): p50 {:.2} ms, p99 {:.2} ms",
        ms(0.5),
        ms(0.99)
    );
    println!(
        "{}",
        json!({"scenario": "idle", "samples": samples, "p50_ms": ms(0.5), "p99_ms": ms(0.99)})
    );
    stack.stop();
    sandbox.stop().await;
    Ok(())
}

/// `samples` creates one at a time (ids `<prefix>-<i>`), each timed from its 202 to the
/// provider call the consumer makes for it (polled every 0.2 ms), in ms.
pub(crate) async fn idle_samples(
    stack: &Stack,
    sandbox: &Sandbox,
    prefix: &str,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    let client = stack::client(1);
    let url = format!("{}/api/v1/customers", stack.base_url);
    // Let the consumer subscribe.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut latencies = Vec::new();
    for i in 0..samples {
        let before = sandbox.request_log().len();
        let body = json!({"id": format!("{prefix}-idle-{i}"), "name": "Idle",
            "email": format!("{prefix}idle{i}@example.com")});
        let response = client
            .post(&url)
            .bearer_auth(&stack.token)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(response.status().as_u16() == 202, "create refused");
        let accepted = Instant::now();
        let deadline = accepted + Duration::from_secs(5);
        loop {
            let log = sandbox.request_log();
            if log[before..]
                .iter()
                .any(|r| r.method == "POST" && r.path == "/v1/customers")
            {
                latencies.push(accepted.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the provider call never came");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        // Idle between samples: let the webhook echo settle.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(latencies)
}

/// The faults scenario's knobs.
pub struct Faults {
    pub customers: usize,
    pub updates: usize,
    pub kill_every: Duration,
    pub fail_after_commit: f64,
}

/// Tasks not yet succeeded or dead.
fn open_tasks(stack: &Stack) -> anyhow::Result<i64> {
    use shared::db::schema::sync_tasks::dsl::*;
    Ok(sync_tasks
        .filter(status.ne_all(["succeeded", "dead"]))
        .count()
        .get_result(&mut stack.db.connect())?)
}

/// Dead tasks.
fn dead_tasks(stack: &Stack) -> anyhow::Result<i64> {
    use shared::db::schema::sync_tasks::dsl::*;
    Ok(sync_tasks
        .filter(status.eq("dead"))
        .count()
        .get_result(&mut stack.db.connect())?)
}

pub async fn faults(settings: Faults) -> anyhow::Result<()> {
    let Faults {
        customers,
        updates,
        kill_every,
        fail_after_commit,
    } = settings;
    let (mut stack, sandbox) = start(SandboxConfig {
        latency_ms: 20,
        fail_rate: 0.10,
        fail_after_commit_rate: fail_after_commit,
        duplicate_rate: 0.10,
        shuffle: true,
        seed: Some(1),
        ..SandboxConfig::default()
    })
    .await?;
    let env = [
        ("STRIPE_MAX_RPS", "200"),
        ("CONSUMER_CONCURRENCY", "16"),
        ("CONSUMER_LEASE_SECS", "5"),
        ("CONSUMER_BACKOFF_MAX_MS", "2000"),
        ("TASK_MAX_ATTEMPTS", "1000"),
    ];
    let base = sandbox.base_url();
    let mut consumers = vec![
        stack.add_consumer(&base, &env)?,
        stack.add_consumer(&base, &env)?,
    ];
    let started = Instant::now();
    let creator = {
        let base_url = stack.base_url.clone();
        let token = stack.token.clone();
        tokio::spawn(async move {
            let client = stack::client(8);
            // Each update follows its customer's create closely, so it races the create's
            // call, its retries and its webhook echo.
            let every = customers
                .checked_div(updates)
                .map_or(usize::MAX, |e| e.max(1));
            let mut updated = 0;
            for i in 0..customers {
                let body = json!({"id": format!("f-{i}"), "name": format!("Fault {i}"), "email": format!("f{i}@example.com")});
                let _ = client
                    .post(format!("{base_url}/api/v1/customers"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                if updated < updates && i % every == every - 1 {
                    let body = json!({"name": format!("Fault {i} updated")});
                    let _ = client
                        .patch(format!("{base_url}/api/v1/customers/f-{i}"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await;
                    updated += 1;
                }
            }
            updated
        })
    };
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut next_kill = Instant::now() + kill_every;
    while (!creator.is_finished() || linked(&stack)? < customers as i64 || open_tasks(&stack)? > 0)
        && Instant::now() < deadline
    {
        if Instant::now() >= next_kill {
            let victim = consumers.remove(kills % consumers.len().max(1));
            stack.kill(victim);
            consumers.push(stack.add_consumer(&base, &env)?);
            kills += 1;
            next_kill = Instant::now() + kill_every;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let updated = creator.await?;
    let _ = sandbox.wait_webhooks_idle(Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    let done = linked(&stack)?;
    let dead = dead_tasks(&stack)?;
    let open = open_tasks(&stack)?;
    let by_local = remote_by_local(&sandbox);
    let duplicated = by_local.values().filter(|v| v.len() > 1).count();
    let local: Vec<(String, String, String)> = {
        use shared::db::schema::customers::dsl::*;
        customers
            .select((id, name, email))
            .load(&mut stack.db.connect())?
    };
    let converged = local
        .iter()
        .filter(|(id, name, email)| {
            by_local
                .get(id)
                .is_some_and(|v| v.len() == 1 && v[0] == (Some(name.clone()), Some(email.clone())))
        })
        .count();
    let lost = customers - local.len().min(customers) + (customers - by_local.len().min(customers));
    let log = sandbox.request_log();
    let failed = log
        .iter()
        .filter(|r| r.status == 500 && !r.replayed)
        .count();
    println!(
        "faults ({customers} creates and {updated} updates, two consumers, one SIGKILLed every {}s: {kills} kills, {failed} injected 500s, {:.0}% failing after commit, duplicated+shuffled webhooks): lost {lost}, duplicated {duplicated}, dead {dead}, open {open}, converged {converged}/{customers} ({:.1}%), linked {done}, {:.1} s",
        kill_every.as_secs(),
        fail_after_commit * 100.0,
        converged as f64 * 100.0 / customers as f64,
        elapsed.as_secs_f64()
    );
    println!(
        "{}",
        json!({"scenario": "faults", "customers": customers, "updates": updated, "kills": kills,
        "injected_500": failed, "fail_after_commit": fail_after_commit, "lost": lost,
        "duplicated": duplicated, "dead": dead, "open": open, "converged": converged,
        "seconds": elapsed.as_secs_f64()})
    );
    let clean = lost == 0 && duplicated == 0 && dead == 0 && open == 0 && converged == customers;
    stack.stop();
    sandbox.stop().await;
    anyhow::ensure!(
        clean,
        "the fault run lost, duplicated, left dead or did not converge"
    );
    Ok(())
}
