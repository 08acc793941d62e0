//! Retries, only of idempotent calls, with exponential backoff and full jitter, and within a
//! budget shared by every caller of a dependency, so that retries never multiply the load
//! on a dependency that is already failing.
//!
//! # Why a budget and not just a number of attempts
//!
//! "Up to three attempts" triples the calls a dependency gets at the moment it can least
//! take them, and every layer that retries multiplies that again (Google SRE, "Handling
//! Overload": retry budgets). A budget bounds the *ratio*: each call deposits
//! into it, each retry withdraws, and retries stop when it is empty. With the defaults
//! (a tenth of the calls, plus a small floor per second for an instance with little
//! traffic), a dependency that fails every call gets at most ~1.1 times the calls it would
//! have got without retries, instead of `attempts` times; a dependency that drops the
//! occasional connection gets every one of those retried. The budget is tower's
//! [`TpsBudget`] (finagle's design), which counts deposits over a sliding ten seconds on
//! tokio's clock.
//!
//! # Which calls, and when
//!
//! [`Retry::idempotent`] is the only entry point, and its name is the contract: the caller
//! promises that running the call twice does what running it once does (a read, a
//! delete), and says which errors are worth another attempt. Timeouts usually are not: a
//! slow dependency gets slower with more calls, and the breaker's slow-call rule deals with
//! it. A refused or dropped connection usually is: the call never reached the dependency,
//! and the next attempt gets a fresh connection.
//!
//! Each wait is drawn uniformly between zero and a ceiling that doubles per attempt (AWS
//! Architecture Blog, "Exponential Backoff And Jitter": full jitter), so that callers that
//! failed together spread out instead of retrying in step. Inside a request, no retry is
//! made whose wait would outlast the request's deadline ([`deadline::remaining`]); each
//! attempt's own timeout is the caller's, cut to the deadline with [`deadline::budget`].
//!
//! `keel_retries_total{dependency}` counts the retries made;
//! `keel_retry_budget_exhausted_total{dependency}` the ones the budget refused.

use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget as _, TpsBudget};

pub use crate::config::RetrySettings;
use crate::resilience::deadline;
use crate::telemetry::metrics::names::{RETRIES, RETRY_BUDGET_EXHAUSTED};

/// How long a call's deposit counts in the budget: tower's default, long enough to smooth a
/// burst of traffic, short enough that the calls of a quiet minute ago do not pay for the
/// retries of an outage now.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// The retries of one dependency. Cloning shares the budget: every caller of the dependency
/// holds a clone of the same one.
#[derive(Clone)]
pub struct Retry(Arc<Inner>);

struct Inner {
    dependency: &'static str,
    settings: RetrySettings,
    budget: TpsBudget,
}

impl Retry {
    /// `dependency` labels the metrics (`redis`), which start at zero: a dashboard sees
    /// "no retries" rather than no data, and `rate()` counts the first one.
    pub fn new(dependency: &'static str, settings: RetrySettings) -> Self {
        for name in [RETRIES, RETRY_BUDGET_EXHAUSTED] {
            metrics::counter!(name, "dependency" => dependency).increment(0);
        }
        Self(Arc::new(Inner {
            dependency,
            settings,
            budget: TpsBudget::new(
                BUDGET_WINDOW,
                settings.budget_min_per_sec,
                settings.budget_ratio,
            ),
        }))
    }

    /// Runs `call`, and again after a backoff while it fails with an error that `retryable`
    /// accepts, up to the configured attempts, within the budget and the request's deadline.
    /// The last error is returned as it is.
    ///
    /// Only for calls that are safe to repeat (module doc): the name is the promise.
    pub async fn idempotent<T, E, F, Fut>(
        &self,
        mut call: F,
        retryable: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let inner = &*self.0;
        inner.budget.deposit();
        let mut attempt = 1;
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if attempt >= inner.settings.attempts || !retryable(&error) {
                return Err(error);
            }
            let wait = self.backoff(attempt);
            if deadline::remaining().is_some_and(|left| left <= wait) {
                return Err(error);
            }
            if !inner.budget.withdraw() {
                metrics::counter!(RETRY_BUDGET_EXHAUSTED, "dependency" => inner.dependency)
                    .increment(1);
                return Err(error);
            }
            metrics::counter!(RETRIES, "dependency" => inner.dependency).increment(1);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// The wait before retry number `attempt` (1 for the first): uniform in `[0, ceiling]`,
    /// the ceiling doubling from the configured backoff.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .0
            .settings
            .backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        ceiling.mul_f64(rand::random_range(0.0..=1.0))
    }
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("dependency", &self.0.dependency)
            .field("settings", &self.0.settings)
            .field("budget", &self.0.budget)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::resilience::Deadline;

    fn settings(attempts: u32, budget_ratio: f32, budget_min_per_sec: u32) -> RetrySettings {
        RetrySettings {
            attempts,
            backoff: Duration::from_millis(10),
            budget_ratio,
            budget_min_per_sec,
        }
    }

    /// A call that fails every time, counting its attempts.
    async fn failing(retry: &Retry, attempts: &Cell<u32>) -> Result<(), &'static str> {
        retry
            .idempotent(
                || async {
                    attempts.set(attempts.get() + 1);
                    Err::<(), _>("connection refused")
                },
                |_| true,
            )
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_succeeds_is_made_once() {
        let retry = Retry::new("test", settings(3, 0.1, 10));
        let attempts = Cell::new(0);

        let result = retry
            .idempotent(
                || async {
                    attempts.set(attempts.get() + 1);
                    Ok::<_, ()>(7)
                },
                |_| true,
            )
            .await;

        assert_eq!(result, Ok(7));
        assert_eq!(attempts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_failure_is_retried_until_it_succeeds_within_the_attempts() {
        let retry = Retry::new("test", settings(3, 0.1, 10));
        let attempts = Cell::new(0);

        let result = retry
            .idempotent(
                || async {
                    attempts.set(attempts.get() + 1);
                    if attempts.get() < 3 {
                        Err("dropped")
                    } else {
                        Ok(())
                    }
                },
                |_| true,
            )
            .await;

        assert_eq!(result, Ok(()));
        assert_eq!(attempts.get(), 3);
        let attempts = Cell::new(0);
        assert_eq!(failing(&retry, &attempts).await, Err("connection refused"));
        assert_eq!(attempts.get(), 3, "no more than the configured attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_the_caller_does_not_call_retryable_is_returned_at_once() {
        let retry = Retry::new("test", settings(5, 0.1, 10));
        let attempts = Cell::new(0);

        let result = retry
            .idempotent(
                || async {
                    attempts.set(attempts.get() + 1);
                    Err::<(), _>("timed out")
                },
                |e| *e != "timed out",
            )
            .await;

        assert_eq!(result, Err("timed out"));
        assert_eq!(attempts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_dependency_failing_every_call_attempts_stay_within_the_budget() {
        // A tenth of the calls, no floor: 1000 calls that each may try 3 times make at most
        // 100 retries, not 2000.
        let retry = Retry::new("test", settings(3, 0.1, 0));
        let attempts = Cell::new(0);
        let calls = 1000;

        for _ in 0..calls {
            let _ = failing(&retry, &attempts).await;
        }

        let retries = attempts.get() - calls;
        assert!(retries <= calls / 10, "{retries} retries for {calls} calls");
        // The budget is spent, not hoarded: the retries it allows are made.
        assert!(
            retries >= calls / 10 - 10,
            "{retries} retries for {calls} calls"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_a_few_retries_to_an_instance_with_little_traffic() {
        // Ten calls, a tenth of which is one retry; the floor (2 a second over the ten
        // seconds of the window: 20) lets more through, and no more than that.
        let retry = Retry::new("test", settings(2, 0.1, 2));
        let attempts = Cell::new(0);

        for _ in 0..30 {
            let _ = failing(&retry, &attempts).await;
        }

        let retries = attempts.get() - 30;
        assert!((20..=23).contains(&retries), "{retries} retries");
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_is_jittered_below_a_ceiling_that_doubles() {
        let retry = Retry::new("test", settings(4, 1.0, 100));
        for _ in 0..200 {
            for attempt in 1..=3 {
                let ceiling = Duration::from_millis(10) * (1 << (attempt - 1));
                assert!(retry.backoff(attempt) <= ceiling);
            }
        }
        // Full jitter: the waits spread over the whole range, not around the ceiling.
        let waits: Vec<Duration> = (0..200).map(|_| retry.backoff(3)).collect();
        assert!(waits.iter().any(|w| *w < Duration::from_millis(10)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_is_made_whose_wait_would_outlast_the_requests_deadline() {
        let retry = Retry::new("test", settings(10, 1.0, 100));
        let attempts = Cell::new(0);
        let started = tokio::time::Instant::now();

        Deadline::after(Duration::from_millis(50))
            .scope(failing(&retry, &attempts))
            .await
            .unwrap_err();

        assert!(started.elapsed() <= Duration::from_millis(50));
        let passed = Cell::new(0);
        Deadline::after(Duration::ZERO)
            .scope(failing(&retry, &passed))
            .await
            .unwrap_err();
        assert_eq!(passed.get(), 1, "no time left: no retry");
    }

    #[test]
    fn a_retry_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Retry>();
    }
}
