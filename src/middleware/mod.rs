//! The tower middleware around both listeners, in one stack that reads top to bottom
//! (outermost first):
//!
//! 1. mark `Authorization`, `Cookie` and friends sensitive, so no layer below logs them;
//! 2. drop an incoming `x-request-id` that is not sane ([`request_id`]), then set one
//!    (keeping a sane incoming one), and return it on the response;
//! 3. open the request's span ([`trace`]): method, route template, request id, and the
//!    caller's trace context; return `traceparent`; record the RED metrics ([`metrics`],
//!    public listener only: the SLOs are about the API, not about probes and scrapes);
//! 4. compress responses;
//! 5. turn a panic into a 500 problem+json;
//! 6. log the cause of every 500 and give every bare error response (router fallbacks,
//!    405s, 413s from the body limit) a problem+json body ([`errors`]);
//! 7. cap request bodies at `KEEL_MAX_BODY_BYTES` (413).
//!
//! The guardrails of later chapters (rate limit, deadline, load shedding, circuit
//! breaking) are separate modules here, each behind its fix flag.

pub mod errors;
pub mod metrics;
pub mod request_id;
pub mod trace;

use axum::Router;
use axum::http::header;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};
use tower_http::trace::TraceLayer;

use crate::config::HttpConfig;

/// Which listener a stack is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

/// Wraps a router in the basic stack described in the module docs.
pub fn basic_stack(
    router: Router,
    config: &HttpConfig,
    listener: Listener,
    metrics: bool,
) -> Router {
    let router = if listener == Listener::Public && metrics {
        router.layer(axum::middleware::from_fn(self::metrics::record))
    } else {
        router
    };
    let sensitive = [
        header::AUTHORIZATION,
        header::COOKIE,
        header::PROXY_AUTHORIZATION,
    ];
    router.layer(
        ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new(sensitive.clone()))
            .layer(SetSensitiveResponseHeadersLayer::new([header::SET_COOKIE]))
            .map_request(request_id::drop_insane)
            .layer(SetRequestIdLayer::new(
                request_id::X_REQUEST_ID,
                request_id::MakeRequestUuidV7,
            ))
            .layer(PropagateRequestIdLayer::new(request_id::X_REQUEST_ID))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(trace::make_span)
                    .on_request(())
                    .on_response(trace::on_response)
                    .on_failure(()),
            )
            .layer(axum::middleware::from_fn(trace::return_traceparent))
            .layer(CompressionLayer::new())
            .layer(CatchPanicLayer::custom(errors::panic_to_problem))
            .layer(axum::middleware::from_fn(errors::finish))
            .layer(RequestBodyLimitLayer::new(config.max_body_bytes)),
    )
}
