//! Domain types: parsed once at the edge, trusted everywhere after.

mod customer_id;
mod customer_name;
mod email;
mod provider;
#[macro_use]
mod task;
mod job;
mod sql;

pub use customer_id::CustomerId;
pub use customer_name::CustomerName;
pub use email::Email;
pub use job::{JobKind, JobStatus};
pub use provider::Provider;
pub use task::{Operation, TaskId, TaskStatus};

/// Why a value was refused: a message for the caller, naming what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);
