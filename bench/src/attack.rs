//! `loadgen attack` (issue 18, "nothing on the network can stall or crash the server"):
//! hostile peers run from this one process against the real server while a steady client,
//! on a thread and runtime of its own, measures its own latency on the task API. A baseline
//! phase without an attack comes first, then one phase per attack, each for `--duration`.
//! Each phase prints a line and a JSON line: the steady client's requests, errors, p50, p99
//! and max, what the attacker got back, and whether the server still runs, answers health
//! and publishes on ZeroMQ afterwards. A server that dies ends the run with
//! `server_alive: false` instead of hanging it.
//!
//! The attackers speak raw TCP (HTTP/1.1 and ZMTP 3.0 by hand), so they work whichever
//! ZeroMQ implementation the server is built with.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use shared::testing::zmtp;

use crate::http;
use crate::stack::{Options, Stack};
use crate::stats::Recorder;

/// `loadgen attack`'s flags.
#[derive(Args)]
pub struct Settings {
    /// Seconds of each phase: the baseline and every attack
    #[arg(long, default_value = "30")]
    duration: u64,
    /// Run the baseline and this attack only
    #[arg(long, value_enum)]
    only: Option<Attack>,
    /// What the steady client sends: creates (POST /api/v1/customers) or reads
    /// (GET /api/v1/customers?limit=1), both with the token
    #[arg(long, value_enum, default_value = "create")]
    steady: Steady,
    /// The steady client's requests per second, open loop: latency counts from each
    /// request's due time, so a stalled server is charged for the queue behind it
    #[arg(long, default_value = "200", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    rate: u64,
    /// The steady client's keep-alive connections
    #[arg(long, default_value = "16")]
    steady_connections: usize,
    /// signature-flood: deliveries in flight at once, each on a new connection
    #[arg(long, default_value = "4")]
    flood_connections: usize,
    /// signature-flood: `v1=` entries in each Stripe-Signature header
    #[arg(long, default_value = "1800")]
    flood_entries: usize,
    /// slow-bodies: connections trickling a body, half to the webhook, half to creates
    #[arg(long, default_value = "256")]
    slow_connections: usize,
    /// zmq-garbage: connections to the PUB port at once
    #[arg(long, default_value = "8")]
    zmq_connections: usize,
    /// zmq-garbage: subscriptions sent on each subscribing connection
    #[arg(long, default_value = "10000")]
    zmq_subscriptions: usize,
    /// health-flood: keep-alive connections looping on GET /api/v1/health
    #[arg(long, default_value = "48")]
    health_connections: usize,
    /// connection-flood: loops that connect and reset as fast as they can
    #[arg(long, default_value = "32")]
    churn_connections: usize,
}

/// One attack.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Attack {
    /// Webhook deliveries of a 1 MB body whose Stripe-Signature holds thousands of entries
    SignatureFlood,
    /// Request heads that announce a body, which then arrives one byte per 100 ms
    SlowBodies,
    /// Unauthenticated GET /api/v1/health as fast as the server answers
    HealthFlood,
    /// Connections opened and reset at once
    ConnectionFlood,
    /// Hostile ZMTP on the PUB port: a 2^44-byte frame, truncated greetings, garbage,
    /// other mechanisms, subscription floods
    ZmqGarbage,
}

impl Attack {
    /// Every attack, in the order they run: the one that can kill an unpatched server last.
    const ALL: [Attack; 5] = [
        Attack::SignatureFlood,
        Attack::SlowBodies,
        Attack::HealthFlood,
        Attack::ConnectionFlood,
        Attack::ZmqGarbage,
    ];

    fn name(self) -> &'static str {
        match self {
            Attack::SignatureFlood => "signature-flood",
            Attack::SlowBodies => "slow-bodies",
            Attack::HealthFlood => "health-flood",
            Attack::ConnectionFlood => "connection-flood",
            Attack::ZmqGarbage => "zmq-garbage",
        }
    }

    fn connections(self, settings: &Settings) -> usize {
        match self {
            Attack::SignatureFlood => settings.flood_connections,
            Attack::SlowBodies => settings.slow_connections,
            Attack::HealthFlood => settings.health_connections,
            Attack::ConnectionFlood => settings.churn_connections,
            Attack::ZmqGarbage => settings.zmq_connections,
        }
    }

    fn describe(self, settings: &Settings) -> String {
        let connections = self.connections(settings);
        match self {
            Attack::SignatureFlood => format!(
                "{connections} connections, {} v1 entries, {FLOOD_BODY} byte bodies",
                settings.flood_entries
            ),
            Attack::SlowBodies => format!(
                "{connections} connections, 1 byte per {} ms, HTTP_MAX_CONNECTIONS {}",
                TRICKLE.as_millis(),
                std::env::var("HTTP_MAX_CONNECTIONS")
                    .as_deref()
                    .unwrap_or("default")
            ),
            Attack::HealthFlood => format!("{connections} connections"),
            Attack::ConnectionFlood => format!("{connections} loops"),
            Attack::ZmqGarbage => format!(
                "{connections} connections, {} subscriptions per subscriber",
                settings.zmq_subscriptions
            ),
        }
    }
}

/// What the steady client sends.
#[derive(Clone, Copy, ValueEnum)]
pub enum Steady {
    /// POST /api/v1/customers, a new customer each (202)
    Create,
    /// GET /api/v1/customers?limit=1 (200)
    List,
}

/// A steady request that takes longer counts as an error (and its connection is replaced).
const STEADY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the health and publish checks after a phase may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed connect, so that a refusing (or dead) server is not spun on.
const RECONNECT_PACE: Duration = Duration::from_millis(10);
/// One byte of a slow body per this interval.
const TRICKLE: Duration = Duration::from_millis(100);
/// How long a ZeroMQ attacker keeps its connection after sending, unless the server
/// closes it first.
const ZMQ_HOLD: Duration = Duration::from_secs(1);
/// The signature flood's body: under the webhook's 1 MiB limit, so a server that reads it
/// does read all of it.
const FLOOD_BODY: usize = 1_000_000;

/// Where the attackers and the steady client go.
struct Target {
    /// `host:port` of the HTTP server.
    http: String,
    base_url: String,
    /// `host:port` of the ZeroMQ PUB socket.
    zmq: String,
    authorization: String,
}

/// Outcomes by name, counted.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, outcome: &str) {
        let mut counts = self.0.lock().unwrap();
        match counts.get_mut(outcome) {
            Some(n) => *n += 1,
            None => {
                counts.insert(outcome.to_owned(), 1);
            }
        }
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }

    fn describe(&self) -> String {
        let counts = self.counts();
        if counts.is_empty() {
            return "nothing".into();
        }
        counts
            .iter()
            .map(|(outcome, n)| format!("{outcome} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs the baseline and the attacks; see the module documentation.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let attackers: usize = Attack::ALL.iter().map(|a| a.connections(&settings)).sum();
    // Every attacking connection holds a descriptor here; the server raises its own.
    let wanted = (attackers + settings.steady_connections) as u64 + 256;
    let limit = rlimit::increase_nofile_limit(wanted)?;
    anyhow::ensure!(
        limit >= wanted,
        "these attacks need {wanted} open files and the limit here is {limit}: raise it (ulimit -n) or pass fewer connections"
    );
    // As for the storm: the server's connection limit comes from the shell.
    let max_connections = std::env::var("HTTP_MAX_CONNECTIONS").ok();
    let mut stack = Stack::start_with(Options {
        http_max_connections: max_connections.clone(),
        ..Options::default()
    })
    .await?;
    let target = Arc::new(Target {
        http: stack.base_url.trim_start_matches("http://").to_owned(),
        base_url: stack.base_url.clone(),
        zmq: stack.zmq_endpoint.trim_start_matches("tcp://").to_owned(),
        authorization: format!("Bearer {}", stack.token),
    });
    let mut phases = vec![None];
    phases.extend(
        Attack::ALL
            .into_iter()
            .filter(|a| settings.only.is_none_or(|only| only == *a))
            .map(Some),
    );
    for (index, attack) in phases.into_iter().enumerate() {
        if !phase(&mut stack, &target, &settings, index, attack).await? {
            let name = attack.map_or("baseline", Attack::name);
            stack.stop();
            anyhow::bail!("the server exited during {name}; the later phases did not run");
        }
    }
    stack.stop();
    Ok(())
}

/// One phase: `attack` (none for the baseline) and the steady client for `--duration`, then
/// the checks. Prints its lines; answers whether the server still runs.
async fn phase(
    stack: &mut Stack,
    target: &Arc<Target>,
    settings: &Settings,
    index: usize,
    attack: Option<Attack>,
) -> anyhow::Result<bool> {
    let stop = Arc::new(AtomicBool::new(false));
    let steady = start_steady(target.clone(), settings, index, stop.clone()).await?;
    let started = steady.started;
    let deadline = started + Duration::from_secs(settings.duration);
    let tally = Arc::new(Tally::default());
    let answered = Arc::new(Recorder::default());
    let mut attackers = JoinSet::new();
    if let Some(attack) = attack {
        spawn_attack(attack, settings, target, &tally, &answered, &mut attackers);
    }
    let exit = tokio::select! {
        status = server_exit(stack) => Some(status),
        _ = tokio::time::sleep_until(deadline.into()) => None,
    };
    if exit.is_some() {
        stop.store(true, Ordering::Relaxed);
    }
    attackers.shutdown().await;
    let (recorder, errors) = steady.result.await?;
    let elapsed = started.elapsed();

    let exit = exit.or_else(|| stack.server_exit());
    let (healthy, publishes) = if exit.is_none() {
        (health(target).await, publishes(target, index).await)
    } else {
        (false, false)
    };
    let steady = recorder.summary(elapsed);
    let answered = answered.summary(elapsed);
    let name = attack.map_or("baseline", Attack::name);
    let detail = attack.map_or("no attack".into(), |a| a.describe(settings));
    let mode = match settings.steady {
        Steady::Create => "creates",
        Steady::List => "reads",
    };
    let errors_by_kind = errors.counts();
    let server = match exit {
        Some(status) => format!("server EXITED ({status})"),
        None => format!(
            "server alive, health {}, ZeroMQ {}",
            if healthy {
                "answers"
            } else {
                "DOES NOT ANSWER"
            },
            if publishes {
                "publishes"
            } else {
                "DOES NOT PUBLISH"
            }
        ),
    };
    let attacker = match attack {
        None => "none".into(),
        Some(_) if answered.throughput > 0.0 => format!(
            "{} (answered p50 {:.1} ms, max {:.1} ms)",
            tally.describe(),
            answered.p50_ms,
            answered.max_ms
        ),
        Some(_) => tally.describe(),
    };
    println!(
        "attack {name} ({detail}, {:.0} s): steady {mode} at {}/s: {} requests, {} errors{}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; attacker: {attacker}; {server}",
        elapsed.as_secs_f64(),
        settings.rate,
        recorder.count(),
        steady.errors,
        if errors_by_kind.is_empty() {
            String::new()
        } else {
            format!(" ({})", errors.describe())
        },
        steady.p50_ms,
        steady.p99_ms,
        steady.max_ms,
    );
    println!(
        "{}",
        json!({"scenario": "attack", "phase": name, "connections": attack.map(|a| a.connections(settings)),
               "seconds": elapsed.as_secs_f64(), "steady": mode, "rate": settings.rate,
               "requests": recorder.count(), "errors": steady.errors, "error_kinds": errors_by_kind,
               "p50_ms": steady.p50_ms, "p99_ms": steady.p99_ms, "max_ms": steady.max_ms,
               "attacker": tally.counts(), "attacker_answered_p50_ms": answered.p50_ms,
               "attacker_answered_max_ms": answered.max_ms,
               "http_max_connections": std::env::var("HTTP_MAX_CONNECTIONS").ok(),
               "server_alive": exit.is_none(), "server_exit": exit.map(|s| s.to_string()),
               "server_healthy": healthy, "server_publishes": publishes,
               "peak_rss_kib": stack.peak_memory_kib()})
    );
    Ok(exit.is_none())
}

/// Resolves when the server process has ended.
async fn server_exit(stack: &mut Stack) -> ExitStatus {
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        poll.tick().await;
        if let Some(status) = stack.server_exit() {
            return status;
        }
    }
}

/// Starts `connections` tasks of `attack`.
fn spawn_attack(
    attack: Attack,
    settings: &Settings,
    target: &Arc<Target>,
    tally: &Arc<Tally>,
    answered: &Arc<Recorder>,
    attackers: &mut JoinSet<()>,
) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let mut rng = Rng(now);
    let flood = (attack == Attack::SignatureFlood).then(|| {
        Arc::new(signature_flood_request(
            &target.http,
            settings.flood_entries,
            now,
            &mut rng,
        ))
    });
    for n in 0..attack.connections(settings) {
        let (target, tally, answered) = (target.clone(), tally.clone(), answered.clone());
        match attack {
            Attack::SignatureFlood => {
                let request = flood.clone().expect("built above");
                attackers.spawn(signature_flood(target, request, tally, answered))
            }
            Attack::SlowBodies => {
                let webhook = n % 2 == 0;
                let head = slow_head(&target, webhook, now, &mut rng);
                attackers.spawn(slow_body(target, head, tally, answered))
            }
            Attack::HealthFlood => attackers.spawn(health_flood(target, tally, answered)),
            Attack::ConnectionFlood => attackers.spawn(connection_flood(target, tally)),
            Attack::ZmqGarbage => attackers.spawn(zmq_garbage(
                target,
                Rng(now ^ n as u64),
                n,
                settings.zmq_subscriptions,
                tally,
                answered,
            )),
        };
    }
}

/// The steady client, running on a thread and a runtime of its own so that the attackers'
/// tasks do not delay its timers.
struct SteadyClient {
    /// When its clock started: its connections were open by then.
    started: Instant,
    /// Its recorder and its errors by kind, once its run is over.
    result: oneshot::Receiver<(Arc<Recorder>, Arc<Tally>)>,
}

/// Opens the steady client's connections, then starts its clock and its open loop for
/// `--duration` (or until `stop` is set).
async fn start_steady(
    target: Arc<Target>,
    settings: &Settings,
    phase: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<SteadyClient> {
    let (clock, started) = oneshot::channel();
    let (done, result) = oneshot::channel();
    let (kind, rate) = (settings.steady, settings.rate);
    let duration = Duration::from_secs(settings.duration);
    // As in `api --rate`: no more connections than requests per second, so none idles past
    // the server's keep-alive.
    let connections = settings.steady_connections.clamp(1, rate as usize);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the steady client");
        let recorder = Arc::new(Recorder::default());
        let errors = Arc::new(Tally::default());
        runtime.block_on(async {
            // Connected before the attack, as the API's clients are: an attack that takes
            // every connection slot (more attackers than HTTP_MAX_CONNECTIONS) stalls new
            // clients, not these.
            let mut opened = Vec::with_capacity(connections);
            for _ in 0..connections {
                let mut connection = http::Connection::new(&target.base_url);
                let _ = tokio::time::timeout(
                    STEADY_TIMEOUT,
                    connection.send("GET", "/api/v1/health", &[], b""),
                )
                .await;
                opened.push(connection);
            }
            let started = Instant::now();
            let schedule = Arc::new(OpenLoop {
                started,
                deadline: started + duration,
                rate,
                next: AtomicU64::new(0),
                stop,
            });
            let _ = clock.send(schedule.started);
            let mut workers = JoinSet::new();
            for connection in opened {
                workers.spawn(steady_worker(
                    connection,
                    target.clone(),
                    kind,
                    phase,
                    schedule.clone(),
                    recorder.clone(),
                    errors.clone(),
                ));
            }
            while workers.join_next().await.is_some() {}
            // Requests that fell due while every connection was stuck were never sent: they
            // count as errors too, so a stall cannot hide behind a short list of samples.
            if !schedule.stop.load(Ordering::Relaxed) {
                let due = due_within(duration, rate);
                let sent = recorder.count();
                for _ in sent..due {
                    errors.add("never sent");
                    recorder.record(false, Duration::ZERO);
                }
            }
        });
        let _ = done.send((recorder, errors));
    });
    Ok(SteadyClient {
        started: started.await?,
        result,
    })
}

/// Requests an open loop of `rate` per second makes due within `duration`.
fn due_within(duration: Duration, rate: u64) -> u64 {
    (duration.as_nanos() * rate as u128).div_ceil(1_000_000_000) as u64
}

/// The steady client's schedule, shared by its connections.
struct OpenLoop {
    started: Instant,
    deadline: Instant,
    rate: u64,
    /// The next request's number.
    next: AtomicU64,
    stop: Arc<AtomicBool>,
}

/// One steady connection: takes the next request due, waits for its time, sends it.
async fn steady_worker(
    mut connection: http::Connection,
    target: Arc<Target>,
    kind: Steady,
    phase: usize,
    schedule: Arc<OpenLoop>,
    recorder: Arc<Recorder>,
    errors: Arc<Tally>,
) {
    let headers = [("Authorization", target.authorization.as_str())];
    loop {
        let n = schedule.next.fetch_add(1, Ordering::Relaxed);
        // Open loop, as `api --rate`: request n is due at started + n / rate and its
        // latency counts from then (the first millisecond of a timer's lateness excepted:
        // tokio's timer ticks in milliseconds).
        let due = schedule.started
            + Duration::from_nanos((n as u128 * 1_000_000_000 / schedule.rate as u128) as u64);
        if due >= schedule.deadline || schedule.stop.load(Ordering::Relaxed) {
            return;
        }
        let since = if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
            Instant::now().min(due + Duration::from_millis(1))
        } else {
            due
        };
        let request = match kind {
            Steady::Create => {
                let body = serde_json::to_vec(&json!({"id": format!("a{phase}-{n}"),
                    "name": format!("Steady {n}"), "email": format!("a{phase}-{n}@example.com")}))
                .expect("serialisable");
                tokio::time::timeout(
                    STEADY_TIMEOUT,
                    connection.post("/api/v1/customers", &headers, &body),
                )
                .await
            }
            Steady::List => {
                tokio::time::timeout(
                    STEADY_TIMEOUT,
                    connection.send("GET", "/api/v1/customers?limit=1", &headers, b""),
                )
                .await
            }
        };
        let ok = match request {
            Ok(Ok(status)) if (200..300).contains(&status) => true,
            Ok(Ok(status)) => {
                errors.add(&format!("status {status}"));
                false
            }
            Ok(Err(e)) => {
                errors.add(&format!("{:?}", e.kind()));
                false
            }
            Err(_) => {
                // Abandoned mid-exchange: the connection's state is unknown.
                connection = http::Connection::new(&target.base_url);
                errors.add("timed out");
                false
            }
        };
        recorder.record(ok, since.elapsed());
    }
}

/// Whether `GET /api/v1/health` answers 200 on a new connection.
async fn health(target: &Target) -> bool {
    let mut connection = http::Connection::new(&target.base_url);
    matches!(
        tokio::time::timeout(
            CHECK_TIMEOUT,
            connection.send("GET", "/api/v1/health", &[], b"")
        )
        .await,
        Ok(Ok(200))
    )
}

/// Whether a subscriber that connects now receives an announcement: subscribes to every
/// topic over raw ZMTP, then creates customers (one each 100 ms, as the subscription may
/// not have reached the publisher yet) until a message arrives or [`CHECK_TIMEOUT`] passes.
async fn publishes(target: &Target, phase: usize) -> bool {
    let check = async {
        let mut subscriber = TcpStream::connect(&target.zmq).await?;
        subscriber.write_all(&hello("NULL")).await?;
        answered_handshake(&mut subscriber).await?;
        // Only the providers' topics can be subscribed (a prefix such as "" is ignored).
        subscriber.write_all(&zmtp::subscribe(b"stripe")).await?;
        let mut connection = http::Connection::new(&target.base_url);
        let headers = [("Authorization", target.authorization.as_str())];
        let mut create = tokio::time::interval(Duration::from_millis(100));
        let mut frames = ZmtpFrames {
            greeted: true,
            ..ZmtpFrames::default()
        };
        for n in 0.. {
            tokio::select! {
                _ = create.tick() => {
                    let body = serde_json::to_vec(&json!({"id": format!("probe{phase}-{n}"),
                        "name": "Probe", "email": format!("probe{phase}-{n}@example.com")}))
                    .expect("serialisable");
                    connection.post("/api/v1/customers", &headers, &body).await?;
                }
                message = frames.next_message(&mut subscriber) => {
                    message?;
                    return Ok(true);
                }
            }
        }
        Ok::<_, io::Error>(false)
    };
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, check).await,
        Ok(Ok(true))
    )
}

/// Reads a ZMTP 3 stream after the peer's greeting, frame by frame.
#[derive(Default)]
struct ZmtpFrames {
    buffer: Vec<u8>,
    greeted: bool,
}

impl ZmtpFrames {
    /// Resolves at the first message frame (commands such as READY are skipped). Cancel
    /// safe: what was read stays in the buffer.
    async fn next_message(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        loop {
            if !self.greeted && self.buffer.len() >= GREETING_LEN {
                self.buffer.drain(..GREETING_LEN);
                self.greeted = true;
            }
            if self.greeted {
                if let Some((flags, len)) = frame_header(&self.buffer) {
                    if self.buffer.len() >= len {
                        self.buffer.drain(..len);
                        if flags & 0x04 == 0 {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A frame's flags and its whole length (header and body), once its header has arrived.
fn frame_header(buffer: &[u8]) -> Option<(u8, usize)> {
    let flags = *buffer.first()?;
    if flags & 0x02 == 0 {
        Some((flags, 2 + *buffer.get(1)? as usize))
    } else {
        let size: [u8; 8] = buffer.get(1..9)?.try_into().ok()?;
        Some((flags, 9 + u64::from_be_bytes(size) as usize))
    }
}

/// A new connection; a failure is counted and paced. The socket resets on close
/// (SO_LINGER 0), so that thousands of closed connections do not use up the loopback's
/// ephemeral ports in TIME_WAIT.
async fn connect(address: &str, tally: &Tally) -> Option<TcpStream> {
    match TcpStream::connect(address).await {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            // Deprecated because a non-zero linger blocks the thread on close; zero resets
            // at once.
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            Some(stream)
        }
        Err(e) => {
            tally.add(&format!("connect {:?}", e.kind()));
            tokio::time::sleep(RECONNECT_PACE).await;
            None
        }
    }
}

/// Reads until a response's status line has arrived: `Some(status)`, or `None` when the
/// server closed the connection first.
async fn read_status(stream: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Option<u16>> {
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(status) = status_line(&response) {
            return Ok(Some(status));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        response.extend_from_slice(&chunk[..n]);
    }
}

/// The status of a response whose first line has arrived.
fn status_line(response: &[u8]) -> Option<u16> {
    let end = response.windows(2).position(|w| w == b"\r\n")?;
    std::str::from_utf8(&response[..end])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Counts how an attacking request ended: its status (and how long it took), or how the
/// connection failed.
fn count_answer(
    answer: io::Result<Option<u16>>,
    since: Instant,
    tally: &Tally,
    answered: &Recorder,
) {
    match answer {
        Ok(Some(status)) => {
            answered.record(true, since.elapsed());
            tally.add(&format!("status {status}"));
        }
        Ok(None) => tally.add("closed without an answer"),
        Err(e) => tally.add(&format!("{:?}", e.kind())),
    }
}

/// Writes with `write` while waiting for the answer with `read`; a server may answer (and
/// stop reading) before the request is complete, so the answer ends the exchange. Counts
/// a write the server cut short.
async fn exchange(
    write: impl Future<Output = io::Result<()>>,
    read: impl Future<Output = io::Result<Option<u16>>>,
    tally: &Tally,
) -> io::Result<Option<u16>> {
    tokio::pin!(write, read);
    let mut writing = true;
    loop {
        tokio::select! {
            answer = &mut read => return answer,
            written = &mut write, if writing => {
                writing = false;
                if written.is_err() {
                    tally.add("request cut short");
                }
            }
        }
    }
}

/// A webhook delivery whose Stripe-Signature holds `entries` wrong `v1` signatures for a
/// 1 MB body, as `bench/flood.sh` sends it; `Connection: close` so that each goes on a new
/// connection.
fn signature_flood_request(host: &str, entries: usize, now: u64, rng: &mut Rng) -> Vec<u8> {
    let mut signature = format!("t={now}");
    for _ in 0..entries {
        signature.push_str(",v1=");
        signature.push_str(&rng.hex(32));
    }
    let padding = FLOOD_BODY - r#"{"pad":""}"#.len();
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(padding));
    let mut request = format!(
        "POST /api/v1/endpoint/stripe HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nStripe-Signature: {signature}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

/// One signature-flood loop: a delivery per connection, over and over.
async fn signature_flood(
    target: Arc<Target>,
    request: Arc<Vec<u8>>,
    tally: Arc<Tally>,
    answered: Arc<Recorder>,
) {
    loop {
        let Some(mut stream) = connect(&target.http, &tally).await else {
            continue;
        };
        let since = Instant::now();
        let (mut reader, mut writer) = stream.split();
        let answer = exchange(writer.write_all(&request), read_status(&mut reader), &tally).await;
        count_answer(answer, since, &tally, &answered);
    }
}

/// The head of a request whose body the server will wait for: a webhook delivery with a
/// well-formed (wrong) signature and a 1 MiB body, or a create with the token and a
/// 60,000-byte body (under the 64 KiB JSON limit).
fn slow_head(target: &Target, webhook: bool, now: u64, rng: &mut Rng) -> Vec<u8> {
    let host = &target.http;
    if webhook {
        format!(
            "POST /api/v1/endpoint/stripe HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: 1048576\r\nStripe-Signature: t={now},v1={}\r\n\r\n",
            rng.hex(32)
        )
    } else {
        format!(
            "POST /api/v1/customers HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: 60000\r\nAuthorization: {}\r\n\r\n",
            target.authorization
        )
    }
    .into_bytes()
}

/// One slow-bodies connection: the head, then a byte of body per [`TRICKLE`] until the
/// server answers or closes; then again on a new connection.
async fn slow_body(target: Arc<Target>, head: Vec<u8>, tally: Arc<Tally>, answered: Arc<Recorder>) {
    loop {
        let Some(mut stream) = connect(&target.http, &tally).await else {
            continue;
        };
        tally.add("connections opened");
        let since = Instant::now();
        let (mut reader, mut writer) = stream.split();
        let answer = exchange(
            trickle(&mut writer, &head, since),
            read_status(&mut reader),
            &tally,
        )
        .await;
        count_answer(answer, since, &tally, &answered);
    }
}

/// Writes `head`, then a byte of body per [`TRICKLE`] from `since` on, until a write fails.
async fn trickle(
    writer: &mut (impl AsyncWriteExt + Unpin),
    head: &[u8],
    since: Instant,
) -> io::Result<()> {
    writer.write_all(head).await?;
    let mut tick = tokio::time::interval_at((since + TRICKLE).into(), TRICKLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // JSON allows leading whitespace, so the body stays acceptable as it grows.
        writer.write_all(b" ").await?;
    }
}

/// One health-flood connection: GET /api/v1/health, answer, again.
async fn health_flood(target: Arc<Target>, tally: Arc<Tally>, answered: Arc<Recorder>) {
    let mut connection = http::Connection::new(&target.base_url);
    loop {
        let since = Instant::now();
        match connection.send("GET", "/api/v1/health", &[], b"").await {
            Ok(status) => count_answer(Ok(Some(status)), since, &tally, &answered),
            Err(e) => {
                tally.add(&format!("{:?}", e.kind()));
                tokio::time::sleep(RECONNECT_PACE).await;
            }
        }
    }
}

/// One connection-flood loop: connect, reset, again.
async fn connection_flood(target: Arc<Target>, tally: Arc<Tally>) {
    loop {
        if connect(&target.http, &tally).await.is_some() {
            tally.add("connected and reset");
        }
    }
}

/// What a ZeroMQ attacker sends on one connection.
#[derive(Clone, Copy)]
enum Garbage {
    /// A valid handshake, then a message frame that announces 2^44 bytes.
    HugeFrame,
    /// The first bytes of a greeting only.
    TruncatedGreeting,
    /// Random bytes.
    RandomBytes,
    /// A greeting for the CURVE or the PLAIN mechanism, which the PUB socket does not use.
    WrongMechanism,
    /// A valid handshake, then many subscriptions to random topics.
    Subscriptions,
}

impl Garbage {
    const ALL: [Garbage; 5] = [
        Garbage::HugeFrame,
        Garbage::TruncatedGreeting,
        Garbage::RandomBytes,
        Garbage::WrongMechanism,
        Garbage::Subscriptions,
    ];

    fn name(self) -> &'static str {
        match self {
            Garbage::HugeFrame => "huge frame",
            Garbage::TruncatedGreeting => "truncated greeting",
            Garbage::RandomBytes => "random bytes",
            Garbage::WrongMechanism => "wrong mechanism",
            Garbage::Subscriptions => "subscriptions",
        }
    }

    /// What to send before the server's handshake answer, and what after it (libzmq
    /// refuses a peer's messages until its own READY has gone out, as ZMTP requires).
    fn bytes(self, rng: &mut Rng, subscriptions: usize) -> (Vec<u8>, Vec<u8>) {
        match self {
            Garbage::HugeFrame => {
                let mut frame = zmtp::long_frame(1 << 44);
                frame.extend((0..65_536).map(|_| rng.next() as u8));
                (hello("NULL"), frame)
            }
            Garbage::TruncatedGreeting => {
                let cut = 1 + rng.below(GREETING_LEN as u64 - 1) as usize;
                (zmtp::greeting("NULL", false)[..cut].to_vec(), Vec::new())
            }
            Garbage::RandomBytes => {
                let len = 1 + rng.below(4096) as usize;
                ((0..len).map(|_| rng.next() as u8).collect(), Vec::new())
            }
            Garbage::WrongMechanism => (
                hello(if rng.below(2) == 0 { "CURVE" } else { "PLAIN" }),
                Vec::new(),
            ),
            Garbage::Subscriptions => {
                let mut bytes = Vec::new();
                for _ in 0..subscriptions {
                    let topic: Vec<u8> = (0..1 + rng.below(64)).map(|_| rng.next() as u8).collect();
                    bytes.extend(zmtp::subscribe(&topic));
                }
                (hello("NULL"), bytes)
            }
        }
    }
}

/// One zmq-garbage loop: each kind of [`Garbage`] in turn, each on a new connection held
/// for [`ZMQ_HOLD`] unless the server closes it first.
async fn zmq_garbage(
    target: Arc<Target>,
    mut rng: Rng,
    first: usize,
    subscriptions: usize,
    tally: Arc<Tally>,
    answered: Arc<Recorder>,
) {
    for round in first.. {
        let kind = Garbage::ALL[round % Garbage::ALL.len()];
        let (first, then) = kind.bytes(&mut rng, subscriptions);
        let Some(mut stream) = connect(&target.zmq, &tally).await else {
            continue;
        };
        let since = Instant::now();
        if !then.is_empty() {
            let greeted = async {
                stream.write_all(&first).await?;
                answered_handshake(&mut stream).await
            };
            if let Err(e) = tokio::time::timeout(ZMQ_HOLD, greeted)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
            {
                tally.add(&format!("{}: handshake {:?}", kind.name(), e.kind()));
                continue;
            }
        }
        let bytes = if then.is_empty() { first } else { then };
        let (mut reader, mut writer) = stream.split();
        let send = async {
            writer.write_all(&bytes).await?;
            // Whatever the server sends back (its greeting) is read and dropped until it
            // closes the connection or the hold is over.
            std::future::pending::<io::Result<()>>().await
        };
        let drain = async {
            let mut chunk = [0u8; 4096];
            loop {
                if reader.read(&mut chunk).await? == 0 {
                    return Ok::<_, io::Error>(None);
                }
            }
        };
        let outcome = tokio::time::timeout(ZMQ_HOLD, exchange(send, drain, &tally)).await;
        let outcome = match outcome {
            Err(_) => "held".to_owned(),
            Ok(Ok(_)) => {
                answered.record(true, since.elapsed());
                "closed by the server".to_owned()
            }
            Ok(Err(e)) => format!("{:?}", e.kind()),
        };
        tally.add(&format!("{}: {outcome}", kind.name()));
    }
}

/// A ZMTP 3.0 greeting's length.
const GREETING_LEN: usize = 64;

/// Reads the server's greeting and its answer to our READY.
async fn answered_handshake(stream: &mut TcpStream) -> io::Result<()> {
    match zmtp::answer(stream).await {
        Some(body) if body.starts_with(b"\x05READY") => Ok(()),
        Some(_) => Err(io::ErrorKind::PermissionDenied.into()),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// A SUB peer's greeting with `mechanism` and its READY command.
fn hello(mechanism: &str) -> Vec<u8> {
    [zmtp::greeting(mechanism, false), zmtp::ready("SUB")].concat()
}

/// SplitMix64: garbage and wrong signatures need variety, not secrecy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `bytes` random bytes in lowercase hex.
    fn hex(&mut self, bytes: usize) -> String {
        (0..bytes)
            .map(|_| format!("{:02x}", self.next() as u8))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_give_the_whole_frame_length() {
        assert_eq!(frame_header(&[0x01]), None);
        assert_eq!(frame_header(&[0x01, 6]), Some((0x01, 8)));
        let mut long = vec![0x02];
        long.extend_from_slice(&300u64.to_be_bytes());
        assert_eq!(frame_header(&long[..8]), None);
        assert_eq!(frame_header(&long), Some((0x02, 309)));
    }

    #[test]
    fn a_status_is_read_once_its_line_is_complete() {
        assert_eq!(status_line(b"HTTP/1.1 408 Request Ti"), None);
        assert_eq!(status_line(b"HTTP/1.1 408 Request Timeout\r\n"), Some(408));
        assert_eq!(status_line(b"garbage\r\n"), None);
    }

    #[test]
    fn the_flood_request_is_a_megabyte_under_a_long_signature() {
        let request = signature_flood_request("h", 1800, 1_700_000_000, &mut Rng(1));
        let text = String::from_utf8(request).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), FLOOD_BODY);
        assert!(head.contains(&format!("Content-Length: {FLOOD_BODY}\r\n")));
        let signature = head
            .lines()
            .find_map(|l| l.strip_prefix("Stripe-Signature: "));
        assert_eq!(signature.unwrap().matches(",v1=").count(), 1800);
    }
}
