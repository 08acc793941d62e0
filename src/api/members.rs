//! `/v1/projects/{id}/members`: who belongs to a project, with which role.
//!
//! Roles: `owner > admin > member`. Owners and admins add and remove members, an admin
//! cannot remove an owner, anyone may remove themself, and the last owner cannot leave.
//! The threshold part is in the signatures (`ProjectAccess<…>`); the rest is
//! `Role::may_remove_other` and the last-owner check in [`remove_member`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{AnyMember, OwnerOrAdmin, ProjectAccess};
use super::idempotency::{Caller, Claim, Created, IdempotencyKeyHeader, Idempotent};
use crate::cache::Stale;
use crate::db::{self, Db};
use crate::domain::{Email, Role};
use crate::http::{ApiError, AppJson, AppPath, ResultExt};
use crate::jobs::Jobs;
use crate::loaders::Loaders;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_members, add_member))
        .routes(routes!(remove_member))
}

/// A role that can be granted through the API (ownership cannot).
#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum GrantableRole {
    Admin,
    Member,
}

impl From<GrantableRole> for Role {
    fn from(role: GrantableRole) -> Self {
        match role {
            GrantableRole::Admin => Role::Admin,
            GrantableRole::Member => Role::Member,
        }
    }
}

/// Whom to add, with which role.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The email of an existing user.
    #[schema(format = Email, max_length = 254)]
    email: String,
    role: GrantableRole,
}

/// A member's role.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum RoleBody {
    Owner,
    Admin,
    Member,
}

impl From<Role> for RoleBody {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => RoleBody::Owner,
            Role::Admin => RoleBody::Admin,
            Role::Member => RoleBody::Member,
        }
    }
}

/// A user, as other members see them.
#[derive(Serialize, ToSchema)]
pub struct MemberUser {
    id: Uuid,
    name: String,
    #[schema(format = Email)]
    email: String,
}

/// A member of a project.
#[derive(Serialize, ToSchema)]
pub struct MemberBody {
    user: MemberUser,
    role: RoleBody,
    added_at: DateTime<Utc>,
}

/// Every member of a project.
#[derive(Serialize, ToSchema)]
pub struct MemberList {
    items: Vec<MemberBody>,
}

impl From<db::members::Member> for MemberBody {
    fn from(m: db::members::Member) -> Self {
        Self {
            user: MemberUser {
                id: m.user_id,
                name: m.name,
                email: m.email,
            },
            role: m.role.into(),
            added_at: m.added_at,
        }
    }
}

/// The project's members, in the order they joined.
#[utoipa::path(
    get,
    path = "/v1/projects/{id}/members",
    tag = "members",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The members", body = MemberList),
        (status = 404, description = "No such project, or the caller is not a member"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(project_id = %access.project_id))]
async fn list_members(
    State(loaders): State<Loaders>,
    access: ProjectAccess<AnyMember>,
) -> Result<AppJson<MemberList>, ApiError> {
    let project_id = access.project_id;
    let members = loaders
        .reads()
        .list(access.user_id, move |db| async move {
            db::members::list(&db, project_id).await
        })
        .await?;
    Ok(AppJson(MemberList {
        items: members.into_iter().map(MemberBody::from).collect(),
    }))
}

/// Add an existing user to the project (owners and admins).
#[utoipa::path(
    post,
    path = "/v1/projects/{id}/members",
    tag = "members",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project's id"), IdempotencyKeyHeader),
    request_body = AddMember,
    responses(
        (status = 201, description = "The new member", body = MemberBody),
        (status = 403, description = "The caller is a member, but not an owner or admin"),
        (status = 404, description = "No such project (or the caller is not a member), or no user with that email"),
        (status = 409, description = "The user is already a member"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(project_id = %access.project_id))]
async fn add_member(
    State(db): State<Db>,
    State(jobs): State<Jobs>,
    access: ProjectAccess<OwnerOrAdmin>,
    Idempotent(idempotency, body): Idempotent<AddMember>,
) -> Result<Response, ApiError> {
    let email = Email::parse(body.email).map_err(|e| ApiError::invalid("email", e))?;
    let mut tx = db.begin().await?;
    let recorder = match idempotency
        .claim(&mut tx, Caller::User(access.user_id))
        .await?
    {
        Claim::Fresh(recorder) => recorder,
        Claim::Answered(response) => return Ok(response),
    };
    // In the transaction, after the claim: a replay does not depend on the user still
    // existing, and no second pooled connection is needed while the key is held.
    let user = db::users::find_by_email(tx.exec(), email.as_str())
        .await?
        .ok_or(ApiError::NotFound("user with that email"))?;
    let member = db::members::add(tx.exec(), access.project_id, user.id, body.role.into())
        .await
        .on_constraint(db::members::MEMBERS_PKEY, || ApiError::Conflict {
            slug: "already-member",
            detail: "That user is already a member of this project.".into(),
        })?;
    // "Not a member" is cached too.
    let stale = [Stale::Membership {
        project: access.project_id,
        user: user.id,
    }];
    let created = Created::json(&MemberBody::from(member))?;
    recorder.record(&mut tx, &created).await?;
    jobs.commit(tx, Vec::new(), &stale).await?;
    Ok(created.into_response())
}

/// `/v1/projects/{id}/members/{user_id}`.
#[derive(Deserialize)]
pub struct MemberPath {
    #[allow(dead_code, reason = "bound by the route; read by ProjectAccess")]
    id: Uuid,
    user_id: Uuid,
}

/// Remove a member. Owners and admins remove others (an admin cannot remove an owner);
/// any member may remove themself; the last owner cannot leave. The removed member's
/// tasks in this project become unassigned.
#[utoipa::path(
    delete,
    path = "/v1/projects/{id}/members/{user_id}",
    tag = "members",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The project's id"),
        ("user_id" = Uuid, Path, description = "The member's user id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "The caller may not remove this member"),
        (status = 404, description = "No such project (or the caller is not a member), or no such member"),
        (status = 409, description = "The member is the project's last owner"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(project_id = %access.project_id, target = %path.user_id))]
async fn remove_member(
    State(db): State<Db>,
    State(jobs): State<Jobs>,
    access: ProjectAccess<AnyMember>,
    AppPath(path): AppPath<MemberPath>,
) -> Result<StatusCode, ApiError> {
    let target = path.user_id;
    let removing_self = target == access.user_id;
    if !removing_self && access.role < Role::Admin {
        return Err(ApiError::Forbidden(
            "Only the project's owners and admins may remove other members.",
        ));
    }
    let mut tx = db.begin().await?;
    // Lock the owner rows first: the last-owner check below must not race another removal.
    let owners = db::members::lock_owners(tx.exec(), access.project_id).await?;
    let target_role = db::members::role_of(tx.exec(), access.project_id, target)
        .await?
        .ok_or(ApiError::NotFound("member"))?;
    if !removing_self && !access.role.may_remove_other(target_role) {
        return Err(ApiError::Forbidden("An admin cannot remove an owner."));
    }
    if target_role == Role::Owner && owners <= 1 {
        return Err(ApiError::Conflict {
            slug: "last-owner",
            detail: "The project's last owner cannot be removed; delete the project instead."
                .into(),
        });
    }
    // Their tasks here become unassigned with the removal (`on delete set null`): read
    // which, under the owner locks, so that their cached rows can be invalidated.
    let unassigned = db::tasks::assigned_in_project(tx.exec(), access.project_id, target).await?;
    db::members::remove(tx.exec(), access.project_id, target).await?;
    let mut stale = vec![
        Stale::Membership {
            project: access.project_id,
            user: target,
        },
        Stale::ProjectTasks(access.project_id),
    ];
    stale.extend(unassigned.into_iter().map(Stale::Task));
    jobs.commit(tx, Vec::new(), &stale).await?;
    Ok(StatusCode::NO_CONTENT)
}
