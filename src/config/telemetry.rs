//! Metrics and traces: `KEEL_METRICS_ENABLED` and the standard `OTEL_*` variables of the
//! OpenTelemetry specification (endpoint, service name, sampler, export queue).

use super::vars::{ConfigError, Vars, error};

/// Metrics and traces.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `KEEL_METRICS_ENABLED`: serve Prometheus metrics on the admin listener's `/metrics`.
    /// On by default; off only to measure what metrics cost.
    pub metrics_enabled: bool,
    /// Trace export, from the standard `OTEL_*` variables; `None` when no OTLP endpoint is
    /// set: then no exporter and no OpenTelemetry layer run at all (no cost).
    pub traces: Option<TracesConfig>,
}

/// Where and how traces are exported (OTLP over gRPC).
#[derive(Debug, Clone)]
pub struct TracesConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    /// `OTEL_SERVICE_NAME` (default `keel`).
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`).
    pub sampler: Sampler,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans buffered for export. Keel's default (16 384, not
    /// the SDK's 2 048) holds about a second of spans at 15 000 spans/s, which a 2-core
    /// instance produces under load; past it, spans are dropped rather than requests slowed.
    pub span_queue_size: usize,
}

/// The samplers of the OpenTelemetry specification's `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl TelemetryConfig {
    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let endpoint = vars
            .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|e| ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e))
            .or_else(|| {
                vars.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e))
            });
        let traces = match endpoint {
            None => None,
            Some((var, endpoint)) => Some(TracesConfig::read(vars, var, endpoint)?),
        };
        Ok(Self {
            metrics_enabled: vars.parse("KEEL_METRICS_ENABLED", true)?,
            traces,
        })
    }
}

impl TracesConfig {
    /// The rest of the trace variables, read only once an endpoint (`var`) is set: without
    /// one they configure nothing, so they cannot stop start-up either.
    fn read(vars: &Vars<'_>, var: &'static str, endpoint: String) -> Result<Self, ConfigError> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(error(
                var,
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        Ok(Self {
            endpoint,
            service_name: vars
                .get("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| "keel".into()),
            sampler: Sampler::read(vars)?,
            span_queue_size: vars.range("OTEL_BSP_MAX_QUEUE_SIZE", 16_384, 512, 1 << 20)?,
        })
    }
}

impl Sampler {
    /// The SDK reads these variables too, but falls back to its default on a typo with
    /// only a log line; here a typo stops start-up like any other bad value.
    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let ratio = || -> Result<f64, ConfigError> {
            const VAR: &str = "OTEL_TRACES_SAMPLER_ARG";
            let raw = vars.get(VAR).unwrap_or_else(|| "1.0".into());
            match raw.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(error(VAR, format!("{raw:?} is not a ratio from 0 to 1"))),
            }
        };
        match vars.get("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => Ok(Self::ParentBasedAlwaysOn),
            Some("always_on") => Ok(Self::AlwaysOn),
            Some("always_off") => Ok(Self::AlwaysOff),
            Some("traceidratio") => Ok(Self::TraceIdRatio(ratio()?)),
            Some("parentbased_always_off") => Ok(Self::ParentBasedAlwaysOff),
            Some("parentbased_traceidratio") => Ok(Self::ParentBasedTraceIdRatio(ratio()?)),
            Some(other) => Err(error(
                "OTEL_TRACES_SAMPLER",
                format!(
                    "{other:?} is not a sampler (always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio)"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{refused_var, with_vars};

    const OTEL: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");

    fn var_of(pairs: &[(&str, &str)]) -> &'static str {
        refused_var(pairs, TelemetryConfig::read)
    }

    #[test]
    fn traces_are_off_without_an_endpoint_and_follow_the_otel_variables() {
        let off = with_vars(&[], TelemetryConfig::read).unwrap();
        assert!(off.traces.is_none());
        assert!(off.metrics_enabled);
        let on = with_vars(
            &[
                OTEL,
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_SERVICE_NAME", "keel-api"),
            ],
            TelemetryConfig::read,
        )
        .unwrap();
        let traces = on.traces.unwrap();
        assert_eq!(traces.sampler, Sampler::ParentBasedTraceIdRatio(0.25));
        assert_eq!(traces.service_name, "keel-api");
    }

    #[test]
    fn the_traces_endpoint_wins_over_the_general_one() {
        let traces = with_vars(
            &[
                OTEL,
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:4317"),
            ],
            TelemetryConfig::read,
        )
        .unwrap()
        .traces
        .unwrap();
        assert_eq!(traces.endpoint, "https://traces:4317");
        assert_eq!(traces.sampler, Sampler::ParentBasedAlwaysOn);
        assert_eq!(traces.span_queue_size, 16_384);
    }

    #[test]
    fn trace_variables_are_not_checked_while_traces_are_off() {
        let off = with_vars(
            &[
                ("OTEL_TRACES_SAMPLER", "always"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "1"),
            ],
            TelemetryConfig::read,
        );
        assert!(off.unwrap().traces.is_none());
    }

    #[test]
    fn each_kind_of_bad_value_names_its_variable() {
        assert_eq!(
            var_of(&[("KEEL_METRICS_ENABLED", "maybe")]),
            "KEEL_METRICS_ENABLED"
        );
        assert_eq!(
            var_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]),
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        );
        assert_eq!(
            var_of(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4317")]),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        );
        assert_eq!(
            var_of(&[OTEL, ("OTEL_TRACES_SAMPLER", "always")]),
            "OTEL_TRACES_SAMPLER"
        );
        assert_eq!(
            var_of(&[
                OTEL,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2")
            ]),
            "OTEL_TRACES_SAMPLER_ARG"
        );
        assert_eq!(
            var_of(&[OTEL, ("OTEL_BSP_MAX_QUEUE_SIZE", "100")]),
            "OTEL_BSP_MAX_QUEUE_SIZE"
        );
    }
}
