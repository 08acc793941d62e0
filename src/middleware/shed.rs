//! Adaptive load shedding: admit a request only while fewer than the concurrency limit are
//! running, and refuse the rest at once with 503 and `Retry-After`, instead of letting
//! them queue for a core or a connection and all get slow together.
//!
//! The limit is not configured but found (`resilience::AdaptiveLimit`, Gradient2, from
//! the latency of the requests it admits), and it is one limit for the whole listener:
//! the layer is cloned per route, its state is not.
//!
//! Criticality (after Google SRE's "Handling Overload"): sheddable requests (pages, by
//! default) may fill only `KEEL_SHED_SHEDDABLE_SHARE` of the limit; critical ones (writes,
//! sign-in, single reads) all of it. As load rises, pages are refused first and the work
//! users are waiting on keeps its room.
//!
//! A refusal costs a few microseconds and no dependency call: it happens before the rate
//! limit (a Redis round trip) and before authentication. With the `load_shedding` flag off
//! every request is admitted, and overload shows as latency for all.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::{Criticality, GuardrailsConfig, RouteClass};
use crate::flags::{Flag, Flags};
use crate::http::problem::Problem;
use crate::http::route_class::Classifier;
use crate::resilience::AdaptiveLimit;
use crate::telemetry::metrics::names;

/// The shedder's state; cloned per route, shared underneath.
#[derive(Clone)]
pub struct Shedder(Arc<Inner>);

struct Inner {
    flags: Flags,
    classifier: Classifier,
    limit: AdaptiveLimit,
    sheddable_share: f64,
}

impl Shedder {
    /// Also starts `keel_shed_total` at zero for every criticality and class
    /// (`KEEL_CRITICALITY` can give any class either): a dashboard sees "nothing shed"
    /// rather than no data, and `rate()` counts the first refusal.
    pub fn new(flags: Flags, config: &GuardrailsConfig) -> Self {
        for criticality in Criticality::ALL {
            for class in RouteClass::ALL {
                metrics::counter!(
                    names::SHED,
                    "criticality" => criticality.as_str(),
                    "class" => class.as_str()
                )
                .increment(0);
            }
        }
        let limit = AdaptiveLimit::new(config.shedding.limit);
        Self(Arc::new(Inner {
            flags,
            classifier: Classifier::new(config.criticality.clone()),
            limit,
            sheddable_share: config.shedding.sheddable_share,
        }))
    }
}

/// Admits the request under the limit, or refuses it (see the module docs).
/// `None` (the admin listener): everything is admitted.
pub async fn admit(
    State(shedder): State<Option<Shedder>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(inner) = shedder.as_ref().map(|s| &s.0) else {
        return next.run(request).await;
    };
    if !inner.flags.enabled(Flag::LoadShedding) {
        return next.run(request).await;
    }
    let route = inner.classifier.of(&request);
    let share = match route.criticality {
        Criticality::Critical => 1.0,
        Criticality::Sheddable => inner.sheddable_share,
    };
    let Some(_token) = inner.limit.try_acquire(share) else {
        metrics::counter!(
            names::SHED,
            "criticality" => route.criticality.as_str(),
            "class" => route.class.as_str()
        )
        .increment(1);
        return overloaded();
    };
    next.run(request).await
}

fn overloaded() -> Response {
    let problem = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Some("overloaded"),
        "Overloaded",
        "The service is at capacity and refused this request rather than queue it; retry shortly.",
    );
    let mut response = problem.into_response();
    response.headers_mut().insert(header::RETRY_AFTER, 1.into());
    response
}

#[cfg(test)]
mod tests {
    //! The shedder in front of a simulated service of known capacity — two "cores", 10 ms
    //! a request — under an open-loop load of four times that capacity, on tokio's paused
    //! clock: deterministic, and seconds of load in milliseconds of test.

    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tokio::sync::Semaphore;
    use tokio::time::Instant;
    use tower::ServiceExt as _;

    use super::*;
    use crate::config::Config;

    const SERVICE_TIME: Duration = Duration::from_millis(10);
    const CORES: usize = 2;

    fn app(flags: &Flags) -> Router {
        let mut config = Config::from_map(&Default::default(), crate::config::Environment::Dev)
            .expect("defaults are valid")
            .guardrails;
        config.shedding.limit.initial = 16;
        config.shedding.limit.min = 2;
        config.shedding.limit.queue = 2;
        let cores = Arc::new(Semaphore::new(CORES));
        let work = move || {
            let cores = cores.clone();
            async move {
                let _core = cores.acquire().await.expect("never closed");
                tokio::time::sleep(SERVICE_TIME).await;
                "done"
            }
        };
        Router::new()
            .route("/v1/items", get(work.clone()))
            .route("/v1/items/{id}", get(work))
            .layer(axum::middleware::from_fn_with_state(
                Some(Shedder::new(flags.clone(), &config)),
                admit,
            ))
    }

    struct Outcome {
        /// Which of the phases offered it.
        phase: usize,
        path: &'static str,
        status: StatusCode,
        latency: Duration,
    }

    /// Offers each phase's `(rate, seconds)` in turn, at a fixed rate (open loop: a slow
    /// answer does not slow the offer), alternating between a page (sheddable) and a
    /// single read (critical); returns every outcome.
    async fn offer(app: Router, phases: &[(u32, u32)]) -> Vec<Outcome> {
        let mut requests = Vec::new();
        for (phase, &(rate, seconds)) in phases.iter().enumerate() {
            let gap = Duration::from_secs(1) / rate;
            for i in 0..rate * seconds {
                let path = if i % 2 == 0 {
                    "/v1/items"
                } else {
                    "/v1/items/7"
                };
                let app = app.clone();
                requests.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let request = Request::get(path).body(Body::empty()).expect("a request");
                    let status = app.oneshot(request).await.expect("infallible").status();
                    Outcome {
                        phase,
                        path,
                        status,
                        latency: started.elapsed(),
                    }
                }));
                tokio::time::sleep(gap).await;
            }
        }
        let mut outcomes = Vec::new();
        for request in requests {
            outcomes.push(request.await.expect("no panic"));
        }
        outcomes
    }

    fn p99(mut latencies: Vec<Duration>) -> Duration {
        latencies.sort();
        latencies
            .get(latencies.len() * 99 / 100)
            .copied()
            .unwrap_or_default()
    }

    fn accepted(outcomes: &[Outcome], phase: usize, path: Option<&str>) -> Vec<Duration> {
        outcomes
            .iter()
            .filter(|o| o.phase == phase && o.status == StatusCode::OK)
            .filter(|o| path.is_none_or(|p| p == o.path))
            .map(|o| o.latency)
            .collect()
    }

    /// Capacity is 200 req/s: a normal second at half of it, then ten at four times it
    /// (in two phases, to look at the last five seconds apart).
    const SPIKE: &[(u32, u32)] = &[(100, 1), (800, 5), (800, 5)];

    #[tokio::test(start_paused = true)]
    async fn at_four_times_capacity_accepted_requests_stay_fast_and_the_rest_are_refused_at_once() {
        let outcomes = offer(app(&Flags::default()), SPIKE).await;
        let normal = p99(accepted(&outcomes, 0, None));
        let mut ok = accepted(&outcomes, 1, None);
        ok.extend(accepted(&outcomes, 2, None));
        let refused: Vec<_> = outcomes
            .iter()
            .filter(|o| o.status == StatusCode::SERVICE_UNAVAILABLE)
            .collect();
        assert!(
            refused.iter().all(|o| o.phase > 0),
            "nothing refused at half load"
        );
        // Goodput: the cores were kept busy (2000 is the most 10 s can serve).
        assert!(ok.len() >= 1800, "goodput {} of 2000", ok.len());
        let refused_at_once = refused.iter().all(|o| o.latency < Duration::from_millis(1));
        // The limit starts at 16 in flight (80 ms of queue) and finds ~5 within about a
        // second: bounded over the whole spike, and close to normal once it has settled.
        let spiked = p99(ok);
        assert!(
            spiked <= normal * 8,
            "p99 {normal:?} at half load, {spiked:?} at 4×"
        );
        let settled = p99(accepted(&outcomes, 2, None));
        assert!(
            settled <= normal * 4,
            "p99 {normal:?} at half load, {settled:?} settled"
        );
        assert!(refused_at_once);

        // Without the shedder the same load queues: latency grows with the backlog.
        let flags = Flags::default();
        flags.set(Flag::LoadShedding, false);
        let naive = offer(app(&flags), SPIKE).await;
        assert!(naive.iter().all(|o| o.status == StatusCode::OK));
        let naive = p99(accepted(&naive, 2, None));
        assert!(
            naive > spiked * 10,
            "naive p99 {naive:?} against shed p99 {spiked:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sheddable_requests_are_refused_before_critical_ones() {
        let outcomes = offer(app(&Flags::default()), SPIKE).await;
        let pages = accepted(&outcomes, 2, Some("/v1/items")).len();
        let reads = accepted(&outcomes, 2, Some("/v1/items/7")).len();
        assert!(
            reads >= pages * 2,
            "critical reads admitted {reads}, sheddable pages {pages}"
        );
    }
}
