//! The workshop's fault switches (`/admin/faults`): the admin API, how a change travels,
//! and what a fault does to the calls it names — and to no others.
//!
//! Timing assertions are written for a loaded two-core machine: a named call must take at
//! least the injected latency (a sleep guarantees it), an unnamed one must stay within
//! half of it above its own baseline, each a median of a few requests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel::flags::{Flag, Flags};
use keel::resilience::{Dependency, Fault};
use keel::server::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, TestApp, TestUser, assert_problem, counter_sum, eventually, spawn_app,
    spawn_mailing,
};
use crate::jobs::settle;
use crate::smtp_sink::{Behaviour, SmtpSink};

const LATENCY: Duration = Duration::from_millis(300);

async fn fault_list(app: &TestApp) -> Vec<Value> {
    let response = app
        .admin_request(Method::GET, "/admin/faults")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["items"].as_array().unwrap().clone()
}

/// One dependency's item as `GET /admin/faults` lists it.
async fn listed(app: &TestApp, dependency: &str) -> Value {
    fault_list(app)
        .await
        .into_iter()
        .find(|item| item["dependency"] == dependency)
        .expect("every dependency is listed")
}

async fn put_fault(app: &TestApp, dependency: &str, body: &Value) -> reqwest::Response {
    app.admin_put(&format!("/admin/faults/{dependency}"), body)
        .await
}

/// Sets a fault through the admin API, as a workshop does.
async fn set_fault(app: &TestApp, dependency: &str, latency_ms: u64, error_rate: f64) {
    let body = json!({"latency_ms": latency_ms, "error_rate": error_rate});
    let response = put_fault(app, dependency, &body).await;
    assert_eq!(response.status(), StatusCode::OK, "{dependency} set");
}

/// `(latency_ms, error_rate)` of a listed item.
fn values(item: &Value) -> (u64, f64) {
    (
        item["latency_ms"].as_u64().unwrap(),
        item["error_rate"].as_f64().unwrap(),
    )
}

/// An owner, their project, and a task in it, read once by the owner so that the cache
/// holds every entry of the read.
async fn task(app: &TestApp) -> (TestUser, String) {
    let owner = app.signup().await;
    let project = app.create_project(&owner, "faults").await;
    let task = app
        .create_task(&owner, project, json!({"title": "slow or not"}))
        .await;
    let path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
    // A task's entries fill over two reads (tests/api/cache.rs); a third is all hits.
    for _ in 0..3 {
        app.get_json(&path, &owner.token).await;
    }
    (owner, path)
}

/// The median time of `n` GETs of `path`, each of which must succeed.
async fn median_time(app: &TestApp, path: &str, token: &str, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = app.get(path, token).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.bytes().await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times[n / 2]
}

#[tokio::test]
async fn the_fault_api_lists_every_dependency_off_and_needs_the_admin_token() {
    let app = spawn_app().await;
    let user = app.signup().await;

    let items = fault_list(&app).await;

    let names: Vec<&str> = items
        .iter()
        .map(|i| i["dependency"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["postgres", "redis", "rabbitmq", "smtp"]);
    for item in &items {
        assert_eq!(values(item), (0, 0.0), "{item}");
        assert!(
            item["error_rate"].is_f64(),
            "a number with a fraction: {item}"
        );
        assert!(
            item["updated_at"].is_null() || item["updated_at"].is_string(),
            "{item}"
        );
        let fields: Vec<&String> = item.as_object().unwrap().keys().collect();
        assert_eq!(fields.len(), 4, "{item}");
    }
    for token in [None, Some(user.token.as_str()), Some("wrong-token")] {
        let with = |builder: reqwest::RequestBuilder| match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        };
        let list = with(app.admin_request(Method::GET, "/admin/faults"))
            .send()
            .await
            .unwrap();
        assert_problem(list, StatusCode::UNAUTHORIZED).await;
        let put = with(app.admin_request(Method::PUT, "/admin/faults/redis"))
            .json(&json!({"latency_ms": 300, "error_rate": 0.5}))
            .send()
            .await
            .unwrap();
        assert_problem(put, StatusCode::UNAUTHORIZED).await;
    }
    assert_eq!(values(&listed(&app, "redis").await), (0, 0.0), "unchanged");
    let metrics = app.metrics().await;
    for dependency in ["postgres", "redis", "rabbitmq", "smtp"] {
        for effect in ["latency", "error"] {
            let series = format!(
                r#"keel_fault_injections_total{{dependency="{dependency}",effect="{effect}"}}"#
            );
            assert!(metrics.contains(&series), "{series} missing");
        }
    }
}

#[tokio::test]
async fn setting_a_fault_applies_at_once_is_stored_and_zero_clears_it() {
    let app = spawn_app().await;

    let response = put_fault(
        &app,
        "redis",
        &json!({"latency_ms": 300, "error_rate": 0.25}),
    )
    .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["dependency"], "redis");
    assert_eq!(values(&body), (300, 0.25));
    assert!(body["updated_at"].is_string(), "{body}");
    assert_eq!(listed(&app, "redis").await, body);
    assert_eq!(values(&listed(&app, "postgres").await), (0, 0.0));
    let applied = app.state.flags.faults().get(Dependency::Redis);
    assert_eq!(
        applied,
        Fault {
            latency_ms: 300,
            error_rate: 0.25
        }
    );
    // In the store: what a fresh instance reads.
    let fresh = Flags::default();
    fresh.reload_faults(&app.db).await.unwrap();
    assert_eq!(fresh.faults().get(Dependency::Redis), applied);
    assert!(fresh.faults().get(Dependency::Smtp).is_none());

    set_fault(&app, "redis", 0, 0.0).await;

    assert!(app.state.flags.faults().get(Dependency::Redis).is_none());
    assert!(
        fault_list(&app)
            .await
            .iter()
            .all(|item| values(item) == (0, 0.0))
    );
    fresh.reload_faults(&app.db).await.unwrap();
    assert!(fresh.faults().get(Dependency::Redis).is_none());
}

#[tokio::test]
async fn unknown_dependencies_are_404_and_values_out_of_range_422() {
    let app = spawn_app().await;

    let unknown = put_fault(&app, "mysql", &json!({"latency_ms": 0, "error_rate": 0})).await;
    assert_problem(unknown, StatusCode::NOT_FOUND).await;
    for (body, fields) in [
        (
            json!({"latency_ms": -1, "error_rate": 0}),
            &["latency_ms"][..],
        ),
        (
            json!({"latency_ms": 10_001, "error_rate": 0}),
            &["latency_ms"],
        ),
        (
            json!({"latency_ms": 0, "error_rate": 1.01}),
            &["error_rate"],
        ),
        (
            json!({"latency_ms": 0, "error_rate": -0.1}),
            &["error_rate"],
        ),
        (
            json!({"latency_ms": 99_999_999_999_i64, "error_rate": 2}),
            &["latency_ms", "error_rate"],
        ),
    ] {
        let response = put_fault(&app, "postgres", &body).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        let named: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(named, fields, "{body}");
    }
    for body in [
        json!({"latency_ms": 300}),
        json!({"latency_ms": 1.5, "error_rate": 0}),
        json!({"latency_ms": 0, "error_rate": 0, "extra": 1}),
    ] {
        let response = put_fault(&app, "postgres", &body).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let malformed = app
        .admin_request(Method::PUT, "/admin/faults/postgres")
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"latency_ms\": ")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, StatusCode::BAD_REQUEST).await;
    // The bounds themselves are accepted.
    set_fault(&app, "postgres", 10_000, 1.0).await;
    set_fault(&app, "postgres", 0, 0.0).await;
    assert!(
        fault_list(&app)
            .await
            .iter()
            .all(|item| values(item) == (0, 0.0))
    );
}

#[tokio::test]
async fn a_fault_change_reaches_another_instance_within_5_seconds() {
    let a = spawn_app().await;
    let b = a.another_instance(a.test_db.pool.clone()).await;

    set_fault(&a, "smtp", 250, 0.5).await;

    let seen = eventually(Duration::from_secs(5), async || {
        values(&listed(&b, "smtp").await) == (250, 0.5)
    })
    .await;
    assert!(seen, "instance b applies the change within 5 s");
    assert_eq!(
        b.state.flags.faults().get(Dependency::Smtp),
        Fault {
            latency_ms: 250,
            error_rate: 0.5
        }
    );

    // A change made outside the API (psql, during a workshop) travels the same way.
    sqlx::query(
        "update fault_injections set latency_ms = 0, error_rate = 0 where dependency = 'smtp'",
    )
    .execute(&a.db)
    .await
    .unwrap();
    for app in [&a, &b] {
        let cleared = eventually(Duration::from_secs(5), async || {
            app.state.flags.faults().get(Dependency::Smtp).is_none()
        })
        .await;
        assert!(cleared);
    }
}

#[tokio::test]
async fn a_latency_fault_adds_its_latency_to_the_calls_it_names_and_no_others() {
    let app = spawn_app().await;
    // The rate limiter calls Redis on every request: off, so that a read with the cache off
    // touches Postgres only. And the breakers off: Redis's slow-call rule (25 ms) would
    // take a slowed Redis out of the path, which is another test's business (breakers.rs).
    app.set_flag(Flag::RateLimit, false).await;
    app.set_flag(Flag::CircuitBreaker, false).await;
    let (owner, path) = task(&app).await;
    let token = owner.token.as_str();
    // A cached read of the task is one Redis call and no statement (all hits); with the
    // cache off, it is one statement and no Redis call.
    let cached = median_time(&app, &path, token, 5).await;
    app.set_flag(Flag::Cache, false).await;
    let uncached = median_time(&app, &path, token, 5).await;

    set_fault(&app, "redis", LATENCY.as_millis() as u64, 0.0).await;
    let redis_on_postgres_path = median_time(&app, &path, token, 5).await;
    app.set_flag(Flag::Cache, true).await;
    let redis_on_redis_path = median_time(&app, &path, token, 3).await;

    set_fault(&app, "redis", 0, 0.0).await;
    set_fault(&app, "postgres", LATENCY.as_millis() as u64, 0.0).await;
    let postgres_on_redis_path = median_time(&app, &path, token, 5).await;
    app.set_flag(Flag::Cache, false).await;
    let postgres_on_postgres_path = median_time(&app, &path, token, 3).await;
    set_fault(&app, "postgres", 0, 0.0).await;

    let report = format!(
        "baselines: cached {cached:?}, uncached {uncached:?}; redis fault: cached \
         {redis_on_redis_path:?}, uncached {redis_on_postgres_path:?}; postgres fault: cached \
         {postgres_on_redis_path:?}, uncached {postgres_on_postgres_path:?}"
    );
    assert!(redis_on_redis_path >= LATENCY, "{report}");
    assert!(postgres_on_postgres_path >= LATENCY, "{report}");
    assert!(
        redis_on_postgres_path < uncached + LATENCY / 2,
        "a Redis fault leaves Postgres alone: {report}"
    );
    assert!(
        postgres_on_redis_path < cached + LATENCY / 2,
        "a Postgres fault leaves Redis alone: {report}"
    );
}

#[tokio::test]
async fn a_postgres_error_fault_fails_about_its_share_of_requests_with_503() {
    const REQUESTS: usize = 60;
    let app = spawn_app().await;
    // One statement per request and nothing else: the cache off (a read is one statement,
    // tests/api/cache.rs), no rate limiter, and no breaker, which would open at a 50 %
    // failure rate and refuse the rest (its own tests are in breakers.rs).
    app.set_flag(Flag::RateLimit, false).await;
    app.set_flag(Flag::CircuitBreaker, false).await;
    let (owner, path) = task(&app).await;
    app.set_flag(Flag::Cache, false).await;
    let series = r#"keel_fault_injections_total{dependency="postgres",effect="error"}"#;
    let before = counter_sum(&app.metrics().await, series);

    set_fault(&app, "postgres", 0, 0.5).await;
    let mut failed = 0;
    for _ in 0..REQUESTS {
        let response = app.get(&path, &owner.token).await;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
                assert!(
                    !problem.to_string().contains("injected"),
                    "no internal text: {problem}"
                );
                failed += 1;
            }
            other => panic!("{other}: neither served nor unavailable"),
        }
    }

    // Binomial(60, 0.5) falls outside 15..=45 with probability 4e-5.
    assert!((15..=45).contains(&failed), "{failed} of {REQUESTS} failed");
    let injected = counter_sum(&app.metrics().await, series) - before;
    assert!(
        injected >= failed as f64,
        "{injected} counted, {failed} failed"
    );
    set_fault(&app, "postgres", 0, 0.0).await;
    for _ in 0..20 {
        let response = app.get(&path, &owner.token).await;
        assert_eq!(response.status(), StatusCode::OK, "cleared");
    }
}

/// An instance running the relay and the consumers, mailing `sink`, whose breakers come
/// back quickly once a fault is cleared, and whose jobs are retried for long enough to
/// outlast the fault.
async fn mailing_app(sink: &SmtpSink) -> TestApp {
    spawn_mailing(
        Role::All,
        sink.url(),
        |vars: &mut HashMap<String, String>| {
            vars.insert("KEEL_JOBS_RETRY_DELAYS".into(), "200ms".into());
            vars.insert("KEEL_JOBS_MAX_ATTEMPTS".into(), "100".into());
            vars.insert("KEEL_AMQP_BREAKER_COOLDOWN".into(), "200ms".into());
            vars.insert("KEEL_SMTP_BREAKER_COOLDOWN".into(), "200ms".into());
        },
    )
    .await
}

/// Assigns a fresh member a new task: one assignment email.
async fn assign(app: &TestApp) -> TestUser {
    let owner = app.signup().await;
    let project = app.create_project(&owner, "faults").await;
    let member = app.signup().await;
    app.add_member(&owner, project, &member, "member").await;
    app.create_task(
        &owner,
        project,
        json!({"title": "mind the faults", "assignee_id": member.id}),
    )
    .await;
    member
}

/// Waits until `dependency`'s fault has failed at least `calls` more calls.
async fn failed_calls(app: &TestApp, dependency: &str, before: f64, calls: f64) -> bool {
    let series =
        format!(r#"keel_fault_injections_total{{dependency="{dependency}",effect="error"}}"#);
    eventually(Duration::from_secs(10), async || {
        counter_sum(&app.metrics().await, &series) >= before + calls
    })
    .await
}

fn error_count(scrape: &str, dependency: &str) -> f64 {
    counter_sum(
        scrape,
        &format!(r#"keel_fault_injections_total{{dependency="{dependency}",effect="error"}}"#),
    )
}

#[tokio::test]
async fn a_rabbitmq_error_fault_keeps_jobs_in_the_outbox_and_each_is_sent_once_after_it() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    let app = mailing_app(&sink).await;
    let before = error_count(&app.metrics().await, "rabbitmq");
    set_fault(&app, "rabbitmq", 0, 1.0).await;

    let member = assign(&app).await;

    assert!(
        failed_calls(&app, "rabbitmq", before, 2.0).await,
        "the relay tried and failed"
    );
    let rows: Vec<(bool, i32)> = sqlx::query_as(
        "select published_at is not null, attempts from outbox where kind = 'email.task_assigned'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [(false, 0)],
        "unpublished and untouched, as the broker never saw it"
    );
    assert_eq!(sink.accepted_count(), 0);

    set_fault(&app, "rabbitmq", 0, 0.0).await;

    let delivered = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(delivered[0].to, std::slice::from_ref(&member.email));
    settle(&app).await;
    assert_eq!(sink.accepted_count(), 1, "sent once");
}

#[tokio::test]
async fn an_smtp_error_fault_is_retried_like_a_transient_failure_and_sent_once_after_it() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    let app = mailing_app(&sink).await;
    let before = error_count(&app.metrics().await, "smtp");
    set_fault(&app, "smtp", 0, 1.0).await;

    let member = assign(&app).await;

    assert!(
        failed_calls(&app, "smtp", before, 2.0).await,
        "the send failed and was retried"
    );
    assert_eq!(sink.accepted_count(), 0);

    set_fault(&app, "smtp", 0, 0.0).await;

    let delivered = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(delivered[0].to, std::slice::from_ref(&member.email));
    settle(&app).await;
    assert_eq!(sink.accepted_count(), 1, "sent once");
}

#[tokio::test]
async fn the_switches_stay_switchable_while_postgres_fails_every_call() {
    let app = spawn_app().await;
    let user = app.signup().await;
    // Every read to Postgres, so that the fault meets it.
    app.set_flag(Flag::Cache, false).await;
    set_fault(&app, "postgres", 0, 1.0).await;
    let refused = app.get("/v1/me", &user.token).await;
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;

    // Flags and faults are written on the raw pool, past the fault they switch.
    let response = app
        .admin_put("/admin/flags/batch_loading", &json!({"enabled": false}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    set_fault(&app, "postgres", 0, 0.0).await;

    let back = eventually(Duration::from_secs(10), async || {
        app.get("/v1/me", &user.token).await.status() == StatusCode::OK
    })
    .await;
    assert!(back, "requests are served again once the fault is cleared");
}
