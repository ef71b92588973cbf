//! `loadgen history`: the same figures on an empty database and on a year's worth of
//! history (by default 1,000,000 customers, 10,000,000 succeeded tasks and 10,000,000
//! webhook events), in one run against the same server, with their ratios; then a
//! retention pass over the half of that history older than 30 days, with the task API's
//! p99 while it runs; then a migration at that size.
//!
//! On a shared virtual machine the host takes CPU from us at its own times, so a figure
//! measured a quarter of an hour before the pass is a weak baseline for one measured
//! during it. The pass is therefore also measured in alternation: 10 s of the live load
//! against the history with the pass running, then 5 s of the same load against an
//! empty database of the same cluster (a second server) with the pass held between two
//! batches, and so on; each pair shares the host's mood. The CPU the host stole is
//! printed with every phase and window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use consumer::retention::Retention;
use diesel::prelude::*;
use sandbox::{Sandbox, SandboxConfig};
use serde_json::{json, Value};
use shared::domain::Provider;

use crate::stack::{free_port, Options, Stack};
use crate::stats::{quantile, Recorder, Steal};
use crate::{deliver, drive_api, sign_customer_event, ApiLoad};

#[derive(Args)]
pub struct Settings {
    /// Customers in the history, each linked to a Stripe customer
    #[arg(long, default_value = "1000000")]
    customers: u64,
    /// Succeeded tasks in it (one in a thousand dead), completed over the last 60 days
    #[arg(long, default_value = "10000000")]
    tasks: u64,
    /// Webhook events in it, received over the last 60 days
    #[arg(long, default_value = "10000000")]
    events: u64,
    /// Seconds of each task API measurement
    #[arg(long, default_value = "10")]
    seconds: u64,
    /// Events per webhook ingest measurement (new customers, then the same ones known)
    #[arg(long, default_value = "30000")]
    webhook_events: usize,
    /// Task API requests per second while the retention pass runs (and before, for the
    /// comparison)
    #[arg(long, default_value = "500")]
    live_rate: u64,
    /// Load the history and run the retention pass only (no empty or history figures):
    /// for trying the pass's shape
    #[arg(long)]
    retention_only: bool,
    /// Rows per retention statement (default: the consumer's)
    #[arg(long)]
    retention_batch: Option<i64>,
    /// Least rest between retention batches, in ms (default: the consumer's)
    #[arg(long)]
    retention_rest_ms: Option<u64>,
    /// Rest after a retention batch at least this many times the batch's own time
    /// (default: the consumer's)
    #[arg(long)]
    retention_rest_per_busy: Option<u32>,
}

/// One phase's figures: (name, value, unit, higher is better).
type Figures = Vec<(&'static str, f64, &'static str, bool)>;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let (mut stack, sandbox) = crate::e2e::start(SandboxConfig::default()).await?;
    let pool = shared::db::connect(&stack.db.url.clone().into(), 4)?;
    stack.execute(
        "INSERT INTO customers (id, name, email) VALUES ('bench-dead', 'Dead', 'dead@example.com')",
    )?;
    stack.execute(&dead_tasks("bench-dead", 100))?;

    let (empty, loaded, full) = if settings.retention_only {
        let loaded = load(&stack, &settings)?;
        (Vec::new(), loaded, Vec::new())
    } else {
        let steal = Steal::now();
        let empty = measure(&mut stack, &sandbox, &settings, "empty").await?;
        eprintln!(
            "history: CPU stolen by the host while measuring (empty): {:.0}%",
            steal.percent_since()
        );
        let loaded = load(&stack, &settings)?;
        let steal = Steal::now();
        let full = measure(&mut stack, &sandbox, &settings, "full").await?;
        eprintln!(
            "history: CPU stolen by the host while measuring (full): {:.0}%",
            steal.percent_since()
        );
        (empty, loaded, full)
    };

    // The live API at a steady rate with no pass running, then while one runs.
    let live = ApiLoad {
        connections: 16,
        duration: Duration::from_secs(settings.seconds),
        rate: Some(settings.live_rate),
        updates: false,
        idempotency_keys: false,
        prefix: "quiet",
    };
    stack.execute("CHECKPOINT")?;
    let (quiet, elapsed) = drive_api(&stack.base_url, &stack.token, &live).await?;
    let quiet = quiet.summary(elapsed);
    let mut retention = Retention::new(pool.clone(), 30);
    retention.batch = settings.retention_batch.unwrap_or(retention.batch);
    if let Some(ms) = settings.retention_rest_ms {
        retention.rest = Duration::from_millis(ms);
    }
    retention.rest_per_busy = settings
        .retention_rest_per_busy
        .unwrap_or(retention.rest_per_busy);
    let shape = format!(
        "batch {}, rest ≥ {} ms and ≥ {}x the batch",
        retention.batch,
        retention.rest.as_millis(),
        retention.rest_per_busy
    );
    // A second server on an empty database of the same cluster, for the same load in
    // alternation with the pass (see this module's documentation).
    let beside = Stack::start_with(Options {
        stripe_base: Some(sandbox.base_url()),
        webhook_secret: sandbox.webhook_secret().to_owned(),
        port: free_port(),
        http_max_connections: None,
    })
    .await?;
    let (hold, held) = tokio::sync::watch::channel(false);
    retention.hold = Some(held);
    let started = Instant::now();
    let steal_before = Steal::now();
    let pass = tokio::spawn(async move { retention.pass(None).await });
    let during = Arc::new(Recorder::default());
    let empty_beside = Arc::new(Recorder::default());
    let (mut pairs, mut window, mut last_during) = (Vec::new(), 0, f64::NAN);
    while !pass.is_finished() {
        // Even windows: the pass runs, the load goes to the history's server. Odd ones:
        // the pass waits before its next batch, the load goes to the empty database's.
        let running = window % 2 == 0;
        hold.send_replace(!running);
        let (base_url, token) = if running {
            (&stack.base_url, &stack.token)
        } else {
            (&beside.base_url, &beside.token)
        };
        let prefix: &'static str = Box::leak(format!("pass{window}").into_boxed_str());
        // The held windows are half as long: the pass waits through them.
        let duration = if running {
            live.duration
        } else {
            live.duration / 2
        };
        let load = ApiLoad {
            prefix,
            duration,
            ..live
        };
        let steal = Steal::now();
        let (recorder, window_time) = drive_api(base_url, token, &load).await?;
        let p99 = recorder.summary(window_time).p99_ms;
        let which = if running {
            "pass running, history"
        } else {
            "pass held, empty database"
        };
        eprintln!(
            "history: {:.0} s into the pass, live p99 {p99:.2} ms ({which}; CPU stolen {:.0}%)",
            started.elapsed().as_secs_f64(),
            steal.percent_since()
        );
        if running {
            during.absorb(&recorder);
            last_during = p99;
        } else {
            empty_beside.absorb(&recorder);
            pairs.push(last_during / p99);
        }
        window += 1;
    }
    drop(hold);
    let pruned = pass
        .await??
        .context("another process held the retention lock")?;
    let pass_seconds = started.elapsed().as_secs_f64();
    let pass_steal = steal_before.percent_since();
    let during = during.summary(started.elapsed());
    let empty_beside = empty_beside.summary(started.elapsed());
    beside.stop();
    pairs.sort_by(f64::total_cmp);
    let pair_median = pairs.get(pairs.len() / 2).copied().unwrap_or(f64::NAN);
    let pairs_within = pairs.iter().filter(|r| **r <= 2.0).count();

    let migration_full = migration(&stack)?;
    let empty_steady = empty
        .iter()
        .find(|f| f.0 == "task API create p99 at --live-rate")
        .map_or(f64::NAN, |f| f.1);

    println!("history: loaded {loaded}");
    println!(
        "{:<44} {:>12} {:>12} {:>7}  target",
        "figure", "empty", "history", "ratio"
    );
    let mut report = Vec::new();
    for ((name, e, unit, higher), (_, f, _, _)) in empty.iter().zip(&full) {
        let ratio = f / e;
        let target = match (*higher, *unit) {
            (true, _) => format!("≥ 0.80: {}", pass_or_fail(ratio >= 0.8)),
            (false, "ms") if name.contains("p99") => {
                format!("≤ 2.00: {}", pass_or_fail(ratio <= 2.0))
            }
            _ => String::new(),
        };
        println!(
            "{:<44} {:>9.2} {unit:<2} {:>9.2} {unit:<2} {:>7.2}  {target}",
            name, e, f, ratio
        );
        report
            .push(json!({"figure": name, "unit": unit, "empty": e, "history": f, "ratio": ratio}));
    }
    println!(
        "retention pass ({shape}): {} tasks and {} events removed in {:.1} s ({:.0} rows/s); live creates at {}/s: p99 {:.2} ms without a pass, {:.2} ms during it ({:.2}x; {:.2}x the empty database's {:.2} ms), errors {}",
        pruned.tasks,
        pruned.events,
        pass_seconds,
        (pruned.tasks + pruned.events) as f64 / pass_seconds,
        settings.live_rate,
        quiet.p99_ms,
        during.p99_ms,
        during.p99_ms / quiet.p99_ms,
        during.p99_ms / empty_steady,
        empty_steady,
        during.errors,
    );
    println!(
        "in alternation (10 s with the pass running against the history, 5 s with it held against an empty database, {} pairs): p99 {:.2} ms during the pass, {:.2} ms on the empty database ({:.2}x); pair ratios median {pair_median:.2}x, {pairs_within} of {} within 2x; CPU stolen by the host during the pass {pass_steal:.0}%",
        pairs.len(),
        during.p99_ms,
        empty_beside.p99_ms,
        during.p99_ms / empty_beside.p99_ms,
        pairs.len(),
    );
    println!(
        "migration (the retention indexes, built concurrently) after the pass: {migration_full:.2} s"
    );
    println!(
        "{}",
        json!({"scenario": "history", "loaded": loaded, "figures": report,
               "retention": {"shape": shape, "tasks": pruned.tasks, "events": pruned.events, "seconds": pass_seconds,
                             "live_rate": settings.live_rate, "quiet_p99_ms": quiet.p99_ms,
                             "during_p99_ms": during.p99_ms, "empty_p99_ms": empty_steady,
                             "errors": during.errors,
                             "alternating": {"pairs": pairs.len(), "empty_p99_ms": empty_beside.p99_ms,
                                             "ratio": during.p99_ms / empty_beside.p99_ms,
                                             "pair_ratio_median": pair_median, "pairs_within_2x": pairs_within},
                             "cpu_stolen_percent": pass_steal},
               "migration_seconds": migration_full})
    );
    stack.stop();
    sandbox.stop().await;
    Ok(())
}

fn pass_or_fail(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// `n` dead tasks of `customer`.
fn dead_tasks(customer: &str, n: u64) -> String {
    format!(
        "INSERT INTO sync_tasks (id, provider, customer_id, operation, version, status, \
           attempts, idempotency_key, last_error) \
         SELECT gen_random_uuid(), 'stripe', '{customer}', 'update', g, 'dead', 12, \
           'dead-' || g, 'Stripe 400: invalid email' \
         FROM generate_series(1, {n}) g"
    )
}

/// Every figure of one phase; `phase` keeps ids apart between phases.
async fn measure(
    stack: &mut Stack,
    sandbox: &Sandbox,
    settings: &Settings,
    phase: &'static str,
) -> anyhow::Result<Figures> {
    let mut figures = Figures::new();
    eprintln!("history: measuring ({phase})");

    // Idle latency, with a consumer running only for it.
    let consumer = stack.add_consumer(
        &sandbox.base_url(),
        &[("STRIPE_MAX_RPS", "1000"), ("RETENTION_DAYS", "0")],
    )?;
    let latencies = crate::e2e::idle_samples(stack, sandbox, phase, 100).await?;
    stack.kill(consumer);
    sandbox.wait_webhooks_idle(Duration::from_secs(60)).await;
    figures.push((
        "idle create-to-call p50",
        quantile(&latencies, 0.5),
        "ms",
        false,
    ));
    figures.push((
        "idle create-to-call p99",
        quantile(&latencies, 0.99),
        "ms",
        false,
    ));

    // The task API, closed loop. Each timed step starts from a checkpoint, so that the
    // WAL of the step before does not land a checkpoint in it (one phase but not the
    // other).
    stack.execute("CHECKPOINT")?;
    let load = ApiLoad {
        connections: 64,
        duration: Duration::from_secs(settings.seconds),
        rate: None,
        updates: false,
        idempotency_keys: false,
        prefix: phase,
    };
    let (recorder, elapsed) = drive_api(&stack.base_url, &stack.token, &load).await?;
    let api = recorder.summary(elapsed);
    figures.push((
        "task API creates/s (64 connections)",
        api.throughput,
        "/s",
        true,
    ));
    figures.push(("task API create p99", api.p99_ms, "ms", false));
    // What no consumer took becomes history, so the next figures see no backlog.
    stack.execute(
        "UPDATE sync_tasks SET status = 'succeeded', completed_at = now() WHERE status = 'pending'",
    )?;

    // Webhook ingest: new customers, then the same customers known.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let secret = stack.webhook_secret.clone();
    let sign = |kind: &str, created: i64, name: &str, previous: Value| {
        (0..settings.webhook_events)
            .map(|n| {
                let name = format!("{name} {n}");
                sign_customer_event(
                    &secret,
                    phase,
                    n,
                    kind,
                    (now, created),
                    name,
                    previous.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let created = sign("customer.created", now, "Hook", Value::Null);
    stack.execute("CHECKPOINT")?;
    let (recorder, elapsed) = deliver(&stack.base_url, 64, Arc::new(created)).await;
    let new = recorder.summary(elapsed);
    figures.push(("webhooks, new customers/s", new.throughput, "/s", true));
    figures.push(("webhooks, new customer p99", new.p99_ms, "ms", false));
    let updated = sign(
        "customer.updated",
        now + 1,
        "Renamed",
        json!({"name": "Hook"}),
    );
    stack.execute("CHECKPOINT")?;
    let (recorder, elapsed) = deliver(&stack.base_url, 64, Arc::new(updated)).await;
    let known = recorder.summary(elapsed);
    figures.push(("webhooks, known customers/s", known.throughput, "/s", true));
    figures.push(("webhooks, known customer p99", known.p99_ms, "ms", false));

    // The task API at a steady, modest rate (the rate the retention pass runs under).
    stack.execute("CHECKPOINT")?;
    let steady = ApiLoad {
        connections: 16,
        duration: Duration::from_secs(settings.seconds),
        rate: Some(settings.live_rate),
        updates: false,
        idempotency_keys: false,
        prefix: Box::leak(format!("{phase}-steady").into_boxed_str()),
    };
    let (recorder, elapsed) = drive_api(&stack.base_url, &stack.token, &steady).await?;
    figures.push((
        "task API create p99 at --live-rate",
        recorder.summary(elapsed).p99_ms,
        "ms",
        false,
    ));
    stack.execute(
        "UPDATE sync_tasks SET status = 'succeeded', completed_at = now() WHERE status = 'pending'",
    )?;

    // The pages an operator opens (1,000 requests each: a p99 of 200 is their second
    // slowest).
    let pages = [
        ("customer page p99", format!("/api/v1/customers/{phase}-7")),
        (
            "customer list page p99",
            "/api/v1/customers?limit=50".to_owned(),
        ),
        (
            "dead-task page p99",
            "/api/v1/tasks?status=dead&limit=50".to_owned(),
        ),
    ];
    for (name, path) in pages {
        stack.execute("CHECKPOINT")?;
        let latencies = page_latencies(stack, &path, 1000).await?;
        figures.push((name, quantile(&latencies, 0.99), "ms", false));
    }

    // The claim and the sweep's look for the next due task, with 1,000 due tasks.
    let (claim, sweep) = claim_and_sweep(stack, phase)?;
    figures.push(("claim of 16 (PostgreSQL, per call)", claim, "ms", false));
    figures.push((
        "sweep's next due (PostgreSQL, per call)",
        sweep,
        "ms",
        false,
    ));
    figures.push((
        "migration (retention indexes)",
        migration(stack)?,
        "s",
        false,
    ));
    Ok(figures)
}

/// The latency of `n` sequential GETs of `path`, in ms; each must answer 200.
async fn page_latencies(stack: &Stack, path: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let client = crate::stack::client(1);
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let response = client
            .get(format!("{}{path}", stack.base_url))
            .bearer_auth(&stack.token)
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "{path}: {}", response.status());
        response.bytes().await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}

/// The mean time of a claim of 16 (rolled back each time, so every call sees the same
/// 1,000 due tasks) and of the sweep's next-due query, over 200 calls each, in ms; one
/// loopback round trip included in each.
fn claim_and_sweep(stack: &Stack, phase: &str) -> anyhow::Result<(f64, f64)> {
    stack.execute(&format!(
        "INSERT INTO customers (id, name, email) SELECT 'due-{phase}-' || g, 'Due', \
           'due{phase}' || g || '@example.com' FROM generate_series(1, 1000) g; \
         INSERT INTO sync_tasks (id, provider, customer_id, operation, version, \
           idempotency_key) SELECT gen_random_uuid(), 'stripe', 'due-{phase}-' || g, \
           'create', 1, 'due-{phase}-' || g FROM generate_series(1, 1000) g"
    ))?;
    let mut conn = stack.db.connect();
    let calls = 200;
    let started = Instant::now();
    for _ in 0..calls {
        let claimed = conn.transaction::<usize, diesel::result::Error, _>(|c| {
            let n = shared::db::tasks::claim(
                c,
                Provider::Stripe,
                16,
                "bench",
                Duration::from_secs(30),
            )?
            .len();
            if n == 16 {
                Err(diesel::result::Error::RollbackTransaction)
            } else {
                Ok(n)
            }
        });
        anyhow::ensure!(
            matches!(claimed, Err(diesel::result::Error::RollbackTransaction)),
            "the claim did not find 16 due tasks: {claimed:?}"
        );
    }
    let claim = started.elapsed().as_secs_f64() * 1000.0 / calls as f64;
    let started = Instant::now();
    for _ in 0..calls {
        shared::db::tasks::next_due(&mut conn, Provider::Stripe)?;
    }
    let sweep = started.elapsed().as_secs_f64() * 1000.0 / calls as f64;
    stack.execute(&format!(
        "UPDATE sync_tasks SET status = 'succeeded', completed_at = now() \
         WHERE customer_id LIKE 'due-{phase}-%'"
    ))?;
    Ok((claim, sweep))
}

/// Drops the retention indexes and runs their migrations again, as a deployment would
/// on this database; seconds.
fn migration(stack: &Stack) -> anyhow::Result<f64> {
    let mut conn = stack.db.connect();
    for index in [
        "sync_tasks_succeeded_idx",
        "webhook_events_received_all_idx",
    ] {
        diesel::sql_query(format!("DROP INDEX CONCURRENTLY {index}")).execute(&mut conn)?;
    }
    diesel::sql_query(
        "DELETE FROM __diesel_schema_migrations WHERE version IN ('20261204000002', '20261204000003')",
    )
    .execute(&mut conn)?;
    let started = Instant::now();
    shared::db::migrate(&mut conn)?;
    Ok(started.elapsed().as_secs_f64())
}

/// Loads the history, a million rows per statement, then vacuums and analyzes it; what
/// it loaded and how long it took.
fn load(stack: &Stack, s: &Settings) -> anyhow::Result<String> {
    let started = Instant::now();
    let chunk = 1_000_000u64;
    let (c, t, e) = (s.customers, s.tasks, s.events);
    for from in (0..c).step_by(chunk as usize) {
        let to = (from + chunk).min(c) - 1;
        stack.execute(&format!(
            "INSERT INTO customers (id, name, email, version, created_at, updated_at) \
             SELECT 'h-' || g, 'History ' || g, 'h' || g || '@example.com', 1 + {t} / {c}, \
               now() - interval '400 days', now() - interval '60 days' \
             FROM generate_series({from}, {to}) g; \
             INSERT INTO provider_links (customer_id, provider, external_id, synced_version, \
               remote_event_created, remote_event_id) \
             SELECT 'h-' || g, 'stripe', 'cus_h' || g, 1 + {t} / {c}, \
               extract(epoch FROM now() - interval '60 days')::bigint, 'evt_h' || g \
             FROM generate_series({from}, {to}) g"
        ))?;
    }
    eprintln!(
        "history: {c} customers in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // Ids as the application makes them (UUID v7: time first), so the primary key grows
    // at its end as in production; completion spread evenly over the last 60 days.
    for from in (0..t).step_by(chunk as usize) {
        let to = (from + chunk).min(t) - 1;
        stack.execute(&format!(
            "INSERT INTO sync_tasks (id, provider, customer_id, operation, version, status, \
               attempts, idempotency_key, lease_owner, next_attempt_at, created_at, updated_at, \
               completed_at, last_error) \
             SELECT (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7' \
                     || lpad(to_hex(g % 4096), 3, '0') || '8' || lpad(to_hex(g), 15, '0'))::uuid, \
               'stripe', 'h-' || (g % {c}), CASE WHEN g < {c} THEN 'create' ELSE 'update' END, \
               1 + g / {c}, CASE WHEN g % 1000 = 999 THEN 'dead' ELSE 'succeeded' END, 1, \
               'k-' || g, 'history', ts, ts, ts, \
               CASE WHEN g % 1000 = 999 THEN NULL ELSE ts END, \
               CASE WHEN g % 1000 = 999 THEN 'Stripe 400: invalid email' END \
             FROM (SELECT g, now() - interval '60 days' + (g::float8 / {t}) * interval '60 days' \
                   AS ts FROM generate_series({from}, {to}) g) s"
        ))?;
        eprintln!(
            "history: {} tasks in {:.0} s",
            to + 1,
            started.elapsed().as_secs_f64()
        );
    }
    for from in (0..e).step_by(chunk as usize) {
        let to = (from + chunk).min(e) - 1;
        stack.execute(&format!(
            "INSERT INTO webhook_events (id, event_type, created, object_id, payload, \
               received_at, source) \
             SELECT 'evt_h' || g, 'customer.updated', extract(epoch FROM ts)::bigint, \
               'cus_h' || (g % {c}), jsonb_build_object('id', 'evt_h' || g, 'object', 'event', \
                 'type', 'customer.updated', 'created', extract(epoch FROM ts)::bigint, \
                 'data', jsonb_build_object('object', jsonb_build_object('id', 'cus_h' || (g % {c}), \
                   'object', 'customer', 'name', 'History ' || (g % {c}), \
                   'email', 'h' || (g % {c}) || '@example.com', 'metadata', '{{}}'::jsonb))), \
               ts, 'webhook' \
             FROM (SELECT g, now() - interval '60 days' + (g::float8 / {e}) * interval '60 days' \
                   AS ts FROM generate_series({from}, {to}) g) s"
        ))?;
        eprintln!(
            "history: {} events in {:.0} s",
            to + 1,
            started.elapsed().as_secs_f64()
        );
    }
    let loaded = started.elapsed().as_secs_f64();
    stack.execute("VACUUM (ANALYZE) customers, provider_links, sync_tasks, webhook_events")?;
    let vacuumed = started.elapsed().as_secs_f64() - loaded;
    Ok(format!(
        "{c} customers, {t} tasks ({} dead), {e} events in {loaded:.0} s, then VACUUM ANALYZE in {vacuumed:.0} s",
        t / 1000
    ))
}
