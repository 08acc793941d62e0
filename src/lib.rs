//! # Keel
//!
//! A reference backend service: the "stabilize first, then scale" playbook in running,
//! tested code, on the playbook's own case study (a small project-management SaaS).
//!
//! # Layout
//!
//! A request's path through the code, outside in:
//!
//! * [`cli`] picks the role (`all`, `serve`, `migrate`); [`config`] reads and validates the
//!   environment into one [`config::Config`]; [`telemetry`] installs logging.
//! * [`app`] builds the [`app::AppState`] and runs both listeners until [`shutdown`] fires.
//! * [`middleware`] wraps every request: request id, trace span, panic → 500, problem+json
//!   for every error, compression, body limit.
//! * [`api`] is the public HTTP layer: one module per resource, typed extractors
//!   ([`api::extract`]: JSON, authentication, object-level authorization), one error type
//!   ([`api::error::ApiError`]), keyset pagination ([`api::pagination`]), the OpenAPI
//!   document ([`api::openapi`]).
//! * [`admin`] is the admin listener: health, readiness, the fix flags.
//! * [`domain`] holds the rules (valid emails, names, roles) with no HTTP or SQL in them.
//! * [`auth`] hashes passwords (argon2id, bounded, off the runtime) and signs tokens (JWT).
//! * [`db`] is PostgreSQL: the pool, migrations, one repository per aggregate.
//! * [`flags`] is the workshop fix-flag registry and its shared, refreshed snapshot.
//!
//! Dependencies point inwards: `api` uses `domain`, `db` and `auth`; `db` never imports
//! `api`; `domain` imports neither axum nor sqlx.
//!
//! # Where each fix lives
//!
//! The README's table maps every playbook step to its file; each naive path that a fix
//! flag selects is one small function marked `// naive:` beside the fixed one.

pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod domain;
pub mod flags;
pub mod middleware;
pub mod seed;
pub mod shutdown;
pub mod telemetry;
