//! Tasks: one statement per function. A page of tasks is one index range scan
//! ([`list_for_project`], [`list_for_assignee`]); what each task embeds (assignee, comment
//! count) is loaded by `crate::loaders`, in a fixed number of round trips.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use super::Keyset;
use crate::domain::{Role, TaskStatus};

/// The foreign key that makes "the assignee is a member of the task's project" a database
/// invariant; a violation means the named assignee is not a member (422).
pub const ASSIGNEE_MEMBER_FKEY: &str = "tasks_assignee_member_fkey";
/// The foreign key to the project; a violation means the project was deleted meanwhile.
pub const PROJECT_FKEY: &str = "tasks_project_id_fkey";

/// A task as stored.
/// Serializable because the cache stores it (`crate::cache`).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct Task {
    pub id: Uuid,
    pub project_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub status: String,
    pub assignee_id: Option<Uuid>,
    pub due_date: Option<NaiveDate>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Task {
    pub fn keyset(&self) -> Keyset {
        Keyset {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// The columns of [`Task`], for the queries built at run time.
const TASK_COLUMNS: &str =
    "id, project_id, title, description, status, assignee_id, due_date, created_at, updated_at";

/// A task with everything a single-task read needs, and the caller's role in its project
/// (`None`: not a member). See [`read`].
#[derive(Debug, Clone)]
pub struct TaskRead {
    pub task: Task,
    pub role: Option<Role>,
    pub assignee: Option<super::users::UserSummary>,
    pub comment_count: i64,
}

/// The `Task` in a query record that holds the task's columns among others (sqlx's
/// records are anonymous types, so a function cannot take them). Moves only those fields.
macro_rules! task_of {
    ($r:ident) => {
        Task {
            id: $r.id,
            project_id: $r.project_id,
            title: $r.title,
            description: $r.description,
            status: $r.status,
            assignee_id: $r.assignee_id,
            due_date: $r.due_date,
            created_at: $r.created_at,
            updated_at: $r.updated_at,
        }
    };
}

/// A task, its assignee, its comment count and the caller's role, in one statement — the
/// uncached single-task read. A primary-key lookup joined to two more (the membership and
/// the assignee) and a count over `comments_task_created_idx`: one round trip instead of
/// the three that the access check and the two by-id loads would take. The membership is
/// a left join so that the row (and so a cache entry) comes back for a non-member too;
/// the caller decides on `role`. `None` only when the task does not exist.
pub async fn read(
    db: impl PgExecutor<'_>,
    task_id: Uuid,
    user_id: Uuid,
) -> Result<Option<TaskRead>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select t.id, t.project_id, t.title, t.description, t.status, t.assignee_id,
                  t.due_date, t.created_at, t.updated_at,
                  m.role as "role?", u.name as "assignee_name?", u.email as "assignee_email?",
                  (select count(*) from comments c where c.task_id = t.id) as "comment_count!"
           from tasks t
           left join project_members m on m.project_id = t.project_id and m.user_id = $2
           left join users u on u.id = t.assignee_id
           where t.id = $1"#,
        task_id,
        user_id
    )
    .fetch_optional(db)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let role = r
        .role
        .map(|role| {
            role.parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))
        })
        .transpose()?;
    let assignee = match (r.assignee_id, r.assignee_name, r.assignee_email) {
        (Some(id), Some(name), Some(email)) => Some(super::users::UserSummary { id, name, email }),
        _ => None,
    };
    Ok(Some(TaskRead {
        task: task_of!(r),
        role,
        assignee,
        comment_count: r.comment_count,
    }))
}

/// The ids of a project's tasks assigned to `user_id` (`tasks_project_assignee_created_idx`):
/// read before the member is removed, whose removal unassigns them, so that their cache
/// entries can be invalidated.
pub async fn assigned_in_project(
    db: impl PgExecutor<'_>,
    project_id: Uuid,
    user_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "select id from tasks where project_id = $1 and assignee_id = $2",
        project_id,
        user_id
    )
    .fetch_all(db)
    .await
}

/// A new task's fields, validated.
pub struct NewTask<'a> {
    pub title: &'a str,
    pub description: Option<&'a str>,
    pub status: TaskStatus,
    pub assignee_id: Option<Uuid>,
    pub due_date: Option<NaiveDate>,
}

pub async fn create(
    db: impl PgExecutor<'_>,
    id: Uuid,
    project_id: Uuid,
    new: NewTask<'_>,
) -> Result<Task, sqlx::Error> {
    sqlx::query_as!(
        Task,
        "insert into tasks (id, project_id, title, description, status, assignee_id, due_date,
                            created_at, updated_at)
         values ($1, $2, $3, $4, $5, $6, $7, now(), now())
         returning id, project_id, title, description, status, assignee_id, due_date,
                   created_at, updated_at",
        id,
        project_id,
        new.title,
        new.description,
        new.status.as_str(),
        new.assignee_id,
        new.due_date
    )
    .fetch_one(db)
    .await
}

/// A partial update: `None` leaves a field alone; `Some(None)` clears a nullable one.
#[derive(Default)]
pub struct TaskChanges<'a> {
    pub title: Option<&'a str>,
    pub description: Option<Option<&'a str>>,
    pub status: Option<TaskStatus>,
    pub assignee_id: Option<Option<Uuid>>,
    pub due_date: Option<Option<NaiveDate>>,
}

/// A task after an update, with what it was before (the side effects depend on the change).
#[derive(Debug, Clone)]
pub struct Updated {
    pub task: Task,
    pub previous_assignee_id: Option<Uuid>,
    pub previous_status: String,
    pub previous_due_date: Option<NaiveDate>,
}

struct UpdatedRow {
    id: Uuid,
    project_id: Uuid,
    title: String,
    description: Option<String>,
    status: String,
    assignee_id: Option<Uuid>,
    due_date: Option<NaiveDate>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    previous_assignee_id: Option<Uuid>,
    previous_status: String,
    previous_due_date: Option<NaiveDate>,
}

/// Updates a task and returns it with its previous assignee, status and due date, read
/// under the row's lock so that two concurrent updates each see the other's result.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    changes: TaskChanges<'_>,
) -> Result<Option<Updated>, sqlx::Error> {
    let row = sqlx::query_as!(
        UpdatedRow,
        r#"update tasks t
         set title = coalesce($2, t.title),
             description = case when $3 then $4 else t.description end,
             status = coalesce($5, t.status),
             assignee_id = case when $6 then $7 else t.assignee_id end,
             due_date = case when $8 then $9 else t.due_date end,
             updated_at = now()
         from (select id, assignee_id, status, due_date from tasks where id = $1 for update) old
         where t.id = old.id
         returning t.id, t.project_id, t.title, t.description, t.status, t.assignee_id,
                   t.due_date, t.created_at, t.updated_at,
                   old.assignee_id as previous_assignee_id,
                   old.status as "previous_status!",
                   old.due_date as previous_due_date"#,
        id,
        changes.title,
        changes.description.is_some(),
        changes.description.flatten(),
        changes.status.map(TaskStatus::as_str),
        changes.assignee_id.is_some(),
        changes.assignee_id.flatten(),
        changes.due_date.is_some(),
        changes.due_date.flatten()
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Updated {
        task: task_of!(r),
        previous_assignee_id: r.previous_assignee_id,
        previous_status: r.previous_status,
        previous_due_date: r.previous_due_date,
    }))
}

/// Deletes a task and its comments (`on delete cascade`).
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!("delete from tasks where id = $1", id)
        .execute(db)
        .await?;
    Ok(result.rows_affected() > 0)
}

/// The optional filters of a task list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub assignee_id: Option<Uuid>,
}

/// A page of a project's tasks, newest first, after `after`.
///
/// Built at run time, and on purpose: each combination of filters is served by its own
/// index (`tasks_project_created_idx`, `…_status_…`, `…_assignee_…`,
/// `…_assignee_status_…`), and a filter folded into one static statement
/// (`$2 is null or status = $2`) would get one generic plan that serves none of them.
/// Each combination is a distinct SQL text, so sqlx prepares and caches it separately.
/// Every value is bound; only the shape varies.
pub async fn list_for_project(
    db: impl PgExecutor<'_>,
    project_id: Uuid,
    filter: TaskFilter,
    after: Keyset,
    limit: i64,
) -> Result<Vec<Task>, sqlx::Error> {
    let mut query = QueryBuilder::<Postgres>::new(format!(
        "select {TASK_COLUMNS} from tasks where project_id = "
    ));
    query.push_bind(project_id);
    if let Some(assignee) = filter.assignee_id {
        query.push(" and assignee_id = ").push_bind(assignee);
    }
    if let Some(status) = filter.status {
        query.push(" and status = ").push_bind(status.as_str());
    }
    push_page(&mut query, after, limit);
    query.build_query_as::<Task>().fetch_all(db).await
}

/// A page of the tasks assigned to `user_id` across projects, newest first, after
/// `after` (`tasks_assignee_created_idx`, or `…_assignee_status_…` with a status). Built
/// at run time for the reason given at [`list_for_project`].
pub async fn list_for_assignee(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    status: Option<TaskStatus>,
    after: Keyset,
    limit: i64,
) -> Result<Vec<Task>, sqlx::Error> {
    let mut query = QueryBuilder::<Postgres>::new(format!(
        "select {TASK_COLUMNS} from tasks where assignee_id = "
    ));
    query.push_bind(user_id);
    if let Some(status) = status {
        query.push(" and status = ").push_bind(status.as_str());
    }
    push_page(&mut query, after, limit);
    query.build_query_as::<Task>().fetch_all(db).await
}

/// The keyset predicate, order and limit shared by every newest-first task list.
fn push_page(query: &mut QueryBuilder<Postgres>, after: Keyset, limit: i64) {
    query
        .push(" and (created_at, id) < (")
        .push_bind(after.created_at)
        .push(", ")
        .push_bind(after.id)
        .push(") order by created_at desc, id desc limit ")
        .push_bind(limit);
}
