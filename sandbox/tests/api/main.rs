//! The sandbox over real HTTP on loopback, one sandbox per test.

mod catch_up;
mod control;
mod customers;
mod events;
mod helpers;
mod idempotency;
mod invoices;
mod knobs;
mod seeding;
mod webhooks;
