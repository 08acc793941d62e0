//! The responses of keyed creates: the 201 built once ([`Created`]), its replay, and the
//! refusals of a reused key (422) and of a repeat while the first runs (409).

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::db::idempotency::Stored;
use crate::http::ApiError;
use crate::http::problem::{Problem, ProblemField};

/// On a replayed response: `true`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// How the header is named in a 422's `errors`.
pub const FIELD: &str = "Idempotency-Key";

/// A 201 response, its JSON body serialised once: the bytes sent are the bytes recorded,
/// so a replay is identical to the first response.
pub struct Created {
    pub(super) location: Option<String>,
    pub(super) body: Bytes,
}

impl Created {
    pub fn json(body: &impl Serialize) -> Result<Self, ApiError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            ApiError::Internal(anyhow::Error::new(e).context("serialize a created resource"))
        })?;
        Ok(Self {
            location: None,
            body: body.into(),
        })
    }

    /// With a `Location` header: the new resource's URL.
    pub fn at(mut self, location: String) -> Self {
        self.location = Some(location);
        self
    }
}

impl IntoResponse for Created {
    fn into_response(self) -> Response {
        json_response(StatusCode::CREATED, self.location, self.body)
    }
}

fn json_response(status: StatusCode, location: Option<String>, body: Bytes) -> Response {
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(location) = location {
        match HeaderValue::try_from(location) {
            Ok(value) => {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Err(e) => {
                return ApiError::Internal(anyhow::Error::new(e).context("a Location header"))
                    .into_response();
            }
        }
    }
    response
}

/// The stored first response, as it was sent, marked as a replay.
pub fn replay(stored: Stored) -> Result<Response, ApiError> {
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored status {}", stored.status)))?;
    let mut response = json_response(status, stored.location, stored.body.into());
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

/// 422: the key was used with another request (the draft's "Idempotency-Key is already
/// used"). The client must use a new key for a new request.
pub fn mismatched() -> Response {
    let mut problem = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("idempotency-key-reused"),
        "Idempotency-Key already used",
        "This Idempotency-Key was used with a different request (another body or path); \
         send a new key with a new request.",
    );
    problem.errors = vec![ProblemField {
        field: FIELD.into(),
        message: "was already used with a different request".into(),
    }];
    problem.into_response()
}

/// 409: the first request with this key is still running. Nothing needs correcting: the
/// same request, retried after `Retry-After`, gets the first one's response.
pub fn in_flight() -> Response {
    let mut response = Problem::new(
        StatusCode::CONFLICT,
        Some("idempotency-key-in-flight"),
        "Request with this Idempotency-Key in progress",
        "A request with the same Idempotency-Key is still being processed; retry it \
         unchanged after Retry-After seconds to get its response.",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_carries_the_stored_status_location_and_body_and_says_it_is_one() {
        let stored = Stored {
            fingerprint: vec![0; 32],
            status: 201,
            location: Some("/v1/projects/1".into()),
            body: b"{\"id\":1}".to_vec(),
        };
        let response = replay(stored).unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()[header::LOCATION], "/v1/projects/1");
        assert_eq!(response.headers()[IDEMPOTENT_REPLAYED], "true");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
