//! [`ApiError`]: the one error type every handler returns, rendered as problem+json
//! (RFC 9457).
//!
//! Each variant says which status it becomes, so a reader of a handler knows its responses
//! from its `?`s. Problem `type`s are stable URNs (`urn:keel:problem:<slug>`) that clients may
//! match on; `title` is the same for every instance of a type, `detail` explains this one.
//!
//! Nothing internal reaches a body: a 5xx says only that something failed, and the cause
//! chain is attached to the response's extensions, where `middleware::errors` logs it with
//! the request id (the axum `error-handling` example's pattern: the conversion stays pure,
//! logging happens once, in one place).

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::HashError;
use crate::domain::ValidationErrors;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or not UTF-8.
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// 401: no credentials, or credentials that do not verify. `invalid_token` says
    /// whether a token was presented (RFC 6750's `error="invalid_token"`).
    #[error("authentication required")]
    Unauthorized { invalid_token: bool },
    /// 403: a member whose role is too low for the operation.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// 404: no such resource — or one the caller may not know exists.
    #[error("not found")]
    NotFound(&'static str),
    /// 409: the request conflicts with the current state.
    #[error("conflict: {detail}")]
    Conflict { slug: &'static str, detail: String },
    /// 413: the body is larger than `KEEL_MAX_BODY_BYTES`.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 415: a body that is not `application/json`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// 422: well-formed JSON whose fields are not acceptable.
    #[error("validation failed: {0}")]
    Validation(#[from] ValidationErrors),
    /// 503: a dependency or a bounded resource is saturated or down; try again later.
    #[error("service unavailable: {detail}")]
    Unavailable {
        detail: &'static str,
        retry_after_secs: u32,
    },
    /// 500: anything else. The cause is logged, never sent.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

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

/// The cause of a 500, carried in the response extensions to the logging middleware.
#[derive(Clone)]
pub struct InternalErrorReport(pub Arc<anyhow::Error>);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem(&self) -> Problem {
        let status = self.status();
        match self {
            Self::BadRequest(detail) => Problem::new(
                status,
                Some("malformed-request"),
                "Malformed request",
                detail,
            ),
            Self::Unauthorized { .. } => Problem::new(
                status,
                Some("unauthenticated"),
                "Authentication required",
                "Send a valid access token: Authorization: Bearer <token> from POST /v1/auth/token.",
            ),
            Self::Forbidden(detail) => {
                Problem::new(status, Some("forbidden"), "Forbidden", *detail)
            }
            Self::NotFound(what) => Problem::new(
                status,
                Some("not-found"),
                "Not found",
                format!("No such {what}."),
            ),
            Self::Conflict { slug, detail } => Problem::new(status, Some(slug), "Conflict", detail),
            Self::PayloadTooLarge => Problem::for_status(status),
            Self::UnsupportedMediaType => Problem::new(
                status,
                None,
                "Unsupported Media Type",
                "Send the body as application/json.",
            ),
            Self::Validation(errors) => {
                let n = errors.0.len();
                let mut problem = Problem::new(
                    status,
                    Some("validation-failed"),
                    "Validation failed",
                    format!("{n} field{} invalid", if n == 1 { " is" } else { "s are" }),
                );
                problem.errors = errors
                    .0
                    .iter()
                    .map(|e| ProblemField {
                        field: e.field.clone(),
                        message: e.message.clone(),
                    })
                    .collect();
                problem
            }
            Self::Unavailable { detail, .. } => {
                Problem::new(status, Some("unavailable"), "Service unavailable", *detail)
            }
            Self::Internal(_) => Problem::new(
                status,
                Some("internal"),
                "Internal server error",
                "The server could not complete the request.",
            ),
        }
    }

    /// A 422 for one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(ValidationErrors::one(field, message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.problem().into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized { invalid_token } => {
                let challenge = if *invalid_token {
                    r#"Bearer error="invalid_token""#
                } else {
                    "Bearer"
                };
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            Self::Unavailable {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        if let Self::Internal(cause) = self {
            response
                .extensions_mut()
                .insert(InternalErrorReport(Arc::new(cause)));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if database_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            Self::Unavailable {
                detail: "The database is unavailable; retry shortly.",
                retry_after_secs: 1,
            }
        } else {
            Self::Internal(anyhow::Error::new(e).context("database error"))
        }
    }
}

/// Whether an error means "Postgres cannot serve this now" (the client may retry, and
/// readiness reports it) rather than "this request is wrong" or a bug: the connection
/// could not be made or was lost, the pool is exhausted, or the server refused for load
/// or shutdown (SQLSTATE classes 08, 53300, 57P01-57P03) or cancelled the statement on
/// its deadline (57014).
pub fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "53300" | "57P01" | "57P02" | "57P03" | "57014"
                )
        }),
        _ => false,
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => Self::Unavailable {
                detail: "Too many sign-ins at once; retry shortly.",
                retry_after_secs: 1,
            },
            HashError::Failed(_) => Self::Internal(anyhow::Error::new(e)),
        }
    }
}

/// Turns a named constraint violation into the error a client should see (`409 email
/// taken` for `users_email_key`, …); any other error passes through unchanged.
pub trait ResultExt<T> {
    fn on_constraint(self, name: &str, to_error: impl FnOnce() -> ApiError) -> Result<T, ApiError>;
}

impl<T, E: Into<ApiError>> ResultExt<T> for Result<T, E>
where
    E: AsDatabaseError,
{
    fn on_constraint(self, name: &str, to_error: impl FnOnce() -> ApiError) -> Result<T, ApiError> {
        self.map_err(|e| {
            if e.constraint() == Some(name) {
                to_error()
            } else {
                e.into()
            }
        })
    }
}

/// Access to the constraint name of a database error.
pub trait AsDatabaseError {
    fn constraint(&self) -> Option<&str>;
}

impl AsDatabaseError for sqlx::Error {
    fn constraint(&self) -> Option<&str> {
        self.as_database_error().and_then(|e| e.constraint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_hides_its_cause_from_the_body() {
        let error = ApiError::Internal(anyhow::anyhow!("relation \"users\" does not exist"));
        let problem = error.problem();
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("users"));
    }

    #[test]
    fn an_unreachable_or_exhausted_database_is_a_503_not_a_500() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Protocol("unexpected response from SSLRequest".into()),
            sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        ] {
            assert_eq!(ApiError::from(e).status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(
            ApiError::from(sqlx::Error::RowNotFound).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn unauthorized_carries_a_bearer_challenge() {
        let response = ApiError::Unauthorized {
            invalid_token: true,
        }
        .into_response();
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
