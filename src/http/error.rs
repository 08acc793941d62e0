//! [`ApiError`]: the one error type of the HTTP layer, rendered as problem+json
//! ([`super::problem`]).
//!
//! Each variant says which status it becomes, so a reader of a handler knows its responses
//! from its `?`s. Converting an error into a response has no side effects: the cause of a
//! 5xx is attached to the response's extensions ([`ErrorReport`]), and
//! `middleware::errors` logs it once, with the request id.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::problem::{ErrorReport, Problem, ProblemField};
use crate::auth::HashError;
use crate::db;
use crate::domain::ValidationErrors;

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
    /// 429: the client has spent a rate-limit budget (`super::rate_limit`); it may try
    /// again after `retry_after_secs`.
    #[error("rate limited by the {policy} budget")]
    RateLimited {
        policy: &'static str,
        retry_after_secs: u64,
    },
    /// 503: a dependency or a bounded resource is saturated or down; try again later.
    /// `cause`, when there is one, is logged (at WARN: the service is degraded, not
    /// broken), never sent.
    #[error("service unavailable: {detail}")]
    Unavailable {
        detail: &'static str,
        retry_after_secs: u32,
        cause: Option<anyhow::Error>,
    },
    /// 503: the request's deadline passed while Postgres ran its statement, and Postgres
    /// cancelled it (the statement timeout is cut to the deadline): the same answer as
    /// the deadline layer's own.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// 500: anything else. The cause is logged, never sent.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

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
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } | Self::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
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
            Self::RateLimited {
                policy,
                retry_after_secs,
            } => Problem::new(
                status,
                Some("rate-limited"),
                "Too many requests",
                format!(
                    "The {policy:?} rate limit is spent; retry after {retry_after_secs} s \
                     (see the RateLimit and RateLimit-Policy headers)."
                ),
            ),
            Self::Unavailable { detail, .. } => {
                Problem::new(status, Some("unavailable"), "Service unavailable", *detail)
            }
            Self::DeadlineExceeded => Problem::deadline_exceeded(),
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
            Self::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::DeadlineExceeded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            _ => {}
        }
        if let Self::Internal(cause)
        | Self::Unavailable {
            cause: Some(cause), ..
        } = self
        {
            response
                .extensions_mut()
                .insert(ErrorReport(Arc::new(cause)));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if db::is_deadline_cancel(&e) {
            Self::DeadlineExceeded
        } else if db::is_unavailable(&e) {
            Self::Unavailable {
                detail: "The database is unavailable; retry shortly.",
                retry_after_secs: 1,
                cause: Some(anyhow::Error::new(e).context("database unavailable")),
            }
        } else {
            Self::Internal(anyhow::Error::new(e).context("database error"))
        }
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => Self::Unavailable {
                detail: "Too many sign-ins at once; retry shortly.",
                retry_after_secs: 1,
                cause: None,
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
    fn converting_an_error_logs_nothing_and_hands_the_cause_to_the_middleware() {
        // The conversion is pure: the cause rides in the extensions, for
        // `middleware::errors` to log once with the request id.
        let response = ApiError::from(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let report = response
            .extensions()
            .get::<ErrorReport>()
            .expect("a report");
        assert!(format!("{:#}", report.0).contains("database unavailable"));
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
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            super::super::problem::PROBLEM_JSON
        );
    }
}
