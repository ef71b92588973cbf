//! Connection storm: many clients connect at once, each sends one request and keeps its
//! connection open a while. Shows that the server's memory stays bounded (the server serves
//! `HTTP_MAX_CONNECTIONS` at a time) and that every client is served in the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stack::{Options, Stack};
use crate::stats::Recorder;

/// One client: connect, one keep-alive request for an unknown route (no database work),
/// then hold the connection for `hold`. Answers how long the answer took to arrive.
async fn client(address: &str, hold: Duration) -> std::io::Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await?;
    stream
        .write_all(b"GET /storm HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    if !answer.starts_with(b"HTTP/1.1 404") {
        return Err(std::io::Error::other("unexpected answer"));
    }
    let waited = started.elapsed();
    tokio::time::sleep(hold).await;
    Ok(waited)
}

pub async fn run(clients: usize, hold: Duration) -> anyhow::Result<()> {
    // Every client holds a descriptor here; the server needs its own.
    let limit = rlimit::increase_nofile_limit(clients as u64 + 256)?;
    anyhow::ensure!(
        limit > clients as u64 + 64,
        "{clients} clients need as many open files, and the limit here is {limit}: raise it (ulimit -n) or pass fewer --clients"
    );
    // The server's limit comes from the shell, so that one storm can be run with and
    // without it; the summary says which.
    let max_connections = std::env::var("HTTP_MAX_CONNECTIONS").ok();
    let stack = Stack::start_with(Options {
        http_max_connections: max_connections.clone(),
        ..Options::default()
    })
    .await?;
    let address = stack.base_url.trim_start_matches("http://").to_owned();
    let recorder = Arc::new(Recorder::default());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (address, recorder) = (address.clone(), recorder.clone());
        tasks.push(tokio::spawn(async move {
            match client(&address, hold).await {
                Ok(waited) => {
                    recorder.record(true, waited);
                    None
                }
                Err(e) => {
                    recorder.record(false, Duration::ZERO);
                    Some(e.to_string())
                }
            }
        }));
    }
    let mut first_error = None;
    for task in tasks {
        if let Some(error) = task.await? {
            first_error.get_or_insert(error);
        }
    }
    let elapsed = started.elapsed();
    let memory = stack.peak_memory_kib();
    let summary = recorder.summary(elapsed);
    let served = recorder.ok();
    println!(
        "connection storm ({clients} clients, each holding its connection {} ms, HTTP_MAX_CONNECTIONS {}): served {served}, errors {}{}, wait for an answer p50 {:.1} ms, p99 {:.1} ms, {:.1} s in all, server peak RSS {} KiB",
        hold.as_millis(),
        max_connections.as_deref().unwrap_or("default"),
        summary.errors,
        first_error.map(|e| format!(" (first: {e})")).unwrap_or_default(),
        summary.p50_ms,
        summary.p99_ms,
        elapsed.as_secs_f64(),
        memory.get("server").copied().unwrap_or(0),
    );
    println!(
        "{}",
        json!({"scenario": "storm", "clients": clients, "hold_ms": hold.as_millis() as u64,
               "http_max_connections": max_connections,
               "served": served, "errors": summary.errors, "p50_ms": summary.p50_ms,
               "p99_ms": summary.p99_ms, "seconds": elapsed.as_secs_f64(), "peak_rss_kib": memory})
    );
    stack.stop();
    Ok(())
}
