//! The workshop fix flags: every playbook fix can be switched off at run time, for every
//! instance at once, so that a workshop can show the "before" and the "after" under the
//! same load.
//!
//! # How a change travels
//!
//! The flags live in Postgres (`fix_flags`), the one store every instance shares. Each
//! instance keeps an in-process snapshot (an atomic per flag: reading a flag on a hot path
//! costs one relaxed load) and a refresher task that re-reads the table
//!
//! * at once when the table changes — a trigger calls `pg_notify`, the refresher LISTENs;
//! * every `KEEL_FLAGS_POLL_INTERVAL` (≤ 5 s) regardless — the fallback for a lost LISTEN
//!   connection or a notification missed during a reconnect.
//!
//! So a change reaches every instance within milliseconds normally and within 5 s at worst,
//! with no restart. While Postgres is unreachable the snapshot keeps its last values (at
//! start-up: every flag on, the fixed behaviour).
//!
//! # Adding a flag
//!
//! When a fix lands, add its variant to [`Flag`] with its name and what happens when it
//! is off; the start-up registration inserts its row (on), and `flags.enabled(Flag::X)`
//! reads it where the fix and its naive path meet. Rows of flags this build does not
//! know are ignored, so instances of different builds can share the table.
//!
//! # The fault switches
//!
//! The workshop's fault switches (`resilience::fault`: an added latency and a share of
//! failing calls per dependency) travel the same way: their table (`fault_injections`)
//! notifies on the flags' channel, and the one refresher reloads both on every
//! notification and every poll. The snapshot lives here beside the flags and reaches the
//! dependencies' clients like the `circuit_breaker` flag does: [`Flags::faults`] hands the
//! layers below a shared [`Faults`]. Those reads use the raw pool, never `db::Db`, so the
//! switches stay switchable while a `postgres` fault fails every statement.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::resilience::{BreakerSwitch, Dependency, Fault, Faults};

/// Every fix that a workshop can switch off, once the fix exists: a flag is listed (admin
/// API, `/metrics`, README) only when switching it changes something. The design's other
/// flags arrive with their fixes. All default to on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    BatchLoading,
    Cache,
    AsyncJobs,
    Timeouts,
    LoadShedding,
    CircuitBreaker,
    RateLimit,
}

impl Flag {
    pub const ALL: [Flag; 7] = [
        Flag::BatchLoading,
        Flag::Cache,
        Flag::AsyncJobs,
        Flag::Timeouts,
        Flag::LoadShedding,
        Flag::CircuitBreaker,
        Flag::RateLimit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Flag::BatchLoading => "batch_loading",
            Flag::Cache => "cache",
            Flag::AsyncJobs => "async_jobs",
            Flag::Timeouts => "timeouts",
            Flag::LoadShedding => "load_shedding",
            Flag::CircuitBreaker => "circuit_breaker",
            Flag::RateLimit => "rate_limit",
        }
    }

    /// What the service does when the flag is off (design.md's table).
    pub fn when_off(self) -> &'static str {
        match self {
            Flag::BatchLoading => {
                "a page of tasks loads each assignee and comment count with its own query (N+1)"
            }
            Flag::Cache => "hot reads always go to Postgres",
            Flag::AsyncJobs => {
                "the assignment email is sent over SMTP inside the request, and stats are recomputed inline"
            }
            Flag::Timeouts => "no request deadline and no statement timeout",
            Flag::LoadShedding => "no concurrency limit: overload queues up without bound",
            Flag::CircuitBreaker => {
                "a dead dependency is called anyway, each call waiting for its timeout"
            }
            Flag::RateLimit => "no rate limiting",
        }
    }

    pub fn from_name(name: &str) -> Option<Flag> {
        Flag::ALL.into_iter().find(|flag| flag.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One flag as this instance currently sees it.
#[derive(Debug, Clone)]
pub struct FlagState {
    pub flag: Flag,
    pub enabled: bool,
    /// When the flag last changed in the store; `None` until the first successful read.
    pub updated_at: Option<DateTime<Utc>>,
}

/// The in-process snapshot, shared by every request of this instance.
#[derive(Clone)]
pub struct Flags(Arc<Inner>);

struct Inner {
    enabled: [AtomicBool; Flag::ALL.len()],
    updated_at: RwLock<[Option<DateTime<Utc>>; Flag::ALL.len()]>,
    /// `circuit_breaker`, as the breakers below this layer see it (`crate::resilience`
    /// cannot read the flags): kept in step with the flag by [`Flags::apply`].
    breakers: BreakerSwitch,
    /// The fault switches, as the dependencies' clients below this layer see them: kept in
    /// step with the store by [`Flags::apply_faults`].
    faults: Faults,
}

impl Default for Flags {
    fn default() -> Self {
        Self(Arc::new(Inner {
            enabled: std::array::from_fn(|_| AtomicBool::new(true)),
            updated_at: RwLock::new([None; Flag::ALL.len()]),
            breakers: BreakerSwitch::default(),
            faults: Faults::default(),
        }))
    }
}

impl Flags {
    /// Whether a fix is on. Cheap enough for every request.
    pub fn enabled(&self, flag: Flag) -> bool {
        self.0.enabled[flag.index()].load(Ordering::Relaxed)
    }

    /// The `circuit_breaker` flag as a switch for the breakers of the layers below this one
    /// (the cache, the jobs' broker and mailer, the database): build each one
    /// `.with_switch(&flags.breaker_switch())`.
    pub fn breaker_switch(&self) -> BreakerSwitch {
        self.0.breakers.clone()
    }

    /// The fault switches, for the clients of the layers below this one (the database,
    /// the cache and the rate limiter, the broker's relay, the mailer): build each one with
    /// `flags.faults()`. Cloning shares them.
    pub fn faults(&self) -> Faults {
        self.0.faults.clone()
    }

    /// Every flag with its state, in registry order.
    pub fn snapshot(&self) -> Vec<FlagState> {
        let updated_at = *self.0.updated_at.read().unwrap_or_else(|e| e.into_inner());
        Flag::ALL
            .into_iter()
            .map(|flag| FlagState {
                flag,
                enabled: self.enabled(flag),
                updated_at: updated_at[flag.index()],
            })
            .collect()
    }

    /// Sets one flag in this instance's snapshot only (and the breakers' switch with
    /// `circuit_breaker`), until the next refresh. [`Flags::apply`] sets flags through it;
    /// tests call it to drive a layer without a store. Operators switch flags in the store
    /// (the admin API), which every instance follows.
    pub fn set(&self, flag: Flag, enabled: bool) {
        self.0.enabled[flag.index()].store(enabled, Ordering::Relaxed);
        if flag == Flag::CircuitBreaker {
            self.0.breakers.set(enabled);
        }
    }

    /// Applies rows read from the store; rows of flags this build does not know (an older
    /// or newer instance's) are ignored.
    ///
    /// A row older than the one held is ignored: a refresh whose read began before a change
    /// this instance has already applied (the admin API applies its own write at once) must
    /// not put the old value back until the next refresh.
    pub fn apply(&self, rows: &[db::flags::FlagRow]) {
        let mut updated_at = self.0.updated_at.write().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            if let Some(flag) = Flag::from_name(&row.name) {
                if updated_at[flag.index()].is_some_and(|held| row.updated_at < held) {
                    continue;
                }
                self.set(flag, row.enabled);
                updated_at[flag.index()] = Some(row.updated_at);
            }
        }
    }

    /// Reads every flag from the store into the snapshot.
    pub async fn reload(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let rows = db::flags::all(pool).await?;
        self.apply(&rows);
        Ok(())
    }

    /// Applies fault switches read from the store; rows of dependencies this build does not
    /// know are ignored, like unknown flags.
    pub fn apply_faults(&self, rows: &[db::faults::FaultRow]) {
        for row in rows {
            if let Some(dependency) = Dependency::from_name(&row.dependency) {
                let fault = Fault {
                    latency_ms: u32::try_from(row.latency_ms).unwrap_or(0),
                    error_rate: row.error_rate,
                };
                self.0.faults.apply(dependency, fault, row.updated_at);
            }
        }
    }

    /// Reads every fault switch from the store into the snapshot.
    pub async fn reload_faults(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let rows = db::faults::all(pool).await?;
        self.apply_faults(&rows);
        Ok(())
    }
}

/// Inserts the rows of flags the store does not have yet (enabled).
pub async fn register(pool: &PgPool) -> Result<(), sqlx::Error> {
    let names: Vec<String> = Flag::ALL.iter().map(|f| f.name().to_owned()).collect();
    db::flags::register(pool, &names).await
}

/// Keeps `flags` and the fault switches in step with the store until `shutdown` fires
/// (see the module docs).
pub async fn run_refresher(
    flags: Flags,
    pool: PgPool,
    poll_interval: Duration,
    shutdown: CancellationToken,
) {
    let mut listener: Option<PgListener> = None;
    let mut registered = false;
    loop {
        if !registered {
            registered = register(&pool).await.is_ok();
        }
        if listener.is_none() {
            listener = listen(&pool).await;
        }
        // Reload after every (re)connection too: a change made while the LISTEN connection
        // was down sent a notification that nobody heard.
        if let Err(e) = flags.reload(&pool).await {
            tracing::warn!(error = %e, "could not refresh the fix flags; keeping the last values");
        }
        if let Err(e) = flags.reload_faults(&pool).await {
            tracing::warn!(error = %e, "could not refresh the fault switches; keeping the last values");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(poll_interval) => {}
            notification = db::next_notification(&mut listener) => {
                if let Err(e) = notification {
                    tracing::warn!(error = %e, "lost the fix-flag LISTEN connection; polling until it is back");
                    listener = None;
                }
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    match db::listen(pool, db::flags::CHANNEL).await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::debug!(error = %e, "fix-flag LISTEN unavailable; polling");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_round_trips_through_its_name() {
        for flag in Flag::ALL {
            assert_eq!(Flag::from_name(flag.name()), Some(flag));
        }
        assert_eq!(Flag::from_name("nope"), None);
    }

    #[test]
    fn indexes_match_the_registry_order() {
        for (i, flag) in Flag::ALL.into_iter().enumerate() {
            assert_eq!(flag.index(), i);
        }
    }

    #[test]
    fn flags_start_on_and_follow_the_store() {
        let flags = Flags::default();
        assert!(Flag::ALL.into_iter().all(|f| flags.enabled(f)));
        flags.apply(&[
            db::flags::FlagRow {
                name: "batch_loading".into(),
                enabled: false,
                updated_at: Utc::now(),
            },
            db::flags::FlagRow {
                name: "from_a_newer_build".into(),
                enabled: false,
                updated_at: Utc::now(),
            },
        ]);
        assert!(!flags.enabled(Flag::BatchLoading));
        let snapshot = flags.snapshot();
        assert_eq!(snapshot.len(), Flag::ALL.len(), "unknown rows are ignored");
        assert!(snapshot[0].updated_at.is_some());
    }

    #[test]
    fn the_fault_switches_follow_the_store_and_ignore_unknown_dependencies() {
        let flags = Flags::default();
        let faults = flags.faults();
        let row = |dependency: &str, latency_ms, error_rate| db::faults::FaultRow {
            dependency: dependency.into(),
            latency_ms,
            error_rate,
            updated_at: Utc::now(),
        };

        flags.apply_faults(&[row("redis", 300, 0.25), row("mongodb", 1, 1.0)]);

        let redis = faults.get(Dependency::Redis);
        assert_eq!((redis.latency_ms, redis.error_rate), (300, 0.25));
        let snapshot = faults.snapshot();
        assert_eq!(
            snapshot.len(),
            Dependency::ALL.len(),
            "unknown rows are ignored"
        );
        assert!(snapshot[1].updated_at.is_some());
        assert!(
            snapshot[0].updated_at.is_none(),
            "postgres was not in the rows"
        );
        flags.apply_faults(&[row("redis", 0, 0.0)]);
        assert!(faults.get(Dependency::Redis).is_none());
    }

    #[test]
    fn a_refresh_read_before_a_change_does_not_undo_it() {
        let flags = Flags::default();
        let before = Utc::now();
        let changed = before + chrono::Duration::milliseconds(5);
        let row = |enabled, updated_at| db::flags::FlagRow {
            name: "cache".into(),
            enabled,
            updated_at,
        };
        // The admin API applies its write (off) ...
        flags.apply(&[row(false, changed)]);
        // ... and a refresh that read the table just before it arrives after it.
        flags.apply(&[row(true, before)]);
        assert!(!flags.enabled(Flag::Cache));
        let faults = flags.faults();
        faults.apply(
            Dependency::Redis,
            Fault {
                latency_ms: 300,
                error_rate: 0.0,
            },
            changed,
        );
        faults.apply(Dependency::Redis, Fault::NONE, before);
        assert_eq!(faults.get(Dependency::Redis).latency_ms, 300);
        // A newer read applies, as ever.
        flags.apply(&[row(true, changed + chrono::Duration::milliseconds(1))]);
        assert!(flags.enabled(Flag::Cache));
    }

    #[test]
    fn the_breaker_switch_follows_the_circuit_breaker_flag() {
        let flags = Flags::default();
        let switch = flags.breaker_switch();
        assert!(switch.is_on());
        let row = |enabled| db::flags::FlagRow {
            name: "circuit_breaker".into(),
            enabled,
            updated_at: Utc::now(),
        };

        flags.apply(&[row(false)]);

        assert!(!flags.enabled(Flag::CircuitBreaker));
        assert!(!switch.is_on());
        flags.apply(&[row(true)]);
        assert!(switch.is_on());
    }
}
