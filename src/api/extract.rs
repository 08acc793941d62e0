//! Extractors that authenticate and authorize: how a request becomes "this user, with
//! this role in this project".
//!
//! * [`AuthUser`] authenticates: a valid bearer token, or 401.
//! * [`ProjectAccess`] authorizes: the caller's role in the project named by the path, or
//!   404 when they are not a member (indistinguishable from a missing project), or 403
//!   when their role is below what the handler's signature asks for. [`TaskAccess`] does
//!   the same for a task, through its project. Object-level authorization lives here and
//!   nowhere else: a handler that takes `ProjectAccess<OwnerOrAdmin>` cannot run for a
//!   plain member, and one that takes `TaskAccess` cannot run for a non-member.
//!
//! Each asks the state only for the part it needs (`Keyring`, `Loaders`), through
//! `FromRef`. The checks read through the loaders, so with the cache on a membership
//! check costs one Redis round trip, and a task read (row, membership, assignee, count)
//! one as well.
//! The JSON, path and query extractors are in `crate::http::extract`.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, RawPathParams};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::auth::Keyring;
use crate::domain::Role;
use crate::http::ApiError;
use crate::loaders::{Loaders, TaskDetails};

/// The authenticated caller: the user id of a valid bearer token.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub id: Uuid,
}

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<Keyring>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Verified once per request even when several extractors ask.
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(*user);
        }
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
        let id = Arc::<Keyring>::from_ref(state).verify(token).map_err(|e| {
            tracing::debug!(error = %e, "bearer token refused");
            ApiError::Unauthorized {
                invalid_token: true,
            }
        })?;
        let user = AuthUser { id };
        parts.extensions.insert(user);
        // A write's caller, for read-your-writes (`super::writes`), when it is tracked.
        if let Some(writer) = parts.extensions.get::<super::writes::Writer>() {
            writer.set(id);
        }
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
    Arc<Keyring>: FromRef<S>,
    Loaders: FromRef<S>,
    S: Send + Sync,
    R: RoleRequirement,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        const NOT_FOUND: ApiError = ApiError::NotFound("project");
        let user = AuthUser::from_request_parts(parts, state).await?;
        let project_id = path_id(parts, state).await?.ok_or(NOT_FOUND)?;
        // Boxed: the cached read is a deep future, and every handler's future would
        // otherwise embed it (and hit the compiler's type-depth limit).
        let role = Box::pin(Loaders::from_ref(state).role(project_id, user.id))
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
/// task does not exist or the caller is not a member of its project — the same answer in
/// both cases. Any member may read, change and comment on a task. The check returns the
/// task with its details as they were when access was checked (its project is
/// `details.task.project_id`), so a read needs nothing more: one round trip in all,
/// to Redis or to Postgres. The caller's role is not kept: every member may do
/// everything to a task.
pub struct TaskAccess {
    pub task_id: Uuid,
    pub user_id: Uuid,
    pub details: TaskDetails,
}

impl TaskAccess {
    pub fn project_id(&self) -> Uuid {
        self.details.task.project_id
    }
}

impl<S> FromRequestParts<S> for TaskAccess
where
    Arc<Keyring>: FromRef<S>,
    Loaders: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        const NOT_FOUND: ApiError = ApiError::NotFound("task");
        let user = AuthUser::from_request_parts(parts, state).await?;
        let task_id = path_id(parts, state).await?.ok_or(NOT_FOUND)?;
        let details = Box::pin(Loaders::from_ref(state).task_for(task_id, user.id))
            .await?
            .ok_or(NOT_FOUND)?;
        Ok(Self {
            task_id,
            user_id: user.id,
            details,
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
