//! Outward sync end to end: the real server, consumers and the sandbox Stripe.

mod adoption;
mod budget;
mod faults;
mod healing;
mod helpers;
mod metrics;
mod salesforce;
mod sync;
