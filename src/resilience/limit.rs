//! An adaptive concurrency limit: how many requests may run at once, found from the latency
//! the service shows rather than configured, after Netflix's `Gradient2Limit`
//! (concurrency-limits).
//!
//! # Why Gradient2
//!
//! A fixed limit is wrong twice: set for today's hardware and query mix it is too high
//! after a slow deploy (requests queue inside the process and every one of them gets slow)
//! and too low after a fast one (capacity refused). Keel's requests are CPU- and
//! Postgres-bound with no queue of their own that the service could watch, so the signal
//! is latency: when more requests run at once than the machine can serve, each one waits
//! for a core or a connection, and latency rises while throughput does not.
//!
//! - **AIMD** reacts to drops (timeouts, errors) only: by the time it sees one, the queue
//!   has already cost a deadline. It is the simplest, but it finds the limit by failing.
//! - **Vegas** estimates the queue from the *minimum* latency ever seen (`limit × (1 −
//!   rtt_min/rtt)`). With a mixed workload — a 0.3 ms cache hit beside a 60 ms password
//!   hash — the minimum says nothing about the typical request, and Vegas sees a queue
//!   that is not there.
//! - **Gradient2** compares the recent average latency with a long-running average of
//!   itself: `gradient = clamp(tolerance × long / short, 0.5, 1)`. A mixed workload moves
//!   both averages alike; only a sustained rise of the short one against the long one —
//!   queueing — shrinks the limit. So Gradient2.
//!
//! # The update, once per window
//!
//! Latencies are averaged over a window (at least `window` long and `window_samples`
//! requests), then
//!
//! ```text
//! long     = EMA of the window averages over `long_window` windows
//! gradient = clamp(tolerance × long / short, 0.5, 1.0)
//! target   = limit × gradient + queue
//! limit    = limit × (1 − smoothing) + target × smoothing, within [min, max]
//! ```
//!
//! - `tolerance` (1.5): how much slower than usual the service may get before the limit
//!   shrinks; below it the gradient is 1 and the limit grows by `queue` per window.
//! - `queue` (4, Netflix's default): the headroom added on top of the limit each window,
//!   which lets the limit probe upwards when there is room. It also sets where the limit
//!   settles under overload: `gradient = 1 − queue/limit`, so with latency proportional to
//!   the requests in flight (a CPU-bound service), the limit settles at
//!   `tolerance × usual + queue` requests' worth of latency. A smaller headroom looks
//!   right for a two-core service, and was Keel's first default (2), but measured under
//!   the mixed workload of `loadtests/guardrails-bench.sh` it let the limit sink to its
//!   floor: a window's average swings with the few slow sign-ins it happens to hold, the
//!   limit falls by a factor on a slow window and climbs back only by `queue × smoothing`
//!   on a fast one, and at 4× the capacity goodput fell to half of it. With 4 the limit
//!   recovers from that noise as fast as it falls (docs/benchmarks.md has the figures).
//! - `smoothing` (0.2): how far one window moves the limit towards its target.
//! - `long_window` (6000 windows of 100 ms: ten minutes, Netflix's 600 one-second
//!   windows): the memory of "usual". It must be long against an overload, because the
//!   long average drifts towards whatever latency persists, and a limit judged against a
//!   drifted "usual" creeps back up. When the long average is more
//!   than twice the short one (after a long overload has inflated it) it is pulled down by
//!   5 % a window, so the limit recovers in seconds, not minutes.
//! - When fewer than half the limit were in flight during a window the limit is left as
//!   is: a lightly loaded service says nothing about its capacity.
//! - `min` and `max` bound it; the gradient's floor of 0.5 keeps one slow window from
//!   halving capacity more than once per window. That floor also means the limit never
//!   settles below `2 × queue` (`target = limit/2 + queue`), however slow the service
//!   gets: with the defaults that is 8, the default `min` as well.
//!
//! Requests ask with a share of the limit ([`AdaptiveLimit::try_acquire`]): critical work
//! may fill it, sheddable work only part of it, so sheddable requests are refused first
//! (the caller maps criticality to a share).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::telemetry::metrics::names;

/// Windows averaged plainly before the long average turns exponential.
const WARMUP: usize = 10;

/// Gradient2's parameters (see the module docs), read with the rest of the configuration.
pub use crate::config::LimitSettings;

/// The limit and the requests in flight under it, shared by every route: one limit for
/// the whole listener.
#[derive(Clone)]
pub struct AdaptiveLimit(Arc<Inner>);

struct Inner {
    settings: LimitSettings,
    /// The current limit, rounded; read without the lock on every admission.
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    state: Mutex<State>,
}

struct State {
    /// The exact limit, of which `limit` is the rounding.
    estimate: f64,
    /// The long-running average latency, in seconds; `None` before the first window.
    long: Option<f64>,
    /// Windows folded into `long` so far, counted up to the warm-up's end.
    long_count: usize,
    window: Window,
}

struct Window {
    started: Instant,
    total: Duration,
    samples: usize,
    max_in_flight: usize,
}

impl Window {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            total: Duration::ZERO,
            samples: 0,
            max_in_flight: 0,
        }
    }
}

/// One admitted request; dropping it ends the request and gives its latency to the limit.
#[must_use = "the request holds its place under the limit until the token is dropped"]
pub struct Token {
    inner: Arc<Inner>,
    started: Instant,
    in_flight: usize,
}

impl Drop for Token {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.inner.sample(self.started.elapsed(), self.in_flight);
    }
}

impl AdaptiveLimit {
    /// # Panics
    ///
    /// On settings that the config reader refuses (min > max, a zero window).
    pub fn new(settings: LimitSettings) -> Self {
        assert!(settings.min >= 1 && settings.min <= settings.max);
        assert!(settings.window_samples >= 1 && settings.long_window >= 1);
        let initial = settings.initial.clamp(settings.min, settings.max);
        metrics::gauge!(names::CONCURRENCY_LIMIT).set(initial as f64);
        Self(Arc::new(Inner {
            settings,
            limit: AtomicUsize::new(initial),
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(State {
                estimate: initial as f64,
                long: None,
                long_count: 0,
                window: Window::new(),
            }),
        }))
    }

    /// Admits a request if fewer than `share` of the limit (at least one) are in flight.
    /// `share` is 1 for critical work and less for work that is shed first.
    pub fn try_acquire(&self, share: f64) -> Option<Token> {
        let inner = &self.0;
        let allowed = ((inner.limit.load(Ordering::Relaxed) as f64) * share)
            .floor()
            .max(1.0) as usize;
        let mut current = inner.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= allowed {
                return None;
            }
            match inner.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Token {
                        inner: inner.clone(),
                        started: Instant::now(),
                        in_flight: current + 1,
                    });
                }
                Err(now) => current = now,
            }
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.0.limit.load(Ordering::Relaxed)
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn sample(&self, latency: Duration, in_flight: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let window = &mut state.window;
        window.total += latency;
        window.samples += 1;
        window.max_in_flight = window.max_in_flight.max(in_flight);
        if window.samples < self.settings.window_samples
            || window.started.elapsed() < self.settings.window
        {
            // The gauge follows the window's updates; a service going idle mid-window
            // would otherwise show its last busy figure until the next request.
            if self.in_flight.load(Ordering::Relaxed) == 0 {
                metrics::gauge!(names::CONCURRENCY_IN_FLIGHT).set(0.0);
            }
            return;
        }
        let short = window.total.as_secs_f64() / window.samples as f64;
        let max_in_flight = window.max_in_flight;
        state.window = Window::new();
        self.update(&mut state, short, max_in_flight);
    }

    fn update(&self, state: &mut State, short: f64, max_in_flight: usize) {
        let s = &self.settings;
        // A plain average over the first WARMUP windows, then an exponential one over
        // `long_window` (concurrency-limits' ExpAvgMeasurement). Not 1/n up to
        // `long_window`: that would let an overload early in a process's life become
        // its idea of normal within a few dozen windows.
        state.long_count = (state.long_count + 1).min(WARMUP + 1);
        let weight = if state.long_count <= WARMUP {
            1.0 / state.long_count as f64
        } else {
            2.0 / (s.long_window as f64 + 1.0)
        };
        let mut long = state.long.map_or(short, |l| l + (short - l) * weight);
        if short > 0.0 && long / short > 2.0 {
            long *= 0.95;
        }
        state.long = Some(long);
        if (max_in_flight as f64) >= state.estimate / 2.0 && short > 0.0 {
            let gradient = (s.tolerance * long / short).clamp(0.5, 1.0);
            let target = state.estimate * gradient + s.queue as f64;
            state.estimate = (state.estimate * (1.0 - s.smoothing) + target * s.smoothing)
                .clamp(s.min as f64, s.max as f64);
        }
        let limit = state.estimate.round() as usize;
        self.limit.store(limit, Ordering::Relaxed);
        metrics::gauge!(names::CONCURRENCY_LIMIT).set(limit as f64);
        metrics::gauge!(names::CONCURRENCY_IN_FLIGHT)
            .set(self.in_flight.load(Ordering::Relaxed) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            initial: 20,
            min: 2,
            max: 100,
            tolerance: 1.5,
            smoothing: 0.2,
            queue: 4,
            long_window: 6000,
            window: Duration::from_millis(100),
            window_samples: 10,
        }
    }

    /// Feeds `windows` windows of `per_window` requests of `latency` each, `in_flight`
    /// at once.
    async fn feed(limit: &AdaptiveLimit, windows: usize, latency: Duration, in_flight: usize) {
        for _ in 0..windows {
            for _ in 0..10 {
                let tokens: Vec<_> = (0..in_flight)
                    .filter_map(|_| limit.try_acquire(1.0))
                    .collect();
                tokio::time::advance(latency).await;
                drop(tokens);
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rising_latency_shrinks_the_limit_and_steady_latency_under_load_grows_it() {
        let limit = AdaptiveLimit::new(settings());
        feed(&limit, 30, Duration::from_millis(10), 20).await;
        let grown = limit.limit();
        assert!(grown > 20, "steady latency at the limit grows it: {grown}");
        // Latency four times the usual: queueing. The limit must come down.
        feed(&limit, 20, Duration::from_millis(40), grown).await;
        assert!(
            limit.limit() < grown * 2 / 3,
            "{} !< {grown}×⅔",
            limit.limit()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lightly_loaded_service_keeps_its_limit() {
        let limit = AdaptiveLimit::new(settings());
        feed(&limit, 30, Duration::from_millis(10), 3).await;
        assert_eq!(limit.limit(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_of_the_limit_refuses_sheddable_work_first() {
        let limit = AdaptiveLimit::new(LimitSettings {
            initial: 10,
            ..settings()
        });
        let critical: Vec<_> = (0..8).map(|_| limit.try_acquire(1.0).unwrap()).collect();
        assert!(
            limit.try_acquire(0.8).is_none(),
            "8 of 10 in flight: sheddable refused"
        );
        let more: Vec<_> = (0..2).map(|_| limit.try_acquire(1.0).unwrap()).collect();
        assert!(
            limit.try_acquire(1.0).is_none(),
            "10 of 10: everything refused"
        );
        assert_eq!(limit.in_flight(), 10);
        drop((critical, more));
        assert_eq!(limit.in_flight(), 0);
        assert!(limit.try_acquire(0.8).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_stays_within_its_bounds() {
        // Under the gradient's floor of 0.5 the limit settles at 2 × queue (the docs): a
        // headroom of 1 puts that below `min`, so the floor is what stops it.
        let limit = AdaptiveLimit::new(LimitSettings {
            initial: 4,
            min: 4,
            max: 8,
            queue: 1,
            ..settings()
        });
        feed(&limit, 50, Duration::from_millis(10), 8).await;
        assert_eq!(limit.limit(), 8);
        feed(&limit, 50, Duration::from_millis(100), 8).await;
        assert_eq!(limit.limit(), 4);
    }
}
