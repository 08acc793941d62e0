//! The transactional outbox (`outbox`): job rows written inside the writer's transaction,
//! claimed and marked by the relays, pruned once published.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

/// A job row to insert.
pub struct NewJob<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub payload: &'a Value,
    pub trace_context: &'a Value,
}

/// A committed, unpublished job row, as a relay claims it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: Uuid,
    pub kind: String,
    pub payload: Value,
    pub trace_context: Value,
    /// The writer's transaction id (`xid8`, which fits an `i64` for the life of a cluster).
    pub writer_xid: i64,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Inserts every job of one write in one statement (a write's round trips do not grow
/// with its jobs).
pub async fn insert(db: impl PgExecutor<'_>, jobs: &[NewJob<'_>]) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let kinds: Vec<String> = jobs.iter().map(|j| j.kind.to_owned()).collect();
    let payloads: Vec<Value> = jobs.iter().map(|j| j.payload.clone()).collect();
    let contexts: Vec<Value> = jobs.iter().map(|j| j.trace_context.clone()).collect();
    sqlx::query!(
        "insert into outbox (id, kind, payload, trace_context)
         select * from unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[])",
        &ids,
        &kinds,
        &payloads,
        &contexts
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Locks up to `limit` unpublished rows, oldest first, skipping rows another relay holds:
/// several relays share the backlog without waiting on each other or publishing a row
/// twice while both run. The lock lasts until the caller's transaction ends.
pub async fn claim(db: impl PgExecutor<'_>, limit: i64) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as!(
        OutboxRow,
        r#"select id, kind, payload, trace_context, writer_xid::text::bigint as "writer_xid!",
                  attempts, created_at
           from outbox
           where published_at is null and available_at <= now()
           order by id
           limit $1
           for update skip locked"#,
        limit
    )
    .fetch_all(db)
    .await
}

pub async fn mark_published(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        "update outbox set published_at = now() where id = any($1)",
        ids
    )
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// Counts a failed publish attempt on each row, with its reason; the rows are not claimed
/// again before `retry_at`.
pub async fn mark_failed(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    error: &str,
    retry_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update outbox set attempts = attempts + 1, last_error = $2, available_at = $3
         where id = any($1)",
        ids,
        error,
        retry_at
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes up to `limit` rows published before `before`; returns how many went. Batched,
/// so that pruning a large backlog never holds long locks.
pub async fn prune(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        "delete from outbox where id in (
             select id from outbox where published_at < $1 limit $2)",
        before,
        limit
    )
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// The backlog: unpublished rows and the age of the oldest, for the metrics.
pub struct Backlog {
    pub count: i64,
    pub oldest: Option<DateTime<Utc>>,
}

pub async fn backlog(db: impl PgExecutor<'_>) -> Result<Backlog, sqlx::Error> {
    sqlx::query_as!(
        Backlog,
        r#"select count(*) as "count!", min(created_at) as oldest
           from outbox where published_at is null"#
    )
    .fetch_one(db)
    .await
}
