//! PostgreSQL: the pool, the embedded migrations, and one repository module per aggregate.
//!
//! Repositories are plain async functions over a `PgExecutor` (the service passes a `&Db`,
//! or inside a transaction the [`Traced`] executor its [`Tx`] hands out — both trace and
//! measure every statement, see [`executor`]), one SQL statement each, written with sqlx's
//! checked macros so that a typo or a type mismatch fails the build (the `.sqlx/` directory
//! holds the checked metadata for offline builds). Composing statements — a page of tasks
//! with its assignees and comment counts — is the loading layer's job (`crate::loaders`),
//! not a repository's.
//!
//! Repositories return `sqlx::Error`; the HTTP layer decides what a constraint violation
//! means to a client (`on_constraint`), and [`is_unavailable`] tells "Postgres cannot
//! serve now" from "this request is wrong", for every caller that has to know: the error
//! responses (503), readiness, and later the breakers and the cache's fallback.

pub mod comments;
pub mod executor;
pub mod faults;
pub mod flags;
pub mod idempotency;
pub mod jobs;
pub mod members;
pub mod outbox;
pub mod projects;
pub mod replica;
pub mod schema;
pub mod stats;
pub mod tasks;
pub mod users;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};
use uuid::Uuid;

use crate::config::DatabaseConfig;
pub use executor::{Db, Traced, Tx};

/// A position in a list ordered by `(created_at, id)`: where the next page starts.
///
/// # Keyset pagination, and why every list query has one shape
///
/// Lists are read "after a position", never with OFFSET: the database seeks straight to
/// the position in an index and reads one page, so page 1 000 costs what page 1 costs, and
/// rows inserted meanwhile cannot shift a page boundary (no row skipped or repeated).
///
/// The first page passes [`Keyset::NEWEST`] (or [`Keyset::OLDEST`] for oldest-first
/// lists), a position beyond every real row, instead of using a separate "no cursor" query
/// or an `$2 is null or …` predicate: sqlx runs prepared statements, Postgres switches
/// them to a generic plan after five runs, and a generic plan cannot turn
/// `$2 is null or (created_at, id) < ($2, $3)` into an index bound — it reads the whole
/// range and sorts it. One predicate, always bound, keeps every page an index range scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyset {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Keyset {
    /// After every real row: the start of a newest-first list (year 262 143, within
    /// PostgreSQL's range, which ends in 294 276).
    pub const NEWEST: Keyset = Keyset {
        created_at: DateTime::<Utc>::MAX_UTC,
        id: Uuid::max(),
    };
    /// Before every real row: the start of an oldest-first list. (Not `MIN_UTC`, which
    /// lies before PostgreSQL's earliest timestamp, 4713 BC; no row is older than 1970.)
    pub const OLDEST: Keyset = Keyset {
        created_at: DateTime::<Utc>::UNIX_EPOCH,
        id: Uuid::nil(),
    };
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// A pool that connects on first use, so that `keel serve` starts (and reports itself
/// unready) while Postgres is still coming up, instead of crash-looping.
pub fn pool(config: &DatabaseConfig) -> PgPool {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(config.test_before_acquire)
        .connect_lazy_with(config.connect.clone())
}

/// Creates the configured database when it does not exist yet (`keel all` on a fresh
/// machine). Returns whether it was created.
pub async fn create_database_if_missing(config: &DatabaseConfig) -> anyhow::Result<bool> {
    let name = config.database_name().to_owned();
    let maintenance: PgConnectOptions = config.connect.clone().database("postgres");
    let mut conn = maintenance.connect().await.with_context(|| {
        format!(
            "Failed to connect to Postgres at {}:{}",
            config.connect.get_host(),
            config.connect.get_port()
        )
    })?;
    let exists: bool = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_database where datname = $1) as "exists!""#,
        name
    )
    .fetch_one(&mut conn)
    .await
    .context("Failed to look up the database")?;
    if !exists {
        // Identifiers cannot be bound as parameters; the name is quoted (and its quotes
        // doubled), so this is the one statement here built at run time.
        let statement = format!(r#"create database "{}""#, name.replace('"', "\"\""));
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .with_context(|| format!("Failed to create database {name:?}"))?;
    }
    conn.close().await.ok();
    Ok(!exists)
}

/// Applies the embedded migrations. Safe to run from several instances at once: sqlx
/// serialises them with an advisory lock.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("Failed to apply the database migrations")
}

/// Whether Postgres answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!("select 1 as one")
        .fetch_one(pool)
        .await
        .map(|_| ())
}

/// Whether an error means "Postgres cannot serve this now" (the client may retry, and
/// readiness reports it) rather than "this request is wrong" or a bug: the connection
/// could not be made or was lost, the pool is exhausted, or the server refused for load
/// or shutdown (SQLSTATE classes 08, 53300, 57P01-57P03) or cancelled the statement on
/// its deadline (57014).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "53300" | "57P01" | "57P02" | "57P03" | "57014"
                )
        }),
        _ => false,
    }
}

/// Whether Postgres cancelled the statement on its `statement_timeout` (57014), which
/// Keel sets only to cut a request's statements to its deadline (`db::executor`).
pub fn is_deadline_cancel(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}

/// A connection LISTENing on `channel`: how the flag refresher and the outbox relay hear
/// of a change at once (NOTIFY is delivered on commit), with polling as their fallback.
pub async fn listen(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// Waits for a notification; with no listener, waits forever (the caller's poll timer
/// wins). An error means the LISTEN connection was lost: drop it and listen again.
pub async fn next_notification(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::is_unavailable;

    #[test]
    fn a_lost_connection_or_an_exhausted_pool_is_unavailable_and_a_bug_is_not() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Protocol("unexpected response from SSLRequest".into()),
            sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        ] {
            assert!(is_unavailable(&e), "{e}");
        }
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_unavailable(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
