//! customer-sync's consumer: subscribes to provider topics, claims tasks in PostgreSQL and
//! calls the providers.

pub mod backoff;
pub mod rate_limit;
pub mod salesforce;
pub mod startup;
pub mod stripe;
pub mod subscriber;
pub mod worker;
