//! The admin listener (`KEEL_ADMIN_ADDR`): liveness, readiness, metrics, the fix flags, the
//! fault switches, and the workshop console that drives them (`console`).
//!
//! A separate listener, not a path prefix on the public one: it binds to loopback (or a
//! cluster-internal address) by default, the public listener answers 404 for all of it,
//! and the flag and fault APIs need `KEEL_ADMIN_TOKEN`, which is not a user token (and a
//! user token is not an admin token).
//!
//! Both kinds of switch are written to the shared store (which notifies every instance's
//! refresher) and applied here at once. They are written on the raw pool, not through
//! `db::Db`: a workshop that has made Postgres fail (`PUT /admin/faults/postgres`), or
//! whose Postgres breaker has opened on those failures, must still be able to switch it
//! back.

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
use crate::domain::{FieldError, ValidationErrors};
use crate::flags::{Flag, FlagState};
use crate::http::{ApiError, AppJson, AppPath};
use crate::readiness::Report;
use crate::resilience::{Dependency, Fault, FaultState};
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
        .route("/admin/faults", get(list_faults))
        .route("/admin/faults/{dependency}", put(set_fault))
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
    let row = db::flags::set(state.db.pool(), flag.name(), body.enabled)
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

#[derive(Serialize)]
struct FaultBody {
    dependency: &'static str,
    latency_ms: u32,
    error_rate: f64,
    updated_at: Option<DateTime<Utc>>,
}

impl From<FaultState> for FaultBody {
    fn from(state: FaultState) -> Self {
        Self {
            dependency: state.dependency.name(),
            latency_ms: state.fault.latency_ms,
            error_rate: state.fault.error_rate,
            updated_at: state.updated_at,
        }
    }
}

#[derive(Serialize)]
struct FaultList {
    items: Vec<FaultBody>,
}

/// The fault switches as this instance currently applies them: every dependency, in the
/// order postgres, redis, rabbitmq, smtp.
async fn list_faults(State(state): State<AppState>, _: Admin) -> Json<FaultList> {
    Json(FaultList {
        items: state
            .flags
            .faults()
            .snapshot()
            .into_iter()
            .map(FaultBody::from)
            .collect(),
    })
}

/// `latency_ms` is read as a signed 64-bit integer so that a negative or huge value is a
/// 422 naming the range, like an out-of-range rate, rather than a type error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFault {
    latency_ms: i64,
    error_rate: f64,
}

impl SetFault {
    /// The fault, or every field out of its range.
    fn validate(&self) -> Result<Fault, ValidationErrors> {
        let mut errors = Vec::new();
        let latency_ms = u32::try_from(self.latency_ms)
            .ok()
            .filter(|&ms| ms <= Fault::MAX_LATENCY_MS);
        if latency_ms.is_none() {
            errors.push(FieldError {
                field: "latency_ms".into(),
                message: format!(
                    "must be an integer from 0 to {} (milliseconds)",
                    Fault::MAX_LATENCY_MS
                ),
            });
        }
        // `contains` is false for NaN.
        if !(0.0..=1.0).contains(&self.error_rate) {
            errors.push(FieldError {
                field: "error_rate".into(),
                message: "must be a number from 0 to 1 (the share of calls that fail)".into(),
            });
        }
        match latency_ms {
            Some(latency_ms) if errors.is_empty() => Ok(Fault {
                latency_ms,
                error_rate: self.error_rate,
            }),
            _ => Err(ValidationErrors(errors)),
        }
    }
}

/// Sets a dependency's fault for every instance (`{0, 0}` clears it): written to the shared
/// store and applied here at once, like a flag.
async fn set_fault(
    State(state): State<AppState>,
    _: Admin,
    AppPath(name): AppPath<String>,
    AppJson(body): AppJson<SetFault>,
) -> Result<Json<FaultBody>, ApiError> {
    let dependency = Dependency::from_name(&name).ok_or(ApiError::NotFound("dependency"))?;
    let fault = body.validate()?;
    let latency_ms = i32::try_from(fault.latency_ms).map_err(anyhow::Error::new)?;
    let row = db::faults::set(
        state.db.pool(),
        dependency.name(),
        latency_ms,
        fault.error_rate,
    )
    .await?;
    state.flags.apply_faults(std::slice::from_ref(&row));
    tracing::info!(
        dependency = dependency.name(),
        latency_ms = fault.latency_ms,
        error_rate = fault.error_rate,
        "fault switch changed"
    );
    let current = state
        .flags
        .faults()
        .snapshot()
        .into_iter()
        .find(|s| s.dependency == dependency)
        .ok_or(ApiError::NotFound("dependency"))?;
    Ok(Json(current.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_valid_within_its_ranges_and_each_field_outside_them_is_named() {
        let fault = |latency_ms, error_rate| SetFault {
            latency_ms,
            error_rate,
        };
        let fields = |body: SetFault| -> Vec<String> {
            body.validate()
                .map_or_else(|e| e.0.into_iter().map(|f| f.field).collect(), |_| vec![])
        };

        assert_eq!(
            fault(10_000, 1.0).validate(),
            Ok(Fault {
                latency_ms: 10_000,
                error_rate: 1.0
            })
        );
        assert_eq!(fault(0, 0.0).validate(), Ok(Fault::NONE));
        assert_eq!(fields(fault(0, f64::NAN)), ["error_rate"]);
        assert_eq!(fields(fault(0, f64::INFINITY)), ["error_rate"]);
        assert_eq!(fields(fault(i64::MIN, -0.5)), ["latency_ms", "error_rate"]);
        assert_eq!(fields(fault(10_001, 0.5)), ["latency_ms"]);
    }
}
