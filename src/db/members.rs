//! Project members and roles.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::Role;

/// The primary key behind "already a member" (409).
pub const MEMBERS_PKEY: &str = "project_members_pkey";

#[derive(Debug, Clone)]
pub struct Member {
    pub user_id: Uuid,
    pub name: String,
    pub email: String,
    pub role: Role,
    pub added_at: DateTime<Utc>,
}

/// The row as stored; `role` is text with a CHECK constraint.
struct MemberRow {
    user_id: Uuid,
    name: String,
    email: String,
    role: String,
    added_at: DateTime<Utc>,
}

impl TryFrom<MemberRow> for Member {
    type Error = sqlx::Error;
    fn try_from(row: MemberRow) -> Result<Self, Self::Error> {
        Ok(Member {
            role: parse_role(&row.role)?,
            user_id: row.user_id,
            name: row.name,
            email: row.email,
            added_at: row.added_at,
        })
    }
}

fn parse_role(role: &str) -> Result<Role, sqlx::Error> {
    role.parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))
}

/// The role of `user_id` in `project_id`, or `None` when they are not a member (or the
/// project does not exist: the caller cannot tell, and must not). This is the query behind
/// every object-level authorization check; it is a primary-key lookup.
pub async fn role_of(
    db: impl PgExecutor<'_>,
    project_id: Uuid,
    user_id: Uuid,
) -> Result<Option<Role>, sqlx::Error> {
    let role = sqlx::query_scalar!(
        "select role from project_members where project_id = $1 and user_id = $2",
        project_id,
        user_id
    )
    .fetch_optional(db)
    .await?;
    role.as_deref().map(parse_role).transpose()
}

/// Every member of a project, in the order they joined.
pub async fn list(db: impl PgExecutor<'_>, project_id: Uuid) -> Result<Vec<Member>, sqlx::Error> {
    sqlx::query_as!(
        MemberRow,
        "select m.user_id, u.name, u.email, m.role, m.added_at
         from project_members m
         join users u on u.id = m.user_id
         where m.project_id = $1
         order by m.added_at, m.user_id",
        project_id
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(Member::try_from)
    .collect()
}

/// Adds `user_id` to a project with `role`. Fails on `MEMBERS_PKEY` when already a member.
pub async fn add(
    db: impl PgExecutor<'_>,
    project_id: Uuid,
    user_id: Uuid,
    role: Role,
) -> Result<Member, sqlx::Error> {
    sqlx::query_as!(
        MemberRow,
        r#"with added as (
               insert into project_members (project_id, user_id, role, project_created_at)
               select id, $2, $3, created_at from projects where id = $1
               returning user_id, role, added_at
           )
           select a.user_id as "user_id!", u.name, u.email, a.role as "role!", a.added_at as "added_at!"
           from added a join users u on u.id = a.user_id"#,
        project_id,
        user_id,
        role.as_str()
    )
    .fetch_one(db)
    .await
    .and_then(Member::try_from)
}

/// Locks the project's owner rows and returns how many there are. Called inside the
/// transaction that removes a member, so that two concurrent removals cannot both see
/// "another owner remains" and leave the project with none.
pub async fn lock_owners(db: impl PgExecutor<'_>, project_id: Uuid) -> Result<usize, sqlx::Error> {
    let owners = sqlx::query_scalar!(
        "select user_id from project_members
         where project_id = $1 and role = 'owner'
         for update",
        project_id
    )
    .fetch_all(db)
    .await?;
    Ok(owners.len())
}

/// Removes a member; their tasks in the project become unassigned (the database's
/// `on delete set null (assignee_id)`). Returns the role they had, if they were a member.
pub async fn remove(
    db: impl PgExecutor<'_>,
    project_id: Uuid,
    user_id: Uuid,
) -> Result<Option<Role>, sqlx::Error> {
    let role = sqlx::query_scalar!(
        "delete from project_members where project_id = $1 and user_id = $2 returning role",
        project_id,
        user_id
    )
    .fetch_optional(db)
    .await?;
    role.as_deref().map(parse_role).transpose()
}

/// The ids of a project's members, read inside the transaction that deletes the project
/// (after [`super::projects::lock`]), so that their cached memberships can be invalidated.
pub async fn user_ids(db: impl PgExecutor<'_>, project_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "select user_id from project_members where project_id = $1",
        project_id
    )
    .fetch_all(db)
    .await
}
