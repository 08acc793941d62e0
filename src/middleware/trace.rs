//! The request span, W3C trace context, and one log line per response.
//!
//! The span is the trace's server span: named for the route template
//! (`GET /v1/projects/{id}`, never the raw path), with the semantic-convention attributes,
//! the request id, and — when traces are on — its trace id and span id, so every log line
//! of the request can be found by any of them. An incoming `traceparent` makes it a child
//! of the caller's span; [`return_traceparent`] sends the trace context back.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::Response;
use axum::middleware::Next;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::request_id::X_REQUEST_ID;
use crate::telemetry::propagation;

pub fn make_span<B>(request: &axum::http::Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let method = request.method();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        url.path = request.uri().path(),
        request_id = request_id,
        http.response.status_code = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    // Continue the caller's trace, if it sent one. (A no-op when traces are off.)
    let _ = span.set_parent(propagation::extract(request.headers()));
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
        span.record("span_id", span_context.span_id().to_string());
    }
    span
}

pub fn on_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    // Whole microseconds, so log lines read 0.165 rather than 0.16545700000000002.
    let latency_ms = latency.as_micros() as f64 / 1000.0;
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
        tracing::warn!(status = status.as_u16(), latency_ms, "response");
    } else {
        tracing::info!(status = status.as_u16(), latency_ms, "response");
    }
}

/// Writes the request's trace context into the response (`traceparent`), so that a client
/// holding any response can find its trace. Runs inside the request span.
pub async fn return_traceparent(request: Request, next: Next) -> axum::response::Response {
    let mut response = next.run(request).await;
    propagation::inject(&Span::current().context(), response.headers_mut());
    response
}
