//! Logs, traces and metrics: the instruments every later chapter is judged by.
//!
//! * **Logs** — `tracing` to stdout, text or JSON (`KEEL_LOG_FORMAT`), filtered by
//!   `RUST_LOG`. Every line of a request carries its request id and, when traces are on,
//!   its trace id and span id (fields of the request span).
//! * **Traces** — the same `tracing` spans, exported through OpenTelemetry (OTLP/gRPC) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`traces`]); unset, no OpenTelemetry layer is
//!   installed at all. A request is one trace: the HTTP server span, the handler, each SQL
//!   statement (`db::Db`), password hashing on the blocking pool ([`spawn_blocking`]).
//!   `traceparent` is honoured on the way in and returned on the way out ([`propagation`]).
//! * **Metrics** — Prometheus text on the admin listener's `/metrics` ([`metrics`]).
//!
//! The fmt layer has its own filter (`RUST_LOG`), and the OpenTelemetry layer its own
//! (`keel` at INFO): turning logs down to `warn` does not thin out the traces.

pub mod metrics;
pub mod propagation;
pub mod traces;

use std::io::IsTerminal as _;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// Flushes and stops the trace exporter when the process ends.
#[must_use = "dropping the guard does not flush traces; call shutdown() at exit"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports the spans still buffered, then stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("keel: could not flush traces at exit: {e}");
        }
    }
}

/// Installs the global subscriber: logs, and traces when configured. Call once, inside the
/// tokio runtime (the OTLP exporter's gRPC client needs it).
pub fn init(
    log: &LogConfig,
    telemetry: Option<&TelemetryConfig>,
) -> anyhow::Result<TelemetryGuard> {
    init_to(log, telemetry, Stream::Stdout)
}

/// Logs only, on stderr: for a command whose stdout is its answer (`keel jobs dead
/// --json`), which a log line must not interleave.
pub fn init_for_command(log: &LogConfig) -> anyhow::Result<TelemetryGuard> {
    init_to(log, None, Stream::Stderr)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

fn init_to(
    log: &LogConfig,
    telemetry: Option<&TelemetryConfig>,
    stream: Stream,
) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&log.filter)?;
    let writer = move || -> Box<dyn std::io::Write> {
        match stream {
            Stream::Stdout => Box::new(std::io::stdout()),
            Stream::Stderr => Box::new(std::io::stderr()),
        }
    };
    let terminal = match stream {
        Stream::Stdout => std::io::stdout().is_terminal(),
        Stream::Stderr => std::io::stderr().is_terminal(),
    };
    let fmt = match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(terminal)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
    };
    let traces = telemetry.and_then(|t| t.traces.as_ref());
    let (otel, provider) = match traces {
        Some(config) => {
            let provider = traces::provider(config)?;
            let layer = traces::layer(&provider).with_filter(otel_filter()).boxed();
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// What the OpenTelemetry layer sees: Keel's own spans from DEBUG up (the statement
/// spans are DEBUG, so that with traces off and logs at INFO no layer wants them and they
/// cost nothing), and its WARN and ERROR events, which become events on their span. INFO
/// events (a line per response) stay in the logs: as span events they would double the
/// export for nothing the span does not already say.
///
/// The filter states its most verbose level (DEBUG). Without that hint, tracing assumes
/// the layer may want TRACE: with traces on, the global maximum level (and the `log`
/// bridge's) would be TRACE, and every TRACE callsite of every dependency (hyper, h2,
/// sqlx) would get past the one-comparison level check to a per-callsite lookup.
pub fn otel_filter() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    let filter: FilterFn<fn(&Metadata<'_>) -> bool> = FilterFn::new(|meta| {
        let floor = if meta.is_span() {
            Level::DEBUG
        } else {
            Level::WARN
        };
        meta.target().starts_with("keel") && *meta.level() <= floor
    });
    filter.with_max_level_hint(Level::DEBUG)
}

/// `tokio::task::spawn_blocking`, keeping the caller's span: the blocking work (an argon2
/// hash) appears in the request's trace, and its log lines carry the request's ids.
pub fn spawn_blocking<F, R>(work: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
}

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::layer::Filter;

    use super::*;

    #[test]
    fn the_otel_filter_states_its_most_verbose_level() {
        // What the global maximum level is computed from: DEBUG, the statement spans'.
        assert_eq!(
            Filter::<tracing_subscriber::Registry>::max_level_hint(&otel_filter()),
            Some(LevelFilter::DEBUG)
        );
    }
}
