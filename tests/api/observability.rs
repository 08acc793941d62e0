//! Metrics and traces: what `/metrics` exposes, that its cardinality is bounded, and that a
//! request is one trace whose spans nest HTTP → SQL, checked with an in-memory exporter.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt as _;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with};

async fn scrape(app: &TestApp) -> String {
    let response = app
        .admin_request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The values of `label` over the series of `metric`.
fn label_values(exposition: &str, metric: &str, label: &str) -> HashSet<String> {
    let needle = format!("{label}=\"");
    exposition
        .lines()
        .filter(|line| line.starts_with(metric))
        .filter_map(|line| {
            let start = line.find(&needle)? + needle.len();
            let end = start + line[start..].find('"')?;
            Some(line[start..end].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn metrics_expose_a_latency_histogram_per_route_template() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let project = app.create_project(&user, "p").await;
    app.get_json("/v1/me", &user.token).await;
    app.get_json(&format!("/v1/projects/{project}"), &user.token)
        .await;
    app.get_json(&format!("/v1/projects/{project}/tasks"), &user.token)
        .await;

    let metrics = scrape(&app).await;

    let routes = label_values(
        &metrics,
        "http_server_request_duration_seconds_count",
        "http_route",
    );
    for route in [
        "/v1/me",
        "/v1/projects/{id}",
        "/v1/projects/{id}/tasks",
        "/v1/users",
        "/v1/auth/token",
    ] {
        assert!(routes.contains(route), "{route} missing from {routes:?}");
    }
    assert!(metrics.contains(r#"http_server_request_duration_seconds_bucket{http_request_method="GET",http_route="/v1/me",http_response_status_class="2xx",keel_route_class="read",le="0.0005"}"#));
    // Each route carries its class, so that a query per class needs no copy of the rule.
    assert_eq!(
        label_values(
            &metrics,
            "http_server_request_duration_seconds_count",
            "keel_route_class"
        ),
        ["auth", "list", "read", "write"].map(String::from).into(),
        "sign-up, a page, reads and a create"
    );
    for series in [
        "http_server_active_requests",
        "db_client_connection_count{db_client_connection_state=\"idle\"}",
        "db_client_connection_max",
        "db_client_connection_pending_requests",
        "db_client_connection_wait_time_seconds_count",
        "keel_fix_flag_enabled{flag=\"batch_loading\"} 1",
        "keel_build_info{version=",
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
    let statements = label_values(
        &metrics,
        "db_client_operation_duration_seconds_count",
        "db_query_summary",
    );
    assert!(
        statements.contains("SELECT project_members"),
        "{statements:?}"
    );
    assert!(statements.contains("INSERT users"), "{statements:?}");
}

#[tokio::test]
async fn ten_thousand_distinct_ids_add_no_series() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let ids: Vec<Uuid> = (0..10_000).map(|_| Uuid::now_v7()).collect();

    let requests = futures_util::stream::iter(ids.iter().enumerate().map(|(i, id)| {
        let path = if i % 2 == 0 {
            format!("/v1/projects/{id}")
        } else {
            format!("/v1/tasks/{id}")
        };
        let (app, token) = (&app, user.token.clone());
        async move { app.get(&path, &token).await.status() }
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await;
    assert!(requests.iter().all(|s| *s == StatusCode::NOT_FOUND));

    let metrics = scrape(&app).await;
    let leaked = ids
        .iter()
        .filter(|id| metrics.contains(&id.to_string()))
        .count();
    assert_eq!(leaked, 0, "no series may carry a requested id");
    // Every route label is a template of the API (or `unmatched`): a fixed set, whatever
    // the ids, shared with every other test in this process.
    let spec: serde_json::Value = app
        .request(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut templates: HashSet<String> =
        spec["paths"].as_object().unwrap().keys().cloned().collect();
    templates.extend(
        [
            "unmatched",
            "/openapi.json",
            "/docs",
            "/docs/",
            "/docs/{*rest}",
        ]
        .map(String::from),
    );
    let routes = label_values(
        &metrics,
        "http_server_request_duration_seconds_count",
        "http_route",
    );
    assert!(
        routes.is_subset(&templates),
        "unexpected route labels: {:?}",
        routes.difference(&templates).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn with_metrics_off_there_is_no_metrics_endpoint() {
    let app = spawn_app_with(|vars| {
        vars.insert("KEEL_METRICS_ENABLED".into(), "false".into());
    })
    .await;
    let response = app
        .admin_request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// Walks parents up from `span` to see whether `ancestor` is one of them. A chain longer
/// than `spans` would be a cycle.
pub(crate) fn descends_from(spans: &[SpanData], span: &SpanData, ancestor: SpanId) -> bool {
    let mut parent = span.parent_span_id;
    for _ in 0..=spans.len() {
        if parent == ancestor {
            return true;
        }
        match spans.iter().find(|s| s.span_context.span_id() == parent) {
            Some(next) => parent = next.parent_span_id,
            None => return false,
        }
    }
    false
}

#[tokio::test]
async fn a_request_is_one_trace_from_the_http_span_down_to_each_statement() {
    // Arrange: the app's spans go to an in-memory exporter (this test's runtime runs the
    // server on this thread, under this thread's subscriber), its logs to a buffer.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let logs = crate::helpers::Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::registry()
        .with(keel::telemetry::traces::layer(&provider).with_filter(keel::telemetry::otel_filter()))
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_span_list(true)
                .with_writer(move || writer.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
    crate::helpers::share_callsites_with_scoped_subscribers();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = spawn_app().await;
    let user = app.signup().await;
    let project = app.create_project(&user, "traced").await;
    let finished = || exporter.get_finished_spans().unwrap();

    // Act: a request that continues a caller's trace.
    let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let caller = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    let response = app
        .request(
            Method::GET,
            &format!("/v1/projects/{project}"),
            Some(&user.token),
        )
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .send()
        .await
        .unwrap();

    // Assert: the response names the trace, and the spans nest HTTP → SQL.
    assert_eq!(response.status(), StatusCode::OK);
    let returned = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(returned.starts_with(&format!("00-{trace}-")), "{returned}");
    let server_name = "GET /v1/projects/{id}";
    assert!(
        eventually(Duration::from_secs(5), async || finished()
            .iter()
            .any(|s| s.name == server_name))
        .await
    );
    let spans: Vec<SpanData> = finished()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    let server = spans
        .iter()
        .find(|s| s.name == server_name)
        .expect("the server span");
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(
        server.parent_span_id, caller,
        "the incoming traceparent is the parent"
    );
    assert!(returned.contains(&server.span_context.span_id().to_string()));
    assert_eq!(
        attribute(server, "http.route").as_deref(),
        Some("/v1/projects/{id}")
    );
    assert_eq!(
        attribute(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(attribute(server, "request_id").is_some());
    let clients = |system: &str| -> Vec<&SpanData> {
        spans
            .iter()
            .filter(|s| {
                s.span_kind == SpanKind::Client
                    && attribute(s, "db.system.name").as_deref() == Some(system)
            })
            .collect()
    };
    let client_spans = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .count();
    let statements = clients("postgresql");
    let names: Vec<&str> = statements.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(names, ["SELECT project_members", "SELECT projects"]);
    // The rate limit's budget first; then both reads miss the cold cache: a read
    // script, the statement, the fill.
    let redis = clients("redis");
    let names: Vec<&str> = redis.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "rate_limit.check",
            "cache.read",
            "cache.fill",
            "cache.read",
            "cache.fill"
        ]
    );
    assert_eq!(client_spans, statements.len() + redis.len());
    for call in statements.iter().chain(&redis) {
        assert!(
            descends_from(&spans, call, server.span_context.span_id()),
            "{} nests under the request",
            call.name
        );
        let everything: String = call
            .attributes
            .iter()
            .map(|kv| kv.value.to_string())
            .collect();
        assert!(
            !everything.contains(&project.to_string()),
            "no bound value or key in a client span: {everything}"
        );
        assert!(!everything.contains(&user.id.to_string()));
    }

    // Every log line of the request carries its trace id and span id.
    let server_span = server.span_context.span_id().to_string();
    let lines = logs.text();
    let response_line = lines
        .lines()
        .filter(|l| l.contains("\"response\""))
        .find(|l| l.contains(&trace.to_string()))
        .expect("the response log line carries the trace id");
    assert!(response_line.contains(&server_span), "{response_line}");

    // A request without a traceparent starts a trace of its own.
    exporter.reset();
    let response = app.get("/v1/me", &user.token).await;
    let fresh = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!fresh.contains(&trace.to_string()));
    assert!(
        eventually(Duration::from_secs(5), async || finished()
            .iter()
            .any(|s| s.name == "GET /v1/me"))
        .await
    );
    let me = finished()
        .into_iter()
        .find(|s| s.name == "GET /v1/me")
        .unwrap();
    assert_eq!(me.parent_span_id, SpanId::INVALID);

    // Work on the blocking pool (argon2) stays in the request's trace.
    exporter.reset();
    let response = app
        .post(
            "/v1/users",
            None,
            &json!({"email": "traced@example.com", "name": "T", "password": "long enough pw"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(
        eventually(Duration::from_secs(5), async || finished()
            .iter()
            .any(|s| s.name == "POST /v1/users"))
        .await
    );
    let spans = finished();
    let signup = spans.iter().find(|s| s.name == "POST /v1/users").unwrap();
    let hash = spans
        .iter()
        .find(|s| s.name == "password.hash")
        .expect("the hash has a span");
    assert!(descends_from(&spans, hash, signup.span_context.span_id()));
    assert!(spans.iter().any(
        |s| s.name == "INSERT users" && descends_from(&spans, s, signup.span_context.span_id())
    ));
}
