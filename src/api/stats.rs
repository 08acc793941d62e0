//! Project stats: `/v1/projects/{id}/stats`, the counts the worker computes off the
//! request path (shared/api.md, "Stats"). Eventually consistent: they converge within
//! seconds of the last write; before the first computation, zeros and a null
//! `computed_at`. Read through the cache (the recomputation invalidates it).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{AnyMember, ProjectAccess};
use crate::db::stats::ProjectStats;
use crate::http::{ApiError, conditional_json};
use crate::loaders::Loaders;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_stats))
}

/// Tasks by status.
#[derive(Debug, Serialize, ToSchema)]
pub struct ByStatus {
    todo: i64,
    doing: i64,
    done: i64,
}

/// A project's task counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsBody {
    project_id: Uuid,
    total: i64,
    by_status: ByStatus,
    /// Tasks not done whose due date has passed (UTC).
    overdue: i64,
    /// When the counts were taken; `null` before the first computation.
    computed_at: Option<DateTime<Utc>>,
}

impl StatsBody {
    fn of(project_id: Uuid, stats: Option<ProjectStats>) -> Self {
        match stats {
            Some(s) => Self {
                project_id,
                total: s.total,
                by_status: ByStatus {
                    todo: s.todo,
                    doing: s.doing,
                    done: s.done,
                },
                overdue: s.overdue,
                computed_at: Some(s.computed_at),
            },
            None => Self {
                project_id,
                total: 0,
                by_status: ByStatus {
                    todo: 0,
                    doing: 0,
                    done: 0,
                },
                overdue: 0,
                computed_at: None,
            },
        }
    }
}

/// A project's stats.
#[utoipa::path(
    get,
    path = "/v1/projects/{id}/stats",
    tag = "projects",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The project's task counts", body = StatsBody,
         headers(("ETag" = String, description = "Changes with every recomputation"))),
        (status = 304, description = "Not modified: `If-None-Match` holds the current tag"),
        (status = 404, description = "No such project, or the caller is not a member"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(project_id = %access.project_id))]
async fn get_stats(
    State(loaders): State<Loaders>,
    access: ProjectAccess<AnyMember>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let stats = loaders.stats(access.project_id).await?;
    Ok(conditional_json(
        &headers,
        &StatsBody::of(access.project_id, stats),
    ))
}
