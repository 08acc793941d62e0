//! RED metrics of the public API: the duration histogram of every request (its count is
//! the rate, its 5xx share the errors) and the requests in flight.
//!
//! Each request is also labelled with its route class (`keel_route_class`: `auth`, `read`,
//! `list`, `write`, from `http::route_class`), the unit the deadlines and the shedder
//! work in. The class is a function of method and route, so the label adds no series;
//! what it saves is a copy of the classifying rule in every query that wants a figure per
//! class (the Grafana dashboard's PromQL, the workshop console's JavaScript), each of
//! which would drift from the code the first time a route is added.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::atomic::Ordering;

use metrics::histogram;

use crate::http::route_class::class_of;
use crate::telemetry::metrics::{HTTP_IN_FLIGHT, names};

/// Counts the request in flight until it ends, however it ends (a dropped connection too).
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        HTTP_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        HTTP_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records the request, when `enabled` (the public listener, with metrics on).
pub async fn record(State(enabled): State<bool>, request: Request, next: Next) -> Response {
    if !enabled {
        return next.run(request).await;
    }
    let _in_flight = InFlight::enter();
    let started = Instant::now();
    let matched = request.extensions().get::<MatchedPath>();
    let route_class = class_of(request.method(), matched.map(MatchedPath::as_str)).as_str();
    let route = matched.map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    histogram!(
        names::HTTP_REQUEST_DURATION,
        "http_request_method" => method,
        "http_route" => route,
        "http_response_status_class" => class,
        "keel_route_class" => route_class
    )
    .record(started.elapsed());
    response
}

/// The method as a label: the standard ones by name, anything else `_OTHER` (the
/// semantic conventions' rule, and what keeps a client from minting label values).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").unwrap()),
            "_OTHER"
        );
    }
}
