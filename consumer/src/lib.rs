//! customer-sync's consumer: subscribes to provider topics, claims tasks in PostgreSQL and
//! calls the providers.

pub mod backoff;
pub mod budget;
pub mod catch_up;
pub mod foreground;
pub mod jobs;
pub mod metrics;
pub mod providers;
pub mod retention;
pub mod startup;
pub mod subscriber;
pub mod worker;
