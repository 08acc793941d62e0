//! The metrics registry: every series Keel exposes, named here, served as Prometheus text
//! on the admin listener's `/metrics`.
//!
//! Names follow the OpenTelemetry semantic conventions, in Prometheus form
//! (`http.server.request.duration` → `http_server_request_duration_seconds`, attributes as
//! labels). Labels are bounded by construction: routes are templates (`/v1/projects/{id}`,
//! never an id), methods outside the standard set are `_OTHER`, statuses are classes
//! (`2xx`…`5xx`), statements are summaries (`SELECT tasks`). However many ids clients
//! request, the number of series stays put.
//!
//! # Adding a series
//!
//! Add its name as a constant and a `describe_*!` line in `describe`; record it anywhere
//! with the `metrics` macros (`metrics::counter!(names::X, "label" => v).increment(1)`).
//! Histograms whose names end in `_seconds` get [`LATENCY_BUCKETS`].
//!
//! A counter of something that should rarely happen (a 429, a shed request, an expired
//! deadline, a retry) is started at zero where its labels are known, as the component
//! that counts it is built (`.increment(0)` for each label set): otherwise the series
//! does not exist until the first event, so a dashboard shows no data instead of 0, and
//! `rate()` misses that first event.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Every metric name, in one place.
pub mod names {
    pub const HTTP_REQUEST_DURATION: &str = "http_server_request_duration_seconds";
    pub const HTTP_ACTIVE_REQUESTS: &str = "http_server_active_requests";
    pub const DB_OPERATION_DURATION: &str = "db_client_operation_duration_seconds";
    pub const DB_CONNECTION_WAIT: &str = "db_client_connection_wait_time_seconds";
    pub const DB_CONNECTION_PENDING: &str = "db_client_connection_pending_requests";
    pub const DB_CONNECTION_COUNT: &str = "db_client_connection_count";
    pub const DB_CONNECTION_MAX: &str = "db_client_connection_max";
    pub const FIX_FLAG_ENABLED: &str = "keel_fix_flag_enabled";
    pub const BUILD_INFO: &str = "keel_build_info";
    pub const CACHE_REQUESTS: &str = "keel_cache_requests_total";
    pub const CACHE_FILLS: &str = "keel_cache_fills_total";
    pub const CACHE_LEASE_WAITS: &str = "keel_cache_lease_waits_total";
    pub const CACHE_ERRORS: &str = "keel_cache_errors_total";
    pub const CACHE_INVALIDATIONS: &str = "keel_cache_invalidations_total";
    pub const CACHE_LOAD_DURATION: &str = "keel_cache_load_duration_seconds";
    pub const BREAKER_STATE: &str = "keel_breaker_state";
    pub const BREAKER_TRANSITIONS: &str = "keel_breaker_transitions_total";
    pub const BREAKER_CALLS: &str = "keel_breaker_calls_total";
    pub const RETRIES: &str = "keel_retries_total";
    pub const RETRY_BUDGET_EXHAUSTED: &str = "keel_retry_budget_exhausted_total";
    pub const OUTBOX_BACKLOG: &str = "keel_outbox_backlog";
    pub const OUTBOX_OLDEST_AGE: &str = "keel_outbox_oldest_age_seconds";
    pub const OUTBOX_PUBLISHED: &str = "keel_outbox_published_total";
    pub const JOBS_CONSUMED: &str = "keel_jobs_consumed_total";
    pub const JOBS_FINISHED: &str = "keel_jobs_finished_total";
    pub const JOB_DURATION: &str = "keel_job_duration_seconds";
    pub const QUEUE_DEPTH: &str = "keel_queue_depth";
    pub const CONCURRENCY_LIMIT: &str = "keel_concurrency_limit";
    pub const CONCURRENCY_IN_FLIGHT: &str = "keel_concurrency_in_flight";
    pub const SHED: &str = "keel_shed_total";
    pub const DEADLINE_EXCEEDED: &str = "keel_deadline_exceeded_total";
    pub const IDEMPOTENCY_REQUESTS: &str = "keel_idempotency_requests_total";
    pub const RATE_LIMITED: &str = "keel_rate_limited_total";
    pub const RATE_LIMIT_FALLBACK: &str = "keel_rate_limit_fallback_total";
    pub const RATE_LIMIT_FALLBACK_KEYS: &str = "keel_rate_limit_fallback_keys";
    pub const FAULT_INJECTIONS: &str = "keel_fault_injections_total";
    pub const DB_READ_ROUTE: &str = "keel_db_read_route_total";
    pub const DB_REPLICA_UP: &str = "keel_db_replica_up";
    pub const DB_REPLICA_LAG: &str = "keel_db_replica_lag_seconds";
    pub const DB_REPLICA_LAG_BYTES: &str = "keel_db_replica_lag_bytes";
}

/// From half a millisecond (a cached read) to ten seconds (a request stuck on a dead
/// dependency), dense where the SLO thresholds are (100 ms for hot reads).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the exporter's histograms are compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process-wide recorder's handle, behind a lock so that checking and installing are
/// one step (instances built concurrently, as tests do, must not both install).
static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Requests in flight and requests waiting for a pooled connection. Plain atomics, read
/// into their gauges at scrape time: counting them through the registry would cost two
/// lookups per request and per statement, for values only a scrape ever reads.
pub static HTTP_IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
pub static DB_PENDING: AtomicI64 = AtomicI64::new(0);

/// Whether the process-wide recorder is installed. Hot paths cache metric handles only
/// once it is: a handle taken before would stay a no-op for good.
static INSTALLED: AtomicBool = AtomicBool::new(false);

pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// Installs the process-wide recorder (once: later calls return the same handle, so that
/// several instances in one test process share it).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let mut installed = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    *installed = Some(handle.clone());
    INSTALLED.store(true, Ordering::Release);
    Ok(handle)
}

fn describe() {
    use names::*;
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP server requests, by route template, method, status class and route class"
    );
    describe_gauge!(HTTP_ACTIVE_REQUESTS, "HTTP server requests in flight");
    describe_histogram!(
        DB_OPERATION_DURATION,
        Unit::Seconds,
        "Duration of SQL statements, by statement summary"
    );
    describe_histogram!(
        DB_CONNECTION_WAIT,
        Unit::Seconds,
        "Time spent waiting for a pooled Postgres connection"
    );
    describe_gauge!(
        DB_CONNECTION_PENDING,
        "Requests waiting for a pooled Postgres connection"
    );
    describe_gauge!(
        DB_CONNECTION_COUNT,
        "Pooled Postgres connections, by state (idle, used)"
    );
    describe_gauge!(
        DB_CONNECTION_MAX,
        "The pool's ceiling (KEEL_DB_MAX_CONNECTIONS)"
    );
    describe_gauge!(
        FIX_FLAG_ENABLED,
        "Whether each workshop fix is on (1) or off (0) on this instance"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label");
    describe_counter!(
        DB_READ_ROUTE,
        "List reads by where they went (target: replica, primary) and why (reason: replica; read_your_writes, replica_down, replica_lagging, marker_unknown, replica_error: the replica failed and the primary answered)"
    );
    describe_gauge!(
        DB_REPLICA_UP,
        "Whether the read replica answered its last poll (absent without DATABASE_READ_URL)"
    );
    describe_gauge!(
        DB_REPLICA_LAG,
        Unit::Seconds,
        "How far the read replica's replay is behind the primary, in time, at its last poll"
    );
    describe_gauge!(
        DB_REPLICA_LAG_BYTES,
        Unit::Bytes,
        "How far the read replica's replay is behind the primary's WAL, in bytes, at its last poll"
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Outbox rows committed and not yet published to RabbitMQ"
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest unpublished outbox row (0 when there is none)"
    );
    describe_counter!(
        OUTBOX_PUBLISHED,
        "Outbox rows the relay handled, by kind and result (confirmed, nacked, returned: unroutable, invalidated: a cache invalidation repeated, failed)"
    );
    describe_counter!(JOBS_CONSUMED, "Jobs the worker received, by kind");
    describe_counter!(
        JOBS_FINISHED,
        "Jobs the worker settled, by kind and outcome (done, duplicate, retried, parked)"
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Duration of a job's handler, by kind and outcome"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Messages ready in each RabbitMQ queue of the jobs, by queue"
    );
    describe_counter!(
        CACHE_REQUESTS,
        "Cache lookups, by cache (entry kind) and outcome (hit, miss, error)"
    );
    describe_counter!(
        CACHE_FILLS,
        "Cache fills after a miss, by cache and result (stored, or refused: a write came in between)"
    );
    describe_counter!(
        CACHE_LEASE_WAITS,
        "Misses that found another reader's lease and waited for its fill, by cache"
    );
    describe_counter!(
        CACHE_ERRORS,
        "Redis calls of the cache that failed or were not made, by operation and reason (redis, breaker_open, pool_busy, deadline: the request's deadline cut it)"
    );
    describe_counter!(
        CACHE_INVALIDATIONS,
        "Invalidations after writes, by result (done, or lost: the epoch repair follows)"
    );
    describe_histogram!(
        CACHE_LOAD_DURATION,
        Unit::Seconds,
        "Time to load a missed cache entry from Postgres, by cache"
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state by breaker (dependency): 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit breaker transitions, by breaker and the state entered"
    );
    describe_gauge!(
        CONCURRENCY_LIMIT,
        "The adaptive concurrency limit of the public API (Gradient2), updated each window"
    );
    describe_gauge!(
        CONCURRENCY_IN_FLIGHT,
        "Requests admitted under the concurrency limit, as of the last window"
    );
    describe_counter!(
        SHED,
        "Requests refused with 503 by the load shedder, by criticality and route class"
    );
    describe_counter!(
        DEADLINE_EXCEEDED,
        "Requests answered 503 because their deadline passed, by route class"
    );
    describe_counter!(
        BREAKER_CALLS,
        "Calls through each circuit breaker, by breaker and outcome (success, failure, slow: succeeded too slowly, rejected: refused while open)"
    );
    describe_counter!(RETRIES, "Retries of idempotent calls, by dependency");
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED,
        "Retries not made because the dependency's retry budget was spent, by dependency"
    );
    describe_counter!(
        IDEMPOTENCY_REQUESTS,
        "Creates that carried an Idempotency-Key, by route and outcome (recorded: the first, its response stored; replayed: a repeat answered with it; mismatched: the key reused with another request, 422; in_flight: the first still running, 409; malformed: 422)"
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused with 429, by the rate-limit policy whose budget was spent"
    );
    describe_counter!(
        RATE_LIMIT_FALLBACK,
        "Rate-limit checks made in process because Redis was not asked or did not answer, by policy and reason (breaker_open, redis, timeout, pool_busy)"
    );
    describe_gauge!(
        RATE_LIMIT_FALLBACK_KEYS,
        "Clients the in-process rate-limit fallback holds a budget for, by policy (set at each sweep)"
    );
    describe_counter!(
        FAULT_INJECTIONS,
        "Calls to a dependency that a workshop fault switch slowed (latency) or failed (error), by dependency and effect"
    );
}

/// What a scrape reads from the running service, handed over by value: this module
/// names and renders series, and knows nothing of the state that produces them.
pub struct Scrape<'a> {
    pub pool: PoolStats,
    /// Every fix flag this build knows, and whether it is on.
    pub flags: &'a [(&'static str, bool)],
}

/// The Postgres pool at scrape time.
pub struct PoolStats {
    pub size: u32,
    pub idle: usize,
    pub max: u32,
}

/// The exposition: gauges that are cheaper to read than to track (pool, flags, in-flight
/// counts) are set now, then everything is rendered.
pub fn render(handle: &PrometheusHandle, scrape: &Scrape<'_>) -> String {
    use names::*;
    let PoolStats { size, idle, max } = scrape.pool;
    let idle = idle as f64;
    gauge!(DB_CONNECTION_COUNT, "db_client_connection_state" => "idle").set(idle);
    gauge!(DB_CONNECTION_COUNT, "db_client_connection_state" => "used").set(f64::from(size) - idle);
    gauge!(DB_CONNECTION_MAX).set(f64::from(max));
    for &(flag, enabled) in scrape.flags {
        gauge!(FIX_FLAG_ENABLED, "flag" => flag).set(if enabled { 1.0 } else { 0.0 });
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(HTTP_ACTIVE_REQUESTS).set(HTTP_IN_FLIGHT.load(Ordering::Relaxed) as f64);
    gauge!(DB_CONNECTION_PENDING).set(DB_PENDING.load(Ordering::Relaxed) as f64);
    handle.render()
}

/// Compacts histograms periodically until `shutdown` (the exporter's own advice).
pub async fn run_upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => handle.run_upkeep(),
        }
    }
}
