//! Redis and the cache in front of Postgres: `REDIS_URL`, the key prefix, the pool, the
//! timeouts that bound what a slow Redis adds to a request, the cache's TTLs and leases, and
//! the circuit breaker around Redis and the retries of its idempotent calls.
//!
//! Redis is an optional dependency: when it is slow or down, reads are served from Postgres.
//! Every value here is chosen with that in mind — the timeouts are small next to a Postgres
//! read, so that a sick Redis costs a request milliseconds rather than seconds, and the
//! breaker stops paying even those once Redis is plainly failing.
//!
//! Readable on its own ([`RedisConfig::from_lookup`]), like the database section, for code
//! that needs a connection to Redis and nothing else (a test clearing its own prefix, say).

use std::time::Duration;

use deadpool_redis::redis::{ConnectionAddr, IntoConnectionInfo};
use secrecy::{ExposeSecret, SecretString};

use super::resilience::{BreakerSettings, BreakerVars, RetrySettings, RetryVars};
use super::vars::{ConfigError, Vars, error};

const BREAKER_VARS: BreakerVars = BreakerVars {
    failure_rate: "KEEL_REDIS_BREAKER_FAILURE_RATE",
    slow_call_rate: "KEEL_REDIS_BREAKER_SLOW_CALL_RATE",
    slow_call_duration: "KEEL_REDIS_BREAKER_SLOW_CALL_DURATION",
    window: "KEEL_REDIS_BREAKER_WINDOW",
    min_calls: "KEEL_REDIS_BREAKER_MIN_CALLS",
    cooldown: "KEEL_REDIS_BREAKER_COOLDOWN",
    half_open_calls: "KEEL_REDIS_BREAKER_HALF_OPEN_CALLS",
};

/// See [`RedisConfig::breaker`].
const BREAKER_DEFAULTS: BreakerSettings = BreakerSettings {
    failure_rate: 0.5,
    slow_call_rate: 0.8,
    slow_call_duration: Duration::from_millis(25),
    window: 20,
    min_calls: 10,
    cooldown: Duration::from_secs(5),
    half_open_calls: 3,
};

const RETRY_VARS: RetryVars = RetryVars {
    attempts: "KEEL_REDIS_RETRY_ATTEMPTS",
    backoff: "KEEL_REDIS_RETRY_BACKOFF",
    budget_ratio: "KEEL_REDIS_RETRY_BUDGET",
    budget_min_per_sec: "KEEL_REDIS_RETRY_MIN_PER_SEC",
};

/// See [`RedisConfig::retry`].
const RETRY_DEFAULTS: RetrySettings = RetrySettings {
    attempts: 2,
    backoff: Duration::from_millis(5),
    budget_ratio: 0.1,
    budget_min_per_sec: 10,
};

#[derive(Clone)]
pub struct RedisConfig {
    /// `REDIS_URL`: `redis://` or `rediss://` (TLS), checked at start-up by the redis
    /// crate's own parser, so that a URL the pool would refuse stops the process instead of
    /// failing every cache call (`rediss://` among them, in a build without one of
    /// deadpool-redis's TLS features). The default is a local server on the standard port.
    /// The URL may carry a password, so it is a secret, and this struct's `Debug` (written by
    /// hand below) shows only the host and port.
    pub url: SecretString,
    /// `KEEL_REDIS_PREFIX`: the start of every key Keel writes, so that several instances,
    /// environments or test runs can share one server without reading each other's keys
    /// (and a test can delete exactly its own). `keel:` ends in a colon, Redis's usual
    /// namespace separator.
    pub prefix: String,
    /// `KEEL_REDIS_POOL_SIZE`: the pool's ceiling, per process. A Redis command takes well
    /// under a millisecond, so one connection carries thousands of commands a second; 16
    /// covers the concurrent requests of a small instance, and Redis serves commands on one
    /// thread, so more connections would queue there instead of here. Instances × this must
    /// fit the server's `maxclients` (10 000 by default).
    pub pool_size: usize,
    /// `KEEL_REDIS_CONNECT_TIMEOUT`: how long opening a connection may take, at start-up and
    /// whenever the pool replaces one. A second allows for a TLS handshake across zones and
    /// still notices a dead host within one readiness probe.
    pub connect_timeout: Duration,
    /// `KEEL_REDIS_COMMAND_TIMEOUT`: how long one command waits for its response — the
    /// bound on what a slow Redis adds to a request before the request is served from
    /// Postgres instead. A healthy Redis in the same zone answers in well under a
    /// millisecond; 50ms is far past its slowest normal answer and still small next to the
    /// request's own budget.
    pub command_timeout: Duration,
    /// `KEEL_REDIS_POOL_WAIT_TIMEOUT`: how long a request waits for a pooled connection. An
    /// empty pool means Redis is slow or the pool too small; waiting longer than a command
    /// may take would cost more than going to Postgres, so the default matches the command
    /// timeout.
    pub pool_wait_timeout: Duration,
    /// `KEEL_CACHE_TTL`: the life of a cache entry (the cache adds ±10 % jitter so that
    /// entries filled together do not expire together). Writes invalidate entries
    /// explicitly; the TTL is the safety net, the bound on how long a lost invalidation can
    /// leave an entry stale. Five minutes keeps that bound short while a read-heavy key is
    /// loaded from Postgres only a few times an hour.
    pub cache_ttl: Duration,
    /// `KEEL_CACHE_LEASE_TTL`: how long the lease a miss takes lives. While it lives, the
    /// other readers of that key across the fleet wait for its fill instead of loading too:
    /// one load from Postgres per key per lease period. Two seconds is far longer than a
    /// by-id load takes, and short enough that a loader that died holding a lease holds up
    /// its key only briefly.
    pub lease_ttl: Duration,
    /// `KEEL_CACHE_LEASE_WAIT`: how long a reader that finds another's lease waits for the
    /// fill before loading from Postgres itself. 100ms is several by-id loads, so the fill
    /// usually arrives in time, and it caps what a slow or dead lease holder costs each
    /// waiting reader. `0ms` turns waiting off. At most the lease TTL: past the lease's
    /// life, nobody is filling the entry any more.
    pub lease_wait: Duration,
    /// `KEEL_REDIS_BREAKER_*`: the circuit breaker around Redis; while it is open, requests
    /// go straight to Postgres without paying a timeout each. The defaults, for a server
    /// that answers in well under a millisecond behind a 50ms timeout:
    ///
    /// * failure rate one half: a scattering of timeouts leaves the cache in use, while a
    ///   Redis that fails as often as it answers is bypassed;
    /// * a call slower than 25ms (half the command timeout, fifty times a normal answer) is
    ///   slow, and four slow calls in five open the breaker: a Redis that answers that
    ///   slowly costs more than the Postgres read it stands in front of. Four in five, not
    ///   one in two, because an instance starved of CPU sees its own calls as slow, and
    ///   turning its cache off then would add load where there is least room;
    /// * a window of 20 calls, judged from 10: they pass in a fraction of a second under
    ///   load, yet one or two failures never open it alone;
    /// * a cooldown of 5s, about what a Redis restart or failover takes;
    /// * 3 probes half-open: one lucky call does not close it, and three calls are nothing
    ///   to a Redis that is back.
    pub breaker: BreakerSettings,
    /// `KEEL_REDIS_RETRY_*`: how the cache's idempotent calls (reads, invalidations) are
    /// retried when the connection failed (`crate::cache` says which and why). One retry,
    /// after up to 5ms: a dropped connection is replaced in about a round trip, and a
    /// request must not wait longer for the cache than for Postgres. The budget (one call
    /// in ten, plus ten a second) keeps retries from doubling the load on a Redis that is
    /// down.
    pub retry: RetrySettings,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (host, port) = self.host_and_port().unzip();
        f.debug_struct("RedisConfig")
            .field("host", &host)
            .field("port", &port)
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .field("cache_ttl", &self.cache_ttl)
            .field("lease_ttl", &self.lease_ttl)
            .field("lease_wait", &self.lease_wait)
            .field("breaker", &self.breaker)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Reads only this section, through `lookup` (an empty lookup gives the defaults).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::read(&Vars::new(lookup))
    }

    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let redis = Self {
            url: read_url(vars)?,
            prefix: vars.prefix("KEEL_REDIS_PREFIX", "keel:")?,
            pool_size: vars.range("KEEL_REDIS_POOL_SIZE", 16, 1, 1024)?,
            connect_timeout: vars.duration_range(
                "KEEL_REDIS_CONNECT_TIMEOUT",
                secs(1),
                ms(10),
                secs(30),
            )?,
            command_timeout: vars.duration_range(
                "KEEL_REDIS_COMMAND_TIMEOUT",
                ms(50),
                ms(1),
                secs(10),
            )?,
            pool_wait_timeout: vars.duration_range(
                "KEEL_REDIS_POOL_WAIT_TIMEOUT",
                ms(50),
                ms(1),
                secs(10),
            )?,
            cache_ttl: vars.duration_range("KEEL_CACHE_TTL", secs(300), secs(1), secs(86_400))?,
            lease_ttl: vars.duration_range("KEEL_CACHE_LEASE_TTL", secs(2), ms(10), secs(60))?,
            lease_wait: vars.duration_range("KEEL_CACHE_LEASE_WAIT", ms(100), ms(0), secs(10))?,
            breaker: BreakerSettings::read(vars, &BREAKER_VARS, BREAKER_DEFAULTS)?,
            retry: RetrySettings::read(vars, &RETRY_VARS, RETRY_DEFAULTS)?,
        };
        if redis.lease_wait > redis.lease_ttl {
            return Err(error(
                "KEEL_CACHE_LEASE_WAIT",
                format!(
                    "{} is above KEEL_CACHE_LEASE_TTL ({}); past the lease's life nobody is filling the entry",
                    humantime::format_duration(redis.lease_wait),
                    humantime::format_duration(redis.lease_ttl)
                ),
            ));
        }
        Ok(redis)
    }

    /// The host and port `url` points at: what `Debug` may show of a URL that may carry a
    /// password. `None` only for a URL that [`RedisConfig::read`] would have refused.
    fn host_and_port(&self) -> Option<(String, u16)> {
        let info = self.url.expose_secret().into_connection_info().ok()?;
        match info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                Some((host.clone(), *port))
            }
            _ => None,
        }
    }
}

fn read_url(vars: &Vars<'_>) -> Result<SecretString, ConfigError> {
    const VAR: &str = "REDIS_URL";
    let url = vars
        .get(VAR)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    // The redis crate also takes `valkey://` and `unix://`; Keel documents (and its
    // deployments use) a TCP connection to Redis, so anything else is a mistake.
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(error(VAR, "must be a redis:// or rediss:// URL"));
    }
    // The URL may carry a password: report the parser's complaint, never the value.
    // `rediss://` is refused here too when the redis crate was built without TLS.
    url.as_str()
        .into_connection_info()
        .map_err(|e| error(VAR, format!("is not a valid Redis URL: {e}")))?;
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{MAX_PREFIX_BYTES, refused_var, with_vars};

    fn var_of(pairs: &[(&str, &str)]) -> &'static str {
        refused_var(pairs, RedisConfig::read)
    }

    fn read(pairs: &[(&str, &str)]) -> RedisConfig {
        with_vars(pairs, RedisConfig::read).expect("configuration should be accepted")
    }

    #[test]
    fn defaults_point_at_a_local_redis_with_the_documented_values() {
        let redis = read(&[]);
        assert_eq!(redis.url.expose_secret(), "redis://127.0.0.1:6379");
        assert_eq!(redis.prefix, "keel:");
        assert_eq!(redis.pool_size, 16);
        assert_eq!(redis.connect_timeout, Duration::from_secs(1));
        assert_eq!(redis.command_timeout, Duration::from_millis(50));
        assert_eq!(redis.pool_wait_timeout, Duration::from_millis(50));
        assert_eq!(redis.cache_ttl, Duration::from_secs(300));
        assert_eq!(redis.lease_ttl, Duration::from_secs(2));
        assert_eq!(redis.lease_wait, Duration::from_millis(100));
        assert_eq!(redis.breaker, BREAKER_DEFAULTS);
        assert_eq!(redis.breaker.failure_rate, 0.5);
        assert_eq!(redis.breaker.window, 20);
        assert_eq!(redis.breaker.min_calls, 10);
        assert_eq!(redis.breaker.cooldown, Duration::from_secs(5));
        assert_eq!(redis.retry, RETRY_DEFAULTS);
    }

    #[test]
    fn empty_values_count_as_unset() {
        let redis = read(&[("REDIS_URL", ""), ("KEEL_REDIS_PREFIX", "")]);
        assert_eq!(redis.url.expose_secret(), "redis://127.0.0.1:6379");
        assert_eq!(redis.prefix, "keel:");
    }

    #[test]
    fn each_kind_of_bad_value_names_its_variable() {
        let long_prefix = "k".repeat(MAX_PREFIX_BYTES + 1);
        let refused = [
            ("REDIS_URL", "postgres://h:5432/db"),
            ("REDIS_URL", "unix:///tmp/redis.sock"),
            ("REDIS_URL", "redis://h:notaport"),
            ("REDIS_URL", "redis://h:6379/notadb"),
            ("REDIS_URL", "redis://0.0.0.0:6379"),
            ("REDIS_URL", "redis://h:6379/?protocol=resp9"),
            ("KEEL_REDIS_PREFIX", "two words:"),
            ("KEEL_REDIS_PREFIX", "tab\t"),
            ("KEEL_REDIS_PREFIX", "clé:"),
            ("KEEL_REDIS_PREFIX", &long_prefix),
            ("KEEL_REDIS_POOL_SIZE", "0"),
            ("KEEL_REDIS_POOL_SIZE", "1025"),
            ("KEEL_REDIS_POOL_SIZE", "many"),
            ("KEEL_REDIS_CONNECT_TIMEOUT", "9ms"),
            ("KEEL_REDIS_CONNECT_TIMEOUT", "31s"),
            ("KEEL_REDIS_CONNECT_TIMEOUT", "1"),
            ("KEEL_REDIS_COMMAND_TIMEOUT", "0ms"),
            ("KEEL_REDIS_COMMAND_TIMEOUT", "11s"),
            ("KEEL_REDIS_COMMAND_TIMEOUT", "fast"),
            ("KEEL_REDIS_POOL_WAIT_TIMEOUT", "0ms"),
            ("KEEL_REDIS_POOL_WAIT_TIMEOUT", "11s"),
            ("KEEL_REDIS_POOL_WAIT_TIMEOUT", "-1s"),
            ("KEEL_CACHE_TTL", "999ms"),
            ("KEEL_CACHE_TTL", "25h"),
            ("KEEL_CACHE_TTL", "forever"),
            ("KEEL_CACHE_LEASE_TTL", "9ms"),
            ("KEEL_CACHE_LEASE_TTL", "61s"),
            ("KEEL_CACHE_LEASE_TTL", "2"),
            ("KEEL_CACHE_LEASE_WAIT", "11s"),
            ("KEEL_CACHE_LEASE_WAIT", "soon"),
            ("KEEL_REDIS_BREAKER_FAILURE_RATE", "0"),
            ("KEEL_REDIS_BREAKER_FAILURE_RATE", "1.01"),
            ("KEEL_REDIS_BREAKER_FAILURE_RATE", "-0.5"),
            ("KEEL_REDIS_BREAKER_FAILURE_RATE", "NaN"),
            ("KEEL_REDIS_BREAKER_FAILURE_RATE", "50%"),
            ("KEEL_REDIS_BREAKER_WINDOW", "1"),
            ("KEEL_REDIS_BREAKER_WINDOW", "1001"),
            ("KEEL_REDIS_BREAKER_WINDOW", "twenty"),
            ("KEEL_REDIS_BREAKER_COOLDOWN", "99ms"),
            ("KEEL_REDIS_BREAKER_COOLDOWN", "11m"),
            ("KEEL_REDIS_BREAKER_COOLDOWN", "5"),
            ("KEEL_REDIS_BREAKER_SLOW_CALL_RATE", "0"),
            ("KEEL_REDIS_BREAKER_SLOW_CALL_DURATION", "0ms"),
            ("KEEL_REDIS_BREAKER_MIN_CALLS", "21"),
            ("KEEL_REDIS_BREAKER_HALF_OPEN_CALLS", "0"),
            ("KEEL_REDIS_RETRY_ATTEMPTS", "0"),
            ("KEEL_REDIS_RETRY_BACKOFF", "soon"),
            ("KEEL_REDIS_RETRY_BUDGET", "2"),
            ("KEEL_REDIS_RETRY_MIN_PER_SEC", "-1"),
        ];
        for (var, value) in refused {
            assert_eq!(var_of(&[(var, value)]), var, "{var}={value:?}");
        }
    }

    #[test]
    fn the_bounds_are_inclusive() {
        let longest_prefix = "k".repeat(MAX_PREFIX_BYTES);
        let redis = read(&[
            (
                "REDIS_URL",
                "redis://user:pw@cache.internal:6380/2?protocol=resp3",
            ),
            ("KEEL_REDIS_PREFIX", &longest_prefix),
            ("KEEL_REDIS_POOL_SIZE", "1024"),
            ("KEEL_REDIS_CONNECT_TIMEOUT", "10ms"),
            ("KEEL_REDIS_COMMAND_TIMEOUT", "10s"),
            ("KEEL_REDIS_POOL_WAIT_TIMEOUT", "1ms"),
            ("KEEL_CACHE_TTL", "1d"),
            ("KEEL_CACHE_LEASE_TTL", "60s"),
            ("KEEL_CACHE_LEASE_WAIT", "0ms"),
            ("KEEL_REDIS_BREAKER_FAILURE_RATE", "1"),
            ("KEEL_REDIS_BREAKER_WINDOW", "2"),
            ("KEEL_REDIS_BREAKER_MIN_CALLS", "2"),
            ("KEEL_REDIS_BREAKER_COOLDOWN", "10m"),
        ]);
        assert_eq!(redis.prefix.len(), MAX_PREFIX_BYTES);
        assert_eq!(redis.pool_size, 1024);
        assert_eq!(redis.cache_ttl, Duration::from_secs(86_400));
        assert_eq!(redis.lease_wait, Duration::ZERO);
        assert_eq!(redis.breaker.failure_rate, 1.0);
        assert_eq!(redis.breaker.cooldown, Duration::from_secs(600));
    }

    #[test]
    fn a_lease_wait_longer_than_the_lease_is_refused() {
        let err = with_vars(
            &[
                ("KEEL_CACHE_LEASE_TTL", "100ms"),
                ("KEEL_CACHE_LEASE_WAIT", "101ms"),
            ],
            RedisConfig::read,
        )
        .unwrap_err();
        assert_eq!(err.var, "KEEL_CACHE_LEASE_WAIT");
        assert!(
            err.message
                .starts_with("101ms is above KEEL_CACHE_LEASE_TTL (100ms)"),
            "{}",
            err.message
        );

        let equal = read(&[
            ("KEEL_CACHE_LEASE_TTL", "100ms"),
            ("KEEL_CACHE_LEASE_WAIT", "100ms"),
        ]);
        assert_eq!(equal.lease_wait, equal.lease_ttl);
    }

    #[test]
    fn a_bad_url_is_reported_without_its_password() {
        let err = with_vars(
            &[("REDIS_URL", "redis://:hunter2-password@h:badport")],
            RedisConfig::read,
        )
        .unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'));
        assert!(!line.contains("hunter2"), "{line}");
        assert!(
            line.starts_with("invalid configuration: REDIS_URL: "),
            "{line}"
        );
    }

    #[test]
    fn debug_output_shows_host_and_port_but_not_the_password() {
        let redis = read(&[("REDIS_URL", "redis://:secret@host:6379")]);
        let printed = format!("{redis:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("\"host\""), "{printed}");
        assert!(printed.contains("6379"), "{printed}");
    }

    #[test]
    fn from_lookup_reads_through_the_given_lookup() {
        let redis = RedisConfig::from_lookup(&|var| {
            (var == "KEEL_REDIS_PREFIX").then(|| "test-42:".to_owned())
        })
        .unwrap();
        assert_eq!(redis.prefix, "test-42:");
    }
}
