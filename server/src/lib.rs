//! customer-sync's HTTP server: the customer and task API, the Stripe webhook, the ZeroMQ publisher.

pub mod auth;
pub mod batcher;
pub mod error;
pub mod publisher;
pub mod routes;
pub mod signature;
pub mod startup;
