//! Idempotency keys: how long a create's first response is kept for its retries, how long
//! a retry waits for a first request still running, and how often expired keys are pruned.

use std::time::Duration;

use super::vars::{ConfigError, Vars};

#[derive(Debug, Clone, Copy)]
pub struct IdempotencyConfig {
    /// `KEEL_IDEMPOTENCY_TTL`: how long a key and its first response are kept. A retry
    /// within it is answered with that response; after it, the key is free and the same
    /// request creates anew. The contract (shared/api.md) promises 24 hours: clients retry
    /// for minutes, and a day also covers a client that comes back after an outage.
    pub ttl: Duration,
    /// `KEEL_IDEMPOTENCY_WAIT`: how long a request waits for the first request with its
    /// key to finish before it is answered 409. Duplicates that arrive together (a client
    /// that retries on a timeout while the first attempt is still being served) wait this
    /// long and then get the first response; a first request still running after it is
    /// stuck enough that the client should hear so. Well under `KEEL_DEADLINE_WRITE`, so
    /// the waiting request still has time to answer.
    pub wait: Duration,
    /// `KEEL_IDEMPOTENCY_PRUNE_INTERVAL`: how often expired keys are deleted. Expired keys
    /// are already ignored when read, so this bounds the table's size, not correctness.
    pub prune_interval: Duration,
}

impl IdempotencyConfig {
    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let secs = Duration::from_secs;
        let ms = Duration::from_millis;
        Ok(Self {
            ttl: vars.duration_range(
                "KEEL_IDEMPOTENCY_TTL",
                secs(86_400),
                secs(1),
                secs(30 * 86_400),
            )?,
            wait: vars.duration_range("KEEL_IDEMPOTENCY_WAIT", secs(2), ms(10), secs(60))?,
            prune_interval: vars.duration_range(
                "KEEL_IDEMPOTENCY_PRUNE_INTERVAL",
                secs(60),
                ms(100),
                secs(86_400),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{refused_var, with_vars};

    #[test]
    fn keys_are_kept_a_day_and_a_duplicate_waits_two_seconds() {
        let config = with_vars(&[], IdempotencyConfig::read).unwrap();
        assert_eq!(config.ttl, Duration::from_secs(86_400));
        assert_eq!(config.wait, Duration::from_secs(2));
        assert_eq!(config.prune_interval, Duration::from_secs(60));
    }

    #[test]
    fn each_setting_is_read_in_its_own_unit() {
        let config = with_vars(
            &[
                ("KEEL_IDEMPOTENCY_TTL", "1h"),
                ("KEEL_IDEMPOTENCY_WAIT", "250ms"),
                ("KEEL_IDEMPOTENCY_PRUNE_INTERVAL", "5m"),
            ],
            IdempotencyConfig::read,
        )
        .unwrap();
        assert_eq!(config.ttl, Duration::from_secs(3600));
        assert_eq!(config.wait, Duration::from_millis(250));
        assert_eq!(config.prune_interval, Duration::from_secs(300));
    }

    #[test]
    fn each_kind_of_bad_value_names_its_variable() {
        let read = IdempotencyConfig::read;
        for (var, value) in [
            ("KEEL_IDEMPOTENCY_TTL", "0s"),
            ("KEEL_IDEMPOTENCY_TTL", "31d"),
            ("KEEL_IDEMPOTENCY_TTL", "a day"),
            // Zero would mean "wait forever" to Postgres's lock_timeout.
            ("KEEL_IDEMPOTENCY_WAIT", "0ms"),
            ("KEEL_IDEMPOTENCY_WAIT", "2m"),
            ("KEEL_IDEMPOTENCY_PRUNE_INTERVAL", "10ms"),
        ] {
            assert_eq!(refused_var(&[(var, value)], read), var, "{var}={value}");
        }
    }
}
