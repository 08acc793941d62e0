//! One typed [`Config`], read from the environment and validated before anything starts.
//!
//! Every tunable is a named variable with a documented default (the README's configuration
//! table lists them, and `tests/api/config_docs.rs` fails when the table and the code
//! disagree). A bad value stops the process with one line that names the variable — never
//! a panic, never a value silently replaced by its default. Secrets are wrapped in
//! [`SecretString`](secrecy::SecretString) so that `Debug` output and logs cannot print
//! them, and error messages never echo a secret's value.
//!
//! # Layout
//!
//! One file per section, each reading and validating its own variables in a
//! `read(&Vars, …)` and holding its own tests: `log.rs` ([`LogConfig`]), `telemetry.rs`
//! ([`TelemetryConfig`]: metrics, traces, sampler), `database.rs` ([`DatabaseConfig`]),
//! `http.rs` ([`HttpConfig`]: listeners, limits, shutdown), `auth.rs` ([`AuthConfig`]: JWT
//! keys, admin token, password hashing), `flags.rs` ([`FlagsConfig`]) `redis.rs`
//! ([`RedisConfig`]: Redis, the cache's TTLs and leases, the breaker around Redis) and
//! `jobs.rs` ([`JobsConfig`]: RabbitMQ, the relay, the worker's retries, the mail transport).
//! `rate_limit.rs` ([`RateLimitConfig`]: the rate-limit budgets and their fallback's bounds).
//! `resilience.rs` ([`BreakerSettings`], [`RetrySettings`]) is not a section but the reader
//! that every dependency's section uses for its circuit breaker and its retries.
//! `idempotency.rs` ([`IdempotencyConfig`]: how long idempotency keys live, how long a
//! duplicate waits for the first request).
//! `vars.rs` is the reader they share (empty counts as unset, ranges, durations, secrets);
//! this file composes the sections. They are read in a fixed order (environment, log,
//! telemetry, http, auth, flags, database, redis, jobs) and the first bad value wins. No check
//! spans two sections today (the admin token differing from the JWT secret involves only
//! `auth`); one that must would go in [`Config::from_lookup`].
//!
//! # Why a hand-written reader
//!
//! The reader takes a lookup function instead of reading `std::env` directly, so that tests
//! build configurations from a map without mutating the process environment (which is
//! `unsafe` in edition 2024 and racy across test threads). Before splitting it, a
//! well-kept crate was weighed, and the ~100 lines of `vars.rs` kept:
//!
//! * clap's `env` feature (already a dependency) reads the environment while the `Command`
//!   is built (`Arg::env` calls `std::env::var_os`), so no test could pass a map: every
//!   test here goes through a lookup function.
//! * clap passes an empty variable on as a value (its parser's `add_env` forwards it),
//!   while Keel's documented rule is "empty counts as unset": compose and Kubernetes files
//!   write `VAR=` to mean "the default".
//! * clap's errors are several lines and name the flag; Keel's contract is one line that
//!   names the variable.
//! * figment would bring a dependency tree (pear, uncased, …) and a humantime serde
//!   adapter for what these lines do, and its errors name key paths, not variables.
//!
//! What is given up: `keel <role> --help` does not list the variables with their defaults.
//! The README's configuration table does, and a test holds it to the code.

use std::collections::HashMap;

mod auth;
mod database;
mod flags;
mod guardrails;
mod http;
mod idempotency;
mod jobs;
mod log;
mod rate_limit;
mod redis;
mod resilience;
mod telemetry;
mod vars;

pub use auth::{AuthConfig, DEV_ADMIN_TOKEN, DEV_JWT_SECRET, JwtConfig};
pub use database::{DatabaseConfig, ReadReplicaConfig};
pub use flags::FlagsConfig;
pub use guardrails::{
    Criticality, CriticalityOverride, GuardrailsConfig, LimitSettings, RouteClass, SheddingConfig,
};
pub use http::HttpConfig;
pub use idempotency::IdempotencyConfig;
pub use jobs::JobsConfig;
pub use log::{LogConfig, LogFormat};
pub use rate_limit::{Budget, RateLimitConfig, RateLimitPolicy};
pub use redis::RedisConfig;
pub use resilience::{BreakerSettings, RetrySettings};
pub use telemetry::{Sampler, TelemetryConfig, TracesConfig};

pub use vars::{ConfigError, Environment};

use vars::{Vars, process_env};

/// The whole configuration of a serving process.
#[derive(Debug, Clone)]
pub struct Config {
    pub env: Environment,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub jobs: JobsConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub flags: FlagsConfig,
    pub guardrails: GuardrailsConfig,
    pub idempotency: IdempotencyConfig,
    pub rate_limit: RateLimitConfig,
}

impl Config {
    /// Reads the process environment. `default_env` is the `KEEL_ENV` that applies when
    /// the variable is unset: `dev` for `keel all`, `prod` for every other role.
    pub fn from_env(default_env: Environment) -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env, default_env)
    }

    /// Reads variables through `lookup` (tests pass a map).
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
        default_env: Environment,
    ) -> Result<Self, ConfigError> {
        let vars = Vars::new(lookup);
        let env = vars.parse("KEEL_ENV", default_env)?;
        let log = LogConfig::read(&vars)?;
        let telemetry = TelemetryConfig::read(&vars)?;
        let http = HttpConfig::read(&vars)?;
        let auth = AuthConfig::read(&vars, env)?;
        let flags = FlagsConfig::read(&vars)?;
        let database = DatabaseConfig::read(&vars)?;
        let redis = RedisConfig::read(&vars)?;
        let jobs = JobsConfig::read(&vars)?;
        let guardrails = GuardrailsConfig::read(&vars)?;
        let idempotency = IdempotencyConfig::read(&vars)?;
        let rate_limit = RateLimitConfig::read(&vars)?;
        Ok(Self {
            env,
            log,
            telemetry,
            database,
            redis,
            jobs,
            http,
            auth,
            flags,
            guardrails,
            idempotency,
            rate_limit,
        })
    }

    /// A configuration from a map of variables: the tests' entry point.
    pub fn from_map(
        vars: &HashMap<String, String>,
        default_env: Environment,
    ) -> Result<Self, ConfigError> {
        Self::from_lookup(&|k| vars.get(k).cloned(), default_env)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn config(pairs: &[(&str, &str)], default_env: Environment) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&map, default_env)
    }

    #[test]
    fn defaults_serve_a_local_dev_run() {
        let c = config(&[], Environment::Dev).expect("defaults are valid in dev");
        assert_eq!(c.env, Environment::Dev);
        assert_eq!(c.http.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.http.admin_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.http.max_body_bytes, 65536);
        assert_eq!(c.database.database_name(), "keel");
        assert_eq!(c.auth.jwt.secret.expose_secret(), DEV_JWT_SECRET);
    }

    #[test]
    fn prod_accepts_strong_secrets() {
        let c = config(
            &[
                ("KEEL_JWT_SECRET", "a-production-secret-that-is-long-enough"),
                (
                    "KEEL_ADMIN_TOKEN",
                    "an-admin-token-that-is-also-long-enough",
                ),
            ],
            Environment::Prod,
        )
        .expect("strong secrets are accepted in prod");
        assert_eq!(c.env, Environment::Prod);
    }

    #[test]
    fn keel_env_overrides_the_role_default() {
        let err = config(&[("KEEL_ENV", "prod")], Environment::Dev).unwrap_err();
        assert_eq!(err.var, "KEEL_JWT_SECRET");
        assert!(config(&[("KEEL_ENV", "dev")], Environment::Prod).is_ok());
    }

    #[test]
    fn a_bad_environment_names_its_variable() {
        let err = config(&[("KEEL_ENV", "staging")], Environment::Dev).unwrap_err();
        assert_eq!(err.var, "KEEL_ENV");
    }

    #[test]
    fn every_section_is_read_and_the_first_bad_value_wins() {
        // Each section's own tests cover its variables; this one proves that the sections
        // are wired in, in the documented order.
        let bad = [
            ("KEEL_LOG_FORMAT", "xml"),
            ("KEEL_METRICS_ENABLED", "maybe"),
            ("KEEL_HTTP_ADDR", "localhost"),
            ("KEEL_JWT_TTL", "1s"),
            ("KEEL_FLAGS_POLL_INTERVAL", "10s"),
            ("KEEL_DB_MAX_CONNECTIONS", "0"),
            ("KEEL_REDIS_POOL_SIZE", "0"),
        ];
        for first in 0..bad.len() {
            let err = config(&bad[first..], Environment::Dev).unwrap_err();
            assert_eq!(err.var, bad[first].0);
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let c = config(
            &[
                ("DATABASE_URL", "postgres://u:hunter2-password@h/db"),
                ("REDIS_URL", "redis://:hunter2-password@h:6379"),
            ],
            Environment::Dev,
        )
        .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains(DEV_JWT_SECRET));
        assert!(!printed.contains(DEV_ADMIN_TOKEN));
        assert!(!printed.contains("hunter2"));
    }
}
