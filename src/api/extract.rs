//! Extractors: how a request becomes typed, authenticated, authorized input.
//!
//! * [`AppJson`], [`AppPath`], [`AppQuery`] wrap axum's extractors so that every rejection
//!   (malformed JSON, unknown field, wrong type, non-UUID id) is an [`ApiError`] and thus
//!   problem+json, never axum's plain-text default.
//! * [`AuthUser`] authenticates: a valid bearer token, or 401.
//! * [`ProjectAccess`] authorizes: the caller's role in the project named by the path, or
//!   404 when they are not a member (indistinguishable from a missing project), or 403
//!   when their role is below what the handler's signature asks for. [`TaskAccess`] does
//!   the same for a task, through its project. Object-level authorization lives here and
//!   nowhere else: a handler that takes `ProjectAccess<OwnerOrAdmin>` cannot run for a
//!   plain member, and one that takes `TaskAccess` cannot run for a non-member.

use std::error::Error as _;
use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;
use crate::app::AppState;
use crate::db;
use crate::domain::{FieldError, Role, ValidationErrors};

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
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("The body could not be read.".into())
            }
        })?;
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::invalid("body", "must be a JSON object"));
        }
        Ok(AppJson(value))
    }
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

/// The authenticated caller: the user id of a valid bearer token.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub id: Uuid,
}

impl<S> FromRequestParts<S> for AuthUser
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Verified once per request even when several extractors ask.
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(*user);
        }
        let state = AppState::from_ref(state);
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized {
                invalid_token: false,
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::Unauthorized {
                invalid_token: true,
            })?;
        let id = state.tokens.verify(token).map_err(|e| {
            tracing::debug!(error = %e, "bearer token refused");
            ApiError::Unauthorized {
                invalid_token: true,
            }
        })?;
        let user = AuthUser { id };
        parts.extensions.insert(user);
        Ok(user)
    }
}

/// The least role an operation needs, as a type, so that it is part of the handler's
/// signature (and visible in the code tour) rather than a check inside its body.
pub trait RoleRequirement: Send + Sync + 'static {
    const MIN: Role;
    /// Why a lower role is refused, for the 403's detail.
    const REFUSAL: &'static str;
}

/// Any member of the project.
pub struct AnyMember;
impl RoleRequirement for AnyMember {
    const MIN: Role = Role::Member;
    const REFUSAL: &'static str = "";
}

/// Owners and admins: change the project, add and remove members.
pub struct OwnerOrAdmin;
impl RoleRequirement for OwnerOrAdmin {
    const MIN: Role = Role::Admin;
    const REFUSAL: &'static str = "Only the project's owners and admins may do this.";
}

/// Owners only: delete the project.
pub struct OwnerOnly;
impl RoleRequirement for OwnerOnly {
    const MIN: Role = Role::Owner;
    const REFUSAL: &'static str = "Only the project's owner may do this.";
}

/// The path parameter that names the resource in every `/v1/projects/{id}…` and
/// `/v1/tasks/{id}…` route.
pub const ID_PARAM: &str = "id";

/// The caller's membership of the project named by the path, checked against `R`.
pub struct ProjectAccess<R: RoleRequirement = AnyMember> {
    pub project_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
    requirement: PhantomData<R>,
}

impl<S, R> FromRequestParts<S> for ProjectAccess<R>
where
    AppState: FromRef<S>,
    S: Send + Sync,
    R: RoleRequirement,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        const NOT_FOUND: ApiError = ApiError::NotFound("project");
        let user = AuthUser::from_request_parts(parts, state).await?;
        let project_id = path_id(parts, state).await?.ok_or(NOT_FOUND)?;
        let state = AppState::from_ref(state);
        let role = db::members::role_of(&state.db, project_id, user.id)
            .await?
            .ok_or(NOT_FOUND)?;
        if role < R::MIN {
            return Err(ApiError::Forbidden(R::REFUSAL));
        }
        Ok(Self {
            project_id,
            user_id: user.id,
            role,
            requirement: PhantomData,
        })
    }
}

/// The `{id}` path parameter as a UUID; `None` when it is not one (no resource has it).
async fn path_id<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<Option<Uuid>, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("path parameters: {e}")))?;
    Ok(params
        .iter()
        .find(|(name, _)| *name == ID_PARAM)
        .and_then(|(_, value)| value.parse::<Uuid>().ok()))
}

/// The caller's access to the task named by the path (`/v1/tasks/{id}…`): 404 when the
/// task does not exist or the caller is not a member of its project — one query, and
/// the same answer in both cases. Any member may read, change and comment on a task.
/// The query returns the task too, as it was when access was checked.
pub struct TaskAccess {
    pub task_id: Uuid,
    pub project_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
    pub task: db::tasks::Task,
}

impl<S> FromRequestParts<S> for TaskAccess
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        const NOT_FOUND: ApiError = ApiError::NotFound("task");
        let user = AuthUser::from_request_parts(parts, state).await?;
        let task_id = path_id(parts, state).await?.ok_or(NOT_FOUND)?;
        let state = AppState::from_ref(state);
        let (task, role) = db::tasks::access(&state.db, task_id, user.id)
            .await?
            .ok_or(NOT_FOUND)?;
        Ok(Self {
            task_id,
            project_id: task.project_id,
            user_id: user.id,
            role,
            task,
        })
    }
}

/// For `Option<Option<T>>` fields of a PATCH body: tells "absent" (`None`, through
/// `#[serde(default)]`) from "null" (`Some(None)`).
pub fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// For a PATCH field that may be absent but not null: `Ok(None)` when absent, the value
/// when given, an error (for the 422) when null.
pub fn not_null<T>(field: Option<Option<T>>) -> Result<Option<T>, String> {
    match field {
        None => Ok(None),
        Some(None) => Err("must not be null".into()),
        Some(Some(value)) => Ok(Some(value)),
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
