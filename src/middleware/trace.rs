//! The request span, and one log line per response.
//!
//! The span is named for the route template (`/v1/projects/{id}`), never the raw path,
//! and carries the request id, so every log line inside a request can be found by either.

use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use tracing::Span;

use super::request_id::X_REQUEST_ID;

pub fn make_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "http.request",
        http.method = %request.method(),
        http.route = route,
        request_id = request_id,
        http.status = tracing::field::Empty,
    )
}

pub fn on_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    let status = response.status();
    span.record("http.status", status.as_u16());
    // Whole microseconds, so log lines read 0.165 rather than 0.16545700000000002.
    let latency_ms = latency.as_micros() as f64 / 1000.0;
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), latency_ms, "response");
    } else {
        tracing::info!(status = status.as_u16(), latency_ms, "response");
    }
}
