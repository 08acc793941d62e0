//! [`AppState`] and [`Application`]: building the service and running it until it is told
//! to stop.
//!
//! `Application::build` binds both listeners (port 0 works: tests read the real ports
//! back) and wires the shared state; `run_until_stopped` serves until the shutdown token
//! fires, then drains: `/readyz` turns 503 for `KEEL_SHUTDOWN_DELAY` while the listeners
//! still accept (so a load balancer stops routing here first), the listeners close, and
//! in-flight requests get `KEEL_SHUTDOWN_TIMEOUT` to finish before they are dropped. Then
//! the background tasks stop and the pool closes.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::pagination::CursorKey;
use crate::auth::{Keyring, PasswordHasher};
use crate::config::Config;
use crate::db::Db;
use crate::flags::{self, Flags};
use crate::{admin, api, db, telemetry};

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
    /// Signs and verifies access tokens (current key + one retired key).
    pub tokens: Keyring,
    /// argon2id, bounded by a semaphore so that logins cannot starve the runtime.
    pub passwords: PasswordHasher,
    /// Signs pagination cursors.
    pub cursors: CursorKey,
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
        let tokens = Keyring::new(&config.auth.jwt);
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
        Ok(Self(Arc::new(App {
            config,
            db: Db::new(pool),
            flags: Flags::default(),
            tokens,
            passwords,
            cursors,
            shutdown,
            metrics,
        })))
    }
}

pub struct Application {
    state: AppState,
    public: TcpListener,
    admin: TcpListener,
}

impl Application {
    /// Builds the service on a lazily connecting pool (see `db::pool`).
    pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let pool = db::pool(&config.database);
        Self::build_with_pool(config, pool, shutdown).await
    }

    pub async fn build_with_pool(
        config: Config,
        pool: PgPool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let public = TcpListener::bind(config.http.addr)
            .await
            .with_context(|| format!("Failed to bind KEEL_HTTP_ADDR {}", config.http.addr))?;
        let admin = TcpListener::bind(config.http.admin_addr)
            .await
            .with_context(|| {
                format!("Failed to bind KEEL_ADMIN_ADDR {}", config.http.admin_addr)
            })?;
        Ok(Self {
            state: AppState::new(config, pool, shutdown)?,
            public,
            admin,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until the shutdown token fires, then drains (see the module docs).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            state,
            public,
            admin,
        } = self;
        let config = &state.config;
        let shutdown = state.shutdown.clone();
        let refresher = tokio::spawn(flags::run_refresher(
            state.flags.clone(),
            state.db.pool().clone(),
            config.flags.poll_interval,
            shutdown.clone(),
        ));
        let upkeep = state
            .metrics
            .clone()
            .map(|handle| tokio::spawn(telemetry::metrics::run_upkeep(handle, shutdown.clone())));

        // Stops the listeners; fires `KEEL_SHUTDOWN_DELAY` after `shutdown`.
        let stop = CancellationToken::new();
        let public = axum::serve(public, api::router(state.clone()))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let admin = axum::serve(admin, admin::router(state.clone()))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let mut servers =
            tokio::spawn(
                async move { tokio::try_join!(public.into_future(), admin.into_future()) },
            );

        tokio::select! {
            () = shutdown.cancelled() => {}
            result = &mut servers => {
                // A listener failed on its own: stop everything else too.
                shutdown.cancel();
                result.context("server task failed")?.context("server failed")?;
            }
        }
        tracing::info!(delay = ?config.http.shutdown_delay, "shutting down: draining");
        tokio::time::sleep(config.http.shutdown_delay).await;
        stop.cancel();
        match tokio::time::timeout(config.http.shutdown_timeout, &mut servers).await {
            Ok(result) => {
                result
                    .context("server task failed")?
                    .context("server failed")?;
            }
            Err(_) => {
                tracing::warn!(timeout = ?config.http.shutdown_timeout, "in-flight requests outlived the shutdown deadline; dropping them");
                servers.abort();
            }
        }
        refresher.await.ok();
        if let Some(upkeep) = upkeep {
            upkeep.await.ok();
        }
        state.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}
