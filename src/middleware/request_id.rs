//! Request ids: every response carries `x-request-id`, echoed when the client sent a sane
//! one, generated otherwise.
//!
//! tower-http's `SetRequestIdLayer` keeps whatever id arrives. An id is copied into every
//! log line of the request, so an arbitrary one (a kilobyte of text, newlines, control
//! bytes) would let a client forge or bloat log lines; [`drop_insane`] removes such an id
//! first, so that a fresh one is generated in its place.

use axum::http::{HeaderName, HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming id that is echoed.
const MAX_LEN: usize = 128;

/// Whether an incoming id is echoed: 1-128 of `A-Z a-z 0-9 - _ . : /`.
pub fn is_sane(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=MAX_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(b))
}

pub fn drop_insane<B>(mut request: Request<B>) -> Request<B> {
    let insane = request
        .headers()
        .get_all(X_REQUEST_ID)
        .iter()
        .enumerate()
        .any(|(i, v)| i > 0 || !is_sane(v));
    if insane {
        request.headers_mut().remove(X_REQUEST_ID);
    }
    request
}

/// Generates UUIDv7 ids: time-ordered, so ids sort like the log lines they appear in.
#[derive(Clone, Copy, Default)]
pub struct MakeRequestUuidV7;

impl MakeRequestId for MakeRequestUuidV7 {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_are_sane() {
        for id in [
            "abc",
            "0190f7a4-6c1e-7c3b-9d2e-1f2a3b4c5d6e",
            "trace:1/span.2_x",
        ] {
            assert!(is_sane(&HeaderValue::from_static(id)), "{id}");
        }
    }

    #[test]
    fn long_or_odd_ids_are_not() {
        assert!(!is_sane(&HeaderValue::from_str(&"a".repeat(129)).unwrap()));
        for id in ["", "has space", "quote\"", "semi;colon", "<script>"] {
            assert!(!is_sane(&HeaderValue::from_str(id).unwrap()), "{id}");
        }
    }
}
