//! `/v1/projects`: create, list, read, change and delete projects.
//!
//! Authorization is in the signatures: `ProjectAccess<OwnerOrAdmin>` on `update`,
//! `ProjectAccess<OwnerOnly>` on `delete` (see `extract.rs`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{AnyMember, AuthUser, OwnerOnly, OwnerOrAdmin, ProjectAccess, not_null};
use super::idempotency::{Caller, Claim, Created, IdempotencyKeyHeader, Idempotent};
use super::pagination::{Page, PageParams};
use crate::cache::Stale;
use crate::db::projects::ProjectChanges;
use crate::db::{self, Db, Keyset};
use crate::domain::{ProjectDescription, ProjectName, validate};
use crate::http::{ApiError, AppJson, AppQuery, conditional_json};
use crate::jobs::Jobs;
use crate::loaders::Loaders;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_project, list_projects))
        .routes(routes!(get_project, update_project, delete_project))
}

/// A new project.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f]*$",
        example = "Website relaunch"
    )]
    name: String,
    #[schema(max_length = 10000, pattern = r"^[^\u0000]*$")]
    description: Option<String>,
}

/// Changes to a project: absent fields stay as they are; `description: null` clears it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = String, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f]*$")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<String>, max_length = 10000, pattern = r"^[^\u0000]*$")]
    description: Option<Option<String>>,
}

/// A project.
#[derive(Serialize, ToSchema)]
pub struct ProjectBody {
    id: Uuid,
    name: String,
    description: Option<String>,
    owner_id: Uuid,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<db::projects::Project> for ProjectBody {
    fn from(p: db::projects::Project) -> Self {
        Self {
            id: p.id,
            name: p.name,
            description: p.description,
            owner_id: p.owner_id,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Create a project; the caller becomes its owner.
#[utoipa::path(
    post,
    path = "/v1/projects",
    tag = "projects",
    security(("bearer" = [])),
    params(IdempotencyKeyHeader),
    request_body = CreateProject,
    responses((status = 201, description = "The new project", body = ProjectBody,
               headers(("Location" = String, description = "The project's URL")))),
)]
#[tracing::instrument(level = "trace", skip_all, fields(user_id = %user.id))]
async fn create_project(
    State(db): State<Db>,
    user: AuthUser,
    Idempotent(idempotency, body): Idempotent<CreateProject>,
) -> Result<Response, ApiError> {
    let (name, description) = validate((
        ("name", ProjectName::parse(body.name)),
        (
            "description",
            body.description.map(ProjectDescription::parse).transpose(),
        ),
    ))?;
    let mut tx = db.begin().await?;
    let recorder = match idempotency.claim(&mut tx, Caller::User(user.id)).await? {
        Claim::Fresh(recorder) => recorder,
        Claim::Answered(response) => return Ok(response),
    };
    let project = db::projects::create(
        tx.exec(),
        Uuid::now_v7(),
        name.as_str(),
        description.as_ref().map(ProjectDescription::as_str),
        user.id,
    )
    .await?;
    let location = format!("/v1/projects/{}", project.id);
    let created = Created::json(&ProjectBody::from(project))?.at(location);
    recorder.record(&mut tx, &created).await?;
    tx.commit().await?;
    Ok(created.into_response())
}

/// The caller's projects, newest first.
#[utoipa::path(
    get,
    path = "/v1/projects",
    tag = "projects",
    security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, description = "A page of the caller's projects", body = Page<ProjectBody>)),
)]
#[tracing::instrument(level = "trace", skip_all, fields(user_id = %user.id))]
async fn list_projects(
    State(state): State<AppState>,
    user: AuthUser,
    AppQuery(params): AppQuery<PageParams>,
) -> Result<AppJson<Page<ProjectBody>>, ApiError> {
    let request = params.parse(
        &state.cursors,
        format!("projects|{}", user.id),
        Keyset::NEWEST,
    )?;
    let (after, limit) = (request.after, request.fetch_limit());
    let rows = state
        .loaders
        .reads()
        .list(user.id, move |db| async move {
            db::projects::list_for_member(&db, user.id, after, limit).await
        })
        .await?;
    Ok(AppJson(request.page(
        rows,
        |p| p.keyset(),
        ProjectBody::from,
    )))
}

/// A project.
#[utoipa::path(
    get,
    path = "/v1/projects/{id}",
    tag = "projects",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The project", body = ProjectBody,
         headers(("ETag" = String, description = "Changes with every change of the project"))),
        (status = 304, description = "Not modified: `If-None-Match` holds the current tag"),
        (status = 404, description = "No such project, or the caller is not a member"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(project_id = %access.project_id))]
async fn get_project(
    State(loaders): State<Loaders>,
    access: ProjectAccess<AnyMember>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project = loaders
        .project(access.project_id)
        .await?
        .ok_or(ApiError::NotFound("project"))?;
    Ok(conditional_json(&headers, &ProjectBody::from(project)))
}

/// Change a project (owners and admins).
#[utoipa::path(
    patch,
    path = "/v1/projects/{id}",
    tag = "projects",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project's id")),
    request_body = UpdateProject,
    responses(
        (status = 200, description = "The changed project", body = ProjectBody),
        (status = 403, description = "The caller is a member, but not an owner or admin"),
        (status = 404, description = "No such project, or the caller is not a member"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(project_id = %access.project_id))]
async fn update_project(
    State(db): State<Db>,
    State(jobs): State<Jobs>,
    access: ProjectAccess<OwnerOrAdmin>,
    AppJson(body): AppJson<UpdateProject>,
) -> Result<AppJson<ProjectBody>, ApiError> {
    let name = not_null(body.name).and_then(|n| n.map(ProjectName::parse).transpose());
    let description = body
        .description
        .map(|d| d.map(ProjectDescription::parse).transpose())
        .transpose();
    let (name, description) = validate((("name", name), ("description", description)))?;
    let changes = ProjectChanges {
        name: name.as_ref().map(ProjectName::as_str),
        description: description
            .as_ref()
            .map(|d| d.as_ref().map(ProjectDescription::as_str)),
    };
    let mut tx = db.begin().await?;
    let project = db::projects::update(tx.exec(), access.project_id, changes)
        .await?
        .ok_or(ApiError::NotFound("project"))?;
    jobs.commit(tx, Vec::new(), &[Stale::Project(project.id)])
        .await?;
    Ok(AppJson(project.into()))
}

/// Delete a project with its tasks, comments, members and stats (owner only).
#[utoipa::path(
    delete,
    path = "/v1/projects/{id}",
    tag = "projects",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is a member, but not the owner"),
        (status = 404, description = "No such project, or the caller is not a member"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(project_id = %access.project_id))]
async fn delete_project(
    State(db): State<Db>,
    State(jobs): State<Jobs>,
    access: ProjectAccess<OwnerOnly>,
) -> Result<StatusCode, ApiError> {
    let project = access.project_id;
    let mut tx = db.begin().await?;
    if !db::projects::lock(tx.exec(), project).await? {
        return Err(ApiError::NotFound("project"));
    }
    // Its members go with it (`on delete cascade`), and each may hold a cached
    // membership. The lock keeps anyone from joining before the delete. Its tasks'
    // entries need no invalidation: every task read checks the membership first.
    let members = db::members::user_ids(tx.exec(), project).await?;
    db::projects::delete(tx.exec(), project).await?;
    let mut stale = vec![Stale::Project(project), Stale::ProjectTasks(project)];
    stale.extend(
        members
            .into_iter()
            .map(|user| Stale::Membership { project, user }),
    );
    jobs.commit(tx, Vec::new(), &stale).await?;
    Ok(StatusCode::NO_CONTENT)
}
