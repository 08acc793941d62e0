//! Comments: `/v1/tasks/{id}/comments`, oldest first.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::TaskAccess;
use super::idempotency::{Caller, Claim, Created, IdempotencyKeyHeader, Idempotent};
use super::pagination::{Page, PageParams};
use crate::cache::Stale;
use crate::db::{self, Db, Keyset};
use crate::domain::CommentBody as CommentText;
use crate::http::{ApiError, AppJson, AppQuery, ResultExt};
use crate::jobs::Jobs;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_comment, list_comments))
}

/// A new comment.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateComment {
    #[schema(
        min_length = 1,
        max_length = 10000,
        pattern = r"^[^\u0000]*$",
        example = "Reproduced on staging."
    )]
    body: String,
}

/// A comment's author, as other members see them.
#[derive(Serialize, ToSchema)]
pub struct CommentAuthor {
    id: Uuid,
    name: String,
}

/// A comment.
#[derive(Serialize, ToSchema)]
pub struct CommentBody {
    id: Uuid,
    task_id: Uuid,
    author: CommentAuthor,
    body: String,
    created_at: DateTime<Utc>,
}

impl From<db::comments::Comment> for CommentBody {
    fn from(c: db::comments::Comment) -> Self {
        Self {
            id: c.id,
            task_id: c.task_id,
            author: CommentAuthor {
                id: c.author_id,
                name: c.author_name,
            },
            body: c.body,
            created_at: c.created_at,
        }
    }
}

/// Comment on a task.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/comments",
    tag = "comments",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The task's id"), IdempotencyKeyHeader),
    request_body = CreateComment,
    responses(
        (status = 201, description = "The new comment", body = CommentBody),
        (status = 404, description = "No such task, or the caller is not a member of its project"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(task_id = %access.task_id))]
async fn create_comment(
    State(db): State<Db>,
    State(jobs): State<Jobs>,
    access: TaskAccess,
    Idempotent(idempotency, body): Idempotent<CreateComment>,
) -> Result<Response, ApiError> {
    let text = CommentText::parse(body.body).map_err(|e| ApiError::invalid("body", e))?;
    let mut tx = db.begin().await?;
    let recorder = match idempotency
        .claim(&mut tx, Caller::User(access.user_id))
        .await?
    {
        Claim::Fresh(recorder) => recorder,
        Claim::Answered(response) => return Ok(response),
    };
    let comment = db::comments::create(
        tx.exec(),
        Uuid::now_v7(),
        access.task_id,
        access.user_id,
        text.as_str(),
    )
    .await
    .on_constraint(db::comments::TASK_FKEY, || ApiError::NotFound("task"))?;
    let created = Created::json(&CommentBody::from(comment))?;
    recorder.record(&mut tx, &created).await?;
    jobs.commit(tx, Vec::new(), &[Stale::CommentCount(access.task_id)])
        .await?;
    Ok(created.into_response())
}

/// A task's comments, oldest first.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/comments",
    tag = "comments",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The task's id"), PageParams),
    responses(
        (status = 200, description = "A page of comments, oldest first", body = Page<CommentBody>),
        (status = 404, description = "No such task, or the caller is not a member of its project"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(task_id = %access.task_id))]
async fn list_comments(
    State(state): State<AppState>,
    access: TaskAccess,
    AppQuery(page): AppQuery<PageParams>,
) -> Result<AppJson<Page<CommentBody>>, ApiError> {
    let request = page.parse(
        &state.cursors,
        format!("comments|{}", access.task_id),
        Keyset::OLDEST,
    )?;
    let (task_id, after, limit) = (access.task_id, request.after, request.fetch_limit());
    let rows = state
        .loaders
        .reads()
        .list(access.user_id, move |db| async move {
            db::comments::list_for_task(&db, task_id, after, limit).await
        })
        .await?;
    Ok(AppJson(request.page(
        rows,
        db::comments::Comment::keyset,
        CommentBody::from,
    )))
}
