//! The fix-flag store.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// The channel that `fix_flags_notify()` signals on every change.
pub const CHANNEL: &str = "keel_fix_flags";

#[derive(Debug, Clone)]
pub struct FlagRow {
    pub name: String,
    pub enabled: bool,
    pub updated_at: DateTime<Utc>,
}

/// Inserts the flags that are missing (enabled); leaves existing rows alone.
pub async fn register(db: impl PgExecutor<'_>, names: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into fix_flags (name) select unnest($1::text[]) on conflict (name) do nothing",
        names
    )
    .execute(db)
    .await
    .map(|_| ())
}

pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<FlagRow>, sqlx::Error> {
    sqlx::query_as!(
        FlagRow,
        "select name, enabled, updated_at from fix_flags order by name"
    )
    .fetch_all(db)
    .await
}

pub async fn set(
    db: impl PgExecutor<'_>,
    name: &str,
    enabled: bool,
) -> Result<Option<FlagRow>, sqlx::Error> {
    sqlx::query_as!(
        FlagRow,
        "update fix_flags set enabled = $2, updated_at = now() where name = $1
         returning name, enabled, updated_at",
        name,
        enabled
    )
    .fetch_optional(db)
    .await
}
