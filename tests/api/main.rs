//! The integration suite: one binary (one link step), a module per area.
//!
//! Every test gets its own Postgres database (created, migrated, dropped — see
//! `helpers::TestDb`) and its own instance of the service on ephemeral ports, so tests run
//! in parallel against the shared local servers without seeing each other.

#![allow(clippy::unwrap_used, reason = "a test that cannot unwrap has failed")]

mod admin;
mod authorization;
mod breakers;
mod cache;
mod comments;
mod config;
mod config_docs;
mod deadlines;
mod explain;
mod faults;
mod hardening;
mod helpers;
mod idempotency;
mod job_traces;
mod jobs;
mod layers;
mod members;
mod n_plus_one;
mod observability;
mod pgwire;
mod projects;
mod rate_limit;
mod replica;
mod rust_source;
mod seed;
mod shutdown;
mod smtp_sink;
mod task_pages;
mod tasks;
mod tokens;
mod users;
mod worker_process;
mod workshop;
