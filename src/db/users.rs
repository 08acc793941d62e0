//! Users.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// A user as clients see it: no password hash. Serializable because the cache stores
/// it (`crate::cache`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A user as embedded in a task: the cache-friendly by-id shape of the loading layer.
#[derive(Debug, Clone)]
pub struct UserSummary {
    pub id: Uuid,
    pub name: String,
    pub email: String,
}

/// What a login needs: the id and the stored hash.
pub struct Credentials {
    pub id: Uuid,
    pub password_hash: String,
}

/// The unique index behind "email taken" (409).
pub const EMAIL_KEY: &str = "users_email_key";

pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    email: &str,
    name: &str,
    password_hash: &str,
) -> Result<User, sqlx::Error> {
    sqlx::query_as!(
        User,
        "insert into users (id, email, name, password_hash)
         values ($1, $2, $3, $4)
         returning id, email, name, created_at",
        id,
        email,
        name,
        password_hash
    )
    .fetch_one(db)
    .await
}

pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as!(
        User,
        "select id, email, name, created_at from users where id = $1",
        id
    )
    .fetch_optional(db)
    .await
}

pub async fn find_by_email(
    db: impl PgExecutor<'_>,
    email: &str,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as!(
        User,
        "select id, email, name, created_at from users where lower(email) = lower($1)",
        email
    )
    .fetch_optional(db)
    .await
}

pub async fn credentials(
    db: impl PgExecutor<'_>,
    email: &str,
) -> Result<Option<Credentials>, sqlx::Error> {
    sqlx::query_as!(
        Credentials,
        "select id, password_hash from users where lower(email) = lower($1)",
        email
    )
    .fetch_optional(db)
    .await
}

/// Whether any user exists (the demo data set is added only to an empty database).
pub async fn any(db: impl PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select exists (select 1 from users) as "exists!""#)
        .fetch_one(db)
        .await
}

/// The users with these ids, in one statement (primary-key lookups).
pub async fn summaries(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<UserSummary>, sqlx::Error> {
    sqlx::query_as!(
        UserSummary,
        "select id, name, email from users where id = any($1)",
        ids
    )
    .fetch_all(db)
    .await
}

/// The users with these ids, as full records (primary-key lookups): what the cache
/// stores for a user, so that `/v1/me` and a task's assignee share one entry.
pub async fn by_ids(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<User>, sqlx::Error> {
    sqlx::query_as!(
        User,
        "select id, email, name, created_at from users where id = any($1)",
        ids
    )
    .fetch_all(db)
    .await
}

/// One user, by id (the per-row loader's statement).
pub async fn summary(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<UserSummary>, sqlx::Error> {
    sqlx::query_as!(
        UserSummary,
        "select id, name, email from users where id = $1",
        id
    )
    .fetch_optional(db)
    .await
}
