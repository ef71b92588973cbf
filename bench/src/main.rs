//! `loadgen`: drives the real release binaries against PostgreSQL and prints one summary
//! line per scenario plus a JSON line (`--json`).
//!
//! Build first: `cargo build --release`, then `target/release/loadgen <scenario>`.

mod adopt;
mod attack;
mod e2e;
mod history;
mod http;
mod stack;
mod stats;
mod storm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;

use stack::Stack;
use stats::Recorder;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "customer-sync benchmarks: task API, webhook ingest, end to end, faults"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Task API: creates through POST /api/v1/customers, closed loop (or open loop with --rate)
    Api {
        /// Connections: each sends its next request when the last is answered (closed
        /// loop), or when the next request is due (open loop)
        #[arg(long, default_value = "64")]
        connections: usize,
        /// Seconds of load
        #[arg(long, default_value = "10")]
        duration: u64,
        /// Requests per second for an open loop instead of a closed one; latency counts
        /// from each request's due time, so a queue behind a slow server shows
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        rate: Option<u64>,
        /// Time updates (PATCH /api/v1/customers/{id}, a new name each) of customers
        /// created beforehand (untimed) instead of creates
        #[arg(long)]
        updates: bool,
        /// Send each request with an Idempotency-Key of its own (what the server's
        /// idempotency store costs)
        #[arg(long)]
        idempotency_keys: bool,
    },
    /// Webhook ingest: distinct pre-signed customer.created events at full speed
    Webhooks {
        #[arg(long, default_value = "64")]
        connections: usize,
        /// Events to send
        #[arg(long, default_value = "100000")]
        events: usize,
        /// Time customer.updated events for customers imported beforehand (untimed)
        /// instead: events about known customers, applied one at a time in a batch
        #[arg(long)]
        updates: bool,
    },
    /// End to end: creates through the API, ZeroMQ, a consumer and the sandbox
    /// (150 ms latency, 100 requests/s) and back through the webhook, until all are linked
    E2e {
        /// Customers to create
        #[arg(long, default_value = "3000")]
        customers: usize,
        /// Consumer processes
        #[arg(long, default_value = "1")]
        consumers: usize,
    },
    /// Idle latency from an accepted create to the provider call, one request at a time
    Idle {
        #[arg(long, default_value = "200")]
        samples: usize,
    },
    /// Connection storm: clients connect at once, each sends one request and holds its
    /// connection; the server serves HTTP_MAX_CONNECTIONS at a time
    Storm {
        /// Clients connecting at once (the load generator needs as many file descriptors)
        #[arg(long, default_value = "8000")]
        clients: usize,
        /// Milliseconds each client keeps its connection open after its answer
        #[arg(long, default_value = "1000")]
        hold_ms: u64,
    },
    /// End to end under faults: creates with updates among them, two consumers on the
    /// topic, one SIGKILLed every few seconds, 10% of calls failing before and 5% after
    /// Stripe committed, webhooks duplicated and shuffled. Exits 1 unless nothing was lost,
    /// duplicated or left dead and every customer converged
    Faults {
        #[arg(long, default_value = "2000")]
        customers: usize,
        /// Updates, each to a customer created just before it (default: a third of the
        /// customers)
        #[arg(long)]
        updates: Option<usize>,
        /// Seconds between kills
        #[arg(long, default_value = "3")]
        kill_every: u64,
        /// Share of Stripe calls failing after the change committed (a 500 stored under
        /// the key)
        #[arg(long, default_value = "0.05")]
        fail_after_commit: f64,
    },
    /// Hostile peers (signature floods, slow bodies, health and connection floods, ZeroMQ
    /// garbage), each for a while, against a steady client's latency on the task API
    Attack(attack::Settings),
    /// Adopting a Stripe account and healing: `consumer import` of a seeded sandbox at
    /// its list limit, a dry-run reconcile of the same, and the Events API catch-up of
    /// changes made while no consumer ran
    Adopt(adopt::Settings),
    /// A year of history: task API, webhook ingest, idle latency, the claim and the sweep,
    /// the operator's pages and a migration on an empty database and again after loading
    /// 1,000,000 customers, 10,000,000 tasks and 10,000,000 events, with their ratios; then
    /// a retention pass over the half older than 30 days, timed, with the live p99 during it
    History(history::Settings),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Api {
            connections,
            duration,
            rate,
            updates,
            idempotency_keys,
        } => {
            api(
                connections,
                Duration::from_secs(duration),
                rate,
                updates,
                idempotency_keys,
            )
            .await
        }
        Scenario::Webhooks {
            connections,
            events,
            updates,
        } => webhooks(connections, events, updates).await,
        Scenario::E2e {
            customers,
            consumers,
        } => e2e::run(customers, consumers).await,
        Scenario::Storm { clients, hold_ms } => {
            storm::run(clients, Duration::from_millis(hold_ms)).await
        }
        Scenario::Idle { samples } => e2e::idle(samples).await,
        Scenario::Faults {
            customers,
            updates,
            kill_every,
            fail_after_commit,
        } => {
            e2e::faults(e2e::Faults {
                customers,
                updates: updates.unwrap_or(customers / 3),
                kill_every: Duration::from_secs(kill_every),
                fail_after_commit,
            })
            .await
        }
        Scenario::Attack(settings) => attack::run(settings).await,
        Scenario::Adopt(settings) => adopt::run(settings).await,
        Scenario::History(settings) => history::run(settings).await,
    }
}

/// Customers an `api --updates` run changes, created beforehand.
const UPDATED_CUSTOMERS: u64 = 10_000;

async fn api(
    connections: usize,
    duration: Duration,
    rate: Option<u64>,
    updates: bool,
    idempotency_keys: bool,
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    if updates {
        stack.execute(&format!(
            "INSERT INTO customers (id, name, email) SELECT 'u-' || g, 'Before', \
             'u' || g || '@example.com' FROM generate_series(0, {}) g",
            UPDATED_CUSTOMERS - 1
        ))?;
    }
    let load = ApiLoad {
        connections,
        duration,
        rate,
        updates,
        idempotency_keys,
        prefix: "b",
    };
    let (recorder, elapsed) = drive_api(&stack.base_url, &stack.token, &load).await?;
    let connections = load.connections();
    let accepted = recorder.ok();
    // Every accepted change is a task; a create is also a customer.
    let tasks = stack.count("sync_tasks")? as u64;
    let stored = if updates {
        tasks
    } else {
        stack.count("customers")? as u64
    };
    let memory = stack.peak_memory_kib();
    let summary = recorder.summary(elapsed);
    let mode = match rate {
        None => format!("closed loop, {connections} connections"),
        Some(r) => format!("open loop, {r}/s, {connections} connections"),
    };
    let mode = if updates {
        format!("updates, {mode}")
    } else {
        mode
    };
    println!(
        "task API ({mode}): {:.0} accepted/s, p50 {:.2} ms, p99 {:.2} ms, errors {}, lost {}, duplicated {}, server peak RSS {} KiB",
        summary.throughput,
        summary.p50_ms,
        summary.p99_ms,
        summary.errors,
        accepted.saturating_sub(stored.min(tasks)),
        stored.saturating_sub(accepted),
        memory.get("server").copied().unwrap_or(0),
    );
    println!(
        "{}",
        json!({"scenario": "api", "mode": mode, "throughput": summary.throughput, "p50_ms": summary.p50_ms,
               "p99_ms": summary.p99_ms, "errors": summary.errors, "accepted": accepted, "stored_customers": stored,
               "stored_tasks": tasks, "peak_rss_kib": memory})
    );
    stack.stop();
    Ok(())
}

async fn webhooks(connections: usize, events: usize, updates: bool) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    // Signed before the clock starts: the benchmark measures the server, not our HMAC.
    let sign = |n: usize, kind: &str, created: i64, name: String, previous: serde_json::Value| {
        sign_customer_event(
            &stack.webhook_secret,
            "bench",
            n,
            kind,
            (now, created),
            name,
            previous,
        )
    };
    let created: Vec<(Vec<u8>, String)> = (0..events)
        .map(|n| {
            sign(
                n,
                "customer.created",
                now,
                format!("Bench {n}"),
                serde_json::Value::Null,
            )
        })
        .collect();
    let (timed, kind) = if updates {
        deliver(&stack.base_url, connections, Arc::new(created)).await;
        let updated = (0..events)
            .map(|n| {
                let previous = json!({"name": format!("Bench {n}")});
                sign(
                    n,
                    "customer.updated",
                    now + 1,
                    format!("Renamed {n}"),
                    previous,
                )
            })
            .collect();
        (updated, "customer.updated")
    } else {
        (created, "customer.created")
    };
    let (recorder, elapsed) = deliver(&stack.base_url, connections, Arc::new(timed)).await;
    let stored = stack.count("webhook_events")? as u64 - if updates { events as u64 } else { 0 };
    let applied = if updates {
        stack.count_where("customers", "name LIKE 'Renamed %'")?
    } else {
        stack.count("customers")?
    } as u64;
    let memory = stack.peak_memory_kib();
    let summary = recorder.summary(elapsed);
    println!(
        "webhook ingest ({connections} connections, {events} {kind} events): {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, errors {}, lost {}, duplicated {}, server peak RSS {} KiB",
        summary.throughput,
        summary.p50_ms,
        summary.p99_ms,
        summary.errors,
        recorder.ok().saturating_sub(stored.min(applied)),
        stored.saturating_sub(recorder.ok()),
        memory.get("server").copied().unwrap_or(0),
    );
    println!(
        "{}",
        json!({"scenario": "webhooks", "event_type": kind, "throughput": summary.throughput, "p50_ms": summary.p50_ms,
               "p99_ms": summary.p99_ms, "errors": summary.errors, "stored_events": stored,
               "applied": applied, "peak_rss_kib": memory})
    );
    stack.stop();
    Ok(())
}

/// Posts every signed event once over `connections` connections, as fast as the server
/// answers; records each answer (200 is a success) and returns the time it all took.
async fn deliver(
    base_url: &str,
    connections: usize,
    signed: Arc<Vec<(Vec<u8>, String)>>,
) -> (Arc<Recorder>, Duration) {
    let recorder = Arc::new(Recorder::default());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (recorder, next, signed) = (recorder.clone(), next.clone(), signed.clone());
        let mut connection = http::Connection::new(base_url);
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((body, signature)) = signed.get(n) else {
                    return;
                };
                let t = Instant::now();
                let headers = [("Stripe-Signature", signature.as_str())];
                let status = connection
                    .post("/api/v1/endpoint/stripe", &headers, body)
                    .await;
                recorder.record(matches!(status, Ok(200)), t.elapsed());
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    (recorder, started.elapsed())
}

/// One run of load on the task API.
#[derive(Clone, Copy)]
pub struct ApiLoad {
    pub connections: usize,
    pub duration: Duration,
    /// Requests per second (open loop); `None` for a closed loop.
    pub rate: Option<u64>,
    /// PATCH customers `u-0..` (created beforehand) instead of creating.
    pub updates: bool,
    pub idempotency_keys: bool,
    /// Created ids are `<prefix>-<n>`.
    pub prefix: &'static str,
}

impl ApiLoad {
    /// An open loop slower than its connections uses fewer, so that none sits idle past
    /// the server's 5 s keep-alive and finds itself closed at its next request.
    pub fn connections(&self) -> usize {
        self.rate
            .map_or(self.connections, |r| self.connections.min(r as usize))
    }
}

/// Drives the task API as `load` says; every answer recorded (202 is a success), and the
/// time it all took.
pub async fn drive_api(
    base_url: &str,
    token: &str,
    load: &ApiLoad,
) -> anyhow::Result<(Arc<Recorder>, Duration)> {
    let (duration, rate, updates, idempotency_keys, prefix) = (
        load.duration,
        load.rate,
        load.updates,
        load.idempotency_keys,
        load.prefix,
    );
    let recorder = Arc::new(Recorder::default());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    // An open loop gives request n the send time `started + n / rate` and measures its
    // latency from that time, so a server that falls behind is charged for the wait of the
    // requests queued behind it (no coordinated omission). The connections stay a fixed
    // pool either way: a slow server sees requests wait, not a storm of new connections.
    let due_time = move |n: u64| match rate {
        Some(rate) => {
            started + Duration::from_nanos((n as u128 * 1_000_000_000 / rate as u128) as u64)
        }
        None => Instant::now(),
    };
    let connections = load.connections();
    let authorization = format!("Bearer {token}");
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (recorder, next) = (recorder.clone(), next.clone());
        let mut connection = http::Connection::new(base_url);
        let authorization = authorization.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let key = format!("bench-{prefix}-{n}");
                let mut headers = vec![("Authorization", authorization.as_str())];
                if idempotency_keys {
                    headers.push(("Idempotency-Key", key.as_str()));
                }
                let due = due_time(n);
                if due >= deadline {
                    break;
                }
                // A request due later waits for its time. tokio's timer ticks in
                // milliseconds, so that first millisecond of lateness is the load
                // generator's and is not counted; any more is (a woken task that waits
                // for a core waits because the machine is saturated). A request due now
                // or earlier (its connection was busy) counts from its due time.
                let since = if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now().min(due + Duration::from_millis(1))
                } else {
                    due
                };
                let status = if updates {
                    let body = serde_json::to_vec(&json!({"name": format!("Bench {n}")}))
                        .expect("serialisable");
                    let path = format!("/api/v1/customers/u-{}", n % UPDATED_CUSTOMERS);
                    connection.send("PATCH", &path, &headers, &body).await
                } else {
                    let body = serde_json::to_vec(&json!({"id": format!("{prefix}-{n}"),
                        "name": format!("Bench {n}"), "email": format!("{prefix}{n}@example.com")}))
                    .expect("serialisable");
                    connection.post("/api/v1/customers", &headers, &body).await
                };
                recorder.record(matches!(status, Ok(202)), since.elapsed());
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    Ok((recorder, started.elapsed()))
}

/// A signed `customer.*` event about customer `cus_<prefix><n>` (email `w<n>@...`), as
/// Stripe would send it at `now`: the body and its `Stripe-Signature`.
pub fn sign_customer_event(
    secret: &str,
    prefix: &str,
    n: usize,
    kind: &str,
    (now, created): (i64, i64),
    name: String,
    previous: serde_json::Value,
) -> (Vec<u8>, String) {
    let mut data = json!({"object": {"id": format!("cus_{prefix}{n}"), "object": "customer",
        "name": name, "email": format!("w{n}@example.com"), "metadata": {}, "created": now}});
    if !previous.is_null() {
        data["previous_attributes"] = previous;
    }
    let body = serde_json::to_vec(&json!({
        "id": format!("evt_{prefix}_{kind}_{n}"), "object": "event",
        "api_version": "2026-10-28.endive", "created": created, "livemode": false,
        "pending_webhooks": 1, "type": kind, "request": {"id": null, "idempotency_key": null},
        "data": data
    }))
    .expect("serialisable");
    let signature = shared::stripe::signature::sign(secret, now, &body);
    (body, signature)
}
