//! The ZeroMQ SUB side, on libzmq: one socket per server endpoint; each valid envelope
//! rings the doorbell of its provider's claim loop.
//!
//! The socket is held to bounds, whatever the peer at the endpoint sends: a message
//! longer than [`MAX_MESSAGE`] closes the connection, at most [`QUEUE`] messages wait to
//! be read, and a peer that stops answering heartbeats is dropped. libzmq gives up on an
//! endpoint whose peer broke the protocol, so on any disconnection the socket is opened
//! afresh, after a pause that doubles (to [`RETRY_MAX`]) while connections keep failing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::domain::Provider;
use shared::messaging::Envelope;
use tokio::sync::{watch, Notify};

/// The longest message accepted: the envelope is a few hundred bytes.
const MAX_MESSAGE: i64 = 16 * 1024;
/// Messages waiting to be read; more are dropped (the sweep covers them).
const QUEUE: i32 = 10_000;
/// How often the thread looks at `shutdown` while the socket is quiet.
const POLL_MS: i64 = 100;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A connection that lasted this long was a good one: the pause starts over.
const STABLE: Duration = Duration::from_secs(10);
const MONITOR: &str = "inproc://subscription";

/// Subscribes to `providers`' topics at `endpoint` until `shutdown` turns true; blocks,
/// so run it on a thread of its own.
pub fn subscribe(
    endpoint: String,
    doorbells: Arc<HashMap<Provider, Arc<Notify>>>,
    shutdown: watch::Receiver<bool>,
) {
    let mut retry = RETRY_MIN;
    while !*shutdown.borrow() {
        let context = zmq::Context::new();
        let opened = Instant::now();
        match open(&context, &endpoint, &doorbells) {
            Ok(subscription) => {
                tracing::debug!(%endpoint, "subscribing to ZeroMQ topics");
                listen(&subscription, &doorbells, &shutdown);
                if *shutdown.borrow() {
                    return;
                }
                tracing::info!(%endpoint, "ZeroMQ connection lost; subscribing again (the sweep covers the gap)");
            }
            // Settings validated the endpoint; the sweep still finds every task.
            Err(e) => tracing::error!(%endpoint, error = %e, "cannot subscribe"),
        }
        if opened.elapsed() >= STABLE {
            retry = RETRY_MIN;
        }
        let resume = Instant::now() + retry;
        while Instant::now() < resume && !*shutdown.borrow() {
            std::thread::sleep(Duration::from_millis(POLL_MS as u64).min(retry));
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// A SUB socket and the monitor that reports its disconnection.
struct Subscription {
    socket: zmq::Socket,
    monitor: zmq::Socket,
}

fn open(
    context: &zmq::Context,
    endpoint: &str,
    doorbells: &HashMap<Provider, Arc<Notify>>,
) -> Result<Subscription, zmq::Error> {
    let socket = context.socket(zmq::SUB)?;
    socket.set_linger(0)?;
    socket.set_maxmsgsize(MAX_MESSAGE)?;
    socket.set_rcvhwm(QUEUE)?;
    socket.set_reconnect_ivl(RETRY_MIN.as_millis() as i32)?;
    socket.set_reconnect_ivl_max(RETRY_MAX.as_millis() as i32)?;
    socket.set_handshake_ivl(5_000)?;
    socket.set_heartbeat_ivl(5_000)?;
    socket.set_heartbeat_timeout(15_000)?;
    for provider in doorbells.keys() {
        socket.set_subscribe(provider.as_str().as_bytes())?;
    }
    socket.monitor(MONITOR, zmq::SocketEvent::DISCONNECTED as i32)?;
    let monitor = context.socket(zmq::PAIR)?;
    monitor.connect(MONITOR)?;
    socket.connect(endpoint)?;
    Ok(Subscription { socket, monitor })
}

/// Rings doorbells until the connection is lost or `shutdown` turns true.
fn listen(
    subscription: &Subscription,
    doorbells: &HashMap<Provider, Arc<Notify>>,
    shutdown: &watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        let mut items = [
            subscription.socket.as_poll_item(zmq::POLLIN),
            subscription.monitor.as_poll_item(zmq::POLLIN),
        ];
        if let Err(e) = zmq::poll(&mut items, POLL_MS) {
            tracing::warn!(error = %e, "ZeroMQ poll failed");
            continue;
        }
        let (message, lost) = (items[0].is_readable(), items[1].is_readable());
        if message {
            while let Ok(frames) = subscription.socket.recv_multipart(zmq::DONTWAIT) {
                ring(doorbells, &frames);
            }
        }
        if lost {
            return;
        }
    }
}

/// Checks a message's two frames and wakes the topic's claim loop; anything else is logged and skipped.
fn ring(doorbells: &HashMap<Provider, Arc<Notify>>, frames: &[Vec<u8>]) {
    let [topic, envelope] = frames else {
        tracing::warn!(
            frames = frames.len(),
            "skipping a ZeroMQ message without exactly two frames"
        );
        return;
    };
    let Some(provider) = std::str::from_utf8(topic)
        .ok()
        .and_then(|t| Provider::parse(t).ok())
    else {
        tracing::warn!("skipping a ZeroMQ message with an unknown topic");
        return;
    };
    match Envelope::decode(envelope) {
        Ok(envelope) => {
            tracing::debug!(task_id = %envelope.task_id, %provider, "doorbell");
            if let Some(bell) = doorbells.get(&provider) {
                bell.notify_one();
            }
        }
        Err(e) => tracing::warn!(%provider, error = %e, "skipping a malformed envelope"),
    }
}
