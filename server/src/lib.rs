//! customer-sync's HTTP server: the customer and task API, the Stripe webhook, the ZeroMQ publisher.

pub mod auth;
pub mod committers;
pub mod error;
pub mod listener;
pub mod publisher;
pub mod routes;
pub mod startup;
