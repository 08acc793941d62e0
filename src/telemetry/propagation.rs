//! W3C trace context on the wire: `traceparent` (and `tracestate`) read from incoming
//! requests, so that a caller's trace continues here, and written on responses, so that a
//! client can find the trace of any answer it got.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// The trace context a request carries, if any (an invalid `traceparent` is ignored: the
/// request starts a trace of its own).
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes the context's `traceparent` into `headers`, when it holds a valid span (that is,
/// when traces are on).
pub fn inject(context: &Context, headers: &mut HeaderMap) {
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(context, &mut HeaderInjector(headers));
    }
}

/// The context's `traceparent` and `tracestate` as a map, for a carrier that is not HTTP:
/// an outbox row, a message's headers. Empty when the context holds no valid span.
pub fn to_map(context: &Context) -> std::collections::HashMap<String, String> {
    let mut map = std::collections::HashMap::new();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(context, &mut map);
    }
    map
}

/// The context a map written by [`to_map`] carries (none, for an empty or invalid one).
pub fn from_map(map: &std::collections::HashMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(map)
}
