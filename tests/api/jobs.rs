//! Background jobs end to end: outbox → relay → RabbitMQ → worker → SMTP (a sink the test
//! owns), against the real broker and Postgres, with the faults the issue names.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::StreamExt as _;
use keel::flags::Flag;
use keel::jobs::dead::{self, Filter};
use keel::jobs::worker::Settled;
use keel::jobs::{Kind, Outcome, Relay, Worker};
use keel::server::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TcpProxy, TestApp, TestUser, amqp_addr, eventually, spawn_mailing};
use crate::smtp_sink::{Behaviour, Received, SmtpSink};

/// An instance of `role` on a fresh database, sending mail to `sink`, with quick retries.
async fn app_with(
    role: Role,
    sink: &SmtpSink,
    customize: impl FnOnce(&mut HashMap<String, String>),
) -> TestApp {
    spawn_mailing(role, sink.url(), customize).await
}

/// An owner, a project, and `n` members to assign.
async fn team(app: &TestApp, n: usize) -> (TestUser, Uuid, Vec<TestUser>) {
    let owner = app.signup().await;
    let project = app.create_project(&owner, "Apollo").await;
    let mut members = Vec::new();
    for _ in 0..n {
        let member = app.signup().await;
        app.add_member(&owner, project, &member, "member").await;
        members.push(member);
    }
    (owner, project, members)
}

/// Creates a task assigned to `member`: one `email.task_assigned` job.
async fn assign(
    app: &TestApp,
    owner: &TestUser,
    project: Uuid,
    member: &TestUser,
    title: &str,
) -> Value {
    app.create_task(
        owner,
        project,
        json!({"title": title, "assignee_id": member.id}),
    )
    .await
}

/// One pass of the relay over the outbox, on a connection of its own.
async fn publish_once(relay: &Relay) -> usize {
    let publisher = relay.open().await.expect("the broker answers");
    let published = relay.publish_batch(&publisher).await.expect("a relay pass");
    publisher.close().await;
    published
}

fn recipients(messages: &[Received]) -> Vec<String> {
    messages.iter().flat_map(|m| m.to.clone()).collect()
}

/// Waits until no job is left: the outbox published and every queue of the test empty.
pub(crate) async fn settle(app: &TestApp) {
    let settled = eventually(Duration::from_secs(20), async || {
        let unpublished: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(&app.db)
                .await
                .unwrap();
        unpublished == 0 && queue_depth(app, Kind::TaskAssigned).await == 0
    })
    .await;
    if !settled {
        let outbox: Vec<(String, bool, i32, Option<String>)> = sqlx::query_as(
            "select kind, published_at is not null, attempts, last_error from outbox
             where published_at is null or kind <> 'cache.invalidate' order by id",
        )
        .fetch_all(&app.db)
        .await
        .unwrap();
        let unpublished: Vec<_> = outbox.iter().filter(|r| !r.1).collect();
        panic!(
            "the jobs did not settle: {} unpublished {:?}; {} messages ready in the email queue",
            unpublished.len(),
            unpublished.iter().take(5).collect::<Vec<_>>(),
            queue_depth(app, Kind::TaskAssigned).await
        );
    }
    // A job taken off the queue may still be running: give it its send.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn queue_depth(app: &TestApp, kind: Kind) -> u32 {
    let connection = lapin::Connection::connect(
        &crate::helpers::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = keel::jobs::relay::topology(&app.state.config).queue(kind);
    let ready = keel::jobs::topology::ready(&channel, &queue).await.unwrap();
    connection.close(200, "bye".into()).await.ok();
    ready
}

#[tokio::test]
async fn an_assignment_emails_the_new_assignee_once_and_unassigning_emails_no_one() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    let app = app_with(Role::All, &sink, |_| {}).await;
    let (owner, project, members) = team(&app, 3).await;

    let task = app
        .create_task(
            &owner,
            project,
            json!({"title": "Launch <checklist>", "assignee_id": members[0].id}),
        )
        .await;
    let path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
    let first = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(recipients(&first), [members[0].email.clone()]);
    let text = &first[0].data;
    assert!(text.contains("Launch <checklist>"), "{text}");
    assert!(
        text.contains("Launch &lt;checklist&gt;"),
        "html part escaped: {text}"
    );
    assert!(
        text.contains("Apollo") && text.contains("Test User"),
        "{text}"
    );

    for body in [
        json!({"assignee_id": members[1].id}),
        json!({"title": "renamed"}),
        json!({"assignee_id": null}),
        json!({"assignee_id": members[2].id}),
    ] {
        let response = app.patch(&path, &owner.token, &body).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    sink.wait_for(3, Duration::from_secs(20)).await;
    settle(&app).await;

    let all: BTreeSet<String> = recipients(&sink.messages()).into_iter().collect();
    assert_eq!(sink.accepted_count(), 3, "{:?}", sink.messages());
    assert_eq!(
        all,
        members
            .iter()
            .map(|m| m.email.clone())
            .collect::<BTreeSet<_>>()
    );
}

#[tokio::test]
async fn a_write_succeeds_while_rabbitmq_is_unreachable_and_its_email_follows_it() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    let proxy = TcpProxy::start(amqp_addr()).await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.addr.port());
    let app = app_with(Role::All, &sink, |vars| {
        vars.insert("AMQP_URL".into(), url);
        vars.insert("KEEL_AMQP_CONNECT_TIMEOUT".into(), "500ms".into());
    })
    .await;
    let (owner, project, members) = team(&app, 1).await;
    proxy.cut();

    let task = app
        .post(
            &format!("/v1/projects/{project}/tasks"),
            Some(&owner.token),
            &json!({"title": "while the broker is away", "assignee_id": members[0].id}),
        )
        .await;
    assert_eq!(task.status(), StatusCode::CREATED);
    let degraded = eventually(Duration::from_secs(10), async || {
        let (status, report) = app.readyz().await;
        status == StatusCode::OK
            && report["status"] == "degraded"
            && report["dependencies"]["rabbitmq"] == "down"
    })
    .await;
    assert!(
        degraded,
        "readiness says degraded: {:?}",
        app.readyz().await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.accepted_count(), 0, "no broker, no email yet");

    proxy.restore();
    let delivered = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(recipients(&delivered), [members[0].email.clone()]);
    settle(&app).await;
    assert_eq!(sink.accepted_count(), 1);
}

#[tokio::test]
async fn consumers_cut_off_from_the_broker_mid_stream_recover_and_do_every_job_once() {
    let sink = SmtpSink::start(Behaviour {
        delay: Duration::from_millis(50),
        failing: false,
    })
    .await;
    let proxy = TcpProxy::start(amqp_addr()).await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.addr.port());
    let app = app_with(Role::All, &sink, |vars| {
        vars.insert("AMQP_URL".into(), url);
        vars.insert("KEEL_JOBS_CONCURRENCY".into(), "4".into());
        vars.insert("KEEL_JOBS_PREFETCH".into(), "8".into());
    })
    .await;
    let (owner, project, members) = team(&app, 1).await;
    const TASKS: usize = 60;

    let creates = futures_util::stream::iter(0..TASKS)
        .map(|i| {
            let (app, owner, assignee) = (&app, &owner, members[0].id);
            async move {
                app.create_task(
                    owner,
                    project,
                    json!({"title": format!("job {i}"), "assignee_id": assignee}),
                )
                .await
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(creates.len(), TASKS);
    // Cut while the consumers are busy (each send takes 50 ms, four at a time).
    assert!(
        eventually(Duration::from_secs(20), async || sink.accepted_count() >= 5).await,
        "the consumers started"
    );
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();

    let all = sink.wait_for(TASKS, Duration::from_secs(60)).await;
    settle(&app).await;
    let subjects: BTreeSet<String> = sink
        .messages()
        .iter()
        .filter_map(|m| {
            m.data
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        all.len().max(sink.accepted_count()),
        TASKS,
        "none lost, none doubled"
    );
    assert_eq!(subjects.len(), TASKS);
}

#[tokio::test]
async fn a_failing_smtp_server_is_retried_then_parked_and_a_replay_delivers_once() {
    let sink = SmtpSink::start(Behaviour {
        delay: Duration::ZERO,
        failing: true,
    })
    .await;
    let app = app_with(Role::All, &sink, |vars| {
        vars.insert("KEEL_JOBS_MAX_ATTEMPTS".into(), "3".into());
    })
    .await;
    let (owner, project, members) = team(&app, 1).await;
    assign(&app, &owner, project, &members[0], "never sent").await;

    let broker = app.state.broker.clone();
    let topology = keel::jobs::relay::topology(&app.state.config);
    let mut parked = Vec::new();
    let found = eventually(Duration::from_secs(20), async || {
        parked = dead::list(&broker, &topology, 10, Duration::from_secs(5))
            .await
            .unwrap();
        !parked.is_empty()
    })
    .await;
    assert!(found, "the job is parked after its last attempt");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].kind, "email.task_assigned");
    assert_eq!(parked[0].attempts, 3);
    assert!(parked[0].last_error.contains("451"), "{:?}", parked[0]);
    assert_eq!(sink.accepted_count(), 0);

    sink.set_failing(false);
    let replayed = dead::replay(
        &broker,
        &topology,
        &Filter::default(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(replayed, 1);
    let delivered = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(recipients(&delivered), [members[0].email.clone()]);
    settle(&app).await;
    assert_eq!(sink.accepted_count(), 1);
    assert!(
        dead::list(&broker, &topology, 10, Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_thousand_concurrent_assignments_send_exactly_a_thousand_emails() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    let app = app_with(Role::All, &sink, |_| {}).await;
    let (owner, project, members) = team(&app, 1).await;
    const TASKS: usize = 1000;

    let created = futures_util::stream::iter(0..TASKS)
        .map(|i| {
            let (app, owner, assignee) = (&app, &owner, members[0].id);
            async move {
                app.post(
                    &format!("/v1/projects/{project}/tasks"),
                    Some(&owner.token),
                    &json!({"title": format!("task {i}"), "assignee_id": assignee}),
                )
                .await
                .status()
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(created.iter().all(|s| *s == StatusCode::CREATED));

    sink.wait_for(TASKS, Duration::from_secs(90)).await;
    settle(&app).await;
    let ids: BTreeSet<String> = sink
        .messages()
        .iter()
        .filter_map(|m| {
            m.data
                .lines()
                .find(|l| l.starts_with("Message-ID:"))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(sink.accepted_count(), TASKS, "none lost, none doubled");
    assert_eq!(ids.len(), TASKS);
}

#[tokio::test]
async fn stats_converge_to_the_true_counts_after_a_burst_with_few_recomputes() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    let app = app_with(Role::All, &sink, |_| {}).await;
    let (owner, project, _) = team(&app, 0).await;
    let stats_path = format!("/v1/projects/{project}/stats");
    let before = app.get_json(&stats_path, &owner.token).await;
    assert_eq!(before["total"], 0);
    assert_eq!(before["computed_at"], Value::Null);

    let statuses = ["todo", "doing", "done"];
    let tasks: Vec<Value> = futures_util::stream::iter(0..30)
        .map(|i| {
            let (app, owner) = (&app, &owner);
            async move {
                let due = if i % 4 == 0 {
                    "2020-01-01"
                } else {
                    "2999-01-01"
                };
                app.create_task(
                    owner,
                    project,
                    json!({"title": format!("t{i}"), "status": statuses[i % 3], "due_date": due}),
                )
                .await
            }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    let changes = tasks.iter().take(10).map(|task| {
        let path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
        let (app, owner) = (&app, &owner);
        async move {
            app.patch(&path, &owner.token, &json!({"status": "done"}))
                .await
                .status()
        }
    });
    let deletes = tasks.iter().skip(25).map(|task| {
        let path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
        let (app, owner) = (&app, &owner);
        async move { app.delete(&path, &owner.token).await.status() }
    });
    let (changed, deleted) = tokio::join!(
        futures_util::future::join_all(changes),
        futures_util::future::join_all(deletes)
    );
    assert!(changed.iter().all(|s| *s == StatusCode::OK));
    assert!(deleted.iter().all(|s| *s == StatusCode::NO_CONTENT));

    let truth: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "select count(*),
                count(*) filter (where status = 'todo'),
                count(*) filter (where status = 'doing'),
                count(*) filter (where status = 'done'),
                count(*) filter (where status <> 'done' and due_date < current_date)
         from tasks where project_id = $1",
    )
    .bind(project)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let mut seen = Value::Null;
    let converged = eventually(Duration::from_secs(10), async || {
        seen = app.get_json(&stats_path, &owner.token).await;
        (
            seen["total"].as_i64(),
            seen["by_status"]["todo"].as_i64(),
            seen["by_status"]["doing"].as_i64(),
            seen["by_status"]["done"].as_i64(),
            seen["overdue"].as_i64(),
        ) == (
            Some(truth.0),
            Some(truth.1),
            Some(truth.2),
            Some(truth.3),
            Some(truth.4),
        )
    })
    .await;
    assert!(converged, "stats {seen} converge to {truth:?}");
    let writes = 30 + 10 + 5;
    let recomputes: i64 =
        sqlx::query_scalar("select count(*) from processed_jobs where kind = 'stats.recompute'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(
        recomputes < writes,
        "{recomputes} recomputes for {writes} writes: a burst coalesces"
    );
}

#[tokio::test]
async fn with_async_jobs_off_the_email_is_sent_inside_the_request() {
    let sink = SmtpSink::start(Behaviour {
        delay: Duration::from_millis(200),
        failing: false,
    })
    .await;
    // No worker: only the request itself can send the email.
    let app = app_with(Role::Serve, &sink, |_| {}).await;
    app.set_flag(Flag::AsyncJobs, false).await;
    let (owner, project, members) = team(&app, 1).await;

    assign(&app, &owner, project, &members[0], "sent inline").await;

    assert_eq!(sink.accepted_count(), 1, "sent before the response");
    assert_eq!(recipients(&sink.messages()), [members[0].email.clone()]);
    let queued: i64 = sqlx::query_scalar(
        "select count(*) from outbox where kind in ('email.task_assigned', 'stats.recompute')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(queued, 0, "nothing left for a worker");
    let stats = app
        .get_json(&format!("/v1/projects/{project}/stats"), &owner.token)
        .await;
    assert_eq!(stats["total"], 1, "recomputed inline");
}

#[tokio::test]
async fn a_job_published_twice_is_run_step_by_step_and_has_its_effect_once() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    // Serve only: the test drives the relay and the worker itself, one step at a time.
    let app = app_with(Role::Serve, &sink, |_| {}).await;
    let (owner, project, members) = team(&app, 1).await;
    assign(&app, &owner, project, &members[0], "twice").await;
    let (relay, worker) = relay_and_worker(&app);

    assert!(publish_once(&relay).await > 0);
    // A relay that crashed after the broker's confirm, before its commit: published again.
    sqlx::query("update outbox set published_at = null where kind = 'email.task_assigned'")
        .execute(&app.db)
        .await
        .unwrap();
    assert!(publish_once(&relay).await > 0);

    assert_eq!(
        worker.step(Kind::TaskAssigned).await.unwrap(),
        Some(Settled::Finished(Outcome::Done))
    );
    assert_eq!(
        worker.step(Kind::TaskAssigned).await.unwrap(),
        Some(Settled::Finished(Outcome::Duplicate))
    );
    assert_eq!(worker.step(Kind::TaskAssigned).await.unwrap(), None);
    assert_eq!(sink.accepted_count(), 1);
    let delivered: i64 = sqlx::query_scalar("select count(*) from email_deliveries")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(delivered, 1);
}

/// A relay and a worker on the app's clients, for a test to drive one step at a time.
fn relay_and_worker(app: &TestApp) -> (Relay, Worker) {
    let config = &app.state.config;
    let relay = Relay::new(
        config,
        app.state.db.clone(),
        app.state.runner.clone(),
        app.state.broker.clone(),
    );
    let worker = Worker::new(config, app.state.runner.clone(), app.state.broker.clone());
    (relay, worker)
}

#[tokio::test]
async fn a_member_removed_before_their_email_goes_out_is_not_told_about_the_project() {
    let sink = SmtpSink::start(Behaviour::default()).await;
    let app = app_with(Role::Serve, &sink, |_| {}).await;
    let (owner, project, members) = team(&app, 1).await;
    assign(&app, &owner, project, &members[0], "secret plans").await;
    let removed = app
        .delete(
            &format!("/v1/projects/{project}/members/{}", members[0].id),
            &owner.token,
        )
        .await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);

    let (relay, worker) = relay_and_worker(&app);
    assert!(publish_once(&relay).await > 0);

    assert_eq!(
        worker.step(Kind::TaskAssigned).await.unwrap(),
        Some(Settled::Finished(Outcome::Moot))
    );
    assert_eq!(sink.accepted_count(), 0);
}

#[tokio::test]
async fn a_stopping_worker_finishes_the_send_in_hand_before_it_exits() {
    let sink = SmtpSink::start(Behaviour {
        delay: Duration::from_millis(1500),
        failing: false,
    })
    .await;
    let app = app_with(Role::All, &sink, |_| {}).await;
    let (owner, project, members) = team(&app, 1).await;
    assign(&app, &owner, project, &members[0], "in hand").await;
    let sending = eventually(Duration::from_secs(10), async || {
        let claims: i64 =
            sqlx::query_scalar("select count(*) from email_deliveries where state = 'sending'")
                .fetch_one(&app.db)
                .await
                .unwrap();
        claims == 1
    })
    .await;
    assert!(sending, "the worker took the job and is sending");

    app.stop();

    // The send in hand completes (within KEEL_SHUTDOWN_TIMEOUT, 5 s here) and is recorded,
    // rather than being cut off and left for a redelivery.
    let delivered = sink.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(recipients(&delivered), [members[0].email.clone()]);
    // The stopped instance closes its pool: look with a connection of the test's own.
    let db = sqlx::PgPool::connect_with(app.test_db.options.clone())
        .await
        .unwrap();
    let sent = eventually(Duration::from_secs(10), async || {
        let state: String = sqlx::query_scalar("select state from email_deliveries")
            .fetch_one(&db)
            .await
            .unwrap();
        state == "sent"
    })
    .await;
    db.close().await;
    assert!(sent, "the delivery is recorded before the worker stops");
}
