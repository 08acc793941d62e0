//! The optional read replica (`DATABASE_READ_URL`): its pool, and what each instance knows
//! of how far behind the primary it is.
//!
//! A streaming replica replays the primary's WAL; a read from it sees the primary as of its
//! *replay position*. [`Replica::run_monitor`] reads that position (and the primary's own
//! position) every `KEEL_DB_READ_POLL`, and keeps the latest [`Status`]: whether the
//! replica answered, how far it has replayed, and its lag in seconds and bytes (also
//! exported: `keel_db_replica_up`, `keel_db_replica_lag_seconds`,
//! `keel_db_replica_lag_bytes`). Where reads go, given that status and the reader's own
//! last write, is the loading layer's decision (`crate::loaders::reads`).
//!
//! The status errs towards the primary: until the first poll answers, after a poll fails,
//! or while the replica is further behind than `KEEL_DB_READ_MAX_LAG`, it says "not
//! usable", and every read goes to the primary. A known position is never newer than the
//! replica's real one (it was read before it was used), so "the replica has replayed past
//! position P" is never claimed early.
//!
//! Positions are WAL byte offsets (`pg_lsn` − `'0/0'`), as plain `u64`s.
//!
//! A `DATABASE_READ_URL` that names a server which is not in recovery (the primary itself,
//! in a test or a small deployment) is taken as fully caught up: its position is its own
//! current WAL position. Pointing it at an unrelated primary is a configuration error this
//! cannot detect; the start-up log says which kind of server it found.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metrics::gauge;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use super::Db;
use crate::config::ReadReplicaConfig;
use crate::resilience::{Breaker, BreakerSettings, BreakerSwitch, Faults};
use crate::telemetry::metrics::names;

/// The replica: its [`Db`] (own pool, own breaker, the same `postgres` fault switch as
/// the primary) and the monitor's latest reading. Cloning is two `Arc` increments.
#[derive(Clone, Debug)]
pub struct Replica {
    db: Db,
    status: Arc<Shared>,
    max_lag: Duration,
    /// `KEEL_DB_READ_POLL`.
    poll: Duration,
}

/// The monitor's reading, shared between the monitor and the readers.
#[derive(Debug, Default)]
struct Shared {
    up: AtomicBool,
    /// Replay position (WAL bytes) as of the last successful poll.
    replayed: AtomicU64,
    /// Lag in milliseconds as of the last successful poll.
    lag_ms: AtomicU64,
}

/// What a reader needs to know of the replica, at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The last poll answered.
    pub up: bool,
    /// The replica has replayed the primary's WAL up to here (bytes).
    pub replayed: u64,
    /// How far behind the primary it was, in time.
    pub lag: Duration,
}

/// One poll's reading of the replica.
struct Reading {
    standby: bool,
    replayed: u64,
    lag: Duration,
}

impl Replica {
    /// The replica's pool (lazy: nothing connects until the first poll) with a breaker of
    /// its own, named `postgres_replica`: a dead replica opens it, and reads go to the
    /// primary at once instead of each waiting for a connection.
    pub fn new(
        config: &ReadReplicaConfig,
        breaker: BreakerSettings,
        acquire_timeout: Duration,
        breakers: &BreakerSwitch,
        faults: Faults,
    ) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .connect_lazy_with(config.connect.clone());
        let breaker = Breaker::new("postgres_replica", breaker).with_switch(breakers);
        Self {
            db: Db::new(pool, breaker, faults),
            status: Arc::default(),
            max_lag: config.max_lag,
            poll: config.poll,
        }
    }

    /// The replica's handle, for a statement the loading layer routed here.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The latest reading.
    pub fn status(&self) -> Status {
        Status {
            up: self.status.up.load(Ordering::Acquire),
            replayed: self.status.replayed.load(Ordering::Acquire),
            lag: Duration::from_millis(self.status.lag_ms.load(Ordering::Acquire)),
        }
    }

    /// Whether the replica may serve a read now: it answered the last poll, its breaker
    /// is not open, and it is within `KEEL_DB_READ_MAX_LAG`.
    pub fn usable(&self, status: &Status) -> Usable {
        if !status.up || self.db.breaker_open() {
            Usable::Down
        } else if status.lag > self.max_lag {
            Usable::Lagging
        } else {
            Usable::Yes
        }
    }

    /// Whether the replica answers, for readiness (an optional dependency: without it
    /// the primary serves every read).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.db.ping().await
    }

    /// Polls the replica (and the primary, for the lag in bytes) every
    /// `KEEL_DB_READ_POLL` until `stop`. Each poll is cut to the poll interval, at the
    /// least 1 s, so that a replica that stopped answering is marked down within a poll or
    /// so, not after a TCP timeout.
    pub async fn run_monitor(self, primary: PgPool, stop: CancellationToken) {
        let timeout = self.poll.max(Duration::from_secs(1));
        let mut interval = tokio::time::interval(self.poll);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut standby: Option<bool> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let polled = tokio::time::timeout(timeout, read_replica(self.db.pool())).await;
            let reading = match polled {
                Ok(Ok(reading)) => reading,
                Ok(Err(e)) => {
                    self.mark_down(&format!("{e}"));
                    continue;
                }
                Err(_) => {
                    self.mark_down("the replica did not answer within the poll");
                    continue;
                }
            };
            if standby != Some(reading.standby) {
                standby = Some(reading.standby);
                if reading.standby {
                    tracing::info!("DATABASE_READ_URL is a standby: list reads use it");
                } else {
                    tracing::warn!(
                        "DATABASE_READ_URL is not in recovery (pg_is_in_recovery() = false): \
                         it is taken as always caught up; it must be the primary itself"
                    );
                }
            }
            self.status
                .replayed
                .store(reading.replayed, Ordering::Release);
            let lag_ms = u64::try_from(reading.lag.as_millis()).unwrap_or(u64::MAX);
            self.status.lag_ms.store(lag_ms, Ordering::Release);
            if !self.status.up.swap(true, Ordering::AcqRel) {
                tracing::info!("read replica up");
            }
            gauge!(names::DB_REPLICA_UP).set(1.0);
            gauge!(names::DB_REPLICA_LAG).set(reading.lag.as_secs_f64());
            // The primary's position is read after the replica's, so the difference is
            // never an underestimate.
            if let Ok(Ok(primary_at)) = tokio::time::timeout(timeout, position(&primary)).await {
                gauge!(names::DB_REPLICA_LAG_BYTES)
                    .set(primary_at.saturating_sub(reading.replayed) as f64);
            }
        }
    }

    fn mark_down(&self, why: &str) {
        if self.status.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                error = why,
                "read replica down: list reads go to the primary"
            );
        }
        gauge!(names::DB_REPLICA_UP).set(0.0);
    }
}

/// Whether the replica may serve a read, and if not, why (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    Yes,
    /// The last poll failed, or its breaker is open.
    Down,
    /// Further behind than `KEEL_DB_READ_MAX_LAG`.
    Lagging,
}

/// The primary's current WAL position, in bytes: after a commit has returned, at or past
/// that commit's record. Read on the raw pool by the monitor, and through the breaker by
/// a writer (`crate::loaders::reads`).
pub async fn position<'e>(db: impl sqlx::PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    let at = sqlx::query_scalar!(
        r#"select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8 as "at!""#
    )
    .fetch_one(db)
    .await?;
    Ok(u64::try_from(at).unwrap_or(0))
}

/// The replica's replay position and lag. On a server that is not in recovery, its own
/// current position and no lag. The lag in time is the usual
/// `now() - pg_last_xact_replay_timestamp()`, except when everything received has been
/// replayed (an idle primary commits nothing, and that timestamp would age without any
/// lag).
async fn read_replica(pool: &PgPool) -> Result<Reading, sqlx::Error> {
    let row = sqlx::query!(
        r#"select pg_is_in_recovery() as "standby!",
                  pg_wal_lsn_diff(
                      case when pg_is_in_recovery() then pg_last_wal_replay_lsn()
                           else pg_current_wal_lsn() end,
                      '0/0')::int8 as "replayed",
                  case when not pg_is_in_recovery()
                            or pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() then 0
                       else coalesce(
                           extract(epoch from now() - pg_last_xact_replay_timestamp()), 0)
                  end::float8 as "lag_seconds!""#
    )
    .fetch_one(pool)
    .await?;
    Ok(Reading {
        standby: row.standby,
        // NULL only on a standby that has replayed nothing yet.
        replayed: row
            .replayed
            .and_then(|r| u64::try_from(r).ok())
            .unwrap_or(0),
        lag: Duration::try_from_secs_f64(row.lag_seconds.max(0.0)).unwrap_or(Duration::MAX),
    })
}
