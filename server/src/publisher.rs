//! The ZeroMQ PUB socket: each committed task is announced on its provider's topic.
//!
//! Publishing is best-effort by design: the task row is the truth and consumers sweep
//! PostgreSQL, so a full queue or a missing subscriber only costs latency.

use anyhow::Context;
use shared::db::tasks::TaskRow;
use shared::messaging::Envelope;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketSend, ZmqMessage};

/// How many announcements may wait for the socket before new ones are dropped.
const QUEUE: usize = 65_536;

/// A handle that queues announcements for the socket's task.
#[derive(Clone)]
pub struct Publisher {
    queue: mpsc::Sender<(String, Vec<u8>)>,
}

impl Publisher {
    /// Binds the PUB socket and starts its task; returns the handle and the bound endpoint.
    pub async fn bind(endpoint: &str) -> anyhow::Result<(Self, String)> {
        let mut socket = zeromq::PubSocket::new();
        let bound = socket.bind(endpoint).await.with_context(|| {
            format!("binding the ZeroMQ PUB socket at {endpoint} (ZMQ_PUB_ENDPOINT)")
        })?;
        let (queue, mut rx) = mpsc::channel::<(String, Vec<u8>)>(QUEUE);
        tokio::spawn(async move {
            while let Some((topic, envelope)) = rx.recv().await {
                let mut message = ZmqMessage::from(topic);
                message.push_back(envelope.into());
                if let Err(e) = socket.send(message).await {
                    tracing::warn!(error = %e, "ZeroMQ publish failed; consumers' sweep will pick the task up");
                }
            }
        });
        Ok((Self { queue }, bound.to_string()))
    }

    /// Announces committed tasks; never waits and never fails the request.
    pub fn announce(&self, tasks: &[TaskRow]) {
        for task in tasks {
            let envelope = Envelope::from(task);
            if self
                .queue
                .try_send((task.provider.to_string(), envelope.encode()))
                .is_err()
            {
                tracing::warn!(task_id = %task.id, "publish queue full; the sweep will pick the task up");
            }
        }
    }
}
