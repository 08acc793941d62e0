//! Problem details (RFC 9457): the one shape of every error response Keel sends.
//!
//! Everything that answers with an error renders it through [`Problem`]: handler errors
//! (`http::error::ApiError`), rejections of the guardrails, the router's fallbacks, and the
//! last middleware that dresses bare errors from tower layers (`middleware::errors`). It
//! lives apart from the handlers (`api`, `admin`) and the middleware so that both can use
//! it without importing each other.
//!
//! Problem `type`s are stable URNs (`urn:keel:problem:<slug>`) that clients may match on;
//! `title` is the same for every instance of a type, `detail` explains this one. Nothing
//! internal reaches a body: the cause of a 5xx travels beside the response, in its
//! extensions ([`ErrorReport`]), to the one middleware that logs it.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem+json body.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct Problem {
    /// A URI identifying the problem type: `urn:keel:problem:<slug>`, or `about:blank`
    /// when the status code says it all.
    #[serde(rename = "type")]
    #[schema(example = "urn:keel:problem:validation-failed")]
    pub problem_type: String,
    /// A short summary of the problem type.
    #[schema(example = "Validation failed")]
    pub title: String,
    /// The HTTP status code.
    #[schema(example = 422, minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong in this occurrence.
    #[schema(example = "1 field is invalid")]
    pub detail: String,
    /// On 422: each field that failed, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
}

/// One invalid field of a 422.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemField {
    /// The field, as a path into the request (`name`, `items[2].title`), or the query
    /// parameter's name.
    #[schema(example = "name")]
    pub field: String,
    #[schema(example = "must not be empty")]
    pub message: String,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: Option<&str>,
        title: &str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            problem_type: slug
                .map_or_else(|| "about:blank".into(), |s| format!("urn:keel:problem:{s}")),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// A request whose deadline passed (`middleware::deadline`, or a statement Postgres
    /// cancelled at the deadline).
    pub fn deadline_exceeded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("deadline-exceeded"),
            "Deadline exceeded",
            "The request did not complete within its deadline; retry shortly.",
        )
    }

    /// The generic problem for a status, for errors produced outside the handlers
    /// (router fallbacks, tower layers).
    pub fn for_status(status: StatusCode) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        let detail = match status {
            StatusCode::NOT_FOUND => "No resource at this path.".to_string(),
            StatusCode::METHOD_NOT_ALLOWED => {
                "This path does not support this method; see the Allow header.".into()
            }
            StatusCode::PAYLOAD_TOO_LARGE => "The request body is too large.".into(),
            s if s.is_server_error() => "The server could not complete the request.".into(),
            _ => format!("{title}."),
        };
        Self::new(status, None, title, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response()
    }
}

/// The cause of a 5xx, carried in the response's extensions to the middleware that logs
/// it with the request id (the axum error-handling example's pattern: building a response
/// stays free of side effects; logging happens once, in one place).
#[derive(Clone)]
pub struct ErrorReport(pub Arc<anyhow::Error>);

/// The fallback of both routers: a 404 problem.
pub async fn not_found() -> Response {
    Problem::for_status(StatusCode::NOT_FOUND).into_response()
}
