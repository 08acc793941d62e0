//! [`Db`]: the pool as every repository sees it, instrumented in one place.
//!
//! Repositories take any `PgExecutor`; the service hands them a `&Db`, or, inside a
//! transaction, the [`Traced`] executor of a [`Tx`]. A `Tx` hands out nothing else — no
//! raw connection — so no statement of a transaction can escape the spans and metrics
//! below. For each statement, whatever repository sends it, this module
//!
//! * opens a client span named by the statement's summary (`SELECT tasks`, `INSERT
//!   comments`): low-cardinality, never a bound value. (Not the SQL text either: the
//!   summary names the statement, and a copy of the text in every span is paid on every
//!   statement, exported or not — docs/benchmarks.md);
//! * times the wait for a pooled connection (`db_client_connection_wait_time_seconds`) and
//!   counts the requests waiting (`db_client_connection_pending_requests`), which sqlx's
//!   pool does not expose;
//! * times the statement (`db_client_operation_duration_seconds`, by summary).
//!
//! A new repository function is traced and measured without a line of instrumentation —
//! which is why repository functions carry no `#[tracing::instrument]` of their own.
//!
//! # Deadlines
//!
//! Inside a request with a deadline (`resilience::deadline`), every checkout here is cut
//! to what is left of it, twice over:
//!
//! * the wait for a pooled connection ends with the deadline (`PoolTimedOut`, a 503),
//!   not after `KEEL_DB_ACQUIRE_TIMEOUT`;
//! * the connection's `statement_timeout` is set to the time left, so that Postgres
//!   itself cancels a statement that would outlive the request. Dropping the statement's
//!   future is not enough: sqlx then waits on the server's answer before it reuses the
//!   connection, and the statement runs to its end — work for a request already answered.
//!   A transaction sets it with `SET LOCAL` in the same round trip as its `BEGIN`; a
//!   single statement costs one `SET` round trip before it. Outside a request (the relay,
//!   the worker, the flag refresher) there is no statement timeout, and a connection a
//!   request had cut is reset before such work uses it.
//!
//! # Fault injection
//!
//! The workshop's `postgres` fault switch (`resilience::fault`) acts here, once per
//! checkout: per statement on the pool, per transaction at its `BEGIN` (not per statement
//! inside it: the transaction holds its connection, and the fault stands for reaching
//! Postgres). It runs inside the breaker's permit and before the wait for a connection, so
//! an injected latency is neither connection wait in the metrics nor lost by the breaker's
//! slow-call rule, and an injected error is an I/O error: a 503 like an unreachable
//! server, and a failure to the breaker. What must keep working while Postgres is made to
//! fail does not come through here: migrations, LISTEN, the flag and fault refresher and
//! the admin API's switches use the raw pool ([`Db::pool`]).
//!
//! The statement's rows are collected before they are returned: every query here is
//! bounded by a page limit, and collecting lets one async block own the pooled
//! connection for exactly as long as the statement runs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use futures_util::{FutureExt as _, StreamExt as _, TryFutureExt as _, TryStreamExt as _};
use metrics::{Histogram, histogram};
use sqlx::postgres::{
    PgArguments, PgConnection, PgPool, PgQueryResult, PgRow, PgStatement, PgTypeInfo,
};
use sqlx::{Describe, Either, Execute, Executor, Postgres, SqlStr, Transaction};
use tracing::Instrument as _;

use crate::resilience::{Breaker, BreakerState, Dependency, Faults, Permit, deadline};
use crate::telemetry;
use crate::telemetry::metrics::{DB_PENDING, names};

/// The service's handle on Postgres.
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
    /// Opens while Postgres cannot be reached, so that requests fail at once with 503
    /// instead of each waiting out `KEEL_DB_ACQUIRE_TIMEOUT` for a connection that will
    /// not come.
    breaker: Breaker,
    /// The workshop's fault switches, of which this reads `postgres` (module doc).
    faults: Faults,
}

impl Db {
    /// `faults`: the fault switches it injects `postgres`'s from (`Flags::faults`).
    pub fn new(pool: PgPool, breaker: Breaker, faults: Faults) -> Self {
        Self {
            pool,
            breaker,
            faults,
        }
    }

    /// Whether Postgres answers, for readiness. While the breaker is open the answer is
    /// the breaker's refusal, without a ping: requests are being refused, so the
    /// dependency is `down` (api.md).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        if self.breaker.state() == BreakerState::Open {
            return Err(breaker_open());
        }
        super::ping(&self.pool).await
    }

    /// Whether the breaker is refusing checkouts now.
    pub fn breaker_open(&self) -> bool {
        self.breaker.state() == BreakerState::Open
    }

    /// The pool itself, for what is not a statement: LISTEN, COPY, migrations, gauges.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction; its statements go through [`Tx::exec`]. Inside a request, the
    /// transaction's statements are cut to its deadline (see the module docs).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let (permit, timeout) = self.permit().await?;
        let begin = format!("BEGIN; SET LOCAL statement_timeout = {}", timeout.millis());
        let waiting = Waiting::start();
        let tx = settle(
            permit,
            within_deadline(self.pool.begin_with(sqlx::AssertSqlSafe(begin))).await,
        );
        waiting.done();
        Ok(Tx(tx?))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The breaker's permit for one checkout, and the statement timeout it runs under;
    /// refused at once for a request whose deadline has passed.
    ///
    /// With a `postgres` fault set, the fault acts inside the permit (module doc): an
    /// injected error settles it as a failure and is an I/O error, like a lost connection;
    /// an injected latency spends some of the request's deadline, so the timeout is taken
    /// again after it.
    async fn permit(&self) -> Result<(Permit, StatementTimeout), sqlx::Error> {
        let timeout = StatementTimeout::now()?;
        let permit = self.breaker.try_acquire().ok_or_else(breaker_open)?;
        if self.faults.get(Dependency::Postgres).is_none() {
            return Ok((permit, timeout));
        }
        if let Err(fault) = self.faults.inject(Dependency::Postgres).await {
            permit.failure();
            return Err(sqlx::Error::Io(std::io::Error::other(fault)));
        }
        Ok((permit, StatementTimeout::now()?))
    }
}

/// A transaction whose every statement is traced and measured like [`Db`]'s: the only
/// executor it hands out is [`Traced`]. Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub struct Tx(Transaction<'static, Postgres>);

impl Tx {
    /// The executor for the transaction's next statement.
    pub fn exec(&mut self) -> Traced<'_> {
        Traced(&mut self.0)
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.0.commit().await
    }
}

/// A transaction's connection, whose statements are traced like [`Db`]'s. Only a [`Tx`]
/// makes one.
#[derive(Debug)]
pub struct Traced<'c>(&'c mut PgConnection);

/// A statement taken apart, so that it can be summarised before it runs.
struct Statement {
    sql: SqlStr,
    arguments: Option<PgArguments>,
    persistent: bool,
    meta: Arc<StatementMeta>,
}

/// What is known of a SQL text once: its summary, and its duration histogram's handle
/// (taken once the recorder exists; before, each statement looks its series up).
struct StatementMeta {
    summary: Arc<str>,
    duration: Option<Histogram>,
}

impl StatementMeta {
    fn new(sql: &str) -> Self {
        let summary: Arc<str> = summarize(sql).into();
        let duration = telemetry::metrics::installed().then(
            || histogram!(names::DB_OPERATION_DURATION, "db_query_summary" => summary.clone()),
        );
        Self { summary, duration }
    }

    fn record(&self, elapsed: std::time::Duration) {
        match &self.duration {
            Some(histogram) => histogram.record(elapsed),
            None => {
                histogram!(names::DB_OPERATION_DURATION, "db_query_summary" => self.summary.clone())
                    .record(elapsed)
            }
        }
    }
}

impl Statement {
    fn take<'q, E: Execute<'q, Postgres>>(mut query: E) -> Result<Self, sqlx::Error> {
        let persistent = query.persistent();
        let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
        let sql = query.sql();
        let meta = statement_meta(sql.as_str());
        Ok(Self {
            sql,
            arguments,
            persistent,
            meta,
        })
    }

    fn span(&self) -> tracing::Span {
        tracing::debug_span!(
            "db.statement",
            otel.name = %self.meta.summary,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "postgresql",
            db.query.summary = %self.meta.summary,
        )
    }

    fn into_query(self) -> sqlx::query::Query<'static, Postgres, PgArguments> {
        sqlx::query_with(self.sql, self.arguments.unwrap_or_default()).persistent(self.persistent)
    }
}

/// Counts a request waiting for a pooled connection, and how long it waited.
struct Waiting {
    started: Instant,
}

impl Waiting {
    fn start() -> Self {
        DB_PENDING.fetch_add(1, Ordering::Relaxed);
        Self {
            started: Instant::now(),
        }
    }

    fn done(self) {
        static WAIT: OnceLock<Histogram> = OnceLock::new();
        let elapsed = self.started.elapsed();
        if telemetry::metrics::installed() {
            WAIT.get_or_init(|| histogram!(names::DB_CONNECTION_WAIT))
                .record(elapsed);
        } else {
            histogram!(names::DB_CONNECTION_WAIT).record(elapsed);
        }
        // `Drop` decrements the gauge.
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        DB_PENDING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `work` on a connection, inside the statement's span, timing it.
async fn timed<T>(
    meta: Arc<StatementMeta>,
    work: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let started = Instant::now();
    let result = work.await;
    meta.record(started.elapsed());
    if let Err(e) = &result {
        tracing::Span::current().record("otel.status_code", "ERROR");
        tracing::debug!(error = %e, "statement failed");
    }
    result
}

async fn on_pool(
    db: Db,
    statement: Statement,
    optional: bool,
) -> Result<Vec<Either<PgQueryResult, PgRow>>, sqlx::Error> {
    let (permit, timeout) = db.permit().await?;
    let waiting = Waiting::start();
    let conn = within_deadline(db.pool.acquire()).await;
    waiting.done();
    let mut conn = settle(permit, conn)?;
    timeout.apply(&mut conn).await?;
    run(&mut conn, statement, optional).await
}

/// The error of a call the breaker refused: an I/O error, so that it is a 503 like the
/// unreachable server it stands for.
fn breaker_open() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(
        "Postgres circuit breaker open: not waiting for a connection",
    ))
}

/// Settles the breaker's permit on the outcome of getting a connection: the breaker
/// judges whether Postgres can be reached, not what statements do. A wait cut short by
/// the request's deadline says nothing about the server and counts as neither.
fn settle<T>(permit: Permit, result: Result<T, DeadlineOr>) -> Result<T, sqlx::Error> {
    match result {
        Ok(value) => {
            permit.success();
            Ok(value)
        }
        Err(DeadlineOr::Deadline) => Err(sqlx::Error::PoolTimedOut),
        Err(DeadlineOr::Sqlx(e)) => {
            if super::is_unavailable(&e) {
                permit.failure();
            } else {
                permit.success();
            }
            Err(e)
        }
    }
}

/// A connection's wait ended by the request's deadline, or sqlx's own error.
enum DeadlineOr {
    Deadline,
    Sqlx(sqlx::Error),
}

/// The `statement_timeout` a checkout runs under: what is left of the request's deadline,
/// or none outside a request.
#[derive(Debug, Clone, Copy)]
enum StatementTimeout {
    /// In a request: milliseconds left, at least 1.
    Request(u64),
    None,
}

/// Whether any checkout has carried a request's timeout. Until one has, no pooled
/// connection can hold one, and work outside requests skips the reset (a worker process
/// never pays for it).
static CUT_BY_A_REQUEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl StatementTimeout {
    /// Refuses a checkout for a request whose deadline has passed: its answer is already
    /// a 503.
    fn now() -> Result<Self, sqlx::Error> {
        match deadline::remaining() {
            None => Ok(Self::None),
            Some(left) if left.is_zero() => Err(sqlx::Error::PoolTimedOut),
            Some(left) => {
                let millis = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                Ok(Self::Request(millis.max(1)))
            }
        }
    }

    /// Postgres's value: milliseconds, 0 for none.
    fn millis(self) -> u64 {
        match self {
            Self::Request(millis) => millis,
            Self::None => 0,
        }
    }

    /// Sets the connection's session `statement_timeout` for a single statement.
    async fn apply(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        match self {
            Self::Request(_) => CUT_BY_A_REQUEST.store(true, Ordering::Relaxed),
            Self::None if !CUT_BY_A_REQUEST.load(Ordering::Relaxed) => return Ok(()),
            Self::None => {}
        }
        let set = format!("SET statement_timeout = {}", self.millis());
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(set)))
            .await
            .map(|_| ())
    }
}

/// Waits for a pooled connection no longer than the request's deadline (the pool's own
/// `KEEL_DB_ACQUIRE_TIMEOUT` bounds it otherwise).
async fn within_deadline<T>(
    acquire: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, DeadlineOr> {
    match deadline::remaining() {
        None => acquire.await.map_err(DeadlineOr::Sqlx),
        Some(left) => match tokio::time::timeout(left, acquire).await {
            Ok(result) => result.map_err(DeadlineOr::Sqlx),
            Err(_) => Err(DeadlineOr::Deadline),
        },
    }
}

async fn run(
    conn: &mut PgConnection,
    statement: Statement,
    optional: bool,
) -> Result<Vec<Either<PgQueryResult, PgRow>>, sqlx::Error> {
    let meta = statement.meta.clone();
    let query = statement.into_query();
    timed(meta, async move {
        if optional {
            Ok(conn
                .fetch_optional(query)
                .await?
                .map(Either::Right)
                .into_iter()
                .collect())
        } else {
            conn.fetch_many(query).try_collect().await
        }
    })
    .await
}

fn into_stream<'e>(
    items: impl Future<Output = Result<Vec<Either<PgQueryResult, PgRow>>, sqlx::Error>> + Send + 'e,
) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>> {
    items
        .map_ok(|items| stream::iter(items.into_iter().map(Ok)))
        .try_flatten_stream()
        .boxed()
}

fn first_row<'e>(
    items: impl Future<Output = Result<Vec<Either<PgQueryResult, PgRow>>, sqlx::Error>> + Send + 'e,
) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>> {
    items
        .map_ok(|items| {
            items.into_iter().find_map(|item| match item {
                Either::Right(row) => Some(row),
                Either::Left(_) => None,
            })
        })
        .boxed()
}

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let statement = Statement::take(query);
        let db = self.clone();
        into_stream(
            async move {
                let statement = statement?;
                let span = statement.span();
                on_pool(db, statement, false).instrument(span).await
            }
            .boxed(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let statement = Statement::take(query);
        let db = self.clone();
        first_row(async move {
            let statement = statement?;
            let span = statement.span();
            on_pool(db, statement, true).instrument(span).await
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        (&self.pool).prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&self.pool).describe(sql)
    }
}

impl<'c> Executor<'c> for Traced<'c> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let statement = Statement::take(query);
        into_stream(async move {
            let statement = statement?;
            let span = statement.span();
            run(self.0, statement, false).instrument(span).await
        })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let statement = Statement::take(query);
        first_row(async move {
            let statement = statement?;
            let span = statement.span();
            run(self.0, statement, true).instrument(span).await
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        self.0.prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.0.describe(sql)
    }
}

/// Summaries by SQL text, computed once per text. The texts are the service's own
/// (static, or built from a fixed set of shapes — never with values in them), so the map
/// stays small; past [`MAX_SUMMARIES`] texts it stops growing and summaries are computed
/// each time.
static STATEMENTS: LazyLock<RwLock<HashMap<String, Arc<StatementMeta>>>> =
    LazyLock::new(Default::default);
const MAX_SUMMARIES: usize = 1024;

fn statement_meta(sql: &str) -> Arc<StatementMeta> {
    if let Some(meta) = STATEMENTS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(sql)
        && (meta.duration.is_some() || !telemetry::metrics::installed())
    {
        return meta.clone();
    }
    let meta = Arc::new(StatementMeta::new(sql));
    let mut statements = STATEMENTS.write().unwrap_or_else(|e| e.into_inner());
    if statements.len() < MAX_SUMMARIES || statements.contains_key(sql) {
        statements.insert(sql.to_owned(), meta.clone());
    }
    meta
}

/// A statement's low-cardinality summary: its operation and first table
/// (`SELECT tasks`), after the OpenTelemetry database conventions. SQL texts here are
/// static, so the set of summaries is small and fixed.
pub fn summarize(sql: &str) -> String {
    let words: Vec<String> = sql
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let table_after = |i: usize, keyword: &str| {
        words[i..]
            .iter()
            .position(|w| w == keyword)
            .and_then(|at| words.get(i + at + 1))
    };
    for (i, word) in words.iter().enumerate() {
        let (operation, table) = match word.as_str() {
            "select" => ("SELECT", table_after(i, "from")),
            "insert" => ("INSERT", table_after(i, "into")),
            "update" => ("UPDATE", words.get(i + 1)),
            "delete" => ("DELETE", table_after(i, "from")),
            _ => continue,
        };
        return match table {
            Some(table) if !table.starts_with('$') => format!("{operation} {table}"),
            _ => operation.to_owned(),
        };
    }
    words
        .first()
        .map_or_else(|| "SQL".to_owned(), |w| w.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::summarize;

    #[test]
    fn summaries_name_the_operation_and_the_first_table() {
        let cases = [
            ("select id, name from users where id = $1", "SELECT users"),
            (
                "select exists (select 1 from users) as \"exists!\"",
                "SELECT users",
            ),
            (
                "insert into tasks (id) values ($1) returning id",
                "INSERT tasks",
            ),
            (
                "update projects\n set name = $2 where id = $1",
                "UPDATE projects",
            ),
            (
                "delete from project_members where project_id = $1",
                "DELETE project_members",
            ),
            (
                "with project as (\n insert into projects (id) values ($1)) select id from project",
                "INSERT projects",
            ),
            ("select 1 as one", "SELECT"),
            ("analyze users, tasks", "ANALYZE"),
            ("", "SQL"),
        ];
        for (sql, summary) in cases {
            assert_eq!(summarize(sql), summary, "{sql}");
        }
    }
}
