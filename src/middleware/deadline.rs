//! Request deadlines: every request of the public API is answered within its route
//! class's deadline (`KEEL_DEADLINE_*`), with a 503 problem and `Retry-After` when it
//! passes.
//!
//! The answer is the easy half. The handler's future is dropped at the deadline, which
//! stops everything it was awaiting *in this process*; what it had started elsewhere is
//! stopped by the deadline travelling with it (`resilience::deadline`, a task-local): each
//! statement carries a `statement_timeout` of the time left, so Postgres cancels it too,
//! and every Redis, AMQP and SMTP call cuts its timeout to the same budget. Nothing keeps
//! working for a request that has been answered.
//!
//! With the `timeouts` fix flag off, requests run with no deadline and statements with no
//! timeout: a stuck dependency holds its requests, their connections and their clients for
//! as long as it stays stuck.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::{GuardrailsConfig, RouteClass};
use crate::flags::{Flag, Flags};
use crate::http::ApiError;
use crate::http::route_class::Classifier;
use crate::resilience::Deadline;
use crate::telemetry::metrics::names;

/// What the deadline layer needs; cloned per route, shared underneath.
#[derive(Clone)]
pub struct Deadlines(Arc<Inner>);

struct Inner {
    flags: Flags,
    classifier: Classifier,
    config: GuardrailsConfig,
}

impl Deadlines {
    /// Also starts `keel_deadline_exceeded_total` at zero for every route class: a
    /// dashboard sees "none expired" rather than no data, and `rate()` counts the first.
    pub fn new(flags: Flags, config: &GuardrailsConfig) -> Self {
        for class in RouteClass::ALL {
            metrics::counter!(names::DEADLINE_EXCEEDED, "class" => class.as_str()).increment(0);
        }
        Self(Arc::new(Inner {
            flags,
            classifier: Classifier::new(config.criticality.clone()),
            config: config.clone(),
        }))
    }
}

/// Runs the request within its class's deadline (see the module docs).
/// `None` (the admin listener): no deadline.
pub async fn enforce(
    State(deadlines): State<Option<Deadlines>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(inner) = deadlines.as_ref().map(|d| &d.0) else {
        return next.run(request).await;
    };
    if !inner.flags.enabled(Flag::Timeouts) {
        return next.run(request).await;
    }
    let class = inner.classifier.of(&request).class;
    let limit = inner.config.deadline(class);
    let deadline = Deadline::after(limit);
    match tokio::time::timeout_at(deadline.0, deadline.scope(next.run(request))).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!(names::DEADLINE_EXCEEDED, "class" => class.as_str()).increment(1);
            exceeded()
        }
    }
}

/// The 503 of a request whose deadline passed. `Retry-After` is a second: a deadline is
/// missed under load or behind a slow dependency, and both are worth a short wait.
fn exceeded() -> Response {
    ApiError::DeadlineExceeded.into_response()
}
