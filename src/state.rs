//! [`AppState`]: what every request handler shares, and nothing else.
//!
//! It holds the clients and keys of the lower layers (config, db, auth, flags, loaders,
//! readiness, telemetry) and imports nothing above them: no handler, no router, no
//! middleware — those are assembled around it in `crate::server`. A capability that
//! lands later (the cache, the jobs) adds a field here and, where handlers need only it,
//! a `FromRef` impl.
//!
//! Handlers and extractors ask for the part they need where that is natural — `State<Db>`,
//! `State<Loaders>`, an extractor bound on `Arc<Keyring>: FromRef<S>` — as axum's own
//! examples do; a handler that needs several parts takes the whole `AppState`.

use std::ops::Deref;
use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::{CursorKey, Keyring, PasswordHasher};
use crate::cache::Cache;
use crate::config::Config;
use crate::db::Db;
use crate::db::replica::Replica;
use crate::flags::Flags;
use crate::jobs::{Broker, Jobs, Mailer, Runner};
use crate::limits::Limiter;
use crate::loaders::{Loaders, Reads};
use crate::readiness::{Need, Readiness};
use crate::resilience::Breaker;
use crate::telemetry;

/// What every request handler shares. Cloning is one `Arc` increment.
#[derive(Clone)]
pub struct AppState(Arc<App>);

pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// Postgres (`KEEL_DB_MAX_CONNECTIONS` connections): the one store of record. Every
    /// statement through it is traced and measured (`db::Db`).
    pub db: Db,
    /// This instance's snapshot of the workshop fix flags.
    pub flags: Flags,
    /// Redis in front of the hot reads. Handlers use it only to invalidate after a
    /// write; reads go through the loaders.
    pub cache: Cache,
    /// The jobs a write records in its transaction (or, with `async_jobs` off, runs in
    /// the request).
    pub jobs: Jobs,
    /// RabbitMQ: the relay and the worker connect through it; readiness probes it.
    pub broker: Broker,
    /// Runs jobs: the worker's handlers, and the naive inline path.
    pub runner: Runner,
    /// Every hot read ("a task with details", "the caller's role"): the strategy, the
    /// cache and their fix flags live there, not in the handlers.
    pub loaders: Loaders,
    /// The rate-limit budgets, in Redis (shared by the fleet) or, while Redis is
    /// unavailable, in process; spent by the rate-limit middleware and by sign-in (per
    /// email).
    pub limiter: Limiter,
    /// Signs and verifies access tokens (current key + one retired key).
    pub tokens: Arc<Keyring>,
    /// argon2id, bounded by a semaphore so that logins cannot starve the runtime.
    pub passwords: PasswordHasher,
    /// Signs pagination cursors.
    pub cursors: CursorKey,
    /// The dependencies `/readyz` probes: Postgres (required), Redis (optional: without
    /// it the service is `degraded` and serves from Postgres), RabbitMQ (optional:
    /// without it writes still succeed and their jobs wait in the outbox), and the SMTP
    /// server when `SMTP_URL` is set (optional: emails wait in their retry queues). A
    /// dependency whose circuit breaker is open is `down`.
    pub readiness: Readiness,
    /// Fires when the process is asked to stop; readiness reports `draining` from then.
    pub shutdown: CancellationToken,
    /// The Prometheus exporter behind `/metrics`; `None` with `KEEL_METRICS_ENABLED=false`.
    pub metrics: Option<PrometheusHandle>,
}

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

impl AppState {
    pub fn new(config: Config, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let tokens = Arc::new(Keyring::new(&config.auth.jwt));
        let passwords = PasswordHasher::new(
            config.auth.password_hash_concurrency,
            config.auth.password_hash_queue_timeout,
        );
        let cursors = CursorKey::derive(config.auth.jwt.secret.expose_secret().as_bytes());
        let metrics = if config.telemetry.metrics_enabled {
            Some(telemetry::metrics::install()?)
        } else {
            None
        };
        let flags = Flags::default();
        // Every dependency's client injects its faults from these switches (the admin API's
        // `/admin/faults`, kept in step with the store by the flag refresher).
        let faults = flags.faults();
        let db = Db::new(
            pool,
            Breaker::new("postgres", config.database.breaker).with_switch(&flags.breaker_switch()),
            faults.clone(),
        );
        let mut readiness = Readiness::default();
        let probe_db = db.clone();
        readiness.register(
            "postgres",
            Need::Required,
            config.http.readiness_timeout,
            move || {
                let db = probe_db.clone();
                async move { db.ping().await }
            },
        );
        // Every breaker follows the `circuit_breaker` fix flag through this switch.
        let breakers = flags.breaker_switch();
        let cache = Cache::new(&config.redis, &breakers, &faults)?;
        let probe_cache = cache.clone();
        readiness.register(
            "redis",
            Need::Optional,
            config.http.readiness_timeout,
            move || {
                let cache = probe_cache.clone();
                async move { cache.ping().await }
            },
        );
        let broker = Broker::new(&config.jobs, &breakers, &faults);
        let probe_broker = broker.clone();
        readiness.register(
            "rabbitmq",
            Need::Optional,
            config.http.readiness_timeout,
            move || {
                let broker = probe_broker.clone();
                async move { broker.probe().await }
            },
        );
        let mailer = Mailer::new(&config.jobs, &breakers, &faults)?;
        if mailer.is_smtp() {
            let probe_mailer = mailer.clone();
            readiness.register(
                "smtp",
                Need::Optional,
                config.http.readiness_timeout,
                move || {
                    let mailer = probe_mailer.clone();
                    async move { mailer.probe().await }
                },
            );
        }
        let mut reads = Reads::new(db.clone(), cache.clone());
        if let Some(read) = &config.database.read {
            let replica = Replica::new(
                read,
                config.database.breaker,
                config.database.acquire_timeout,
                &breakers,
                faults.clone(),
            );
            let probe_replica = replica.clone();
            readiness.register(
                "postgres_replica",
                Need::Optional,
                config.http.readiness_timeout,
                move || {
                    let replica = probe_replica.clone();
                    async move { replica.ping().await }
                },
            );
            reads = reads.with_replica(replica, read.read_your_writes);
        }
        let runner = Runner::new(db.clone(), cache.clone(), mailer, config.jobs.job_timeout);
        Ok(Self(Arc::new(App {
            jobs: Jobs::new(flags.clone(), runner.clone()),
            broker,
            runner,
            loaders: Loaders::new(db.clone(), cache.clone(), flags.clone(), reads),
            limiter: Limiter::new(&config.rate_limit, &config.redis, &cache),
            cache,
            config,
            db,
            flags,
            tokens,
            passwords,
            cursors,
            readiness,
            shutdown,
            metrics,
        })))
    }
}

impl FromRef<AppState> for Db {
    fn from_ref(state: &AppState) -> Self {
        state.db.clone()
    }
}

impl FromRef<AppState> for Arc<Keyring> {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

impl FromRef<AppState> for Loaders {
    fn from_ref(state: &AppState) -> Self {
        state.loaders.clone()
    }
}

impl FromRef<AppState> for Cache {
    fn from_ref(state: &AppState) -> Self {
        state.cache.clone()
    }
}

impl FromRef<AppState> for Jobs {
    fn from_ref(state: &AppState) -> Self {
        state.jobs.clone()
    }
}
