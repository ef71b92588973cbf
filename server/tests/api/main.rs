//! Integration tests of the HTTP API against a real PostgreSQL.

mod cli;
mod connections;
mod customers;
mod errors;
mod helpers;
mod tasks;
mod webhook;
