//! Comments on tasks.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::Keyset;

/// A comment with its author's name.
#[derive(Debug, Clone)]
pub struct Comment {
    pub id: Uuid,
    pub task_id: Uuid,
    pub author_id: Uuid,
    pub author_name: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

impl Comment {
    pub fn keyset(&self) -> Keyset {
        Keyset {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// The foreign key to the task; a violation means the task was deleted meanwhile.
pub const TASK_FKEY: &str = "comments_task_id_fkey";

pub async fn create(
    db: impl PgExecutor<'_>,
    id: Uuid,
    task_id: Uuid,
    author_id: Uuid,
    body: &str,
) -> Result<Comment, sqlx::Error> {
    sqlx::query_as!(
        Comment,
        r#"with comment as (
               insert into comments (id, task_id, author_id, body, created_at)
               values ($1, $2, $3, $4, now())
               returning id, task_id, author_id, body, created_at
           )
           select c.id as "id!", c.task_id as "task_id!", c.author_id as "author_id!",
                  u.name as author_name, c.body as "body!", c.created_at as "created_at!"
           from comment c join users u on u.id = c.author_id"#,
        id,
        task_id,
        author_id,
        body
    )
    .fetch_one(db)
    .await
}

/// A page of a task's comments, oldest first, after `after`.
/// Served by `comments_task_created_idx`; the authors are primary-key lookups.
pub async fn list_for_task(
    db: impl PgExecutor<'_>,
    task_id: Uuid,
    after: Keyset,
    limit: i64,
) -> Result<Vec<Comment>, sqlx::Error> {
    sqlx::query_as!(
        Comment,
        r#"select c.id, c.task_id, c.author_id, u.name as author_name, c.body, c.created_at
           from comments c
           join users u on u.id = c.author_id
           where c.task_id = $1 and (c.created_at, c.id) > ($2, $3)
           order by c.created_at, c.id
           limit $4"#,
        task_id,
        after.created_at,
        after.id,
        limit
    )
    .fetch_all(db)
    .await
}

/// The number of comments of each of these tasks that has any, in one statement (an
/// index-only scan of `comments_task_created_idx`).
///
/// Comment counts are counted when read, not kept in a counter column: a count is exact
/// under any mix of concurrent comment inserts and deletes (one statement, one snapshot)
/// and leaves no hot row that every comment would have to lock.
pub async fn counts(
    db: impl PgExecutor<'_>,
    task_ids: &[Uuid],
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select task_id, count(*) as "count!" from comments
           where task_id = any($1) group by task_id"#,
        task_ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.task_id, row.count))
        .collect())
}

/// One task's number of comments (the per-row loader's statement).
pub async fn count(db: impl PgExecutor<'_>, task_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from comments where task_id = $1"#,
        task_id
    )
    .fetch_one(db)
    .await
}
