//! The assembly: binds both listeners, builds both routers, wraps them in the middleware
//! stack, starts the background tasks, serves until told to stop, and drains. The only
//! module that knows the handlers (`api`, `admin`) and the middleware at once.
//!
//! `Application::build` binds the listeners (port 0 works: tests read the real ports
//! back) and builds the shared state; `run_until_stopped` serves until the shutdown token
//! fires, then drains: `/readyz` turns 503 for `KEEL_SHUTDOWN_DELAY` while the listeners
//! still accept (so a load balancer stops routing here first), the listeners close, and
//! in-flight requests get `KEEL_SHUTDOWN_TIMEOUT` to finish before they are dropped. The
//! background tasks stop within what is left of that deadline, then the pool closes.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use axum::http::header;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate as _, SizeAbove};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

use crate::background::Background;
use crate::config::{Config, GuardrailsConfig, HttpConfig};
use crate::flags::Flags;
use crate::http::{TrustedProxies, client_ip, problem};
use crate::jobs::{Relay, Worker};
use crate::middleware::deadline::{self, Deadlines};
use crate::middleware::rate_limit::{self, RateLimit};
use crate::middleware::shed::{self, Shedder};
use crate::middleware::{errors, metrics, request_id, trace};
use crate::state::AppState;
use crate::{admin, api, db, flags, telemetry};

/// What a process does: design.md's roles. Every role has the admin listener (probes,
/// metrics); the public API and the background jobs are each switched on by the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `keel serve`: the public API.
    Serve,
    /// `keel worker`: the outbox relay and the job consumers.
    Worker,
    /// `keel all`: both.
    All,
}

impl Role {
    fn serves_api(self) -> bool {
        self != Role::Worker
    }

    fn runs_jobs(self) -> bool {
        self != Role::Serve
    }
}

pub struct Application {
    state: AppState,
    role: Role,
    public: Option<TcpListener>,
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
        Self::build_for(Role::Serve, config, pool, shutdown).await
    }

    /// Builds a process of `role`.
    pub async fn build_for(
        role: Role,
        config: Config,
        pool: PgPool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let public =
            if role.serves_api() {
                Some(TcpListener::bind(config.http.addr).await.with_context(|| {
                    format!("Failed to bind KEEL_HTTP_ADDR {}", config.http.addr)
                })?)
            } else {
                None
            };
        let admin = TcpListener::bind(config.http.admin_addr)
            .await
            .with_context(|| {
                format!("Failed to bind KEEL_ADMIN_ADDR {}", config.http.admin_addr)
            })?;
        Ok(Self {
            state: AppState::new(config, pool, shutdown)?,
            role,
            public,
            admin,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The public listener's address (roles that serve the API).
    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .as_ref()
            .expect("this role serves the API")
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
            role,
            public,
            admin,
        } = self;
        let config = &state.config;
        let shutdown = state.shutdown.clone();
        let background = start_background(&state, role);

        // Stops the listeners; fires `KEEL_SHUTDOWN_DELAY` after `shutdown`.
        let stop = CancellationToken::new();
        let public = {
            let (state, stop) = (state.clone(), stop.clone());
            async move {
                match public {
                    Some(public) => {
                        // The peer's address feeds `http::client_ip`.
                        let service = public_router(state)
                            .into_make_service_with_connect_info::<SocketAddr>();
                        axum::serve(public, service)
                            .with_graceful_shutdown(stop.cancelled_owned())
                            .await
                    }
                    None => Ok(()),
                }
            }
        };
        let admin = axum::serve(admin, admin_router(state.clone()))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let mut servers =
            tokio::spawn(async move { tokio::try_join!(public, admin.into_future()) });

        tokio::select! {
            () = shutdown.cancelled() => {}
            result = &mut servers => {
                // A listener failed on its own: stop everything else too.
                shutdown.cancel();
                background.stop(config.http.shutdown_timeout).await;
                state.db.close().await;
                result.context("server task failed")?.context("server failed")?;
                return Ok(());
            }
        }
        tracing::info!(delay = ?config.http.shutdown_delay, "shutting down: draining");
        tokio::time::sleep(config.http.shutdown_delay).await;
        stop.cancel();
        let deadline = Instant::now() + config.http.shutdown_timeout;
        let served = match tokio::time::timeout_at(deadline, &mut servers).await {
            Ok(result) => result
                .context("server task failed")
                .and_then(|served| served.context("server failed"))
                .map(|_| ()),
            Err(_) => {
                tracing::warn!(timeout = ?config.http.shutdown_timeout, "in-flight requests outlived the shutdown deadline; dropping them");
                servers.abort();
                Ok(())
            }
        };
        background
            .stop(deadline.saturating_duration_since(Instant::now()))
            .await;
        state.db.close().await;
        tracing::info!("stopped");
        served
    }
}

/// Every long-running task of the process, registered in one place (see
/// `crate::background`).
fn start_background(state: &AppState, role: Role) -> Background {
    let background = Background::default();
    let (flags, pool, interval) = (
        state.flags.clone(),
        state.db.pool().clone(),
        state.config.flags.poll_interval,
    );
    background.spawn("fix-flag refresher", move |stop| {
        flags::run_refresher(flags, pool, interval, stop)
    });
    if let Some(handle) = state.metrics.clone() {
        background.spawn("metrics upkeep", move |stop| {
            telemetry::metrics::run_upkeep(handle, stop)
        });
    }
    if role.serves_api()
        && let Some(replica) = state.loaders.reads().replica().cloned()
    {
        let primary = state.db.pool().clone();
        background.spawn("read-replica monitor", move |stop| {
            replica.run_monitor(primary, stop)
        });
    }
    if role.serves_api() {
        let (db, config) = (state.db.clone(), state.config.idempotency);
        background.spawn("idempotency-key pruner", move |stop| {
            api::idempotency::run_pruner(db, config, stop)
        });
    }
    if role.runs_jobs() {
        let config = state.config.clone();
        let relay = Relay::new(
            &config,
            state.db.clone(),
            state.runner.clone(),
            state.broker.clone(),
        );
        background.spawn("outbox relay", move |stop| relay.run(stop));
        let worker = Worker::new(&config, state.runner.clone(), state.broker.clone());
        background.spawn("job consumers", move |stop| worker.run(stop));
        let db = state.db.clone();
        background.spawn("outbox upkeep", move |stop| async move {
            Relay::run_upkeep(db, &config, stop).await;
        });
    }
    background
}

/// The public listener's whole service: the API, `GET /openapi.json`, `GET /docs`
/// (Swagger UI, served from the binary: it works offline), in the middleware stack.
fn public_router(state: AppState) -> Router {
    let (routes, document) = api::routes();
    // Read-your-writes for the read replica, on the API's routes only (`api::writes`).
    let routes = match state.loaders.reads().replica() {
        Some(_) => routes.layer(axum::middleware::from_fn_with_state(
            state.loaders.reads().clone(),
            api::writes::track,
        )),
        None => routes,
    };
    let app = routes
        .merge(SwaggerUi::new("/docs").url("/openapi.json", document))
        .fallback(problem::not_found)
        .with_state(state.clone());
    let metrics = state.metrics.is_some();
    let guardrails = Guardrails::new(&state.flags, &state.config.guardrails)
        .with_rate_limit(RateLimit::new(state.clone()));
    stack(
        app,
        &state.config.http,
        Listener::Public(guardrails),
        metrics,
    )
}

/// The admin listener's service: probes, metrics and the fix flags (see `crate::admin`).
fn admin_router(state: AppState) -> Router {
    let app = admin::routes()
        .fallback(problem::not_found)
        .with_state(state.clone());
    stack(app, &state.config.http, Listener::Admin, false)
}

/// Which listener a stack is for: the admin listener gets no guardrails (its probes and
/// scrapes must answer during an overload: that is when they are needed).
#[derive(Clone)]
enum Listener {
    Public(Guardrails),
    Admin,
}

/// The public listener's guardrails, each behind its fix flag; built once, so that every
/// route shares one limit (`Router::layer` clones the layers per route; these clone an
/// `Arc`).
#[derive(Clone)]
struct Guardrails {
    deadlines: Deadlines,
    shedder: Shedder,
    /// `None` where there is no `AppState` to check budgets with (a unit test's stack).
    rate_limit: Option<RateLimit>,
}

impl Guardrails {
    fn new(flags: &Flags, config: &GuardrailsConfig) -> Self {
        Self {
            deadlines: Deadlines::new(flags.clone(), config),
            shedder: Shedder::new(flags.clone(), config),
            rate_limit: None,
        }
    }

    fn with_rate_limit(self, rate_limit: RateLimit) -> Self {
        Self {
            rate_limit: Some(rate_limit),
            ..self
        }
    }
}

/// The middleware around both listeners, in one stack that reads top to bottom
/// (outermost first):
///
/// 1. mark `Authorization`, `Cookie` and friends sensitive, so no layer below logs them;
/// 2. drop an incoming `x-request-id` that is not sane, then set one (keeping a sane
///    incoming one), and return it on the response; find the client's address (the
///    peer, or behind `KEEL_TRUSTED_PROXIES` the forwarded one);
/// 3. open the request's span: method, route template, request id, and the caller's
///    trace context; return `traceparent`;
/// 4. record the RED metrics (public listener only: the SLOs are about the API, not about
///    probes and scrapes) — outside panic catching and every guardrail, so that a panic's
///    500, a shed request's 503 and a rate-limited 429 count like any other response (a
///    metrics layer inside panic catching would never see the panic's response);
/// 5. compress responses of `KEEL_COMPRESSION_MIN_BYTES` and more;
/// 6. turn a panic into a 500 problem+json;
/// 7. log the cause of every 5xx and give every bare error response (router fallbacks,
///    405s, 413s from the body limit) a problem+json body;
///
/// Then the guardrails, public listener only, cheapest refusal first:
///
/// 8. the deadline (`timeouts`): the request's class sets it, and everything below —
///    the handler, its statements, its calls to Redis — runs inside it;
/// 9. load shedding (`load_shedding`): admitted under the adaptive concurrency limit, or
///    refused at once; before the rate limit, so a refusal costs no Redis call;
/// 10. the rate limits (`rate_limit`): a budget per user or client address, shared by
///     the fleet through Redis; 429 before the handler;
///
/// and last, body reading capped at `KEEL_MAX_BODY_BYTES` (413; innermost because it
/// changes the body's type, which axum's middleware functions above do not take), then
/// authentication (the handlers' extractor) and the handler.
fn stack(router: Router, config: &HttpConfig, listener: Listener, metrics: bool) -> Router {
    let sensitive = [
        header::AUTHORIZATION,
        header::COOKIE,
        header::PROXY_AUTHORIZATION,
    ];
    let guardrails = match listener {
        Listener::Public(guardrails) => Some(guardrails),
        Listener::Admin => None,
    };
    let public = guardrails.is_some();
    router.layer(
        ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new(sensitive.clone()))
            .layer(SetSensitiveResponseHeadersLayer::new([header::SET_COOKIE]))
            .map_request(request_id::drop_insane)
            .layer(SetRequestIdLayer::new(
                request_id::X_REQUEST_ID,
                request_id::MakeRequestUuidV7,
            ))
            .layer(PropagateRequestIdLayer::new(request_id::X_REQUEST_ID))
            .layer(axum::middleware::from_fn_with_state(
                TrustedProxies::new(config.trusted_proxies.clone()),
                client_ip::resolve,
            ))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(trace::make_span)
                    .on_request(())
                    .on_response(trace::on_response)
                    .on_failure(()),
            )
            .layer(axum::middleware::from_fn(trace::return_traceparent))
            .layer(axum::middleware::from_fn_with_state(
                public && metrics,
                metrics::record,
            ))
            .layer(
                CompressionLayer::new().compress_when(
                    SizeAbove::new(config.compression_min_bytes)
                        .and(NotForContentType::GRPC)
                        .and(NotForContentType::IMAGES)
                        .and(NotForContentType::SSE)
                        .and(not_strongly_tagged),
                ),
            )
            .layer(CatchPanicLayer::custom(errors::panic_to_problem))
            .layer(axum::middleware::from_fn(errors::finish))
            .layer(axum::middleware::from_fn_with_state(
                guardrails.as_ref().map(|g| g.deadlines.clone()),
                deadline::enforce,
            ))
            .layer(axum::middleware::from_fn_with_state(
                guardrails.as_ref().map(|g| g.shedder.clone()),
                shed::admit,
            ))
            .layer(axum::middleware::from_fn_with_state(
                guardrails.and_then(|g| g.rate_limit),
                rate_limit::enforce,
            ))
            .layer(RequestBodyLimitLayer::new(config.max_body_bytes)),
    )
}

/// A strong `ETag` names one exact representation, so a gzipped body may not carry the
/// tag of the plain one (RFC 9110 §8.8.3). The tagged responses are single resources,
/// small enough that compression saves little: they go out uncompressed.
fn not_strongly_tagged(
    _: axum::http::StatusCode,
    _: axum::http::Version,
    headers: &axum::http::HeaderMap,
    _: &axum::http::Extensions,
) -> bool {
    headers
        .get(axum::http::header::ETAG)
        .is_none_or(|tag| tag.as_bytes().starts_with(b"W/"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    fn config() -> Config {
        crate::config::Config::from_map(&Default::default(), crate::config::Environment::Dev)
            .expect("defaults are valid")
    }

    #[tokio::test]
    async fn a_panic_is_a_500_problem_and_counts_in_the_red_metrics() {
        let handle = crate::telemetry::metrics::install().expect("a recorder");
        let app = Router::new().route(
            "/boom/{id}",
            get(|| async {
                panic!("kaboom");
                #[allow(unreachable_code)]
                ""
            }),
        );
        let config = config();
        let guardrails = Guardrails::new(&Flags::default(), &config.guardrails);
        let app = stack(app, &config.http, Listener::Public(guardrails), true);

        let response = app
            .oneshot(Request::get("/boom/42").body(Body::empty()).unwrap())
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let series = r#"http_server_request_duration_seconds_count{http_request_method="GET",http_route="/boom/{id}",http_response_status_class="5xx",keel_route_class="read"} 1"#;
        assert!(
            handle.render().contains(series),
            "the panic's 500 is counted"
        );
    }
}
