//! Error responses: problem+json for everything, causes in the log only.

use std::any::Any;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::request_id::X_REQUEST_ID;
use crate::http::problem::{ErrorReport, PROBLEM_JSON, Problem};

/// Logs the cause of a 5xx (attached by `ApiError`: ERROR for a 500, WARN for a 503 —
/// a dependency that cannot serve now is a degradation, not a bug) with the request id,
/// and gives any bare error response a problem+json body — the router's 405, tower-http's
/// 413, whatever a layer produces — keeping its headers (`Allow`, `Retry-After`, …).
///
/// The request id is read from the request, not left to the request span: that span is
/// INFO, so under `RUST_LOG=warn` it is disabled — exactly when an operator most needs the
/// id on the error line.
pub async fn finish(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    if let Some(ErrorReport(cause)) = response.extensions().get::<ErrorReport>() {
        // `{:#}` prints the whole cause chain on one line: "database error: …: …".
        let cause = format_args!("{cause:#}");
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(
                request_id,
                http.method = %method,
                http.route = route,
                error.cause_chain = %cause,
                "request failed: dependency unavailable"
            );
        } else {
            tracing::error!(
                request_id,
                http.method = %method,
                http.route = route,
                error.cause_chain = %cause,
                "request failed"
            );
        }
    }
    let status = response.status();
    // Bare means no body type, or plain text (what axum's fallbacks and tower-http's
    // layers produce). A JSON error body is deliberate (`/readyz`'s 503) and kept.
    let bare = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !bare {
        return response;
    }
    let (mut parts, _body) = response.into_parts();
    let problem = Problem::for_status(status);
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// A panicking handler becomes a 500 problem+json; the panic message goes to the log.
pub fn panic_to_problem(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic.message = message, "handler panicked");
    Problem::for_status(StatusCode::INTERNAL_SERVER_ERROR).into_response()
}
