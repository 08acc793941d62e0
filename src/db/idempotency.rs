//! Idempotency keys: the stored first responses of creates, and the lock that serialises
//! the requests of one key.
//!
//! Every function here runs inside the create's own transaction (`api::idempotency` says
//! in which order); none of them is meaningful on its own connection, except [`prune`].

use std::time::Duration;

use sqlx::PgExecutor;

/// A key's first response, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub fingerprint: Vec<u8>,
    pub status: i16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// What to store for a key: its request's fingerprint and its first response.
pub struct NewRecord<'a> {
    pub caller: &'a str,
    pub key: &'a str,
    pub fingerprint: &'a [u8],
    pub status: i16,
    pub location: Option<&'a str>,
    pub body: &'a [u8],
    pub ttl: Duration,
}

/// Sets `lock_timeout` for the rest of the transaction (`value` in Postgres's syntax,
/// `250ms`) and returns the value it replaced, so that the caller can put it back.
///
/// The old value is read in a subquery that `offset 0` keeps from being merged into the
/// outer query: the outer `set_config` runs on the subquery's row, so strictly after the
/// read.
pub async fn set_lock_timeout(db: impl PgExecutor<'_>, value: &str) -> Result<String, sqlx::Error> {
    let row = sqlx::query!(
        r#"select previous as "previous!", set_config('lock_timeout', $1, true) as "value!"
           from (select current_setting('lock_timeout') as previous offset 0) as before"#,
        value
    )
    .fetch_one(db)
    .await?;
    Ok(row.previous)
}

/// Waits for the transaction-scoped advisory lock of `(caller, key)`, for at most the
/// transaction's `lock_timeout` (then: SQLSTATE 55P03, [`LOCK_NOT_AVAILABLE`]). Held until
/// the transaction ends, so the first request of a key holds it until its record has
/// committed (or its create failed), and a duplicate waiting here then finds the record.
///
/// The lock's id is a 64-bit hash of the pair, seeded apart from other advisory locks; a
/// collision of two pairs would only make their requests take turns.
pub async fn lock(db: impl PgExecutor<'_>, caller: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"select true as "locked!"
           from pg_advisory_xact_lock(hashtextextended($1 || ' ' || $2, 7346))"#,
        caller,
        key
    )
    .fetch_one(db)
    .await
    .map(|_| ())
}

/// SQLSTATE `lock_not_available`: [`lock`] waited `lock_timeout` in vain.
pub const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The key's stored response, unless there is none or it has expired.
pub async fn find(
    db: impl PgExecutor<'_>,
    caller: &str,
    key: &str,
) -> Result<Option<Stored>, sqlx::Error> {
    sqlx::query_as!(
        Stored,
        "select fingerprint, status, location, body
         from idempotency_keys
         where caller = $1 and key = $2 and expires_at > now()",
        caller,
        key
    )
    .fetch_optional(db)
    .await
}

/// Stores a key's first response, replacing an expired record of the same key. (A live
/// one cannot be there: the caller holds the key's [`lock`] and found none.)
pub async fn save(db: impl PgExecutor<'_>, record: NewRecord<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into idempotency_keys
             (caller, key, fingerprint, status, location, body, created_at, expires_at)
         values ($1, $2, $3, $4, $5, $6, now(), now() + make_interval(secs => $7))
         on conflict (caller, key) do update
         set fingerprint = excluded.fingerprint, status = excluded.status,
             location = excluded.location, body = excluded.body,
             created_at = excluded.created_at, expires_at = excluded.expires_at",
        record.caller,
        record.key,
        record.fingerprint,
        record.status,
        record.location,
        record.body,
        record.ttl.as_secs_f64()
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Deletes up to `limit` expired records; returns how many went. Batched, and skipping
/// rows another transaction holds (a create overwriting an expired key), so that pruning
/// never waits on a request nor holds long locks.
pub async fn prune(db: impl PgExecutor<'_>, limit: i64) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        "delete from idempotency_keys where (caller, key) in (
             select caller, key from idempotency_keys
             where expires_at <= now()
             order by expires_at
             limit $1
             for update skip locked)",
        limit
    )
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}
