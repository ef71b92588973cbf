//! The ZeroMQ message: two frames, the topic (the provider's name) and a small JSON envelope.

use serde::{Deserialize, Serialize};

use crate::db::tasks::TaskRow;
use crate::domain::Operation;

/// What the server publishes for each committed task: a doorbell, not the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub task_id: uuid::Uuid,
    pub customer_id: String,
    pub operation: Operation,
    pub version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Envelope {
    /// The JSON frame.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serialises")
    }

    /// Parses a frame; anything else is an error for the caller to log and skip.
    pub fn decode(frame: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(frame)
    }
}

impl From<&TaskRow> for Envelope {
    fn from(task: &TaskRow) -> Self {
        Self {
            task_id: task.id,
            customer_id: task.customer_id.to_string(),
            operation: task.operation,
            version: task.version,
            request_id: task.request_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_garbage_is_refused() {
        let envelope = Envelope {
            task_id: uuid::Uuid::now_v7(),
            customer_id: "c1".into(),
            operation: Operation::Update,
            version: 3,
            request_id: Some("r".into()),
        };
        assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
        assert!(Envelope::decode(b"not json").is_err());
        assert!(Envelope::decode(br#"{"task_id":"x"}"#).is_err());
    }
}
