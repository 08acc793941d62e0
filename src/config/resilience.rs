//! The settings every circuit breaker and every retry budget shares, and the one reader for
//! them: each dependency's section (`redis.rs`, `jobs.rs`, `database.rs`) names its own
//! variables ([`BreakerVars`], [`RetryVars`]) and its own defaults, and reads them here, so
//! that the ranges, the cross-checks and the error messages are the same for every
//! dependency.
//!
//! The types live in `config` rather than in `crate::resilience`, which uses them, because
//! configuration is the bottom layer: `resilience` re-exports them, so a caller builds a
//! breaker with `Breaker::new("postgres", config.database.breaker)` and never converts.
//!
//! The variable names are written out whole in each section (`"KEEL_SMTP_BREAKER_WINDOW"`,
//! never `format!("KEEL_{dep}_BREAKER_WINDOW")`): a search for a variable then finds the
//! line that reads it, and `tests/api/config_docs.rs` sees it.

use std::time::Duration;

use super::vars::{ConfigError, Vars, error};

/// When a circuit breaker opens, how long it stays open, and how it decides to close again
/// (Resilience4j's semantics: `crate::resilience`'s breaker module says how each is used).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// The failed share of the window, in `(0, 1]`, at which the breaker opens.
    pub failure_rate: f64,
    /// The slow share of the window, in `(0, 1]`, at which the breaker opens: a dependency
    /// that answers, but too slowly to be worth waiting for, is cut off like a failing one.
    pub slow_call_rate: f64,
    /// A call that takes longer than this (from its permit to its outcome) is slow.
    pub slow_call_duration: Duration,
    /// How many of the most recent calls the breaker judges on.
    pub window: usize,
    /// The fewest calls in the window before the breaker judges at all (at most `window`),
    /// so that the first failures after a start or a close cannot open it alone. Unset, it
    /// is the dependency's default, or the window when that is smaller.
    pub min_calls: usize,
    /// How long an open breaker refuses every call before it lets probes through.
    pub cooldown: Duration,
    /// How many probe calls a half-open breaker lets through; it closes when they all
    /// completed under both thresholds, and opens again otherwise.
    pub half_open_calls: usize,
}

/// The variables of one dependency's breaker.
pub(super) struct BreakerVars {
    pub failure_rate: &'static str,
    pub slow_call_rate: &'static str,
    pub slow_call_duration: &'static str,
    pub window: &'static str,
    pub min_calls: &'static str,
    pub cooldown: &'static str,
    pub half_open_calls: &'static str,
}

impl BreakerSettings {
    /// Reads one breaker's variables, each falling back to its value in `defaults`.
    pub(super) fn read(
        vars: &Vars<'_>,
        names: &BreakerVars,
        defaults: BreakerSettings,
    ) -> Result<Self, ConfigError> {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let window = vars.range(names.window, defaults.window, 2, 1000)?;
        // Unset, the minimum follows a window set below it, so that shrinking the window
        // alone is enough (and a configuration from before the minimum was a setting, when
        // it was half the window, keeps working).
        let min_calls = defaults.min_calls.min(window);
        let settings = Self {
            failure_rate: share(vars, names.failure_rate, defaults.failure_rate)?,
            slow_call_rate: share(vars, names.slow_call_rate, defaults.slow_call_rate)?,
            slow_call_duration: vars.duration_range(
                names.slow_call_duration,
                defaults.slow_call_duration,
                ms(1),
                secs(600),
            )?,
            window,
            min_calls: vars.range(names.min_calls, min_calls, 1, 1000)?,
            cooldown: vars.duration_range(names.cooldown, defaults.cooldown, ms(100), secs(600))?,
            half_open_calls: vars.range(names.half_open_calls, defaults.half_open_calls, 1, 100)?,
        };
        if settings.min_calls > settings.window {
            return Err(error(
                names.min_calls,
                format!(
                    "{} is above {} ({}): the window never holds that many calls",
                    settings.min_calls, names.window, settings.window
                ),
            ));
        }
        Ok(settings)
    }
}

/// How a dependency's idempotent calls are retried (`crate::resilience::retry`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySettings {
    /// Attempts of one call, the first included: 1 turns retries off.
    pub attempts: u32,
    /// The ceiling of the first retry's wait; each further retry doubles it, and the wait is
    /// drawn uniformly below the ceiling (full jitter).
    pub backoff: Duration,
    /// Retries allowed per call over the budget's window: 0.1 lets one call in ten be
    /// retried, however many attempts each may have.
    pub budget_ratio: f32,
    /// Retries allowed per second on top of the ratio, so that an instance with little
    /// traffic can still retry now and then.
    pub budget_min_per_sec: u32,
}

/// The variables of one dependency's retries.
pub(super) struct RetryVars {
    pub attempts: &'static str,
    pub backoff: &'static str,
    pub budget_ratio: &'static str,
    pub budget_min_per_sec: &'static str,
}

impl RetrySettings {
    /// Reads one dependency's retry variables, each falling back to its value in `defaults`.
    pub(super) fn read(
        vars: &Vars<'_>,
        names: &RetryVars,
        defaults: RetrySettings,
    ) -> Result<Self, ConfigError> {
        let budget_ratio = vars.parse(names.budget_ratio, defaults.budget_ratio)?;
        // Written so that NaN fails it too.
        if !(0.0..=1.0).contains(&budget_ratio) {
            return Err(error(
                names.budget_ratio,
                format!("{budget_ratio} is not a share of calls: at least 0, at most 1"),
            ));
        }
        Ok(Self {
            attempts: vars.range(names.attempts, defaults.attempts, 1, 10)?,
            backoff: vars.duration_range(
                names.backoff,
                defaults.backoff,
                Duration::from_millis(1),
                Duration::from_secs(10),
            )?,
            budget_ratio,
            budget_min_per_sec: vars.range(
                names.budget_min_per_sec,
                defaults.budget_min_per_sec,
                0,
                10_000,
            )?,
        })
    }
}

/// A share of calls: above 0, at most 1.
fn share(vars: &Vars<'_>, var: &'static str, default: f64) -> Result<f64, ConfigError> {
    let rate: f64 = vars.parse(var, default)?;
    // Written so that NaN fails it too.
    let in_range = rate > 0.0 && rate <= 1.0;
    if !in_range {
        return Err(error(
            var,
            format!("{rate} is not a share of calls: above 0, at most 1"),
        ));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{refused_var, with_vars};

    // Made-up names outside the `KEEL_` prefix: see `vars.rs`'s tests.
    const NAMES: BreakerVars = BreakerVars {
        failure_rate: "DEP_FAILURE_RATE",
        slow_call_rate: "DEP_SLOW_CALL_RATE",
        slow_call_duration: "DEP_SLOW_CALL_DURATION",
        window: "DEP_WINDOW",
        min_calls: "DEP_MIN_CALLS",
        cooldown: "DEP_COOLDOWN",
        half_open_calls: "DEP_HALF_OPEN_CALLS",
    };

    const DEFAULTS: BreakerSettings = BreakerSettings {
        failure_rate: 0.5,
        slow_call_rate: 0.8,
        slow_call_duration: Duration::from_millis(25),
        window: 20,
        min_calls: 10,
        cooldown: Duration::from_secs(5),
        half_open_calls: 3,
    };

    const RETRY_NAMES: RetryVars = RetryVars {
        attempts: "DEP_RETRY_ATTEMPTS",
        backoff: "DEP_RETRY_BACKOFF",
        budget_ratio: "DEP_RETRY_BUDGET",
        budget_min_per_sec: "DEP_RETRY_MIN_PER_SEC",
    };

    const RETRY_DEFAULTS: RetrySettings = RetrySettings {
        attempts: 2,
        backoff: Duration::from_millis(5),
        budget_ratio: 0.1,
        budget_min_per_sec: 10,
    };

    fn breaker(pairs: &[(&str, &str)]) -> Result<BreakerSettings, ConfigError> {
        with_vars(pairs, |vars| BreakerSettings::read(vars, &NAMES, DEFAULTS))
    }

    fn retry(pairs: &[(&str, &str)]) -> Result<RetrySettings, ConfigError> {
        with_vars(pairs, |vars| {
            RetrySettings::read(vars, &RETRY_NAMES, RETRY_DEFAULTS)
        })
    }

    #[test]
    fn unset_variables_take_the_dependencys_defaults() {
        assert_eq!(breaker(&[]), Ok(DEFAULTS));
        assert_eq!(retry(&[]), Ok(RETRY_DEFAULTS));
    }

    #[test]
    fn every_breaker_variable_is_read_under_its_own_name() {
        let read = breaker(&[
            ("DEP_FAILURE_RATE", "0.25"),
            ("DEP_SLOW_CALL_RATE", "1"),
            ("DEP_SLOW_CALL_DURATION", "2s"),
            ("DEP_WINDOW", "100"),
            ("DEP_MIN_CALLS", "100"),
            ("DEP_COOLDOWN", "30s"),
            ("DEP_HALF_OPEN_CALLS", "7"),
        ]);
        assert_eq!(
            read,
            Ok(BreakerSettings {
                failure_rate: 0.25,
                slow_call_rate: 1.0,
                slow_call_duration: Duration::from_secs(2),
                window: 100,
                min_calls: 100,
                cooldown: Duration::from_secs(30),
                half_open_calls: 7,
            })
        );
    }

    #[test]
    fn each_bad_breaker_value_names_its_variable() {
        let refused = [
            ("DEP_FAILURE_RATE", "0"),
            ("DEP_FAILURE_RATE", "1.01"),
            ("DEP_FAILURE_RATE", "NaN"),
            ("DEP_FAILURE_RATE", "50%"),
            ("DEP_SLOW_CALL_RATE", "0"),
            ("DEP_SLOW_CALL_RATE", "-1"),
            ("DEP_SLOW_CALL_DURATION", "0ms"),
            ("DEP_SLOW_CALL_DURATION", "11m"),
            ("DEP_SLOW_CALL_DURATION", "slow"),
            ("DEP_WINDOW", "1"),
            ("DEP_WINDOW", "1001"),
            ("DEP_MIN_CALLS", "0"),
            ("DEP_MIN_CALLS", "21"),
            ("DEP_COOLDOWN", "99ms"),
            ("DEP_COOLDOWN", "11m"),
            ("DEP_HALF_OPEN_CALLS", "0"),
            ("DEP_HALF_OPEN_CALLS", "101"),
        ];
        for (var, value) in refused {
            let named = refused_var(&[(var, value)], |vars| {
                BreakerSettings::read(vars, &NAMES, DEFAULTS)
            });
            assert_eq!(named, var, "{var}={value:?}");
        }
    }

    #[test]
    fn a_minimum_above_the_window_is_refused_naming_both() {
        let err = breaker(&[("DEP_WINDOW", "10"), ("DEP_MIN_CALLS", "11")]).unwrap_err();
        assert_eq!(err.var, "DEP_MIN_CALLS");
        assert_eq!(
            err.message,
            "11 is above DEP_WINDOW (10): the window never holds that many calls"
        );
        let equal = breaker(&[("DEP_WINDOW", "10"), ("DEP_MIN_CALLS", "10")]).unwrap();
        assert_eq!(equal.min_calls, equal.window);
    }

    #[test]
    fn an_unset_minimum_follows_a_smaller_window() {
        let small = breaker(&[("DEP_WINDOW", "4")]).unwrap();
        assert_eq!((small.window, small.min_calls), (4, 4));
        let large = breaker(&[("DEP_WINDOW", "100")]).unwrap();
        assert_eq!((large.window, large.min_calls), (100, DEFAULTS.min_calls));
    }

    #[test]
    fn every_retry_variable_is_read_and_checked() {
        let read = retry(&[
            ("DEP_RETRY_ATTEMPTS", "1"),
            ("DEP_RETRY_BACKOFF", "10s"),
            ("DEP_RETRY_BUDGET", "0"),
            ("DEP_RETRY_MIN_PER_SEC", "0"),
        ]);
        assert_eq!(
            read,
            Ok(RetrySettings {
                attempts: 1,
                backoff: Duration::from_secs(10),
                budget_ratio: 0.0,
                budget_min_per_sec: 0,
            })
        );
        let refused = [
            ("DEP_RETRY_ATTEMPTS", "0"),
            ("DEP_RETRY_ATTEMPTS", "11"),
            ("DEP_RETRY_BACKOFF", "0ms"),
            ("DEP_RETRY_BACKOFF", "11s"),
            ("DEP_RETRY_BUDGET", "1.5"),
            ("DEP_RETRY_BUDGET", "NaN"),
            ("DEP_RETRY_MIN_PER_SEC", "10001"),
        ];
        for (var, value) in refused {
            let named = refused_var(&[(var, value)], |vars| {
                RetrySettings::read(vars, &RETRY_NAMES, RETRY_DEFAULTS)
            });
            assert_eq!(named, var, "{var}={value:?}");
        }
    }
}
