//! The reader every section uses: a lookup function plus the few rules that every variable
//! follows — empty counts as unset, a value that does not parse or falls out of its range is
//! an error naming the variable, durations are written the humantime way (`500ms`, `5s`,
//! `1m`), and a secret is never echoed.
//!
//! The vocabulary of those rules lives here too ([`ConfigError`], and the [`Environment`] that
//! decides the rules for secrets), so that every section imports this file and none imports
//! the module that composes them.
//!
//! This is the whole of Keel's configuration parsing (the module doc of [`super`] says why
//! it is hand-written rather than clap's or figment's).

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

/// Where the process runs. `prod` refuses the development secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Dev,
    Prod,
}

impl FromStr for Environment {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dev" => Ok(Self::Dev),
            "prod" => Ok(Self::Prod),
            _ => Err("expected `dev` or `prod`"),
        }
    }
}

/// A configuration value that cannot be used, with the variable that holds it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it, in one line.
    pub message: String,
}

pub(super) fn error(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Secrets shorter than this are refused in production (HS256 wants at least 256 bits).
const MIN_SECRET_BYTES: usize = 32;

/// The lookup of a real run: the process environment. A value that is not UTF-8 counts as
/// unset, like an empty one.
pub(super) fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// The longest name prefix accepted (see [`Vars::prefix`]).
pub(super) const MAX_PREFIX_BYTES: usize = 64;

/// Reads variables through a lookup function; empty values count as unset.
pub(super) struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Vars<'a> {
    pub(super) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup }
    }
}

impl Vars<'_> {
    /// The raw value, or `None` when unset or empty (compose and Kubernetes files write
    /// `VAR=` to mean "the default").
    pub(super) fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.is_empty())
    }

    pub(super) fn parse<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| error(var, format!("{raw:?} is not valid: {e}"))),
        }
    }

    pub(super) fn duration(
        &self,
        var: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => humantime::parse_duration(&raw).map_err(|e| {
                error(
                    var,
                    format!("{raw:?} is not a duration ({e}); write e.g. 500ms, 5s, 1m"),
                )
            }),
        }
    }

    pub(super) fn range<T>(
        &self,
        var: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let value = self.parse(var, default)?;
        if value < min || value > max {
            return Err(error(var, format!("{value} is out of range {min}..={max}")));
        }
        Ok(value)
    }

    pub(super) fn duration_range(
        &self,
        var: &'static str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let value = self.duration(var, default)?;
        if value < min || value > max {
            return Err(error(
                var,
                format!(
                    "{} is out of range {}..={}",
                    humantime::format_duration(value),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ));
        }
        Ok(value)
    }

    /// A comma-separated list, each item trimmed, empty items dropped; empty when unset.
    pub(super) fn list(&self, var: &str) -> Vec<String> {
        self.get(var).map_or_else(Vec::new, |raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }

    /// A name prefix (Redis keys, RabbitMQ queues): 1 to 64 visible ASCII characters. It is
    /// repeated in every name, so it should stay short; a space would break tools that
    /// split on it.
    pub(super) fn prefix(&self, var: &'static str, default: &str) -> Result<String, ConfigError> {
        let prefix = self.get(var).unwrap_or_else(|| default.into());
        if prefix.len() > MAX_PREFIX_BYTES || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(error(
                var,
                format!(
                    "{prefix:?} must be 1 to {MAX_PREFIX_BYTES} visible ASCII characters, without spaces"
                ),
            ));
        }
        Ok(prefix)
    }

    /// A secret: the development default is used only in `dev`; in `prod` it must be set,
    /// long enough, and not the development value. The value is never echoed.
    pub(super) fn secret(
        &self,
        var: &'static str,
        env: Environment,
        dev_default: &str,
    ) -> Result<SecretString, ConfigError> {
        match (self.get(var), env) {
            (None, Environment::Dev) => Ok(dev_default.into()),
            (None, Environment::Prod) => Err(error(
                var,
                "must be set when KEEL_ENV=prod (the development default is refused)",
            )),
            (Some(v), Environment::Prod) if v == dev_default => Err(error(
                var,
                "is the development default, which is refused when KEEL_ENV=prod",
            )),
            (Some(v), Environment::Prod) if v.len() < MIN_SECRET_BYTES => Err(error(
                var,
                format!(
                    "is shorter than {MIN_SECRET_BYTES} bytes, which is refused when KEEL_ENV=prod"
                ),
            )),
            (Some(v), _) => Ok(v.into()),
        }
    }
}

/// The sections' tests read through this: exactly `pairs`, nothing from the process.
#[cfg(test)]
pub(super) fn with_vars<R>(pairs: &[(&str, &str)], read: impl FnOnce(&Vars<'_>) -> R) -> R {
    let lookup = |var: &str| {
        pairs
            .iter()
            .find(|(name, _)| *name == var)
            .map(|(_, value)| (*value).to_owned())
    };
    read(&Vars::new(&lookup))
}

/// The variable a section names when it refuses exactly `pairs` (the test fails if the
/// section accepts them).
#[cfg(test)]
pub(super) fn refused_var<T: std::fmt::Debug>(
    pairs: &[(&str, &str)],
    read: impl FnOnce(&Vars<'_>) -> Result<T, ConfigError>,
) -> &'static str {
    with_vars(pairs, read)
        .expect_err("configuration should be refused")
        .var
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    // Made-up names stay outside the `KEEL_`/`OTEL_` prefixes: `tests/api/config_docs.rs`
    // takes every such literal under src/ for a variable the service reads.
    const VAR: &str = "SOME_VARIABLE";
    const STRONG: &str = "a-production-secret-that-is-long-enough";

    fn message(err: ConfigError) -> String {
        assert_eq!(err.var, VAR);
        err.message
    }

    #[test]
    fn empty_counts_as_unset() {
        with_vars(&[(VAR, "")], |vars| {
            assert_eq!(vars.get(VAR), None);
            assert_eq!(vars.parse(VAR, 7_u32), Ok(7));
            assert_eq!(vars.range(VAR, 7_u32, 1, 10), Ok(7));
            assert_eq!(
                vars.duration(VAR, Duration::from_secs(3)),
                Ok(Duration::from_secs(3))
            );
            let err = vars.secret(VAR, Environment::Prod, "dev").unwrap_err();
            assert!(message(err).starts_with("must be set"));
        });
    }

    #[test]
    fn an_unset_variable_takes_its_default_and_a_set_one_wins() {
        with_vars(&[(VAR, "12")], |vars| {
            assert_eq!(vars.get(VAR).as_deref(), Some("12"));
            assert_eq!(vars.parse(VAR, 7_u32), Ok(12));
            assert_eq!(vars.parse("SOME_UNSET_VARIABLE", 7_u32), Ok(7));
        });
    }

    #[test]
    fn a_value_that_does_not_parse_is_quoted_with_the_parsers_reason() {
        let err = with_vars(&[(VAR, "ten")], |vars| vars.parse(VAR, 7_u32)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: SOME_VARIABLE: \"ten\" is not valid: invalid digit found in string"
        );
    }

    #[test]
    fn a_value_out_of_range_names_the_range() {
        let err = with_vars(&[(VAR, "11")], |vars| vars.range(VAR, 7_u32, 1, 10)).unwrap_err();
        assert_eq!(message(err), "11 is out of range 1..=10");
        let err = with_vars(&[(VAR, "0")], |vars| vars.range(VAR, 7_u32, 1, 10)).unwrap_err();
        assert_eq!(message(err), "0 is out of range 1..=10");
        let bounds = with_vars(&[(VAR, "10")], |vars| vars.range(VAR, 7_u32, 1, 10));
        assert_eq!(bounds, Ok(10), "the bounds are inclusive");
    }

    #[test]
    fn durations_use_humantime_syntax() {
        for (raw, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("1m", Duration::from_secs(60)),
            ("1h 30m", Duration::from_secs(5400)),
        ] {
            let read = with_vars(&[(VAR, raw)], |vars| vars.duration(VAR, Duration::ZERO));
            assert_eq!(read, Ok(expected), "{raw}");
        }
        for raw in ["soon", "5", "-1s"] {
            let err = with_vars(&[(VAR, raw)], |vars| vars.duration(VAR, Duration::ZERO));
            let message = message(err.unwrap_err());
            assert!(message.starts_with(&format!("{raw:?} is not a duration (")));
            assert!(
                message.ends_with("); write e.g. 500ms, 5s, 1m"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_duration_out_of_range_is_written_as_durations() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let read = |raw| {
            with_vars(&[(VAR, raw)], |vars| {
                vars.duration_range(VAR, min, min, max)
            })
        };
        assert_eq!(
            message(read("10s").unwrap_err()),
            "10s is out of range 100ms..=5s"
        );
        assert_eq!(
            message(read("1ms").unwrap_err()),
            "1ms is out of range 100ms..=5s"
        );
        assert_eq!(read("5s"), Ok(max), "the bounds are inclusive");
    }

    #[test]
    fn dev_takes_the_development_secret_and_any_value() {
        let unset = with_vars(&[], |vars| vars.secret(VAR, Environment::Dev, "dev-secret"));
        assert_eq!(unset.unwrap().expose_secret(), "dev-secret");
        let short = with_vars(&[(VAR, "short")], |vars| {
            vars.secret(VAR, Environment::Dev, "dev-secret")
        });
        assert_eq!(short.unwrap().expose_secret(), "short");
    }

    #[test]
    fn prod_refuses_a_missing_development_or_short_secret_without_echoing_it() {
        let dev_default = "a-development-secret-that-is-long-enough";
        let prod = |pairs: &[(&str, &str)]| {
            with_vars(pairs, |vars| {
                vars.secret(VAR, Environment::Prod, dev_default)
            })
        };

        let missing = message(prod(&[]).unwrap_err());
        assert_eq!(
            missing,
            "must be set when KEEL_ENV=prod (the development default is refused)"
        );

        let development = message(prod(&[(VAR, dev_default)]).unwrap_err());
        assert_eq!(
            development,
            "is the development default, which is refused when KEEL_ENV=prod"
        );

        let short = message(prod(&[(VAR, "tiny-secret")]).unwrap_err());
        assert_eq!(
            short,
            "is shorter than 32 bytes, which is refused when KEEL_ENV=prod"
        );

        let strong = prod(&[(VAR, STRONG)]).unwrap();
        assert_eq!(strong.expose_secret(), STRONG);
    }
}
