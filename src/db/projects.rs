//! Projects.
//!
//! Lists are keyset-paginated: see [`Keyset`] for why every list query has one shape.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::Keyset;

/// Serializable because the cache stores it (`crate::cache`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub owner_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Project {
    pub fn keyset(&self) -> Keyset {
        Keyset {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// Creates a project and makes `owner_id` its owner, in one statement (so in one
/// transaction: there is never a project without an owner).
pub async fn create(
    db: impl PgExecutor<'_>,
    id: Uuid,
    name: &str,
    description: Option<&str>,
    owner_id: Uuid,
) -> Result<Project, sqlx::Error> {
    sqlx::query_as!(
        Project,
        r#"with project as (
               insert into projects (id, name, description, owner_id, created_at, updated_at)
               values ($1, $2, $3, $4, now(), now())
               returning id, name, description, owner_id, created_at, updated_at
           ), owner as (
               insert into project_members (project_id, user_id, role, project_created_at)
               select id, owner_id, 'owner', created_at from project
           )
           select id as "id!", name as "name!", description, owner_id as "owner_id!",
                  created_at as "created_at!", updated_at as "updated_at!"
           from project"#,
        id,
        name,
        description,
        owner_id
    )
    .fetch_one(db)
    .await
}

pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Project>, sqlx::Error> {
    sqlx::query_as!(
        Project,
        "select id, name, description, owner_id, created_at, updated_at
         from projects where id = $1",
        id
    )
    .fetch_optional(db)
    .await
}

/// The projects `user_id` belongs to, newest first, after `after`.
/// Served by `project_members_user_idx`.
pub async fn list_for_member(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    after: Keyset,
    limit: i64,
) -> Result<Vec<Project>, sqlx::Error> {
    sqlx::query_as!(
        Project,
        "select p.id, p.name, p.description, p.owner_id, p.created_at, p.updated_at
         from project_members m
         join projects p on p.id = m.project_id
         where m.user_id = $1
           and (m.project_created_at, m.project_id) < ($2, $3)
         order by m.project_created_at desc, m.project_id desc
         limit $4",
        user_id,
        after.created_at,
        after.id,
        limit
    )
    .fetch_all(db)
    .await
}

/// A partial update: `None` leaves a field as it is; `description: Some(None)` clears it.
pub struct ProjectChanges<'a> {
    pub name: Option<&'a str>,
    pub description: Option<Option<&'a str>>,
}

pub async fn update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    changes: ProjectChanges<'_>,
) -> Result<Option<Project>, sqlx::Error> {
    let (set_description, description) = match changes.description {
        Some(value) => (true, value),
        None => (false, None),
    };
    sqlx::query_as!(
        Project,
        "update projects
         set name = coalesce($2, name),
             description = case when $3 then $4 else description end,
             updated_at = now()
         where id = $1
         returning id, name, description, owner_id, created_at, updated_at",
        id,
        changes.name,
        set_description,
        description
    )
    .fetch_optional(db)
    .await
}

/// Locks the project's row for the rest of the transaction; `false` when there is no such
/// project. Taken before reading the members of a project about to be deleted: adding a
/// member must lock the row too (its foreign key check), so no member can join between
/// the read and the delete and escape the invalidation.
pub async fn lock(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let locked = sqlx::query_scalar!("select id from projects where id = $1 for update", id)
        .fetch_optional(db)
        .await?;
    Ok(locked.is_some())
}

/// Deletes a project; its members, tasks and comments go with it (`on delete cascade`).
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!("delete from projects where id = $1", id)
        .execute(db)
        .await?;
    Ok(result.rows_affected() > 0)
}
