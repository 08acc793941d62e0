//! The trace of a background job: the request that enqueued it, the relay's publish, the
//! worker's consume and the SMTP send are one trace, checked with an in-memory exporter.
//!
//! What it proves is the propagation `jobs` promises (its module doc): the request's trace
//! context is captured in the outbox row at enqueue time, the relay parents its publish
//! span on it and writes its own context into the message's headers, and the worker
//! parents its process span on those headers — so an operator who finds a slow or failed
//! email finds the request that caused it, and the other way round.
//!
//! It holds whatever the logs keep: with `RUST_LOG=keel=trace` the current span at enqueue
//! time is a handler's TRACE-level span, which the OpenTelemetry layer never sees and which
//! therefore has no trace context; the outbox takes its context from a span of its own
//! (`jobs.enqueue`), so the job still joins the request's trace.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel::server::Role;
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::StatusCode;
use serde_json::json;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::helpers::{TestDb, eventually, spawn_role};
use crate::observability::descends_from;
use crate::smtp_sink::{Behaviour, SmtpSink};

/// The one finished span called `name` in `spans`; fails with every name seen otherwise.
fn only<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "one {name:?} span in the trace; it has {:?}",
        spans.iter().map(|s| s.name.as_ref()).collect::<Vec<_>>()
    );
    found[0]
}

/// The spans of one assignment's trace, from a `Role::All` app whose spans go to an
/// in-memory exporter and whose logs (to nowhere) are filtered by `log_filter`.
///
/// The log layer matters: a span that it keeps and the OpenTelemetry layer filters out (a
/// handler's TRACE-level span, with `keel=trace`) is the current span at enqueue time, and
/// has no trace context of its own.
async fn assignment_trace(log_filter: &str) -> Vec<SpanData> {
    // Arrange: the server, relay and worker all run on this test's current-thread runtime,
    // so under this thread's subscriber.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(keel::telemetry::traces::layer(&provider).with_filter(keel::telemetry::otel_filter()))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(tracing_subscriber::EnvFilter::new(log_filter)),
        );
    crate::helpers::share_callsites_with_scoped_subscribers();
    let _guard = tracing::subscriber::set_default(subscriber);
    let sink = SmtpSink::start(Behaviour::default()).await;
    let test_db = Arc::new(TestDb::create().await);
    let pool = test_db.pool.clone();
    let smtp = sink.url();
    let app = spawn_role(Role::All, test_db, pool, |vars: &mut HashMap<_, _>| {
        vars.insert("SMTP_URL".into(), smtp);
        vars.insert("KEEL_OUTBOX_POLL_INTERVAL".into(), "200ms".into());
    })
    .await;
    let owner = app.signup().await;
    let assignee = app.signup().await;
    let project = app.create_project(&owner, "Traced").await;
    app.add_member(&owner, project, &assignee, "member").await;

    // Act: an assignment, and its email.
    let response = app
        .post(
            &format!("/v1/projects/{project}/tasks"),
            Some(&owner.token),
            &json!({"title": "follow me", "assignee_id": assignee.id}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let traceparent = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let trace = TraceId::from_hex(traceparent.split('-').nth(1).expect("a trace id")).unwrap();
    let delivered = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(delivered.len(), 1, "the email is sent");
    // The process span ends after the ack, a moment after the sink has the message.
    let finished = eventually(Duration::from_secs(10), async || {
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .any(|s| s.name == PROCESS)
    })
    .await;
    let all = exporter.get_finished_spans().unwrap();
    assert!(
        finished,
        "a process span is exported; spans seen: {:?}",
        all.iter().map(|s| s.name.as_ref()).collect::<Vec<_>>()
    );
    provider.shutdown().ok();
    all.into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

const PROCESS: &str = "process email.task_assigned";

/// Asserts request → publish → process → send, each a descendant of the one before.
fn assert_one_trace_from_request_to_send(spans: &[SpanData]) {
    let request = only(spans, "POST /v1/projects/{id}/tasks");
    assert_eq!(request.span_kind, SpanKind::Server);
    let publish = only(spans, "publish email.task_assigned");
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert!(
        descends_from(spans, publish, request.span_context.span_id()),
        "the publish descends from the request that enqueued the job"
    );
    let process = only(spans, PROCESS);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert!(
        descends_from(spans, process, publish.span_context.span_id()),
        "the consume descends from the publish"
    );
    let send = only(spans, "send email");
    assert_eq!(send.span_kind, SpanKind::Client);
    assert!(
        descends_from(spans, send, process.span_context.span_id()),
        "the send is inside the consume"
    );
    assert!(
        publish.start_time <= process.start_time,
        "the publish, then the consume"
    );
}

#[tokio::test]
async fn an_assignment_is_one_trace_from_the_request_through_publish_and_consume_to_the_send() {
    let spans = assignment_trace("info").await;

    assert_one_trace_from_request_to_send(&spans);
}

#[tokio::test]
async fn with_logs_at_trace_the_job_still_joins_the_trace_of_its_request() {
    // `keel=trace` keeps the handlers' TRACE-level spans for the logs; the OpenTelemetry
    // layer does not see them, yet one is the current span when the job is enqueued.
    let spans = assignment_trace("keel=trace").await;

    assert_one_trace_from_request_to_send(&spans);
}
