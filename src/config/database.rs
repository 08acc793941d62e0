//! Postgres: `DATABASE_URL` and the pool's sizes and timeouts.
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
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(error(VAR, "must be a postgres:// or postgresql:// URL"));
        }
        // The URL may carry a password: report the parser's complaint, never the value.
        let connect = PgConnectOptions::from_str(&url)
            .map_err(|e| error(VAR, format!("is not a valid Postgres URL: {e}")))?
            .application_name("keel");
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
