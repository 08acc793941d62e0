//! The fault-switch store: one row per dependency (migration 0009), read by every
//! instance's refresher and written by the admin API.
//!
//! Callers pass the raw pool, not a [`Db`](super::Db): these statements must not pass the
//! `postgres` fault they switch, or a workshop could not switch it off again.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct FaultRow {
    pub dependency: String,
    pub latency_ms: i32,
    pub error_rate: f64,
    pub updated_at: DateTime<Utc>,
}

pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<FaultRow>, sqlx::Error> {
    sqlx::query_as!(
        FaultRow,
        "select dependency, latency_ms, error_rate, updated_at from fault_injections
         order by dependency"
    )
    .fetch_all(db)
    .await
}

/// Sets one dependency's fault. An upsert, so that a row deleted by hand comes back; the
/// table's checks refuse a dependency or a value out of range.
pub async fn set(
    db: impl PgExecutor<'_>,
    dependency: &str,
    latency_ms: i32,
    error_rate: f64,
) -> Result<FaultRow, sqlx::Error> {
    sqlx::query_as!(
        FaultRow,
        "insert into fault_injections (dependency, latency_ms, error_rate, updated_at)
         values ($1, $2, $3, now())
         on conflict (dependency) do update
         set latency_ms = excluded.latency_ms, error_rate = excluded.error_rate,
             updated_at = excluded.updated_at
         returning dependency, latency_ms, error_rate, updated_at",
        dependency,
        latency_ms,
        error_rate
    )
    .fetch_one(db)
    .await
}
