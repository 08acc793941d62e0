//! The public HTTP API: one module per resource, each exposing `router()`, merged here.
//!
//! Routes are registered through utoipa-axum's `OpenApiRouter`, so the OpenAPI document
//! is built from the same handlers and types that serve requests and cannot drift from
//! them.
//!
//! Handlers carry `#[tracing::instrument(level = "trace", …)]`: their spans (with the ids
//! they act on) are there for `RUST_LOG=keel=trace`, but not exported as traces. The
//! server span already names the route and times the request; a handler span in every
//! trace would add a span per request — export cost grows with spans per request
//! (docs/benchmarks.md) — and no information. The admin endpoints are *not* here: they live on their own listener
//! (`crate::admin`), so the public one answers 404 for them.
//!
//! The error type and the JSON, path and query extractors are shared with the admin
//! listener (`crate::http`); the middleware around the routes is applied by the assembly
//! (`crate::server`).

pub mod comments;
pub mod extract;
pub mod idempotency;
pub mod members;
pub mod openapi;
pub mod pagination;
pub mod projects;
mod stats;
pub mod tasks;
pub mod tokens;
pub mod users;
pub mod writes;

use axum::Router;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// The OpenAPI document and the routes it describes.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(users::router())
        .merge(tokens::router())
        .merge(projects::router())
        .merge(members::router())
        .merge(tasks::router())
        .merge(comments::router())
        .merge(stats::router())
        .split_for_parts();
    openapi::add_common_responses(&mut document);
    (routes, document)
}
