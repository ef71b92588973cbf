//! What customer-sync's binaries share: configuration, domain types, the database
//! (schema, rows, queries, migrations), the catalog's changes, the inbound rules, the task
//! queue, the Stripe and Salesforce clients and telemetry.

pub mod catalog;
pub mod config;
pub mod db;
pub mod domain;
pub mod inbound;
pub mod local_pg;
pub mod messaging;
pub mod metrics;
pub mod queue;
pub mod salesforce;
pub mod salesforce_allocation;
pub mod stripe;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
