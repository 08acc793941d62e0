//! Extractors that turn a request into typed input, with every rejection rendered as
//! problem+json ([`ApiError`]) instead of axum's plain-text default: [`AppJson`] (malformed
//! JSON, unknown field, wrong type, a body that is not an object), [`AppPath`] (a non-UUID
//! id is a 404), [`AppQuery`] (a bad query parameter is a 422). Shared by the public API
//! and the admin listener.

use std::error::Error as _;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::domain::{FieldError, ValidationErrors};

/// A JSON object body, with every rejection rendered as problem+json.
///
/// Written by hand rather than derived `via(axum::Json)` for one reason: serde's derived
/// `Deserialize` for a struct also accepts a JSON *array* (fields by position), so `[]`
/// would be a valid `PATCH` body meaning "change nothing". Every request body of this
/// API is an object, and this extractor says so. The rest — content type, body limit,
/// syntax versus data errors — is axum's own `Json` logic.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_body(request, state).await?;
        Self::from_bytes(&bytes)
    }
}

impl<T: DeserializeOwned> AppJson<T> {
    /// The extractor's second half, for a body [`json_body`] has read: a caller that
    /// needs the raw bytes too (the idempotency keys fingerprint them) reads them once and
    /// parses them here, with the same rejections.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_bytes(bytes)?;
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::invalid("body", "must be a JSON object"));
        }
        Ok(AppJson(value))
    }
}

/// The extractor's first half: the body of a request that says it is JSON (415 if not),
/// read within the body limit (413 past it).
pub async fn json_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    if !is_json(request.headers()) {
        return Err(ApiError::UnsupportedMediaType);
    }
    Bytes::from_request(request, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest("The body could not be read.".into())
        }
    })
}

/// `application/json`, or any `application/*+json`, parameters aside.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: serde::Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                ApiError::Validation(ValidationErrors(vec![json_field_error(&e)]))
            }
            JsonRejection::JsonSyntaxError(_) => {
                ApiError::BadRequest("The body is not well-formed JSON.".into())
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(e)
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::PayloadTooLarge
            }
            other => {
                ApiError::BadRequest(format!("The body could not be read ({}).", other.status()))
            }
        }
    }
}

/// The failing field's path and a client-readable message, from the serde error that
/// axum's `Json` wraps.
fn json_field_error(error: &(dyn std::error::Error + 'static)) -> FieldError {
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>() {
            let path = e.path().to_string();
            return FieldError {
                field: if path == "." { "body".into() } else { path },
                message: client_message(&e.inner().to_string()),
            };
        }
        source = e.source();
    }
    FieldError {
        field: "body".into(),
        message: "does not match the expected shape".into(),
    }
}

/// serde's messages are good for clients except where they name Rust types ("expected
/// struct CreateUser") or point into the byte stream: both are trimmed here.
fn client_message(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    let mut out = Vec::new();
    let mut words = message.split(' ');
    while let Some(word) = words.next() {
        match word {
            // "struct CreateUser" / "enum Role": skip the Rust type's name too.
            "struct" => {
                words.next();
                out.push("a JSON object");
            }
            "enum" => {
                words.next();
                out.push("one of the documented values");
            }
            word => out.push(word),
        }
    }
    out.join(" ")
}

/// `axum::extract::Path`: a path that does not parse (a non-UUID id) names no resource,
/// so it is a 404 like any other unknown id.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        match rejection {
            PathRejection::FailedToDeserializePathParams(_) => ApiError::NotFound("resource"),
            other => ApiError::Internal(anyhow::anyhow!("path extraction failed: {other}")),
        }
    }
}

/// `axum::extract::Query`, with rejections as 422.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let message = match rejection.source() {
            Some(e) => client_message(&e.to_string()),
            None => "is not valid".into(),
        };
        ApiError::invalid("query", message)
    }
}

#[cfg(test)]
mod tests {
    use super::client_message;

    #[test]
    fn serde_messages_lose_rust_type_names_and_positions() {
        assert_eq!(
            client_message("invalid type: sequence, expected struct CreateUser at line 1 column 2"),
            "invalid type: sequence, expected a JSON object"
        );
        assert_eq!(
            client_message("unknown field `admin`, expected one of `email`, `name`"),
            "unknown field `admin`, expected one of `email`, `name`"
        );
    }
}
