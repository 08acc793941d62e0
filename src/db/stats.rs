//! Per-project task counts (`project_stats`), computed by the worker.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// A project's counts as last computed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProjectStats {
    pub project_id: Uuid,
    pub total: i64,
    pub todo: i64,
    pub doing: i64,
    pub done: i64,
    pub overdue: i64,
    pub computed_at: DateTime<Utc>,
}

pub async fn find(
    db: impl PgExecutor<'_>,
    project_id: Uuid,
) -> Result<Option<ProjectStats>, sqlx::Error> {
    sqlx::query_as!(
        ProjectStats,
        "select project_id, total, todo, doing, done, overdue, computed_at
         from project_stats where project_id = $1",
        project_id
    )
    .fetch_optional(db)
    .await
}

/// Whether the last computation's snapshot already saw the writes of transaction
/// `writer_xid` (every transaction below its `computed_xmin` had ended). `None` when the
/// project has no stats yet, or is gone.
pub async fn covers(
    db: impl PgExecutor<'_>,
    project_id: Uuid,
    writer_xid: i64,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select computed_xmin > $2::text::xid8 as "covers!"
           from project_stats where project_id = $1"#,
        project_id,
        writer_xid.to_string()
    )
    .fetch_optional(db)
    .await
}

/// Counts the tasks of each project in `project_ids` in one aggregate (the
/// `tasks_project_status_created_idx` index serves it) and stores the results with the
/// snapshot's xmin, in one statement so that both come from one snapshot. A computation
/// never replaces a newer one (two workers racing). Returns the stats of the projects that
/// still exist: the worker passes one id, `keel seed` every project after a bulk load.
pub async fn recompute(
    db: impl PgExecutor<'_>,
    project_ids: &[Uuid],
) -> Result<Vec<ProjectStats>, sqlx::Error> {
    sqlx::query_as!(
        ProjectStats,
        r#"insert into project_stats as s
               (project_id, total, todo, doing, done, overdue, computed_at, computed_xmin)
           select p.id,
                  count(t.id),
                  count(t.id) filter (where t.status = 'todo'),
                  count(t.id) filter (where t.status = 'doing'),
                  count(t.id) filter (where t.status = 'done'),
                  count(t.id) filter (where t.status <> 'done'
                                      and t.due_date < (now() at time zone 'utc')::date),
                  now(),
                  pg_snapshot_xmin(pg_current_snapshot())
           from projects p
           left join tasks t on t.project_id = p.id
           where p.id = any($1)
           group by p.id
           on conflict (project_id) do update
               set total = excluded.total, todo = excluded.todo, doing = excluded.doing,
                   done = excluded.done, overdue = excluded.overdue,
                   computed_at = excluded.computed_at, computed_xmin = excluded.computed_xmin
               where s.computed_xmin <= excluded.computed_xmin
           returning project_id, total as "total!", todo as "todo!", doing as "doing!",
                     done as "done!", overdue as "overdue!", computed_at"#,
        project_ids
    )
    .fetch_all(db)
    .await
}
