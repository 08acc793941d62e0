//! Circuit breakers and retries against the real dependencies, with faults a test owns: a
//! TCP proxy in front of RabbitMQ or Redis, an SMTP sink that stalls or refuses.
//!
//! What each test shows is the issue's list: a dead dependency trips its breaker (readiness
//! lists it `down`, the metrics count the transition); calls fail fast while it is open;
//! probes close it once the dependency is back; nothing is lost meanwhile (jobs wait in the
//! outbox or their retry queue and are delivered after recovery; cache reads are served
//! from Postgres); with the `circuit_breaker` flag off, the breaker does not open and every
//! call waits for its timeout; and a read on a connection that Redis dropped is retried.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::jobs::broker::BREAKER_OPEN;
use keel::resilience::BreakerState;
use keel::server::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    TcpProxy, TestApp, TestDb, TestUser, amqp_addr, counter_sum, eventually, pool_through,
    postgres_addr, redis, redis_addr, redis_keys, spawn_app_with_pool, spawn_mailing, spawn_role,
};
use crate::smtp_sink::{Behaviour, SmtpSink};

/// An instance of `role` on a fresh database, mailing `sink`, with quick job retries.
async fn app_with(
    role: Role,
    sink: &SmtpSink,
    customize: impl FnOnce(&mut HashMap<String, String>),
) -> TestApp {
    spawn_mailing(role, sink.url(), |vars| {
        vars.insert("KEEL_JOBS_RETRY_DELAYS".into(), "200ms".into());
        vars.insert("KEEL_AMQP_RECONNECT_MAX_DELAY".into(), "200ms".into());
        customize(vars);
    })
    .await
}

/// Switches a fix flag through the admin API, as a workshop does.
async fn set_flag(app: &TestApp, name: &str, enabled: bool) {
    let response = app
        .admin_put(
            &format!("/admin/flags/{name}"),
            &json!({"enabled": enabled}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{name} switched");
}

/// An owner, a project and a member to assign tasks to.
async fn team(app: &TestApp) -> (TestUser, Uuid, TestUser) {
    let owner = app.signup().await;
    let project = app.create_project(&owner, "Apollo").await;
    let member = app.signup().await;
    app.add_member(&owner, project, &member, "member").await;
    (owner, project, member)
}

/// Creates a task assigned to `member` (an assignment email), and how long it took.
async fn assign(app: &TestApp, owner: &TestUser, project: Uuid, member: &TestUser) -> Duration {
    let started = Instant::now();
    let response = app
        .post(
            &format!("/v1/projects/{project}/tasks"),
            Some(&owner.token),
            &json!({"title": "breaker", "assignee_id": member.id}),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::CREATED);
    took
}

#[tokio::test]
async fn a_dead_rabbitmq_trips_its_breaker_and_jobs_wait_in_the_outbox_until_it_is_back() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    let proxy = TcpProxy::start(amqp_addr()).await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.addr.port());
    let app = app_with(Role::All, &sink, |vars| {
        vars.insert("AMQP_URL".into(), url);
        vars.insert("KEEL_AMQP_CONNECT_TIMEOUT".into(), "500ms".into());
        vars.insert("KEEL_AMQP_BREAKER_COOLDOWN".into(), "3s".into());
    })
    .await;
    let breaker = app.state.broker.breaker().clone();
    let (owner, project, member) = team(&app).await;
    let opened_before = counter_sum(
        &app.metrics().await,
        r#"keel_breaker_transitions_total{breaker="rabbitmq",to="open"}"#,
    );

    // Act: the broker goes away; a write comes in.
    proxy.cut();
    assign(&app, &owner, project, &member).await;

    // The relay's and the worker's reconnects trip the breaker.
    let open = eventually(Duration::from_secs(10), async || {
        breaker.state() == BreakerState::Open
    })
    .await;
    assert!(open, "the breaker opened: {breaker:?}");
    // While it is open, a connection is refused at once, without trying the network.
    let started = Instant::now();
    let refused = app.state.broker.connect("test").await.unwrap_err();
    assert_eq!(refused, BREAKER_OPEN);
    assert!(started.elapsed() < Duration::from_millis(100));
    let (status, report) = app.readyz().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["status"], "degraded");
    assert_eq!(report["dependencies"]["rabbitmq"], "down");
    let scrape = app.metrics().await;
    assert!(
        counter_sum(
            &scrape,
            r#"keel_breaker_transitions_total{breaker="rabbitmq",to="open"}"#
        ) > opened_before,
        "the opening is counted"
    );
    assert!(scrape.contains(r#"keel_breaker_state{breaker="rabbitmq"}"#));
    assert!(scrape.contains(r#"keel_breaker_calls_total{breaker="rabbitmq",outcome="rejected"}"#));
    // The job waits in the outbox, untouched.
    let waiting: Vec<(i32,)> = sqlx::query_as(
        "select attempts from outbox where kind = 'email.task_assigned' and published_at is null",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(waiting, [(0,)], "one job waiting, never tried");
    assert_eq!(sink.accepted_count(), 0);

    // Recovery: after the cooldown a probe connects and closes the breaker; the job follows.
    proxy.restore();
    let delivered = sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(delivered.len(), 1, "the email waited and went out once");
    assert_eq!(delivered[0].to, std::slice::from_ref(&member.email));
    assert_eq!(breaker.state(), BreakerState::Closed);
    let ready = eventually(Duration::from_secs(10), async || {
        let (status, report) = app.readyz().await;
        status == StatusCode::OK && report["dependencies"]["rabbitmq"] == "up"
    })
    .await;
    assert!(
        ready,
        "readiness reports the broker up: {:?}",
        app.readyz().await
    );
}

/// A mail server that stalls past the client's timeout and then refuses: what a dead SMTP
/// relay behind a load balancer looks like.
fn stall(sink: &SmtpSink) {
    sink.set_delay(Duration::from_secs(3));
    sink.set_failing(true);
}

/// SMTP settings for the naive path's tests: a send waits at most a second, and two
/// failures of four open the breaker for five seconds.
fn smtp_breaker(vars: &mut HashMap<String, String>) {
    vars.insert("KEEL_SMTP_TIMEOUT".into(), "1s".into());
    vars.insert("KEEL_SMTP_BREAKER_WINDOW".into(), "4".into());
    vars.insert("KEEL_SMTP_BREAKER_MIN_CALLS".into(), "2".into());
    vars.insert("KEEL_SMTP_BREAKER_COOLDOWN".into(), "5s".into());
    vars.insert("KEEL_SMTP_BREAKER_HALF_OPEN_CALLS".into(), "1".into());
    vars.insert("KEEL_JOBS_MAX_ATTEMPTS".into(), "100".into());
}

#[tokio::test]
async fn a_stalled_smtp_server_trips_its_breaker_and_inline_sends_then_fail_fast_losing_nothing() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    let app = app_with(Role::All, &sink, smtp_breaker).await;
    set_flag(&app, "async_jobs", false).await;
    let (owner, project, member) = team(&app).await;
    stall(&sink);

    // Each inline send waits for the SMTP timeout, fails, and leaves its job to the worker
    // (whose sends fail too), until the breaker has seen enough.
    let first = assign(&app, &owner, project, &member).await;
    assert!(
        first >= Duration::from_secs(1),
        "waited for SMTP: {first:?}"
    );
    let open = eventually(Duration::from_secs(15), async || {
        app.readyz().await.1["dependencies"]["smtp"] == "down"
    })
    .await;
    assert!(open, "readiness lists SMTP down: {:?}", app.readyz().await);

    // Open: the request's send fails at once, and the request succeeds as it would have.
    let fast = assign(&app, &owner, project, &member).await;
    assert!(fast < Duration::from_millis(800), "failed fast: {fast:?}");
    let third = assign(&app, &owner, project, &member).await;
    assert!(third < Duration::from_millis(800), "failed fast: {third:?}");
    let (status, report) = app.readyz().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["status"], "degraded");
    assert_eq!(sink.accepted_count(), 0);
    let jobs: i64 =
        sqlx::query_scalar("select count(*) from outbox where kind = 'email.task_assigned'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(jobs, 3, "every failed inline send was handed to the worker");

    // The server comes back: after the cooldown a probe succeeds, and every email goes out
    // once.
    sink.set_delay(Duration::ZERO);
    sink.set_failing(false);
    let delivered = sink.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(delivered.len(), 3, "{delivered:?}");
    let up = eventually(Duration::from_secs(10), async || {
        app.readyz().await.1["dependencies"]["smtp"] == "up"
    })
    .await;
    assert!(up, "readiness lists SMTP up again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.accepted_count(), 3, "no email twice");
}

#[tokio::test]
async fn with_the_circuit_breaker_flag_off_every_inline_send_waits_for_its_timeout() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    // No worker: only the requests talk to SMTP.
    let app = app_with(Role::Serve, &sink, smtp_breaker).await;
    set_flag(&app, "async_jobs", false).await;
    set_flag(&app, "circuit_breaker", false).await;
    let (owner, project, member) = team(&app).await;
    stall(&sink);

    // Twice the calls that open it when the flag is on.
    for i in 0..4 {
        let took = assign(&app, &owner, project, &member).await;
        assert!(
            took >= Duration::from_secs(1),
            "request {i} waited for SMTP: {took:?}"
        );
    }

    let (_, report) = app.readyz().await;
    assert_eq!(
        report["dependencies"]["smtp"], "up",
        "the breaker did not open: {report}"
    );
    // Switched back on, the same failures open it.
    set_flag(&app, "circuit_breaker", true).await;
    for _ in 0..2 {
        assign(&app, &owner, project, &member).await;
    }
    let (_, report) = app.readyz().await;
    assert_eq!(report["dependencies"]["smtp"], "down", "{report}");
}

/// A task readable through the cache, and the path and token to read it with.
async fn cached_task(app: &TestApp) -> (Uuid, String, String) {
    let owner = app.signup().await;
    let project = app.create_project(&owner, "Apollo").await;
    let task = app
        .create_task(&owner, project, json!({"title": "cached"}))
        .await;
    let id: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    (id, format!("/v1/tasks/{id}"), owner.token)
}

/// The cache entries of task `id` (the task itself, not its comment count).
async fn task_entries(app: &TestApp, id: Uuid) -> Vec<String> {
    let suffix = format!(":t:{id}");
    redis_keys(&app.test_db.redis_prefix())
        .await
        .into_iter()
        .filter(|key| key.ends_with(&suffix))
        .collect()
}

/// Reads `path` once, then drops every connection to Redis (which comes back at once) and
/// the task's entry: the next read finds its pooled connection dead.
async fn drop_redis_connections(
    app: &TestApp,
    proxy: &TcpProxy,
    id: Uuid,
    path: &str,
    token: &str,
) {
    assert_eq!(app.get(path, token).await.status(), StatusCode::OK);
    let entries = task_entries(app, id).await;
    assert_eq!(entries.len(), 1, "the read filled the entry");
    proxy.cut();
    proxy.restore();
    let _: () = deadpool_redis::redis::cmd("DEL")
        .arg(&entries)
        .query_async(&mut redis().await)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cache_read_on_a_connection_redis_dropped_is_retried_on_a_fresh_one() {
    let proxy = TcpProxy::start(redis_addr()).await;
    let url = format!("redis://{}", proxy.addr);
    let spawn = |attempts: &'static str| {
        let url = url.clone();
        async move {
            let test_db = Arc::new(TestDb::create().await);
            let pool = test_db.pool.clone();
            let app = spawn_role(Role::Serve, test_db, pool, |vars| {
                vars.insert("REDIS_URL".into(), url);
                // One connection, so that the read after the drop gets the dead one.
                vars.insert("KEEL_REDIS_POOL_SIZE".into(), "1".into());
                vars.insert("KEEL_REDIS_RETRY_ATTEMPTS".into(), attempts.into());
            })
            .await;
            // The rate limit's own Redis call would meet the dead connection first and
            // leave the cache a fresh one: only the cache talks to Redis here.
            app.set_flag(keel::flags::Flag::RateLimit, false).await;
            app
        }
    };
    let app = spawn("2").await;
    let (id, path, token) = cached_task(&app).await;
    drop_redis_connections(&app, &proxy, id, &path, &token).await;

    let status = app.get(&path, &token).await.status();

    // The read was retried on a new connection: it took the lease and filled the entry,
    // where a failed read would have been served from Postgres without filling.
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        task_entries(&app, id).await.len(),
        1,
        "filled after a retry"
    );
    // The control: with retries off, the same read is served from Postgres, unfilled.
    let without = spawn("1").await;
    let (id, path, token) = cached_task(&without).await;
    drop_redis_connections(&without, &proxy, id, &path, &token).await;
    assert_eq!(without.get(&path, &token).await.status(), StatusCode::OK);
    assert!(task_entries(&without, id).await.is_empty(), "not filled");
}

#[tokio::test]
async fn with_the_circuit_breaker_flag_off_a_cut_redis_is_called_on_every_read() {
    let proxy = TcpProxy::start(redis_addr()).await;
    let url = format!("redis://{}", proxy.addr);
    let test_db = Arc::new(TestDb::create().await);
    let pool = test_db.pool.clone();
    let app = spawn_role(Role::Serve, test_db, pool, |vars| {
        vars.insert("REDIS_URL".into(), url);
    })
    .await;
    set_flag(&app, "circuit_breaker", false).await;
    let (_, path, token) = cached_task(&app).await;

    proxy.cut();
    // Far more failures than open the breaker with the flag on (10 of 20).
    let mut bodies: BTreeSet<String> = BTreeSet::new();
    for _ in 0..30 {
        let response = app.get(&path, &token).await;
        assert_eq!(response.status(), StatusCode::OK, "served from Postgres");
        let body: Value = response.json().await.unwrap();
        bodies.insert(body["title"].to_string());
    }

    assert_eq!(bodies.len(), 1);
    assert_eq!(app.state.cache.breaker_state(), BreakerState::Closed);
    // On again, the same outage opens it.
    set_flag(&app, "circuit_breaker", true).await;
    let opened = eventually(Duration::from_secs(10), async || {
        app.get(&path, &token).await;
        app.state.cache.breaker_state() == BreakerState::Open
    })
    .await;
    assert!(opened, "the breaker opened once the flag was back on");
    proxy.restore();
}

/// While Postgres cannot be reached, the breaker in front of it answers for it: after the
/// first requests have waited out the pool's timeout, the rest get their 503 at once, and
/// `/readyz` says `down`.
#[tokio::test]
async fn while_postgres_cannot_be_reached_requests_fail_fast() {
    let test_db = Arc::new(TestDb::create().await);
    let proxy = TcpProxy::start(postgres_addr()).await;
    let pool = pool_through(&proxy, &test_db);
    let app = spawn_app_with_pool(test_db, pool, |vars| {
        vars.insert("KEEL_DB_BREAKER_WINDOW".into(), "10".into());
        vars.insert("KEEL_DB_BREAKER_MIN_CALLS".into(), "4".into());
        vars.insert("KEEL_DB_BREAKER_COOLDOWN".into(), "60s".into());
    })
    .await;
    let user = app.signup().await;
    proxy.cut();

    // The first ones wait for a connection that will not come (the pool's 2 s timeout).
    let first: Vec<_> = (0..6)
        .map(|_| app.get("/v1/projects", &user.token))
        .collect();
    for response in futures_util::future::join_all(first).await {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let started = Instant::now();
    let response = app.get("/v1/projects", &user.token).await;
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert!(took < Duration::from_millis(200), "refused after {took:?}");
    let (status, body) = app.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["dependencies"]["postgres"], "down");
}
