//! The ZeroMQ SUB side: one socket per server endpoint, reconnecting on its own; each valid
//! envelope rings the doorbell of its provider's claim loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shared::domain::Provider;
use shared::messaging::Envelope;
use tokio::sync::{watch, Notify};
use zeromq::{Socket, SocketRecv};

/// Subscribes to `providers`' topics at `endpoint` until `shutdown` turns true.
pub async fn subscribe(
    endpoint: String,
    doorbells: Arc<HashMap<Provider, Arc<Notify>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = Duration::from_millis(100);
    while !*shutdown.borrow() {
        let mut socket = zeromq::SubSocket::new();
        let connected = tokio::select! {
            result = socket.connect(&endpoint) => result,
            _ = shutdown.changed() => return,
        };
        if let Err(e) = connected {
            tracing::debug!(%endpoint, error = %e, "ZeroMQ connect failed; retrying (the sweep covers the gap)");
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = shutdown.changed() => return,
            }
            retry = (retry * 2).min(Duration::from_secs(5));
            continue;
        }
        retry = Duration::from_millis(100);
        for provider in doorbells.keys() {
            if let Err(e) = socket.subscribe(provider.as_str()).await {
                tracing::warn!(%endpoint, error = %e, "ZeroMQ subscribe failed");
            }
        }
        tracing::info!(%endpoint, "subscribed to ZeroMQ topics");
        loop {
            let message = tokio::select! {
                message = socket.recv() => message,
                _ = shutdown.changed() => return,
            };
            match message {
                Ok(message) => ring(&doorbells, &message),
                Err(e) => {
                    tracing::warn!(%endpoint, error = %e, "ZeroMQ receive failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Checks a message's two frames and wakes the topic's claim loop; anything else is logged and skipped.
fn ring(doorbells: &HashMap<Provider, Arc<Notify>>, message: &zeromq::ZmqMessage) {
    let frames: Vec<&[u8]> = message.iter().map(|f| f.as_ref()).collect();
    let [topic, envelope] = frames.as_slice() else {
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
