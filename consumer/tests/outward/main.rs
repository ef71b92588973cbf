//! Outward sync end to end: the real server, consumers and the sandbox Stripe.

mod budget;
mod faults;
mod helpers;
mod salesforce;
mod sync;
