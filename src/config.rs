//! One typed [`Config`], read from the environment and validated before anything starts.
//!
//! Every tunable is a named variable with a documented default (the README's configuration
//! table mirrors this file). A bad value stops the process with one line that names the
//! variable — never a panic, never a value silently replaced by its default. Secrets are
//! wrapped in [`SecretString`] so that `Debug` output and logs cannot print them, and error
//! messages never echo a secret's value.
//!
//! The reader takes a lookup function instead of reading `std::env` directly, so that tests
//! build configurations from a map without mutating the process environment (which is
//! `unsafe` in edition 2024 and racy across test threads).

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

/// The development JWT secret: accepted only with `KEEL_ENV=dev`.
pub const DEV_JWT_SECRET: &str = "keel-dev-jwt-secret-never-use-in-production-0123456789";
/// The development admin token: accepted only with `KEEL_ENV=dev`.
pub const DEV_ADMIN_TOKEN: &str = "keel-dev-admin-token";
/// Secrets shorter than this are refused in production (HS256 wants at least 256 bits).
const MIN_SECRET_BYTES: usize = 32;

/// Where the process runs. `prod` refuses the development secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Dev,
    Prod,
}

impl FromStr for Environment {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dev" => Ok(Self::Dev),
            "prod" => Ok(Self::Prod),
            _ => Err("expected `dev` or `prod`"),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for a log pipeline.
    Json,
}

impl FromStr for LogFormat {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected `text` or `json`"),
        }
    }
}

/// A configuration value that cannot be used, with the variable that holds it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it, in one line.
    pub message: String,
}

fn error(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// The whole configuration of a serving process.
#[derive(Debug, Clone)]
pub struct Config {
    pub env: Environment,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub flags: FlagsConfig,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `RUST_LOG`: an `EnvFilter` directive.
    pub filter: String,
    /// `KEEL_LOG_FORMAT`.
    pub format: LogFormat,
}

/// Metrics and traces.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `KEEL_METRICS_ENABLED`: serve Prometheus metrics on the admin listener's `/metrics`.
    /// On by default; off only to measure what metrics cost.
    pub metrics_enabled: bool,
    /// Trace export, from the standard `OTEL_*` variables; `None` when no OTLP endpoint is
    /// set: then no exporter and no OpenTelemetry layer run at all (no cost).
    pub traces: Option<TracesConfig>,
}

/// Where and how traces are exported (OTLP over gRPC).
#[derive(Debug, Clone)]
pub struct TracesConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    /// `OTEL_SERVICE_NAME` (default `keel`).
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`).
    pub sampler: Sampler,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans buffered for export. Keel's default (16 384, not
    /// the SDK's 2 048) holds about a second of spans at 15 000 spans/s, which a 2-core
    /// instance produces under load; past it, spans are dropped rather than requests slowed.
    pub span_queue_size: usize,
}

/// The samplers of the OpenTelemetry specification's `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl TelemetryConfig {
    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let endpoint = vars
            .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|e| ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e))
            .or_else(|| {
                vars.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e))
            });
        let traces = match endpoint {
            None => None,
            Some((var, endpoint)) => {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(error(
                        var,
                        format!("{endpoint:?} is not an http:// or https:// URL"),
                    ));
                }
                Some(TracesConfig {
                    endpoint,
                    service_name: vars
                        .get("OTEL_SERVICE_NAME")
                        .unwrap_or_else(|| "keel".into()),
                    sampler: Sampler::read(vars)?,
                    span_queue_size: vars.range("OTEL_BSP_MAX_QUEUE_SIZE", 16_384, 512, 1 << 20)?,
                })
            }
        };
        Ok(Self {
            metrics_enabled: vars.parse("KEEL_METRICS_ENABLED", true)?,
            traces,
        })
    }
}

impl Sampler {
    /// The SDK reads these variables too, but falls back to its default on a typo with
    /// only a log line; here a typo stops start-up like any other bad value.
    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let ratio = || -> Result<f64, ConfigError> {
            const VAR: &str = "OTEL_TRACES_SAMPLER_ARG";
            let raw = vars.get(VAR).unwrap_or_else(|| "1.0".into());
            match raw.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(error(VAR, format!("{raw:?} is not a ratio from 0 to 1"))),
            }
        };
        match vars.get("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => Ok(Self::ParentBasedAlwaysOn),
            Some("always_on") => Ok(Self::AlwaysOn),
            Some("always_off") => Ok(Self::AlwaysOff),
            Some("traceidratio") => Ok(Self::TraceIdRatio(ratio()?)),
            Some("parentbased_always_off") => Ok(Self::ParentBasedAlwaysOff),
            Some("parentbased_traceidratio") => Ok(Self::ParentBasedTraceIdRatio(ratio()?)),
            Some(other) => Err(error(
                "OTEL_TRACES_SAMPLER",
                format!(
                    "{other:?} is not a sampler (always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio)"
                ),
            )),
        }
    }
}

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
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `KEEL_HTTP_ADDR`: the public listener.
    pub addr: SocketAddr,
    /// `KEEL_ADMIN_ADDR`: the admin listener (health, readiness, metrics, flags).
    pub admin_addr: SocketAddr,
    /// `KEEL_MAX_BODY_BYTES`: larger request bodies get 413.
    pub max_body_bytes: usize,
    /// `KEEL_COMPRESSION_MIN_BYTES`: smaller responses are sent uncompressed. Below about
    /// a packet, gzip costs CPU on both ends and saves no round trip (profiled: deflate was
    /// a visible share of the CPU of `GET /v1/tasks/{id}` under load with tower-http's
    /// 32-byte default).
    pub compression_min_bytes: u64,
    /// `KEEL_SHUTDOWN_DELAY`: after SIGTERM, how long `/readyz` reports 503 while the
    /// listeners still accept, so that a load balancer stops routing here before the
    /// listeners close (0 locally; a few seconds behind Kubernetes endpoints).
    pub shutdown_delay: Duration,
    /// `KEEL_SHUTDOWN_TIMEOUT`: the deadline for in-flight requests once the listeners
    /// have stopped accepting; whatever is still running then is dropped.
    pub shutdown_timeout: Duration,
    /// `KEEL_READINESS_TIMEOUT`: how long `/readyz` waits for each dependency.
    pub readiness_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt: JwtConfig,
    /// `KEEL_ADMIN_TOKEN`: the bearer token of the admin API.
    pub admin_token: SecretString,
    /// `KEEL_PASSWORD_HASH_CONCURRENCY`: argon2 runs at most this many hashes at once. Each
    /// takes ~19 MiB and tens of milliseconds of one core, so a burst of logins queues here
    /// instead of starving the runtime's blocking pool and the machine's memory.
    pub password_hash_concurrency: usize,
    /// `KEEL_PASSWORD_HASH_QUEUE_TIMEOUT`: how long a login or sign-up waits for a hashing
    /// slot before it is shed with 503.
    pub password_hash_queue_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `KEEL_JWT_SECRET`: signs new tokens.
    pub secret: SecretString,
    /// `KEEL_JWT_KID`: the key id written in the header of new tokens.
    pub kid: String,
    /// `KEEL_JWT_PREVIOUS_SECRET` / `KEEL_JWT_PREVIOUS_KID`: a retired key that still
    /// verifies tokens during a rotation (see the README's "rotating the JWT secret").
    pub previous: Option<(String, SecretString)>,
    /// `KEEL_JWT_TTL`: lifetime of an access token.
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct FlagsConfig {
    /// `KEEL_FLAGS_POLL_INTERVAL`: how often the flag snapshot is re-read when no
    /// notification arrives (the fallback behind LISTEN/NOTIFY). At most 5 s: the contract
    /// promises a change reaches every instance within 5 s.
    pub poll_interval: Duration,
}

/// Reads variables through a lookup function; empty values count as unset.
struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.is_empty())
    }

    fn parse<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| error(var, format!("{raw:?} is not valid: {e}"))),
        }
    }

    fn duration(&self, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => humantime::parse_duration(&raw).map_err(|e| {
                error(
                    var,
                    format!("{raw:?} is not a duration ({e}); write e.g. 500ms, 5s, 1m"),
                )
            }),
        }
    }

    fn range<T>(&self, var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let value = self.parse(var, default)?;
        if value < min || value > max {
            return Err(error(var, format!("{value} is out of range {min}..={max}")));
        }
        Ok(value)
    }

    fn duration_range(
        &self,
        var: &'static str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let value = self.duration(var, default)?;
        if value < min || value > max {
            return Err(error(
                var,
                format!(
                    "{} is out of range {}..={}",
                    humantime::format_duration(value),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ));
        }
        Ok(value)
    }

    /// A secret: the development default is used only in `dev`; in `prod` it must be set,
    /// long enough, and not the development value. The value is never echoed.
    fn secret(
        &self,
        var: &'static str,
        env: Environment,
        dev_default: &str,
    ) -> Result<SecretString, ConfigError> {
        match (self.get(var), env) {
            (None, Environment::Dev) => Ok(dev_default.into()),
            (None, Environment::Prod) => Err(error(
                var,
                "must be set when KEEL_ENV=prod (the development default is refused)",
            )),
            (Some(v), Environment::Prod) if v == dev_default => Err(error(
                var,
                "is the development default, which is refused when KEEL_ENV=prod",
            )),
            (Some(v), Environment::Prod) if v.len() < MIN_SECRET_BYTES => Err(error(
                var,
                format!(
                    "is shorter than {MIN_SECRET_BYTES} bytes, which is refused when KEEL_ENV=prod"
                ),
            )),
            (Some(v), _) => Ok(v.into()),
        }
    }
}

fn key_id(var: &'static str, raw: String) -> Result<String, ConfigError> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(raw)
    } else {
        Err(error(
            var,
            format!("{raw:?} is not a key id (1-64 of A-Z a-z 0-9 . _ -)"),
        ))
    }
}

impl LogConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Vars {
            lookup: &|k| std::env::var(k).ok(),
        })
    }

    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let log = LogConfig {
            filter: vars.get("RUST_LOG").unwrap_or_else(|| "info".into()),
            format: vars.parse("KEEL_LOG_FORMAT", LogFormat::Text)?,
        };
        // Checked here rather than at subscriber start-up so that a bad filter is one line
        // naming the variable, like every other bad value.
        tracing_subscriber::EnvFilter::try_new(&log.filter)
            .map_err(|e| error("RUST_LOG", format!("{:?} is not a filter: {e}", log.filter)))?;
        Ok(log)
    }
}

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
            .finish_non_exhaustive()
    }
}

impl DatabaseConfig {
    /// Reads only what a database connection needs (`keel migrate` needs no secrets).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::read(&Vars { lookup })
    }

    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
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
        })
    }

    /// The name of the database the URL points at.
    pub fn database_name(&self) -> &str {
        self.connect.get_database().unwrap_or("postgres")
    }
}

impl Config {
    /// Reads the process environment. `default_env` is the `KEEL_ENV` that applies when
    /// the variable is unset: `dev` for `keel all`, `prod` for every other role.
    pub fn from_env(default_env: Environment) -> Result<Self, ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok(), default_env)
    }

    /// Reads variables through `lookup` (tests pass a map).
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
        default_env: Environment,
    ) -> Result<Self, ConfigError> {
        let vars = Vars { lookup };
        let env = vars.parse("KEEL_ENV", default_env)?;
        let log = LogConfig::read(&vars)?;
        let telemetry = TelemetryConfig::read(&vars)?;

        let http = HttpConfig {
            addr: vars.parse("KEEL_HTTP_ADDR", SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            admin_addr: vars.parse("KEEL_ADMIN_ADDR", SocketAddr::from(([127, 0, 0, 1], 9000)))?,
            max_body_bytes: vars.range("KEEL_MAX_BODY_BYTES", 64 * 1024, 1024, 64 * 1024 * 1024)?,
            compression_min_bytes: vars.range("KEEL_COMPRESSION_MIN_BYTES", 1024, 0, 1 << 20)?,
            shutdown_delay: vars.duration_range(
                "KEEL_SHUTDOWN_DELAY",
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(60),
            )?,
            shutdown_timeout: vars.duration_range(
                "KEEL_SHUTDOWN_TIMEOUT",
                Duration::from_secs(20),
                Duration::from_millis(100),
                Duration::from_secs(600),
            )?,
            readiness_timeout: vars.duration_range(
                "KEEL_READINESS_TIMEOUT",
                Duration::from_secs(1),
                Duration::from_millis(10),
                Duration::from_secs(30),
            )?,
        };
        if http.addr == http.admin_addr && http.addr.port() != 0 {
            return Err(error(
                "KEEL_ADMIN_ADDR",
                format!(
                    "{} is also KEEL_HTTP_ADDR; the admin listener must be separate",
                    http.addr
                ),
            ));
        }

        let previous = match vars.get("KEEL_JWT_PREVIOUS_SECRET") {
            None => None,
            Some(_) => {
                let kid = vars.get("KEEL_JWT_PREVIOUS_KID").ok_or_else(|| {
                    error(
                        "KEEL_JWT_PREVIOUS_KID",
                        "must be set when KEEL_JWT_PREVIOUS_SECRET is",
                    )
                })?;
                let kid = key_id("KEEL_JWT_PREVIOUS_KID", kid)?;
                // Same rules as the current secret: a retired key still verifies tokens.
                let secret = vars.secret("KEEL_JWT_PREVIOUS_SECRET", env, "")?;
                Some((kid, secret))
            }
        };
        let jwt = JwtConfig {
            secret: vars.secret("KEEL_JWT_SECRET", env, DEV_JWT_SECRET)?,
            kid: key_id(
                "KEEL_JWT_KID",
                vars.get("KEEL_JWT_KID").unwrap_or_else(|| "k1".into()),
            )?,
            previous,
            ttl: vars.duration_range(
                "KEEL_JWT_TTL",
                Duration::from_secs(3600),
                Duration::from_secs(60),
                Duration::from_secs(7 * 24 * 3600),
            )?,
        };
        if let Some((kid, _)) = &jwt.previous
            && *kid == jwt.kid
        {
            return Err(error(
                "KEEL_JWT_PREVIOUS_KID",
                format!("{kid:?} is also KEEL_JWT_KID; a retired key needs its own id"),
            ));
        }
        let admin_token = vars.secret("KEEL_ADMIN_TOKEN", env, DEV_ADMIN_TOKEN)?;
        if admin_token.expose_secret() == jwt.secret.expose_secret() {
            return Err(error(
                "KEEL_ADMIN_TOKEN",
                "must differ from KEEL_JWT_SECRET (an admin token is not a signing key)",
            ));
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let auth = AuthConfig {
            jwt,
            admin_token,
            password_hash_concurrency: vars.range(
                "KEEL_PASSWORD_HASH_CONCURRENCY",
                cores,
                1,
                256,
            )?,
            password_hash_queue_timeout: vars.duration_range(
                "KEEL_PASSWORD_HASH_QUEUE_TIMEOUT",
                Duration::from_secs(2),
                Duration::from_millis(1),
                Duration::from_secs(60),
            )?,
        };

        let flags = FlagsConfig {
            poll_interval: vars.duration_range(
                "KEEL_FLAGS_POLL_INTERVAL",
                Duration::from_secs(2),
                Duration::from_millis(100),
                Duration::from_secs(5),
            )?,
        };

        Ok(Self {
            env,
            log,
            telemetry,
            database: DatabaseConfig::read(&vars)?,
            http,
            auth,
            flags,
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
    use super::*;

    fn config(pairs: &[(&str, &str)], default_env: Environment) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&map, default_env)
    }

    fn var_of(pairs: &[(&str, &str)]) -> &'static str {
        config(pairs, Environment::Dev)
            .expect_err("configuration should be refused")
            .var
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
    fn prod_refuses_missing_and_development_secrets() {
        let err = config(&[], Environment::Prod).unwrap_err();
        assert_eq!(err.var, "KEEL_JWT_SECRET");

        let err = config(&[("KEEL_JWT_SECRET", DEV_JWT_SECRET)], Environment::Prod).unwrap_err();
        assert_eq!(err.var, "KEEL_JWT_SECRET");

        let strong = "a-production-secret-that-is-long-enough";
        let err = config(&[("KEEL_JWT_SECRET", strong)], Environment::Prod).unwrap_err();
        assert_eq!(err.var, "KEEL_ADMIN_TOKEN");

        let err = config(
            &[
                ("KEEL_JWT_SECRET", strong),
                ("KEEL_ADMIN_TOKEN", DEV_ADMIN_TOKEN),
            ],
            Environment::Prod,
        )
        .unwrap_err();
        assert_eq!(err.var, "KEEL_ADMIN_TOKEN");

        let err = config(&[("KEEL_JWT_SECRET", "short")], Environment::Prod).unwrap_err();
        assert_eq!(err.var, "KEEL_JWT_SECRET");
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
    fn each_kind_of_bad_value_names_its_variable() {
        assert_eq!(var_of(&[("KEEL_ENV", "staging")]), "KEEL_ENV");
        assert_eq!(var_of(&[("KEEL_LOG_FORMAT", "xml")]), "KEEL_LOG_FORMAT");
        assert_eq!(var_of(&[("RUST_LOG", "keel=loud")]), "RUST_LOG");
        assert_eq!(var_of(&[("KEEL_HTTP_ADDR", "localhost")]), "KEEL_HTTP_ADDR");
        assert_eq!(
            var_of(&[("KEEL_ADMIN_ADDR", "0.0.0.0:8080")]),
            "KEEL_ADMIN_ADDR"
        );
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
        assert_eq!(
            var_of(&[("KEEL_METRICS_ENABLED", "maybe")]),
            "KEEL_METRICS_ENABLED"
        );
        let otel = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert_eq!(
            var_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]),
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        );
        assert_eq!(
            var_of(&[otel, ("OTEL_TRACES_SAMPLER", "always")]),
            "OTEL_TRACES_SAMPLER"
        );
        assert_eq!(
            var_of(&[
                otel,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2")
            ]),
            "OTEL_TRACES_SAMPLER_ARG"
        );
        assert_eq!(
            var_of(&[("KEEL_SHUTDOWN_TIMEOUT", "2h")]),
            "KEEL_SHUTDOWN_TIMEOUT"
        );
        assert_eq!(
            var_of(&[("KEEL_MAX_BODY_BYTES", "-1")]),
            "KEEL_MAX_BODY_BYTES"
        );
        assert_eq!(var_of(&[("KEEL_JWT_TTL", "1s")]), "KEEL_JWT_TTL");
        assert_eq!(var_of(&[("KEEL_JWT_KID", "has space")]), "KEEL_JWT_KID");
        assert_eq!(
            var_of(&[("KEEL_FLAGS_POLL_INTERVAL", "10s")]),
            "KEEL_FLAGS_POLL_INTERVAL"
        );
        assert_eq!(
            var_of(&[("KEEL_JWT_PREVIOUS_SECRET", "old-secret")]),
            "KEEL_JWT_PREVIOUS_KID"
        );
        assert_eq!(
            var_of(&[
                ("KEEL_JWT_PREVIOUS_SECRET", "old"),
                ("KEEL_JWT_PREVIOUS_KID", "k1")
            ]),
            "KEEL_JWT_PREVIOUS_KID"
        );
    }

    #[test]
    fn errors_are_one_line_and_never_echo_secrets() {
        let err = config(
            &[("DATABASE_URL", "postgres://u:hunter2-password@h:badport/db")],
            Environment::Dev,
        )
        .unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'));
        assert!(!line.contains("hunter2"), "{line}");
        assert!(
            line.starts_with("invalid configuration: DATABASE_URL: "),
            "{line}"
        );

        let err = config(&[("KEEL_JWT_SECRET", "tiny-secret")], Environment::Prod).unwrap_err();
        assert!(!err.to_string().contains("tiny-secret"));
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let c = config(
            &[("DATABASE_URL", "postgres://u:hunter2-password@h/db")],
            Environment::Dev,
        )
        .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains(DEV_JWT_SECRET));
        assert!(!printed.contains(DEV_ADMIN_TOKEN));
        assert!(!printed.contains("hunter2"));
    }

    #[test]
    fn traces_are_off_without_an_endpoint_and_follow_the_otel_variables() {
        let off = config(&[], Environment::Dev).unwrap();
        assert!(off.telemetry.traces.is_none());
        assert!(off.telemetry.metrics_enabled);
        let on = config(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_SERVICE_NAME", "keel-api"),
            ],
            Environment::Dev,
        )
        .unwrap();
        let traces = on.telemetry.traces.unwrap();
        assert_eq!(traces.sampler, Sampler::ParentBasedTraceIdRatio(0.25));
        assert_eq!(traces.service_name, "keel-api");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = config(&[("KEEL_HTTP_ADDR", "")], Environment::Dev).unwrap();
        assert_eq!(c.http.addr.port(), 8080);
    }
}
