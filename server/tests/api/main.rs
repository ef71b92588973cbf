//! Integration tests of the HTTP API against a real PostgreSQL, and of the inward loop
//! with the sandbox's signed webhooks and a consumer.

mod cli;
mod connections;
mod console;
mod customers;
mod errors;
mod events;
mod helpers;
mod hostile;
mod idempotency;
mod inward;
mod jobs;
mod links;
mod metrics;
mod openapi;
mod retention;
mod schemathesis;
mod sync_status;
mod tasks;
mod webhook;
mod zeromq_peers;
