//! # Keel
//!
//! A reference backend service: the "stabilize first, then scale" playbook in running,
//! tested code, on the playbook's own case study (a small project-management SaaS).
//!
//! # Layout
//!
//! The house is layered: each module imports only the layers below its own, never a
//! sibling of its layer, and a test (`tests/api/layers/mod.rs`) fails naming any import that
//! breaks the rule. From the top:
//!
//! | layer | modules | what |
//! |---|---|---|
//! | entry | [`cli`] | picks the role (`all`, `serve`, `worker`, `migrate`, `seed`, `workshop`, `jobs`) |
//! | assembly | [`server`] | binds the listeners, builds both routers, applies the one middleware stack, starts the background tasks, serves and drains |
//! | edge | `api`, `admin` | the public API (a module per resource, extractors for authentication and object-level authorization, pagination, the OpenAPI document) and the admin listener (probes, metrics, fix flags, fault switches, the workshop console) |
//! | middleware | `middleware` | request ids, the request span, RED metrics, error responses |
//! | state | [`state`] | [`state::AppState`]: what handlers share |
//! | tools | `http`, `demo`, [`seed`] | problem+json, `ApiError` and the body/path/query extractors shared by every listener; the demo data; the data generator |
//! | loading and jobs | [`loaders`], [`jobs`], [`limits`] | every hot read ("a task with details", "the caller's role"): the `cache` and `batch_loading` strategies; background work: the transactional outbox, its relay to RabbitMQ, the worker and its handlers (`async_jobs`); the rate-limit budgets, in Redis with an in-process fallback (`rate_limit`) |
//! | core | [`auth`], [`cache`], [`flags`], [`readiness`], [`background`] | passwords, tokens, cursors; the Redis cache (leases, invalidation, single-flight); the fix-flag registry (and the fault switches' refresher); the readiness registry; the background-task registry |
//! | db | [`db`] | the pool, migrations, a repository per aggregate (one statement per function), the traced executor and transactions |
//! | resilience | [`resilience`] | the circuit breaker around each dependency (Redis, RabbitMQ, SMTP, Postgres), retries with a budget, the request's deadline, the workshop's fault switches; imports only the metric names and the settings types, so every layer above may use it |
//! | telemetry | [`telemetry`] | logs, traces, the metrics registry (takes values, never the state) |
//! | foundation | [`domain`], [`config`], [`shutdown`] | rules and validated types (no axum, no sqlx); configuration, one file per section; the stop signal |
//!
//! A capability that lands later plugs into a seam rather than editing across the
//! tree: a readiness probe ([`readiness::Readiness::register`]), a background task
//! ([`background::Background::spawn`], called from `server`), a layer in the middleware
//! stack (`server`), a load behind the loaders.
//!
//! # Public and internal
//!
//! Public, for the binary and the integration tests: [`cli`], [`server`], [`state`],
//! [`config`], [`db`], [`domain`], [`auth`], [`cache`], [`flags`], [`loaders`] (a field of
//! the state), [`jobs`], [`limits`], [`resilience`], [`readiness`], [`background`], [`telemetry`], [`seed`], [`shutdown`].
//! Internal (`pub(crate)`): the HTTP layer (`api`, `admin`, `middleware`, `http`) and the
//! `demo` data — tests reach them only through HTTP.
//!
//! # Where each fix lives
//!
//! The README's table maps every playbook step to its file; each naive path that a fix
//! flag selects is one small function marked `// naive:` beside the fixed one.

pub(crate) mod admin;
pub(crate) mod api;
pub mod auth;
pub mod background;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub(crate) mod demo;
pub mod domain;
pub mod flags;
pub(crate) mod http;
pub mod jobs;
pub mod limits;
pub mod loaders;
pub(crate) mod middleware;
pub mod readiness;
pub mod resilience;
pub mod seed;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
