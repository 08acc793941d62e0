//! Logs: the `RUST_LOG` filter and the line format.

use std::str::FromStr;

use super::vars::{ConfigError, Vars, error, process_env};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for a log pipeline.
    Json,
}

impl FromStr for LogFormat {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected `text` or `json`"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `RUST_LOG`: an `EnvFilter` directive.
    pub filter: String,
    /// `KEEL_LOG_FORMAT`.
    pub format: LogFormat,
}

impl LogConfig {
    /// Reads only the log variables, so that a role can log before (or without) reading
    /// the whole configuration.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Vars::new(&process_env))
    }

    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let log = LogConfig {
            filter: vars.get("RUST_LOG").unwrap_or_else(|| "info".into()),
            format: vars.parse("KEEL_LOG_FORMAT", LogFormat::Text)?,
        };
        // Checked here rather than at subscriber start-up so that a bad filter is one line
        // naming the variable, like every other bad value.
        tracing_subscriber::EnvFilter::try_new(&log.filter)
            .map_err(|e| error("RUST_LOG", format!("{:?} is not a filter: {e}", log.filter)))?;
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{refused_var, with_vars};

    fn var_of(pairs: &[(&str, &str)]) -> &'static str {
        refused_var(pairs, LogConfig::read)
    }

    #[test]
    fn defaults_are_info_in_text() {
        let log = with_vars(&[], LogConfig::read).unwrap();
        assert_eq!(log.filter, "info");
        assert_eq!(log.format, LogFormat::Text);
    }

    #[test]
    fn each_kind_of_bad_value_names_its_variable() {
        assert_eq!(var_of(&[("KEEL_LOG_FORMAT", "xml")]), "KEEL_LOG_FORMAT");
        assert_eq!(var_of(&[("RUST_LOG", "keel=loud")]), "RUST_LOG");
    }
}
