//! The ZeroMQ PUB socket: each committed task is announced on its provider's topic.
//!
//! Publishing is best-effort by design: the task row is the truth and consumers sweep
//! PostgreSQL, so a full queue or a missing subscriber only costs latency.
//!
//! The port faces every host that runs a consumer, so it runs on libzmq, ZeroMQ's
//! reference implementation (the `zmq` crate builds it from source), and holds each peer
//! to bounds ([`Limits`]): a frame longer than a subscription closes that peer's
//! connection; only the providers' topics are subscribed (an XPUB socket in manual mode
//! applies nothing else), so a peer holds at most one subscription per provider; a peer
//! that has not finished its handshake in 5 s, or stops answering heartbeats, is dropped;
//! and while more than [`Limits::max_peers`] connections are open, a new one is refused
//! at its handshake (through a ZAP handler). One thread owns the socket; handlers hand it announcements
//! through an in-process queue.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};

use anyhow::Context;
use shared::db::tasks::TaskRow;
use shared::domain::Provider;
use shared::messaging::Envelope;

/// How many batches of announcements may wait for the socket before new ones are dropped.
const QUEUE: i32 = 65_536;
/// The longest message a peer may send: a subscription is one byte and a topic.
const MAX_PEER_MESSAGE: i64 = 256;
/// Subscriptions a peer may have waiting to be read.
const PEER_QUEUE: i32 = 64;
/// A peer must finish its handshake within this.
const HANDSHAKE_MS: i32 = 5_000;
/// Heartbeats find peers that went away without closing their connection.
const HEARTBEAT_MS: i32 = 5_000;
const HEARTBEAT_TIMEOUT_MS: i32 = 15_000;
/// How often the socket's thread checks that its publisher still exists.
const POLL_MS: i64 = 250;
/// The in-process endpoints of one publisher (each publisher has its own context).
const INBOX: &str = "inproc://announcements";
const MONITOR: &str = "inproc://peers";
const ZAP: &str = "inproc://zeromq.zap.01";

/// What a peer of the PUB socket may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; beyond them a new peer is refused at its handshake.
    pub max_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_peers: 256 }
    }
}

/// A handle that queues announcements for the socket's thread, which stops once every
/// handle is dropped.
#[derive(Clone)]
pub struct Publisher {
    inbox: Arc<Mutex<zmq::Socket>>,
}

impl Publisher {
    /// Binds the PUB socket and starts its thread; returns the handle and the bound endpoint.
    pub fn bind(endpoint: &str, limits: Limits) -> anyhow::Result<(Self, String)> {
        let context = zmq::Context::new();
        let sockets = Sockets::open(&context, endpoint).with_context(|| {
            format!("binding the ZeroMQ PUB socket at {endpoint} (ZMQ_PUB_ENDPOINT)")
        })?;
        let bound = sockets
            .publish
            .get_last_endpoint()
            .context("reading the bound ZeroMQ endpoint")?
            .map_err(|_| anyhow::anyhow!("the bound ZeroMQ endpoint is not text"))?;
        let push = context.socket(zmq::PUSH)?;
        push.set_sndhwm(QUEUE)?;
        push.set_linger(0)?;
        push.connect(INBOX)?;
        let inbox = Arc::new(Mutex::new(push));
        let alive = Arc::downgrade(&inbox);
        std::thread::Builder::new()
            .name("zmq-publisher".into())
            .spawn(move || sockets.serve(&alive, limits))
            .context("starting the ZeroMQ publisher thread")?;
        Ok((Self { inbox }, bound))
    }

    /// Announces committed tasks; never waits and never fails the request. A batch
    /// crosses to the socket's thread as one message (topic and envelope frames in turn),
    /// so a busy committer wakes that thread once per batch, not once per task.
    pub fn announce(&self, tasks: &[TaskRow]) {
        if tasks.is_empty() {
            return;
        }
        let frames: Vec<Vec<u8>> = tasks
            .iter()
            .flat_map(|task| {
                [
                    task.provider.as_str().as_bytes().to_vec(),
                    Envelope::from(task).encode(),
                ]
            })
            .collect();
        let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if inbox.send_multipart(frames, zmq::DONTWAIT).is_err() {
            tracing::warn!(
                tasks = tasks.len(),
                "publish queue full; the sweep will pick the tasks up"
            );
        }
    }
}

/// The sockets the publisher's thread owns.
struct Sockets {
    /// The XPUB socket peers connect to.
    publish: zmq::Socket,
    /// Announcements from the handlers.
    inbox: zmq::Socket,
    /// Accept and disconnect events of `publish`'s connections.
    monitor: zmq::Socket,
    /// libzmq asks this handler whether to admit each peer.
    zap: zmq::Socket,
}

impl Sockets {
    fn open(context: &zmq::Context, endpoint: &str) -> anyhow::Result<Self> {
        let zap = context.socket(zmq::REP)?;
        zap.bind(ZAP)?;
        let inbox = context.socket(zmq::PULL)?;
        inbox.set_rcvhwm(QUEUE)?;
        inbox.set_linger(0)?;
        inbox.bind(INBOX)?;

        let mut publish = context.socket(zmq::XPUB)?;
        publish.set_linger(0)?;
        publish.set_maxmsgsize(MAX_PEER_MESSAGE)?;
        publish.set_rcvhwm(PEER_QUEUE)?;
        publish.set_handshake_ivl(HANDSHAKE_MS)?;
        publish.set_heartbeat_ivl(HEARTBEAT_MS)?;
        publish.set_heartbeat_timeout(HEARTBEAT_TIMEOUT_MS)?;
        publish.set_zap_domain("customer-sync")?;
        set_manual_subscriptions(&mut publish)?;
        let events = zmq::SocketEvent::ACCEPTED as i32 | zmq::SocketEvent::DISCONNECTED as i32;
        publish.monitor(MONITOR, events)?;
        let monitor = context.socket(zmq::PAIR)?;
        monitor.connect(MONITOR)?;
        publish.bind(endpoint)?;
        Ok(Self {
            publish,
            inbox,
            monitor,
            zap,
        })
    }

    /// Forwards announcements, applies the subscriptions to known topics and admits
    /// peers, until `alive` is gone.
    fn serve(self, alive: &Weak<Mutex<zmq::Socket>>, limits: Limits) {
        let topics: HashSet<&'static [u8]> = Provider::ALL
            .iter()
            .map(|p| p.as_str().as_bytes())
            .collect();
        // File descriptors of the open connections. A connection's accept event is queued
        // before its handshake can ask ZAP, and events are read before ZAP requests, so a
        // peer being admitted is always counted.
        let mut connections: HashSet<u32> = HashSet::new();
        while alive.strong_count() > 0 {
            let mut items = [
                self.inbox.as_poll_item(zmq::POLLIN),
                self.publish.as_poll_item(zmq::POLLIN),
                self.monitor.as_poll_item(zmq::POLLIN),
                self.zap.as_poll_item(zmq::POLLIN),
            ];
            if zmq::poll(&mut items, POLL_MS).is_err() {
                continue;
            }
            let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            if ready[0] {
                self.forward();
            }
            if ready[1] {
                self.subscriptions(&topics);
            }
            if ready[2] {
                self.connection_events(&mut connections);
            }
            if ready[3] {
                self.admit(connections.len() <= limits.max_peers);
            }
        }
    }

    /// Publishes each (topic, envelope) pair of the waiting batches as one message.
    fn forward(&self) {
        while let Ok(frames) = self.inbox.recv_multipart(zmq::DONTWAIT) {
            for message in frames.chunks_exact(2) {
                // A peer whose queue is full misses the doorbell; its sweep covers it.
                let _ = self
                    .publish
                    .send_multipart(message.iter().map(Vec::as_slice), zmq::DONTWAIT);
            }
        }
    }

    /// Applies a peer's (un)subscription when it names a provider; anything else is
    /// dropped, so a peer cannot make the socket keep prefixes of its choosing.
    fn subscriptions(&self, topics: &HashSet<&'static [u8]>) {
        while let Ok(message) = self.publish.recv_bytes(zmq::DONTWAIT) {
            let applied = match message.split_first() {
                Some((1, topic)) if topics.contains(topic) => self.publish.set_subscribe(topic),
                Some((0, topic)) if topics.contains(topic) => self.publish.set_unsubscribe(topic),
                _ => {
                    tracing::debug!(
                        bytes = message.len(),
                        "ignoring a ZeroMQ subscription to no provider's topic"
                    );
                    continue;
                }
            };
            if let Err(e) = applied {
                tracing::warn!(error = %e, "applying a ZeroMQ subscription");
            }
        }
    }

    fn connection_events(&self, connections: &mut HashSet<u32>) {
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(event) = frames.first().filter(|f| f.len() >= 6) else {
                continue;
            };
            let kind = u16::from_ne_bytes([event[0], event[1]]);
            let fd = u32::from_ne_bytes([event[2], event[3], event[4], event[5]]);
            if kind == zmq::SocketEvent::ACCEPTED.to_raw() {
                connections.insert(fd);
            } else if kind == zmq::SocketEvent::DISCONNECTED.to_raw() {
                connections.remove(&fd);
            }
        }
    }

    /// Answers libzmq's ZAP request for one peer (RFC 27): admitted while there is room.
    fn admit(&self, room: bool) {
        let Ok(request) = self.zap.recv_multipart(zmq::DONTWAIT) else {
            return;
        };
        let request_id = request.get(1).cloned().unwrap_or_default();
        let (code, text): (&[u8], &[u8]) = if room {
            (b"200", b"OK")
        } else {
            tracing::warn!("refusing a ZeroMQ peer: too many connections are open");
            (b"400", b"too many connections")
        };
        let reply: [&[u8]; 6] = [b"1.0", &request_id, code, text, b"", b""];
        if let Err(e) = self.zap.send_multipart(reply, 0) {
            tracing::warn!(error = %e, "answering a ZeroMQ ZAP request");
        }
    }
}

/// `ZMQ_XPUB_MANUAL`, which the `zmq` crate does not wrap: subscriptions reach
/// [`Sockets::subscriptions`] instead of being applied as they arrive.
fn set_manual_subscriptions(socket: &mut zmq::Socket) -> anyhow::Result<()> {
    let on: std::os::raw::c_int = 1;
    // SAFETY: `socket` is a live libzmq socket for the whole call, and libzmq reads
    // exactly `size_of::<c_int>()` bytes from the pointer, which points at `on`.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_XPUB_MANUAL as std::os::raw::c_int,
            (&on as *const std::os::raw::c_int).cast(),
            std::mem::size_of::<std::os::raw::c_int>(),
        )
    };
    anyhow::ensure!(rc == 0, "setting ZMQ_XPUB_MANUAL failed");
    Ok(())
}
