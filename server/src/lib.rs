//! customer-sync's HTTP server: the customer and task API, the Stripe webhook, the ZeroMQ
//! publisher and the operator console.

pub mod auth;
pub mod client_ip;
pub mod committers;
pub mod console;
pub mod deadline;
pub mod error;
pub mod idempotency;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod probe;
pub mod publisher;
pub mod routes;
pub mod startup;
