//! Postgres: `DATABASE_URL` and the pool's sizes and timeouts, and the optional read
//! replica (`DATABASE_READ_URL`, [`ReadReplicaConfig`]).
//!
//! Readable on its own ([`DatabaseConfig::from_env`]) because `keel migrate` needs a
//! connection and nothing else — in particular no secrets.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use super::resilience::{BreakerSettings, BreakerVars};
use super::vars::{ConfigError, Vars, error, process_env};

#[derive(Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`, parsed. `PgConnectOptions` derives `Debug` (password included), so
    /// this struct's `Debug` is written by hand below.
    pub connect: PgConnectOptions,
    /// `KEEL_DB_MAX_CONNECTIONS`: the pool's ceiling, per process. Postgres has a hard
    /// connection limit shared by every instance, so this is the knob that decides how many
    /// instances fit (instances × max ≤ `max_connections` minus headroom).
    pub max_connections: u32,
    /// `KEEL_DB_MIN_CONNECTIONS`: connections kept open while idle.
    pub min_connections: u32,
    /// `KEEL_DB_ACQUIRE_TIMEOUT`: how long a request waits for a pooled connection before
    /// failing. A short wait turns pool exhaustion into fast errors instead of a queue that
    /// grows without bound.
    pub acquire_timeout: Duration,
    /// `KEEL_DB_TEST_BEFORE_ACQUIRE`: ping each connection as it leaves the pool. sqlx's
    /// default is on, which costs a round trip per checkout — for a handler that checks
    /// membership and then reads a row, two extra round trips per request. Off, a
    /// connection that died while idle (a Postgres restart) fails the one query that
    /// uses it: that request gets 503 with `Retry-After`, and the pool replaces the
    /// connection. Keel takes that trade by default; turn it on where idle connections
    /// die often (an aggressive proxy in between).
    pub test_before_acquire: bool,
    /// `KEEL_DB_BREAKER_*`: the circuit breaker around Postgres. While Postgres cannot be
    /// reached, it turns every request's wait for a pool timeout into an immediate 503.
    /// A statement can be slow for good reasons (a report, a cold page), so a call counts
    /// as slow only past 5s, and only a window where every call was slow opens it. The
    /// window (50 calls, judged from 20) passes in well under a second under load; open for
    /// 5s, with 5 probes: one lucky statement on a recovering server does not close it.
    pub breaker: BreakerSettings,
    /// `DATABASE_READ_URL` and its settings: a streaming replica for the list reads, or
    /// `None` (every read goes to `DATABASE_URL`).
    pub read: Option<ReadReplicaConfig>,
}

/// The read replica (`crate::db::replica`): where it is, how big its pool is, and how
/// stale a read from it may be.
#[derive(Clone)]
pub struct ReadReplicaConfig {
    /// `DATABASE_READ_URL`, parsed (never printed: it may carry a password).
    pub connect: PgConnectOptions,
    /// `KEEL_DB_READ_MAX_CONNECTIONS`: the replica pool's ceiling, per process (default:
    /// `KEEL_DB_MAX_CONNECTIONS`). It counts against the *replica's* `max_connections`.
    pub max_connections: u32,
    /// `KEEL_DB_READ_MAX_LAG`: a replica further behind than this serves no reads, until
    /// it catches up. The staleness a reader who wrote nothing can see is at most this
    /// plus one poll.
    pub max_lag: Duration,
    /// `KEEL_DB_READ_POLL`: how often each instance reads the replica's replay position
    /// and lag. A read-your-writes reader waits on the primary for up to one poll after
    /// the replica has actually caught up.
    pub poll: Duration,
    /// `KEEL_DB_READ_YOUR_WRITES_WINDOW`: how long after a write the writer's reads are
    /// checked against the write's commit position. Longer than `max_lag` plus a poll
    /// (checked here), so that by the time a marker expires a replica that still serves
    /// reads has replayed the write anyway.
    pub read_your_writes: Duration,
}

impl std::fmt::Debug for ReadReplicaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadReplicaConfig")
            .field("host", &self.connect.get_host())
            .field("port", &self.connect.get_port())
            .field("database", &self.connect.get_database())
            .field("max_connections", &self.max_connections)
            .field("max_lag", &self.max_lag)
            .field("poll", &self.poll)
            .field("read_your_writes", &self.read_your_writes)
            .finish_non_exhaustive()
    }
}

/// A Postgres URL from `var`, named `keel` to the server; the parser's complaint is
/// reported, never the value (it may carry a password).
fn postgres_url(var: &'static str, url: &str) -> Result<PgConnectOptions, ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(error(var, "must be a postgres:// or postgresql:// URL"));
    }
    Ok(PgConnectOptions::from_str(url)
        .map_err(|e| error(var, format!("is not a valid Postgres URL: {e}")))?
        .application_name("keel"))
}

impl ReadReplicaConfig {
    /// `None` when `DATABASE_READ_URL` is unset or empty.
    fn read(vars: &Vars<'_>, primary_max: u32) -> Result<Option<Self>, ConfigError> {
        let Some(url) = vars.get("DATABASE_READ_URL") else {
            return Ok(None);
        };
        // Named apart from the primary's connections in `pg_stat_activity`: a URL that
        // names the primary itself (a test, a small deployment) stays tellable.
        let connect = postgres_url("DATABASE_READ_URL", &url)?.application_name("keel-read");
        let max_connections = vars.range("KEEL_DB_READ_MAX_CONNECTIONS", primary_max, 1, 1000)?;
        let max_lag = vars.duration_range(
            "KEEL_DB_READ_MAX_LAG",
            Duration::from_secs(5),
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        let poll = vars.duration_range(
            "KEEL_DB_READ_POLL",
            Duration::from_millis(250),
            Duration::from_millis(10),
            Duration::from_secs(10),
        )?;
        let read_your_writes = vars.duration_range(
            "KEEL_DB_READ_YOUR_WRITES_WINDOW",
            Duration::from_secs(30),
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        if read_your_writes <= max_lag + poll {
            return Err(error(
                "KEEL_DB_READ_YOUR_WRITES_WINDOW",
                format!(
                    "{} must be longer than KEEL_DB_READ_MAX_LAG plus KEEL_DB_READ_POLL ({})",
                    humantime::format_duration(read_your_writes),
                    humantime::format_duration(max_lag + poll)
                ),
            ));
        }
        Ok(Some(Self {
            connect,
            max_connections,
            max_lag,
            poll,
            read_your_writes,
        }))
    }
}

const BREAKER_VARS: BreakerVars = BreakerVars {
    failure_rate: "KEEL_DB_BREAKER_FAILURE_RATE",
    slow_call_rate: "KEEL_DB_BREAKER_SLOW_CALL_RATE",
    slow_call_duration: "KEEL_DB_BREAKER_SLOW_CALL_DURATION",
    window: "KEEL_DB_BREAKER_WINDOW",
    min_calls: "KEEL_DB_BREAKER_MIN_CALLS",
    cooldown: "KEEL_DB_BREAKER_COOLDOWN",
    half_open_calls: "KEEL_DB_BREAKER_HALF_OPEN_CALLS",
};

/// See [`DatabaseConfig::breaker`].
const BREAKER_DEFAULTS: BreakerSettings = BreakerSettings {
    failure_rate: 0.5,
    slow_call_rate: 1.0,
    slow_call_duration: Duration::from_secs(5),
    window: 50,
    min_calls: 20,
    cooldown: Duration::from_secs(5),
    half_open_calls: 5,
};

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("host", &self.connect.get_host())
            .field("port", &self.connect.get_port())
            .field("database", &self.database_name())
            .field("user", &self.connect.get_username())
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("test_before_acquire", &self.test_before_acquire)
            .field("breaker", &self.breaker)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl DatabaseConfig {
    /// Reads only what a database connection needs (`keel migrate` needs no secrets).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::read(&Vars::new(lookup))
    }

    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        const VAR: &str = "DATABASE_URL";
        let url = vars
            .get(VAR)
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/keel".into());
        let connect = postgres_url(VAR, &url)?;
        let max_connections = vars.range("KEEL_DB_MAX_CONNECTIONS", 20, 1, 1000)?;
        let min_connections = vars.range("KEEL_DB_MIN_CONNECTIONS", 0, 0, 1000)?;
        if min_connections > max_connections {
            return Err(error(
                "KEEL_DB_MIN_CONNECTIONS",
                format!("{min_connections} is above KEEL_DB_MAX_CONNECTIONS ({max_connections})"),
            ));
        }
        Ok(Self {
            connect,
            max_connections,
            min_connections,
            acquire_timeout: vars.duration_range(
                "KEEL_DB_ACQUIRE_TIMEOUT",
                Duration::from_secs(2),
                Duration::from_millis(10),
                Duration::from_secs(60),
            )?,
            test_before_acquire: vars.parse("KEEL_DB_TEST_BEFORE_ACQUIRE", false)?,
            breaker: BreakerSettings::read(vars, &BREAKER_VARS, BREAKER_DEFAULTS)?,
            read: ReadReplicaConfig::read(vars, max_connections)?,
        })
    }

    /// The name of the database the URL points at.
    pub fn database_name(&self) -> &str {
        self.connect.get_database().unwrap_or("postgres")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{refused_var, with_vars};

    fn var_of(pairs: &[(&str, &str)]) -> &'static str {
        refused_var(pairs, DatabaseConfig::read)
    }

    #[test]
    fn defaults_point_at_a_local_keel_database() {
        let db = with_vars(&[], DatabaseConfig::read).unwrap();
        assert_eq!(db.database_name(), "keel");
        assert_eq!(db.connect.get_port(), 5432);
        assert_eq!(db.max_connections, 20);
        assert_eq!(db.min_connections, 0);
        assert_eq!(db.acquire_timeout, Duration::from_secs(2));
        assert!(!db.test_before_acquire);
        assert_eq!(db.breaker, BREAKER_DEFAULTS);
        assert!(
            db.read.is_none(),
            "no replica unless DATABASE_READ_URL is set"
        );
    }

    #[test]
    fn a_read_replica_takes_its_url_and_the_primarys_pool_size_by_default() {
        let db = with_vars(
            &[
                ("KEEL_DB_MAX_CONNECTIONS", "12"),
                ("DATABASE_READ_URL", "postgres://u:pw@replica:5433/keel"),
            ],
            DatabaseConfig::read,
        )
        .unwrap();
        let read = db.read.clone().expect("a replica");
        assert_eq!(read.connect.get_host(), "replica");
        assert_eq!(read.connect.get_port(), 5433);
        assert_eq!(read.max_connections, 12);
        assert_eq!(read.max_lag, Duration::from_secs(5));
        assert_eq!(read.poll, Duration::from_millis(250));
        assert_eq!(read.read_your_writes, Duration::from_secs(30));
        assert!(!format!("{db:?}").contains("pw@"));
        let empty = with_vars(&[("DATABASE_READ_URL", "")], DatabaseConfig::read).unwrap();
        assert!(empty.read.is_none(), "empty counts as unset");
    }

    #[test]
    fn a_read_your_writes_window_shorter_than_the_lag_bound_is_refused() {
        let replica = ("DATABASE_READ_URL", "postgres://replica/keel");
        assert_eq!(
            var_of(&[replica, ("KEEL_DB_READ_YOUR_WRITES_WINDOW", "5s")]),
            "KEEL_DB_READ_YOUR_WRITES_WINDOW",
            "5s is not longer than the default 5s lag bound plus a poll"
        );
        assert_eq!(
            var_of(&[("DATABASE_READ_URL", "mysql://x")]),
            "DATABASE_READ_URL"
        );
        assert_eq!(
            var_of(&[replica, ("KEEL_DB_READ_MAX_LAG", "0s")]),
            "KEEL_DB_READ_MAX_LAG"
        );
        assert_eq!(
            var_of(&[replica, ("KEEL_DB_READ_MAX_CONNECTIONS", "0")]),
            "KEEL_DB_READ_MAX_CONNECTIONS"
        );
    }

    #[test]
    fn the_breaker_is_read_from_its_own_variables() {
        let db = with_vars(
            &[
                ("KEEL_DB_BREAKER_WINDOW", "10"),
                ("KEEL_DB_BREAKER_SLOW_CALL_RATE", "0.5"),
            ],
            DatabaseConfig::read,
        )
        .unwrap();
        assert_eq!(db.breaker.window, 10);
        assert_eq!(
            db.breaker.min_calls, 10,
            "the minimum follows the window down"
        );
        assert_eq!(db.breaker.slow_call_rate, 0.5);
        assert_eq!(
            var_of(&[("KEEL_DB_BREAKER_COOLDOWN", "1h")]),
            "KEEL_DB_BREAKER_COOLDOWN"
        );
    }

    #[test]
    fn each_kind_of_bad_value_names_its_variable() {
        assert_eq!(var_of(&[("DATABASE_URL", "mysql://x")]), "DATABASE_URL");
        assert_eq!(
            var_of(&[("DATABASE_URL", "postgres://h:notaport/db")]),
            "DATABASE_URL"
        );
        assert_eq!(
            var_of(&[("KEEL_DB_MAX_CONNECTIONS", "0")]),
            "KEEL_DB_MAX_CONNECTIONS"
        );
        assert_eq!(
            var_of(&[("KEEL_DB_MAX_CONNECTIONS", "ten")]),
            "KEEL_DB_MAX_CONNECTIONS"
        );
        assert_eq!(
            var_of(&[("KEEL_DB_MIN_CONNECTIONS", "50")]),
            "KEEL_DB_MIN_CONNECTIONS"
        );
        assert_eq!(
            var_of(&[("KEEL_DB_ACQUIRE_TIMEOUT", "soon")]),
            "KEEL_DB_ACQUIRE_TIMEOUT"
        );
        assert_eq!(
            var_of(&[("KEEL_DB_TEST_BEFORE_ACQUIRE", "yes")]),
            "KEEL_DB_TEST_BEFORE_ACQUIRE"
        );
    }

    #[test]
    fn a_bad_url_is_reported_without_its_password() {
        let err = with_vars(
            &[("DATABASE_URL", "postgres://u:hunter2-password@h:badport/db")],
            DatabaseConfig::read,
        )
        .unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'));
        assert!(!line.contains("hunter2"), "{line}");
        assert!(
            line.starts_with("invalid configuration: DATABASE_URL: "),
            "{line}"
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let db = with_vars(
            &[("DATABASE_URL", "postgres://u:hunter2-password@h/db")],
            DatabaseConfig::read,
        )
        .unwrap();
        let printed = format!("{db:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("\"db\""), "{printed}");
    }

    #[test]
    fn from_lookup_reads_through_the_given_lookup() {
        let db = DatabaseConfig::from_lookup(&|var| {
            (var == "DATABASE_URL").then(|| "postgresql://h/other".to_owned())
        })
        .unwrap();
        assert_eq!(db.database_name(), "other");
    }
}
