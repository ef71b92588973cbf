//! Outward sync end to end: the real server, consumers and the sandbox Stripe.

mod faults;
mod helpers;
mod salesforce;
mod sync;
