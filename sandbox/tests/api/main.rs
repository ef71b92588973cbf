//! The sandbox over real HTTP on loopback, one sandbox per test.

mod customers;
mod events;
mod helpers;
mod idempotency;
mod invoices;
mod knobs;
mod webhooks;
