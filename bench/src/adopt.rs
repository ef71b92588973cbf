//! `loadgen adopt`: adopting an existing Stripe account and healing from the Events API,
//! on the release `consumer` and `sandbox` binaries and a fresh database (no server: the
//! jobs and the catch-up do not need one).
//!
//! 1. Import: a sandbox seeded with N customers and M invoices and `--max-rps 25` (Stripe's
//!    list limit stand-in), `consumer import --provider stripe` in the foreground with
//!    `STRIPE_MAX_RPS=25`; its JSON lines, stamped as they arrive, time the phases.
//! 2. Reconcile (dry run) of the same account and catalog.
//! 3. Catch-up: a second sandbox process seeded the same way with the same `--seed` (the
//!    same ids, names and emails, so the catalog imported from the first one is in step
//!    with it) and no rate limit, so that E changes can be made quickly; the consumers keep
//!    to Stripe's limit with `STRIPE_MAX_RPS=25` on their own. A consumer creates the
//!    events cursor and applies one event; it is stopped; E customers are renamed; a
//!    consumer is started again and timed until the cursor is at the newest event and the
//!    E new names are in PostgreSQL.
//!
//! The sandboxes run with `RUST_LOG=sandbox=debug`, which logs one line per Stripe
//! request with its status: their standard error is how requests and 429s are counted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use diesel::prelude::*;
use diesel::sql_types::{Double, Nullable, Text};
use serde_json::{json, Value};
use shared::testing::processes;
use shared::testing::settings::STRIPE_KEY;
use shared::testing::TestDatabase;

use crate::stack;

/// The account's read limit the import is measured against (Stripe's list limit).
const MAX_RPS: u32 = 25;
/// Objects per list page (the consumer's page size).
const PAGE: f64 = 100.0;
/// `STRIPE_EVENTS_POLL_SECS` of the catch-up consumers.
const POLL_SECS: u64 = 1;
/// The longest a foreground job may take before the run fails.
const JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// Both sandboxes seed from this, so their ids are the same.
const SANDBOX_SEED: &str = "17";
/// Concurrent connections renaming customers in the catch-up's sandbox.
const GENERATORS: usize = 8;

#[derive(clap::Args)]
pub struct Settings {
    /// Customers seeded in the sandbox (all imported)
    #[arg(long, default_value = "100000")]
    customers: usize,
    /// Invoices seeded in the sandbox, spread over the customers
    #[arg(long, default_value = "10000")]
    invoices: usize,
    /// The first sandbox's `--max-rps` (import and reconcile) and every consumer's
    /// `STRIPE_MAX_RPS` (the catch-up's sandbox has no limit)
    #[arg(long, default_value_t = MAX_RPS)]
    max_rps: u32,
    /// customer.updated events the catch-up applies
    #[arg(long, default_value = "10000")]
    events: usize,
    /// `RUST_LOG` of the foreground jobs (their standard error is printed after each job
    /// unless this is `warn`; its WARN and ERROR lines are counted)
    #[arg(long, default_value = "warn")]
    job_log: String,
    /// Sample the jobs' PostgreSQL backends (pg_stat_activity) every 10 ms and print, per
    /// phase, where the time went: which statement was running, or what the connection
    /// last ran while idle in its transaction
    #[arg(long)]
    sample_sql: bool,
    /// `name=value`: a setting of the bench database (ALTER DATABASE ... SET) before any
    /// process connects, e.g. `session_preload_libraries=auto_explain` with
    /// `auto_explain.log_min_duration=20` to log the plans of slow statements (repeatable)
    #[arg(long, value_name = "NAME=VALUE")]
    db_setting: Vec<String>,
    /// Print a JSON line after the summaries
    #[arg(long)]
    json: bool,
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    if settings.customers == 0 || settings.events + 1 > settings.customers {
        bail!("--events must be smaller than --customers (one more customer primes the cursor)");
    }
    tokio::task::spawn_blocking(move || run_blocking(settings)).await?
}

fn run_blocking(settings: Settings) -> anyhow::Result<()> {
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_average = load_average
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned();
    let db = TestDatabase::create();
    for setting in &settings.db_setting {
        let (name, value) = setting
            .split_once('=')
            .context("--db-setting takes name=value")?;
        diesel::sql_query(format!(
            "ALTER DATABASE \"{}\" SET {name} = '{}'",
            db.name(),
            value.replace('\'', "''")
        ))
        .execute(&mut db.connect())?;
    }
    let (n, m, rps) = (settings.customers, settings.invoices, settings.max_rps);

    // 1. Import.
    let limited = SandboxProcess::start(n, m, Some(rps))?;
    let import = run_job(&db, "import", &limited.base_url, rps, &settings)?;
    let import_requests = limited.settled_counts();
    let local = db.count("customers");
    let imported = import.count("imported");
    let walked = import.progress_at("customers", "customers_walked");
    let walk = import.phase_end("customers").unwrap_or_default();
    let bound = f64::from(rps) * PAGE;
    let walk_rate = walked as f64 / walk.as_secs_f64();
    let phases = import.phase_durations(IMPORT_PHASES);
    // Every list read (customers and invoices) at the limit: no import can be faster.
    let reads_bound = import_requests.requests as f64 / f64::from(rps);
    println!(
        "adopt import ({n} customers, {m} invoices, sandbox --max-rps {rps}, STRIPE_MAX_RPS={rps}): {:.1} s, {:.0} customers/s overall ({:.1}% of the {bound:.0}/s bound; {:.1}% of the reads' own bound, {} reads at {rps}/s = {:.1} s); walk {:.1} s ({walked} customers, {walk_rate:.0}/s, {:.0}% of the {bound:.0}/s bound); {}, then {:.2} s to the exit; 429s {}, sandbox requests {} {:?}; consumer warnings {}; consumer peak RSS {} KiB; local customers {local}/{n}, report imported {imported}/{n}",
        import.wall.as_secs_f64(),
        n as f64 / import.wall.as_secs_f64(),
        100.0 * n as f64 / import.wall.as_secs_f64() / bound,
        100.0 * reads_bound / import.wall.as_secs_f64(),
        import_requests.requests,
        reads_bound,
        walk.as_secs_f64(),
        100.0 * walk_rate / bound,
        describe(&phases),
        import.finish().as_secs_f64(),
        import_requests.throttled,
        import_requests.requests,
        import_requests.by_route,
        import.warnings,
        import.peak_rss_kib,
    );
    import.print_samples("import", IMPORT_PHASES);
    if local != n as i64 || imported != n as i64 {
        bail!("the import left {local} local customers and reported {imported} imported, not {n}");
    }

    // 2. Reconcile (dry run) of the same.
    let reconcile = run_job(&db, "reconcile", &limited.base_url, rps, &settings)?;
    let reconcile_requests = limited.settled_counts().since(&import_requests);
    let equal = reconcile.count("equal");
    let phases_r = reconcile.phase_durations(RECONCILE_PHASES);
    println!(
        "adopt reconcile (dry run, {n} customers): {:.1} s, {:.0} customers/s, exit {}, {}, then {:.2} s to the exit; equal {equal}/{n}, drift {}; 429s {}, sandbox requests {}; consumer peak RSS {} KiB",
        reconcile.wall.as_secs_f64(),
        n as f64 / reconcile.wall.as_secs_f64(),
        reconcile.exit_code(),
        describe(&phases_r),
        reconcile.finish().as_secs_f64(),
        reconcile.drift(),
        reconcile_requests.throttled,
        reconcile_requests.requests,
        reconcile.peak_rss_kib,
    );
    reconcile.print_samples("reconcile", RECONCILE_PHASES);
    if reconcile.exit_code() != 0 {
        bail!(
            "the reconcile after the import found drift (exit {}): {}",
            reconcile.exit_code(),
            reconcile.counts()
        );
    }
    drop(limited);

    // 3. Catch-up.
    let catch_up = catch_up(&db, &settings)?;
    println!(
        "adopt catch-up ({} customer.updated events, STRIPE_MAX_RPS={rps}, STRIPE_EVENTS_POLL_SECS={POLL_SECS}): caught up {:.2} s after the consumer started ({:.2} s after its 'consumer started' line), {:.2} s less the {POLL_SECS} s interval = {:.0} events/s; the poll itself {} per the cursor row; event pages read {}, customer reads {}, 429s {}; names {}/{}; consumer peak RSS {} KiB; generated in {:.1} s ({:.0} changes/s, {GENERATORS} connections)",
        settings.events,
        catch_up.from_spawn.as_secs_f64(),
        catch_up.from_started.as_secs_f64(),
        catch_up.catch_up().as_secs_f64(),
        settings.events as f64 / catch_up.catch_up().as_secs_f64(),
        catch_up
            .poll_seconds
            .map(|s| format!("{s:.2} s ({:.0} events/s)", settings.events as f64 / s))
            .unwrap_or_else(|| "not read".into()),
        catch_up.requests.route("GET /v1/events"),
        catch_up.requests.route("GET /v1/customers/{id}"),
        catch_up.requests.throttled,
        catch_up.renamed,
        settings.events,
        catch_up.peak_rss_kib,
        catch_up.generated_in.as_secs_f64(),
        settings.events as f64 / catch_up.generated_in.as_secs_f64(),
    );

    if settings.json {
        println!(
            "{}",
            json!({
                "scenario": "adopt", "customers": n, "invoices": m, "max_rps": rps, "events": settings.events,
                "load_average_at_start": load_average,
                "import": {
                    "seconds": import.wall.as_secs_f64(), "customers_per_second": n as f64 / import.wall.as_secs_f64(),
                    "walk_seconds": walk.as_secs_f64(), "walked": walked, "walk_per_second": walk_rate,
                    "walk_share_of_bound": walk_rate / bound,
                    "share_of_bound": n as f64 / import.wall.as_secs_f64() / bound,
                    "reads_bound_seconds": reads_bound, "share_of_reads_bound": reads_bound / import.wall.as_secs_f64(), "first_line_seconds": import.first_line().as_secs_f64(),
                    "phases": phases_json(&phases), "steps": import.steps(), "finish_seconds": import.finish().as_secs_f64(),
                    "http_429": import_requests.throttled, "sandbox_requests": import_requests.requests,
                    "sandbox_requests_by_route": import_requests.by_route, "consumer_warnings": import.warnings,
                    "peak_rss_kib": import.peak_rss_kib, "local_customers": local, "imported": imported,
                    "counts": import.counts(),
                },
                "reconcile": {
                    "seconds": reconcile.wall.as_secs_f64(), "customers_per_second": n as f64 / reconcile.wall.as_secs_f64(),
                    "exit_code": reconcile.exit_code(), "phases": phases_json(&phases_r), "steps": reconcile.steps(),
                    "equal": equal, "drift": reconcile.drift(), "http_429": reconcile_requests.throttled,
                    "sandbox_requests": reconcile_requests.requests, "peak_rss_kib": reconcile.peak_rss_kib,
                    "counts": reconcile.counts(), "finish_seconds": reconcile.finish().as_secs_f64(),
                },
                "catch_up": {
                    "seconds_from_spawn": catch_up.from_spawn.as_secs_f64(),
                    "seconds_from_started_line": catch_up.from_started.as_secs_f64(),
                    "catch_up_seconds": catch_up.catch_up().as_secs_f64(),
                    "events_per_second": settings.events as f64 / catch_up.catch_up().as_secs_f64(),
                    "poll_seconds": catch_up.poll_seconds,
                    "poll_events_per_second": catch_up.poll_seconds.map(|s| settings.events as f64 / s),
                    "event_pages": catch_up.requests.route("GET /v1/events"),
                    "customer_reads": catch_up.requests.route("GET /v1/customers/{id}"),
                    "http_429": catch_up.requests.throttled, "renamed": catch_up.renamed,
                    "peak_rss_kib": catch_up.peak_rss_kib, "generation_seconds": catch_up.generated_in.as_secs_f64(),
                },
            })
        );
    }
    Ok(())
}

const IMPORT_PHASES: &[&str] = &["customers", "decide", "creates", "invoices"];
const RECONCILE_PHASES: &[&str] = &["customers", "compare", "missing", "unlinked"];

/// "decide 12.3 s (200 steps)", ...
fn describe(phases: &[(&str, Option<(Duration, usize)>)]) -> String {
    phases
        .iter()
        .map(|(name, d)| match d {
            Some((d, steps)) => format!("{name} {:.1} s ({steps} steps)", d.as_secs_f64()),
            None => format!("{name} - (no step)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn phases_json(phases: &[(&str, Option<(Duration, usize)>)]) -> Value {
    phases
        .iter()
        .map(|(name, d)| {
            (
                name.to_string(),
                d.map(|(d, steps)| json!({"seconds": d.as_secs_f64(), "steps": steps}))
                    .unwrap_or(Value::Null),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The sandbox binary, killed when dropped.
struct SandboxProcess {
    child: Child,
    base_url: String,
    counts: Arc<Mutex<Requests>>,
}

/// Stripe requests the sandbox logged.
#[derive(Debug, Clone, Default)]
struct Requests {
    requests: u64,
    throttled: u64,
    by_route: BTreeMap<String, u64>,
}

impl Requests {
    /// What was logged since `before`.
    fn since(&self, before: &Requests) -> Requests {
        Requests {
            requests: self.requests - before.requests,
            throttled: self.throttled - before.throttled,
            by_route: self
                .by_route
                .iter()
                .map(|(k, v)| (k.clone(), v - before.by_route.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }

    fn route(&self, route: &str) -> u64 {
        self.by_route.get(route).copied().unwrap_or(0)
    }

    /// Counts a `stripe request method=GET path=/v1/customers status=200 ...` log line.
    fn record(&mut self, line: &str) {
        if !line.contains("stripe request") {
            return;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name).map(str::to_owned))
        };
        let (Some(method), Some(path), Some(status)) =
            (field("method="), field("path="), field("status="))
        else {
            return;
        };
        self.requests += 1;
        if status == "429" {
            self.throttled += 1;
        }
        // Object ids (cus_..., evt_...) become {id}.
        let route: Vec<&str> = path
            .split('/')
            .map(|s| if s.contains('_') { "{id}" } else { s })
            .collect();
        *self
            .by_route
            .entry(format!("{method} {}", route.join("/")))
            .or_default() += 1;
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl SandboxProcess {
    /// Starts the sandbox seeded with `customers` and `invoices` (seed [`SANDBOX_SEED`]),
    /// limited to `max_rps` when given; returns once it listens.
    fn start(customers: usize, invoices: usize, max_rps: Option<u32>) -> anyhow::Result<Self> {
        let mut command = processes::binary(stack::bin("sandbox")?);
        command
            .args(["--bind", "127.0.0.1:0", "--seed", SANDBOX_SEED])
            .args(["--seed-customers", &customers.to_string()])
            .args(["--seed-invoices", &invoices.to_string()])
            .env("RUST_LOG", "sandbox=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(rps) = max_rps {
            command.args(["--max-rps", &rps.to_string()]);
        }
        let mut child = command.spawn().context("starting the sandbox")?;
        let counts = Arc::new(Mutex::new(Requests::default()));
        let stderr = child.stderr.take().context("sandbox stderr")?;
        let sink = counts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().expect("counts").record(&strip_ansi(&line));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().context("sandbox stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(url) = line.strip_prefix("Stripe sandbox listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let base_url = rx
            .recv_timeout(Duration::from_secs(120))
            .context("the sandbox did not say where it listens within 120 s")?;
        Ok(Self {
            child,
            base_url,
            counts,
        })
    }

    fn counts(&self) -> Requests {
        self.counts.lock().expect("counts").clone()
    }

    /// The counts once the log reader has caught up: unchanged for 200 ms (call it when
    /// no client is calling the sandbox).
    fn settled_counts(&self) -> Requests {
        let mut last = self.counts();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.counts();
            if now.requests == last.requests {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A foreground job as it ran.
struct Job {
    wall: Duration,
    status: ExitStatus,
    /// Standard output lines, with when each arrived (from the spawn).
    lines: Vec<(Duration, Value)>,
    peak_rss_kib: u64,
    /// WARN or ERROR lines on standard error.
    warnings: usize,
    /// pg_stat_activity samples of the job's backends, with when each was taken.
    samples: Vec<(Duration, Vec<String>)>,
}

impl Job {
    fn exit_code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// The final line: `{"job_id","status","report",...}`.
    fn report(&self) -> Option<&Value> {
        self.lines
            .iter()
            .rev()
            .map(|(_, v)| v)
            .find(|v| v.get("status").is_some())
    }

    fn counts(&self) -> Value {
        self.report()
            .map(|r| r["report"]["counts"].clone())
            .unwrap_or(Value::Null)
    }

    fn count(&self, kind: &str) -> i64 {
        self.counts()[kind].as_i64().unwrap_or(0)
    }

    /// Findings of the kinds a reconcile calls drift.
    fn drift(&self) -> i64 {
        ["differs", "missing", "unlinked_ours", "local_unlinked"]
            .iter()
            .map(|k| self.count(k))
            .sum()
    }

    fn steps_of(&self, phase: &str) -> impl Iterator<Item = &(Duration, Value)> {
        let phase = phase.to_owned();
        self.lines
            .iter()
            .filter(move |(_, v)| v["phase"].as_str() == Some(phase.as_str()))
    }

    /// When the last step of `phase` was reported.
    fn phase_end(&self, phase: &str) -> Option<Duration> {
        self.steps_of(phase).last().map(|(t, _)| *t)
    }

    /// A progress count as of the last step of `phase`.
    fn progress_at(&self, phase: &str, count: &str) -> i64 {
        self.steps_of(phase)
            .last()
            .and_then(|(_, v)| v["progress"][count].as_i64())
            .unwrap_or(0)
    }

    /// Each phase's time, from the end of the last phase with a step before it (or the
    /// spawn) to its own last step, and its steps; `None` for a phase without a step
    /// (its time falls in the next phase's).
    fn phase_durations<'a>(&self, phases: &[&'a str]) -> Vec<(&'a str, Option<(Duration, usize)>)> {
        let mut previous = Duration::ZERO;
        phases
            .iter()
            .map(|phase| {
                let steps = self.steps_of(phase).count();
                let timed = self.phase_end(phase).map(|end| {
                    let d = end.saturating_sub(previous);
                    previous = end;
                    (d, steps)
                });
                (*phase, timed)
            })
            .collect()
    }

    /// Step lines per phase.
    fn steps(&self) -> BTreeMap<String, usize> {
        let mut steps = BTreeMap::new();
        for (_, v) in &self.lines {
            if let Some(phase) = v["phase"].as_str() {
                *steps.entry(phase.to_owned()).or_default() += 1;
            }
        }
        steps
    }

    /// Per phase (from the end of the phase before to its last step), the share of
    /// samples per backend state and statement, most frequent first.
    fn print_samples(&self, kind: &str, phases: &[&str]) {
        if self.samples.is_empty() {
            return;
        }
        let mut from = Duration::ZERO;
        let mut ends: Vec<(&str, Duration, Duration)> = Vec::new();
        for phase in phases {
            if let Some(end) = self.phase_end(phase) {
                ends.push((phase, from, end));
                from = end;
            }
        }
        ends.push(("finish", from, self.wall));
        for (phase, from, to) in ends {
            let taken: Vec<&Vec<String>> = self
                .samples
                .iter()
                .filter(|(t, _)| *t > from && *t <= to)
                .map(|(_, s)| s)
                .collect();
            if taken.is_empty() {
                continue;
            }
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for sample in &taken {
                if sample.is_empty() {
                    *counts.entry("(no backend in a transaction)").or_default() += 1;
                }
                for row in sample.iter() {
                    *counts.entry(row.as_str()).or_default() += 1;
                }
            }
            let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
            counts.sort_by_key(|c| std::cmp::Reverse(c.1));
            let seconds = (to - from).as_secs_f64();
            println!(
                "adopt {kind} sql, phase {phase} ({seconds:.1} s, {} samples):",
                taken.len()
            );
            for (what, n) in counts.iter().take(12) {
                let share = *n as f64 / taken.len() as f64;
                println!(
                    "  {:5.1}% ~{:5.1} s  {what}",
                    100.0 * share,
                    share * seconds
                );
            }
        }
    }

    /// From the spawn to the first step line.
    fn first_line(&self) -> Duration {
        self.lines.first().map(|(t, _)| *t).unwrap_or_default()
    }

    /// From the last step line to the exit (the report).
    fn finish(&self) -> Duration {
        let last_step = self
            .lines
            .iter()
            .rev()
            .find(|(_, v)| v.get("phase").is_some())
            .map(|(t, _)| *t)
            .unwrap_or_default();
        self.wall.saturating_sub(last_step)
    }
}

/// Runs `consumer <kind> --provider stripe` to its end, its peak RSS polled every 100 ms;
/// an error when it fails or its job does not succeed (a reconcile's exit 1, drift, is
/// an answer).
fn run_job(
    db: &TestDatabase,
    kind: &str,
    stripe_base: &str,
    rps: u32,
    settings: &Settings,
) -> anyhow::Result<Job> {
    let log = settings.job_log.as_str();
    let mut command = processes::binary(stack::bin("consumer")?);
    command
        .args([kind, "--provider", "stripe"])
        .env("DATABASE_URL", &db.url)
        .env(
            "ZMQ_PUB_ENDPOINT",
            format!("tcp://127.0.0.1:{}", stack::free_port()),
        )
        .env("STRIPE_API_KEY", STRIPE_KEY)
        .env("STRIPE_API_BASE", stripe_base)
        .env("STRIPE_MAX_RPS", rps.to_string())
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting consumer {kind}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let reader: JoinHandle<Vec<(Duration, Value)>> = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let at = started.elapsed();
                serde_json::from_str(&line).ok().map(|v| (at, v))
            })
            .collect()
    });
    let sampler = settings.sample_sql.then(|| Sampler::start(db, started));
    let stderr = child.stderr.take().context("stderr")?;
    let errors: JoinHandle<String> = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        peak = peak.max(vm_hwm_kib(child.id()).unwrap_or(0));
        if started.elapsed() > JOB_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("consumer {kind} did not end within {JOB_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = started.elapsed();
    let samples = sampler.map(Sampler::stop).unwrap_or_default();
    let lines = reader.join().expect("the stdout reader");
    let stderr = strip_ansi(&errors.join().expect("the stderr reader"));
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    let job = Job {
        wall,
        status,
        lines,
        peak_rss_kib: peak,
        warnings,
        samples,
    };
    let succeeded = job.report().and_then(|r| r["status"].as_str()) == Some("succeeded");
    let answered = job.exit_code() == 0 || (kind == "reconcile" && job.exit_code() == 1);
    if !succeeded || !answered {
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        bail!(
            "consumer {kind} exited {status} with {:?}; last standard error lines (newest first): {tail:#?}",
            job.report()
        );
    }
    if log != "warn" {
        eprintln!("--- consumer {kind} standard error ---\n{stderr}");
    }
    Ok(job)
}

/// Samples what the other backends of the bench database do, every 10 ms, on a
/// connection of its own.
struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: JoinHandle<Vec<(Duration, Vec<String>)>>,
}

impl Sampler {
    fn start(db: &TestDatabase, started: Instant) -> Self {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            what: String,
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut conn = db.connect();
        let stopping = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let rows: Vec<Row> = diesel::sql_query(
                    "SELECT state || ' ' || coalesce(wait_event_type || ':' || wait_event, 'CPU')                        || ' | ' || left(regexp_replace(query, '[[:space:]]+', ' ', 'g'), 110) AS what                      FROM pg_stat_activity WHERE datname = current_database()                        AND pid <> pg_backend_pid() AND backend_type = 'client backend'                        AND state <> 'idle'",
                )
                .load(&mut conn)
                .unwrap_or_default();
                samples.push((
                    started.elapsed(),
                    rows.into_iter().map(|r| r.what).collect(),
                ));
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        Self { stop, handle }
    }

    fn stop(self) -> Vec<(Duration, Vec<String>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().expect("the sampler")
    }
}

/// `VmHWM` of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the catch-up took.
struct CatchUpRun {
    /// From the restarted consumer's spawn to the cursor at the newest event.
    from_spawn: Duration,
    /// From its "consumer started" log line to the same.
    from_started: Duration,
    /// `last_poll_at - caught_up_at` of the poll that caught up (its walk and applies).
    poll_seconds: Option<f64>,
    requests: Requests,
    renamed: i64,
    peak_rss_kib: u64,
    generated_in: Duration,
}

impl CatchUpRun {
    /// From "consumer started" less the poll interval, which the first poll waits.
    fn catch_up(&self) -> Duration {
        self.from_started
            .saturating_sub(Duration::from_secs(POLL_SECS))
    }
}

/// A `consumer --topic stripe` with the catch-up every second and no reconcile schedule.
struct Serving {
    child: Child,
    spawned: Instant,
    /// When the "consumer started" line arrived.
    started: Arc<Mutex<Option<Instant>>>,
}

impl Serving {
    fn start(db: &TestDatabase, stripe_base: &str, rps: u32) -> anyhow::Result<Self> {
        let mut command = processes::consumer(
            stack::bin("consumer")?,
            &db.url,
            // Nobody listens there: ZeroMQ connects lazily, and the catch-up needs no server.
            &format!("tcp://127.0.0.1:{}", stack::free_port()),
            stripe_base,
        );
        command
            .env("STRIPE_MAX_RPS", rps.to_string())
            .env("STRIPE_EVENTS_POLL_SECS", POLL_SECS.to_string())
            .env("RECONCILE_INTERVAL_HOURS", "0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .context("starting consumer --topic stripe")?;
        let started = Arc::new(Mutex::new(None));
        let stderr = child.stderr.take().context("stderr")?;
        let seen = started.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let line = strip_ansi(&line);
                if line.contains("consumer started") {
                    *seen.lock().expect("started") = Some(Instant::now());
                }
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("consumer: {line}");
                }
            }
        });
        Ok(Self {
            child,
            spawned,
            started,
        })
    }

    fn running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("consumer --topic stripe exited {status}"),
            None => Ok(()),
        }
    }

    /// SIGTERM, and its exit.
    fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed: {status}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("consumer --topic stripe did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Stripe cursor's row.
#[derive(QueryableByName, Debug)]
struct Cursor {
    #[diesel(sql_type = Nullable<Text>)]
    last_event_id: Option<String>,
    #[diesel(sql_type = Nullable<Double>)]
    caught_up_at: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    last_poll_at: Option<f64>,
    #[diesel(sql_type = Double)]
    now: f64,
}

fn cursor(conn: &mut PgConnection) -> anyhow::Result<Option<Cursor>> {
    Ok(diesel::sql_query(
        "SELECT last_event_id, extract(epoch FROM caught_up_at)::float8 AS caught_up_at, \
           extract(epoch FROM last_poll_at)::float8 AS last_poll_at, \
           extract(epoch FROM clock_timestamp())::float8 AS now \
         FROM sync_cursors WHERE provider = 'stripe'",
    )
    .get_result(conn)
    .optional()?)
}

/// Polls `check` every 20 ms until it answers `Some` or `timeout` passes.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(answer) = check()? {
            return Ok(answer);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking client for the sandbox.
struct Api {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            client: stack::client(GENERATORS),
            base: base.to_owned(),
        })
    }

    /// The newest event's id.
    fn newest_event(&self) -> anyhow::Result<String> {
        self.runtime.block_on(async {
            let page: Value = self
                .client
                .get(format!("{}/v1/events?limit=1", self.base))
                .bearer_auth(STRIPE_KEY)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            page["data"][0]["id"]
                .as_str()
                .map(str::to_owned)
                .context("no event in the sandbox")
        })
    }

    /// Renames each customer to `Caught Up <i>`, over [`GENERATORS`] connections.
    fn rename(&self, ids: &[String], prefix: &str) -> anyhow::Result<()> {
        let ids = Arc::new(ids.to_vec());
        let prefix = prefix.to_owned();
        self.runtime.block_on(async {
            let mut workers = Vec::new();
            for w in 0..GENERATORS {
                let (client, base, ids, prefix) = (
                    self.client.clone(),
                    self.base.clone(),
                    ids.clone(),
                    prefix.clone(),
                );
                workers.push(tokio::spawn(async move {
                    for (i, id) in ids.iter().enumerate().skip(w).step_by(GENERATORS) {
                        let status = client
                            .post(format!("{base}/v1/customers/{id}"))
                            .bearer_auth(STRIPE_KEY)
                            .header("Content-Type", "application/x-www-form-urlencoded")
                            .body(format!("name={}+{i}", prefix.replace(' ', "+")))
                            .send()
                            .await?
                            .status();
                        if !status.is_success() {
                            bail!("renaming {id} answered {status}");
                        }
                    }
                    Ok(())
                }));
            }
            for worker in workers {
                worker.await??;
            }
            Ok(())
        })
    }
}

fn catch_up(db: &TestDatabase, settings: &Settings) -> anyhow::Result<CatchUpRun> {
    let events = settings.events;
    let sandbox = SandboxProcess::start(settings.customers, settings.invoices, None)?;
    let api = Api::new(&sandbox.base_url)?;
    let mut conn = db.connect();
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Text)]
        external_id: String,
    }
    let ids: Vec<String> = diesel::sql_query(format!(
        "SELECT external_id FROM provider_links WHERE provider = 'stripe' \
           AND external_id IS NOT NULL ORDER BY external_id LIMIT {}",
        events + 1
    ))
    .load::<Id>(&mut conn)?
    .into_iter()
    .map(|r| r.external_id)
    .collect();
    if ids.len() != events + 1 {
        bail!("only {} linked customers to rename", ids.len());
    }
    let (primer, renamed) = ids.split_first().expect("ids");

    // A consumer creates the cursor and applies one event, so the catch-up later walks
    // forward from a cursor as it does after any stop.
    let mut first = Serving::start(db, &sandbox.base_url, settings.max_rps)?;
    wait_for("the events cursor", Duration::from_secs(60), || {
        first.running()?;
        Ok(cursor(&mut conn)?.map(|_| ()))
    })?;
    api.rename(std::slice::from_ref(primer), "Primer")?;
    let primer_event = api.newest_event()?;
    wait_for(
        "the cursor at the primer event",
        Duration::from_secs(60),
        || {
            first.running()?;
            Ok(cursor(&mut conn)?.filter(|c| c.last_event_id.as_deref() == Some(&primer_event)))
        },
    )?;
    let stopped = first.stop()?;
    if !stopped.success() {
        bail!("consumer --topic stripe exited {stopped} after SIGTERM");
    }

    // The changes made while no consumer runs.
    let generating = Instant::now();
    api.rename(renamed, "Caught Up")?;
    let generated_in = generating.elapsed();
    let newest = api.newest_event()?;
    let before = sandbox.settled_counts();
    let spawned_pg = cursor(&mut conn)?.context("the cursor")?.now;

    let mut second = Serving::start(db, &sandbox.base_url, settings.max_rps)?;
    let (caught_up_at, pg_at) = wait_for(
        "the cursor at the newest event",
        Duration::from_secs(600),
        || {
            second.running()?;
            Ok(cursor(&mut conn)?
                .filter(|c| c.last_event_id.as_deref() == Some(&newest))
                .map(|c| (Instant::now(), c.now)))
        },
    )?;
    let from_spawn = caught_up_at - second.spawned;
    let from_started = second
        .started
        .lock()
        .expect("started")
        .map(|s| caught_up_at - s)
        .unwrap_or(from_spawn);
    // The poll that caught up records its start (caught_up_at) and end (last_poll_at)
    // just after its last page committed; the next one, a second later, moves
    // caught_up_at past `pg_at`. Rows from before this consumer's spawn are the first
    // consumer's.
    let poll_seconds = wait_for("the poll's end", Duration::from_secs(5), || {
        let c = cursor(&mut conn)?.context("the cursor")?;
        Ok(match (c.caught_up_at, c.last_poll_at) {
            (Some(began), _) if began >= pg_at => Some(None),
            (Some(began), Some(ended)) if began > spawned_pg && ended >= began => {
                Some(Some(ended - began))
            }
            _ => None,
        })
    })
    .unwrap_or(None);
    // The poll's reads all happened before its last page committed; the next poll
    // starts a second after this one ended.
    let requests = sandbox.settled_counts().since(&before);
    let renamed_now = db.count_where("customers", "name LIKE 'Caught Up %'");
    let peak_rss_kib = vm_hwm_kib(second.child.id()).unwrap_or(0);
    let stopped = second.stop()?;
    if !stopped.success() {
        bail!("consumer --topic stripe exited {stopped} after SIGTERM");
    }
    if renamed_now != events as i64 {
        bail!("{renamed_now} customers carry the new names, not {events}");
    }
    Ok(CatchUpRun {
        from_spawn,
        from_started,
        poll_seconds,
        requests,
        renamed: renamed_now,
        peak_rss_kib,
        generated_in,
    })
}
