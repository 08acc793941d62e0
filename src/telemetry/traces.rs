//! The OpenTelemetry trace pipeline: an OTLP/gRPC exporter behind a batch processor.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler as SdkSampler, SdkTracerProvider,
};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Sampler, TracesConfig};

/// A tracer provider exporting to the configured collector, in batches, off the request
/// path: a slow or absent collector costs dropped spans, never request latency.
pub fn provider(config: &TracesConfig) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&config.endpoint)
        .build()?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.span_queue_size)
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(config.sampler))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build())
}

/// The tracing layer that turns spans into OpenTelemetry spans. Source locations, thread
/// names and busy/idle timings are off: each is work on every span, and none says more
/// than the span's name and duration already do. Context activation is off too: it would
/// attach the span's OpenTelemetry context to a thread-local stack on every poll of every
/// instrumented future (the layer's costliest callback; docs/benchmarks.md), and
/// nothing in Keel reads `opentelemetry::Context::current()`: parents come from the tracing
/// span tree, and propagation reads `Span::context()` (OpenTelemetrySpanExt).
pub fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("keel"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
}

fn sampler(sampler: Sampler) -> SdkSampler {
    let parent_based = |root| SdkSampler::ParentBased(Box::new(root));
    match sampler {
        Sampler::AlwaysOn => SdkSampler::AlwaysOn,
        Sampler::AlwaysOff => SdkSampler::AlwaysOff,
        Sampler::TraceIdRatio(ratio) => SdkSampler::TraceIdRatioBased(ratio),
        Sampler::ParentBasedAlwaysOn => parent_based(SdkSampler::AlwaysOn),
        Sampler::ParentBasedAlwaysOff => parent_based(SdkSampler::AlwaysOff),
        Sampler::ParentBasedTraceIdRatio(ratio) => {
            parent_based(SdkSampler::TraceIdRatioBased(ratio))
        }
    }
}
