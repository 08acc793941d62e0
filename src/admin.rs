//! The admin listener (`KEEL_ADMIN_ADDR`): liveness, readiness, metrics, the fix flags,
//! and the workshop console that drives them (`console`).
//!
//! A separate listener, not a path prefix on the public one: it binds to loopback (or a
//! cluster-internal address) by default, the public listener answers 404 for all of it,
//! and the flag API needs `KEEL_ADMIN_TOKEN`, which is not a user token (and a user token
//! is not an admin token).

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::header::{self, AUTHORIZATION};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::db;
use crate::flags::{Flag, FlagState};
use crate::http::{ApiError, AppJson, AppPath};
use crate::readiness::Report;
use crate::state::AppState;
use crate::telemetry::metrics::{self, PoolStats, Scrape};

mod console;

/// The admin routes; the assembly (`crate::server`) adds the fallback and the middleware.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/admin/flags", get(list_flags))
        .route("/admin/flags/{name}", put(set_flag))
        .merge(console::routes())
}

/// Liveness: the process is running and serving.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness, from the registry (`crate::readiness`): 200 while the instance should
/// receive traffic (`ready`, or `degraded` with an optional dependency down), 503 when a
/// required dependency is down or the process drains for shutdown.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Report>) {
    let report = state.readiness.check(state.shutdown.is_cancelled()).await;
    let status = if report.status.is_serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// Prometheus text exposition (open, like the probes: the admin listener is internal).
async fn prometheus(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let handle = state.metrics.as_ref().ok_or(ApiError::NotFound(
        "metrics endpoint (KEEL_METRICS_ENABLED=false)",
    ))?;
    let pool = state.db.pool();
    let flags: Vec<(&'static str, bool)> = state
        .flags
        .snapshot()
        .into_iter()
        .map(|f| (f.flag.name(), f.enabled))
        .collect();
    let scrape = Scrape {
        pool: PoolStats {
            size: pool.size(),
            idle: pool.num_idle(),
            max: state.config.database.max_connections,
        },
        flags: &flags,
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(handle, &scrape),
    ))
}

/// The admin bearer token, checked in constant time.
struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(ApiError::Unauthorized {
                invalid_token: false,
            })?;
        // Compare digests, not the strings: equal lengths, so the comparison's time says
        // nothing about the token's length or its first differing byte.
        let expected = Sha256::digest(state.config.auth.admin_token.expose_secret().as_bytes());
        let presented = Sha256::digest(presented.as_bytes());
        if bool::from(expected.ct_eq(&presented)) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized {
                invalid_token: true,
            })
        }
    }
}

#[derive(Serialize)]
struct FlagBody {
    name: &'static str,
    enabled: bool,
    /// What the service does when this fix is off.
    when_off: &'static str,
    updated_at: Option<DateTime<Utc>>,
}

impl From<FlagState> for FlagBody {
    fn from(state: FlagState) -> Self {
        Self {
            name: state.flag.name(),
            enabled: state.enabled,
            when_off: state.flag.when_off(),
            updated_at: state.updated_at,
        }
    }
}

#[derive(Serialize)]
struct FlagList {
    items: Vec<FlagBody>,
}

/// The flags as this instance currently applies them.
async fn list_flags(State(state): State<AppState>, _: Admin) -> Json<FlagList> {
    Json(FlagList {
        items: state
            .flags
            .snapshot()
            .into_iter()
            .map(FlagBody::from)
            .collect(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFlag {
    enabled: bool,
}

/// Switches a fix on or off for every instance: written to the shared store (whose
/// trigger notifies every instance's refresher) and applied here at once.
async fn set_flag(
    State(state): State<AppState>,
    _: Admin,
    AppPath(name): AppPath<String>,
    AppJson(body): AppJson<SetFlag>,
) -> Result<Json<FlagBody>, ApiError> {
    let flag = Flag::from_name(&name).ok_or(ApiError::NotFound("flag"))?;
    crate::flags::register(state.db.pool()).await?;
    let row = db::flags::set(&state.db, flag.name(), body.enabled)
        .await?
        .ok_or(ApiError::NotFound("flag"))?;
    state.flags.apply(std::slice::from_ref(&row));
    tracing::info!(
        flag = flag.name(),
        enabled = body.enabled,
        "fix flag changed"
    );
    let current = state
        .flags
        .snapshot()
        .into_iter()
        .find(|s| s.flag == flag)
        .ok_or(ApiError::NotFound("flag"))?;
    Ok(Json(current.into()))
}
