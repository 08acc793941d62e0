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
use tower_http::compression::predicate::{NotForContentType, Predicate as _, SizeAbove};
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
            // Outside panic catching and every guardrail, so that a panic's 500 and a
            // shed request's 503 count against the SLOs like any other response.
            .layer(axum::middleware::from_fn_with_state(
                listener == Listener::Public && metrics,
                self::metrics::record,
            ))
            .layer(
                CompressionLayer::new().compress_when(
                    SizeAbove::new(config.compression_min_bytes)
                        .and(NotForContentType::GRPC)
                        .and(NotForContentType::IMAGES)
                        .and(NotForContentType::SSE),
                ),
            )
            .layer(CatchPanicLayer::custom(errors::panic_to_problem))
            .layer(axum::middleware::from_fn(errors::finish))
            .layer(RequestBodyLimitLayer::new(config.max_body_bytes)),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    fn http_config() -> HttpConfig {
        crate::config::Config::from_map(&Default::default(), crate::config::Environment::Dev)
            .expect("defaults are valid")
            .http
    }

    #[tokio::test]
    async fn a_panic_is_a_500_problem_and_counts_in_the_red_metrics() {
        let handle = crate::telemetry::metrics::install().expect("a recorder");
        let app = Router::new().route(
            "/boom/{id}",
            get(|| async {
                panic!("kaboom");
                #[allow(unreachable_code)]
                ""
            }),
        );
        let app = basic_stack(app, &http_config(), Listener::Public, true);

        let response = app
            .oneshot(Request::get("/boom/42").body(Body::empty()).unwrap())
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let series = r#"http_server_request_duration_seconds_count{http_request_method="GET",http_route="/boom/{id}",http_response_status_class="5xx"} 1"#;
        assert!(
            handle.render().contains(series),
            "the panic's 500 is counted"
        );
    }
}
