//! The workshop fix flags: how often each instance re-reads them.

use std::time::Duration;

use super::vars::{ConfigError, Vars};

#[derive(Debug, Clone)]
pub struct FlagsConfig {
    /// `KEEL_FLAGS_POLL_INTERVAL`: how often the flag snapshot is re-read when no
    /// notification arrives (the fallback behind LISTEN/NOTIFY). At most 5 s: the contract
    /// promises a change reaches every instance within 5 s.
    pub poll_interval: Duration,
}

impl FlagsConfig {
    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            poll_interval: vars.duration_range(
                "KEEL_FLAGS_POLL_INTERVAL",
                Duration::from_secs(2),
                Duration::from_millis(100),
                Duration::from_secs(5),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::with_vars;

    #[test]
    fn the_poll_interval_defaults_to_two_seconds() {
        let flags = with_vars(&[], FlagsConfig::read).unwrap();
        assert_eq!(flags.poll_interval, Duration::from_secs(2));
    }

    #[test]
    fn each_kind_of_bad_value_names_its_variable() {
        let err = with_vars(&[("KEEL_FLAGS_POLL_INTERVAL", "10s")], FlagsConfig::read);
        assert_eq!(
            err.expect_err("configuration should be refused").var,
            "KEEL_FLAGS_POLL_INTERVAL"
        );
    }
}
