//! Tasks: `/v1/projects/{id}/tasks`, `/v1/tasks/{id}`, `/v1/me/tasks`.
//!
//! Any member of a project may create, read, change and delete its tasks; everyone else
//! gets 404 (`ProjectAccess`, `TaskAccess`). A page of tasks embeds each assignee and
//! comment count in a fixed number of round trips (`crate::loaders`), unless the
//! `batch_loading` fix flag is off.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{AnyMember, AuthUser, ProjectAccess, TaskAccess, not_null, present};
use super::idempotency::{Caller, Claim, Created, IdempotencyKeyHeader, Idempotent};
use super::pagination::{Page, PageParams, PageRequest};
use crate::cache::Stale;
use crate::db::tasks::{NewTask, Task, TaskChanges, TaskFilter};
use crate::db::{self, Db, Keyset, Tx};
use crate::domain::{TaskDescription, TaskStatus, TaskTitle, validate};
use crate::http::{ApiError, AppJson, AppQuery, AsDatabaseError, conditional_json};
use crate::jobs::{self, Jobs};
use crate::loaders::{Loaders, TaskDetails};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_task, list_project_tasks))
        .routes(routes!(get_task, update_task, delete_task))
        .routes(routes!(list_my_tasks))
}

/// Where a task stands.
#[derive(Debug, Deserialize, Serialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[schema(as = TaskStatus)]
pub enum TaskStatusBody {
    Todo,
    Doing,
    Done,
}

impl From<TaskStatusBody> for TaskStatus {
    fn from(status: TaskStatusBody) -> Self {
        match status {
            TaskStatusBody::Todo => TaskStatus::Todo,
            TaskStatusBody::Doing => TaskStatus::Doing,
            TaskStatusBody::Done => TaskStatus::Done,
        }
    }
}

impl From<TaskStatus> for TaskStatusBody {
    fn from(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Todo => TaskStatusBody::Todo,
            TaskStatus::Doing => TaskStatusBody::Doing,
            TaskStatus::Done => TaskStatusBody::Done,
        }
    }
}

/// A new task.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f]*$",
        example = "Fix the login timeout"
    )]
    title: String,
    #[schema(max_length = 10000, pattern = r"^[^\u0000]*$")]
    description: Option<String>,
    /// Defaults to `todo`.
    status: Option<TaskStatusBody>,
    /// A member of the project, or null.
    assignee_id: Option<Uuid>,
    #[schema(value_type = Option<String>, format = Date, example = "2026-12-24")]
    due_date: Option<String>,
}

/// Changes to a task: absent fields stay as they are; `description`, `assignee_id` and
/// `due_date` may be set to null (unassign, clear).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTask {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f]*$")]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 10000, pattern = r"^[^\u0000]*$")]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = TaskStatusBody)]
    status: Option<Option<TaskStatusBody>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    assignee_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = Date)]
    due_date: Option<Option<String>>,
}

/// A user as embedded in a task.
#[derive(Serialize, ToSchema)]
pub struct TaskAssignee {
    id: Uuid,
    name: String,
    #[schema(format = Email)]
    email: String,
}

/// A task, with its assignee and its number of comments.
#[derive(Serialize, ToSchema)]
pub struct TaskBody {
    id: Uuid,
    project_id: Uuid,
    title: String,
    description: Option<String>,
    status: TaskStatusBody,
    assignee: Option<TaskAssignee>,
    due_date: Option<NaiveDate>,
    #[schema(minimum = 0)]
    comment_count: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<TaskDetails> for TaskBody {
    type Error = ApiError;
    fn try_from(details: TaskDetails) -> Result<Self, ApiError> {
        let task = details.task;
        let status: TaskStatus = task
            .status
            .parse()
            .map_err(|e: String| ApiError::Internal(anyhow::anyhow!("stored task status: {e}")))?;
        Ok(Self {
            id: task.id,
            project_id: task.project_id,
            title: task.title,
            description: task.description,
            status: status.into(),
            assignee: details.assignee.map(|u| TaskAssignee {
                id: u.id,
                name: u.name,
                email: u.email,
            }),
            due_date: task.due_date,
            comment_count: details.comment_count,
            created_at: task.created_at,
            updated_at: task.updated_at,
        })
    }
}

/// `?status=&assignee_id=` of a project's task list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskFilterParams {
    /// Only tasks with this status.
    #[param(value_type = Option<TaskStatusBody>)]
    status: Option<String>,
    /// Only tasks assigned to this user.
    #[param(value_type = Option<Uuid>)]
    assignee_id: Option<String>,
}

/// `?status=` of the caller's task list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusParam {
    /// Only tasks with this status.
    #[param(value_type = Option<TaskStatusBody>)]
    status: Option<String>,
}

fn parse_status(raw: Option<String>) -> Result<Option<TaskStatus>, String> {
    raw.map(|s| s.parse()).transpose()
}

fn parse_due_date(raw: String) -> Result<NaiveDate, String> {
    const MESSAGE: &str = "must be a date written YYYY-MM-DD";
    if raw.len() != 10 {
        return Err(MESSAGE.into());
    }
    NaiveDate::parse_from_str(&raw, "%Y-%m-%d").map_err(|_| MESSAGE.into())
}

/// What a failed task write means to the client.
fn task_write_error(e: sqlx::Error) -> ApiError {
    match e.constraint() {
        Some(db::tasks::ASSIGNEE_MEMBER_FKEY) => {
            ApiError::invalid("assignee_id", "must be a member of the task's project")
        }
        Some(db::tasks::PROJECT_FKEY) => ApiError::NotFound("project"),
        _ => e.into(),
    }
}

/// One task with its details, as a response body.
async fn task_body(loaders: &Loaders, task: Task) -> Result<TaskBody, ApiError> {
    loaders.task_with_details(task).await?.try_into()
}

/// A page of tasks with their details, as a response body. The loaders choose how the
/// details are loaded (batched, or per row with the `batch_loading` fix off).
async fn task_page(
    loaders: &Loaders,
    request: &PageRequest,
    rows: Vec<Task>,
) -> Result<Page<TaskBody>, ApiError> {
    let page = request.page(rows, Task::keyset, |task| task);
    let details = loaders.tasks_with_details(page.items).await?;
    Ok(Page {
        items: details
            .into_iter()
            .map(TaskBody::try_from)
            .collect::<Result<_, _>>()?,
        next_cursor: page.next_cursor,
    })
}

/// Create a task in a project.
#[utoipa::path(
    post,
    path = "/v1/projects/{id}/tasks",
    tag = "tasks",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project's id"), IdempotencyKeyHeader),
    request_body = CreateTask,
    responses(
        (status = 201, description = "The new task", body = TaskBody,
         headers(("Location" = String, description = "The task's URL"))),
        (status = 404, description = "No such project, or the caller is not a member"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(project_id = %access.project_id))]
async fn create_task(
    State(state): State<AppState>,
    access: ProjectAccess<AnyMember>,
    Idempotent(idempotency, body): Idempotent<CreateTask>,
) -> Result<Response, ApiError> {
    let (title, description, due_date) = validate((
        ("title", TaskTitle::parse(body.title)),
        (
            "description",
            body.description.map(TaskDescription::parse).transpose(),
        ),
        ("due_date", body.due_date.map(parse_due_date).transpose()),
    ))?;
    let new = NewTask {
        title: title.as_str(),
        description: description.as_ref().map(TaskDescription::as_str),
        status: body.status.map_or(TaskStatus::Todo, TaskStatus::from),
        assignee_id: body.assignee_id,
        due_date,
    };
    let mut tx = state.db.begin().await?;
    let recorder = match idempotency
        .claim(&mut tx, Caller::User(access.user_id))
        .await?
    {
        Claim::Fresh(recorder) => recorder,
        Claim::Answered(response) => return Ok(response),
    };
    let task = db::tasks::create(tx.exec(), Uuid::now_v7(), access.project_id, new)
        .await
        .map_err(task_write_error)?;
    let jobs = jobs::task_side_effects(task.id, task.project_id, task.assignee_id, true);
    let stale = [Stale::ProjectTasks(task.project_id)];
    let location = format!("/v1/tasks/{}", task.id);
    let created = Created::json(&new_task_body(&mut tx, task).await?)?.at(location);
    recorder.record(&mut tx, &created).await?;
    state.jobs.commit(tx, jobs, &stale).await?;
    Ok(created.into_response())
}

/// A task just created in `tx`, as a response body. Its details are read in the
/// transaction, not through the loaders: the response is recorded with the create (an
/// idempotency key's first response), so it is built before the commit, and on the
/// transaction's own connection (see `api::idempotency`). A new task has no comments.
async fn new_task_body(tx: &mut Tx, task: Task) -> Result<TaskBody, ApiError> {
    let assignee = match task.assignee_id {
        Some(id) => db::users::summary(tx.exec(), id).await?,
        None => None,
    };
    TaskBody::try_from(TaskDetails {
        task,
        assignee,
        comment_count: 0,
    })
}

/// A project's tasks, newest first, optionally by status and assignee.
#[utoipa::path(
    get,
    path = "/v1/projects/{id}/tasks",
    tag = "tasks",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project's id"), TaskFilterParams, PageParams),
    responses(
        (status = 200, description = "A page of tasks", body = Page<TaskBody>),
        (status = 404, description = "No such project, or the caller is not a member"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(project_id = %access.project_id))]
async fn list_project_tasks(
    State(state): State<AppState>,
    access: ProjectAccess<AnyMember>,
    AppQuery(filter): AppQuery<TaskFilterParams>,
    AppQuery(page): AppQuery<PageParams>,
) -> Result<AppJson<Page<TaskBody>>, ApiError> {
    let (status, assignee_id) = validate((
        ("status", parse_status(filter.status)),
        (
            "assignee_id",
            filter
                .assignee_id
                .map(|a| a.parse::<Uuid>().map_err(|_| "must be a UUID".to_owned()))
                .transpose(),
        ),
    ))?;
    let filter = TaskFilter {
        status,
        assignee_id,
    };
    let scope = format!(
        "tasks|{}|{}|{}",
        access.project_id,
        status.map_or("-", TaskStatus::as_str),
        assignee_id.map_or_else(|| "-".to_owned(), |a| a.to_string()),
    );
    let request = page.parse(&state.cursors, scope, Keyset::NEWEST)?;
    let rows = state
        .loaders
        .project_tasks(
            access.user_id,
            access.project_id,
            filter,
            request.after,
            request.fetch_limit(),
        )
        .await?;
    Ok(AppJson(task_page(&state.loaders, &request, rows).await?))
}

/// The tasks assigned to the caller, across their projects, newest first.
#[utoipa::path(
    get,
    path = "/v1/me/tasks",
    tag = "tasks",
    security(("bearer" = [])),
    params(StatusParam, PageParams),
    responses((status = 200, description = "A page of the caller's tasks", body = Page<TaskBody>)),
)]
#[tracing::instrument(level = "trace", skip_all, fields(user_id = %user.id))]
async fn list_my_tasks(
    State(state): State<AppState>,
    user: AuthUser,
    AppQuery(filter): AppQuery<StatusParam>,
    AppQuery(page): AppQuery<PageParams>,
) -> Result<AppJson<Page<TaskBody>>, ApiError> {
    let status = parse_status(filter.status).map_err(|e| ApiError::invalid("status", e))?;
    let scope = format!(
        "my-tasks|{}|{}",
        user.id,
        status.map_or("-", TaskStatus::as_str)
    );
    let request = page.parse(&state.cursors, scope, Keyset::NEWEST)?;
    let (after, limit) = (request.after, request.fetch_limit());
    let rows = state
        .loaders
        .reads()
        .list(user.id, move |db| async move {
            db::tasks::list_for_assignee(&db, user.id, status, after, limit).await
        })
        .await?;
    Ok(AppJson(task_page(&state.loaders, &request, rows).await?))
}

/// A task.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task", body = TaskBody,
         headers(("ETag" = String, description = "Changes with every change of the task as shown"))),
        (status = 304, description = "Not modified: `If-None-Match` holds the current tag"),
        (status = 404, description = "No such task, or the caller is not a member of its project"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(task_id = %access.task_id))]
async fn get_task(access: TaskAccess, headers: HeaderMap) -> Result<Response, ApiError> {
    // The access check already read the task with its details.
    let body: TaskBody = access.details.try_into()?;
    Ok(conditional_json(&headers, &body))
}

/// Change a task.
#[utoipa::path(
    patch,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The task's id")),
    request_body = UpdateTask,
    responses(
        (status = 200, description = "The changed task", body = TaskBody),
        (status = 404, description = "No such task, or the caller is not a member of its project"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(task_id = %access.task_id))]
async fn update_task(
    State(state): State<AppState>,
    access: TaskAccess,
    AppJson(body): AppJson<UpdateTask>,
) -> Result<AppJson<TaskBody>, ApiError> {
    let (title, description, status, due_date) = validate((
        (
            "title",
            not_null(body.title).and_then(|t| t.map(TaskTitle::parse).transpose()),
        ),
        (
            "description",
            body.description
                .map(|d| d.map(TaskDescription::parse).transpose())
                .transpose(),
        ),
        (
            "status",
            not_null(body.status).map(|s| s.map(TaskStatus::from)),
        ),
        (
            "due_date",
            body.due_date
                .map(|d| d.map(parse_due_date).transpose())
                .transpose(),
        ),
    ))?;
    let changes = TaskChanges {
        title: title.as_ref().map(TaskTitle::as_str),
        description: description
            .as_ref()
            .map(|d| d.as_ref().map(TaskDescription::as_str)),
        status,
        assignee_id: body.assignee_id,
        due_date,
    };
    let mut tx = state.db.begin().await?;
    let updated = db::tasks::update(tx.exec(), access.task_id, changes)
        .await
        .map_err(task_write_error)?
        .ok_or(ApiError::NotFound("task"))?;
    let task = updated.task;
    let new_assignee = task
        .assignee_id
        .filter(|_| task.assignee_id != updated.previous_assignee_id);
    let counts_changed =
        task.status != updated.previous_status || task.due_date != updated.previous_due_date;
    let jobs = jobs::task_side_effects(task.id, task.project_id, new_assignee, counts_changed);
    state
        .jobs
        .commit(
            tx,
            jobs,
            &[Stale::Task(task.id), Stale::ProjectTasks(task.project_id)],
        )
        .await?;
    Ok(AppJson(task_body(&state.loaders, task).await?))
}

/// Delete a task and its comments.
#[utoipa::path(
    delete,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such task, or the caller is not a member of its project"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(task_id = %access.task_id))]
async fn delete_task(
    State(db): State<Db>,
    State(jobs): State<Jobs>,
    access: TaskAccess,
) -> Result<StatusCode, ApiError> {
    let mut tx = db.begin().await?;
    if !db::tasks::delete(tx.exec(), access.task_id).await? {
        return Err(ApiError::NotFound("task"));
    }
    let project_id = access.project_id();
    let side_effects = jobs::task_side_effects(access.task_id, project_id, None, true);
    jobs.commit(
        tx,
        side_effects,
        &[
            Stale::Task(access.task_id),
            Stale::CommentCount(access.task_id),
            Stale::ProjectTasks(project_id),
        ],
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_dates_are_strict_calendar_dates() {
        assert!(parse_due_date("2026-12-24".into()).is_ok());
        assert!(parse_due_date("2024-02-29".into()).is_ok());
        for bad in [
            "2026-02-30",
            "2026-1-5",
            "26-01-05",
            "2026/01/05",
            "2026-01-05T00:00:00Z",
            "",
        ] {
            assert!(parse_due_date(bad.into()).is_err(), "{bad}");
        }
    }
}
