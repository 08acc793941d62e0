//! Request deadlines, end to end: a request stuck on Postgres is answered 503 at its
//! deadline, and its statement is cancelled on the server, not left running for a client
//! that has been answered.
//!
//! "Stuck" is made deterministic with a lock rather than a slow proxy: the test holds a
//! lock the request's statement needs, so the statement waits on the server for as long
//! as the test likes. Only a server-side cancel (the statement timeout cut to the
//! deadline) ends that wait; dropping the request's future would not, and the blocked
//! statement would stay in `pg_stat_activity` until the test let go.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

use crate::helpers::{TestApp, assert_problem, eventually, spawn_app_with};

/// Blocked statements of the app's own connections on the test database.
async fn blocked_updates(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity
         where datname = current_database() and pid <> pg_backend_pid()
           and wait_event_type = 'Lock' and query ilike 'update tasks%'",
    )
    .fetch_one(db)
    .await
    .expect("pg_stat_activity")
}

/// Locks the task's row in a transaction on a connection of the test's own, held until
/// [`release`].
async fn hold_row_lock(app: &TestApp, task: Uuid) -> PgConnection {
    let mut holder = PgConnection::connect_with(&app.test_db.options)
        .await
        .expect("a connection of the test's own");
    sqlx::raw_sql("begin")
        .execute(&mut holder)
        .await
        .expect("begin");
    sqlx::query("select 1 from tasks where id = $1 for update")
        .bind(task)
        .execute(&mut holder)
        .await
        .expect("lock the task");
    holder
}

async fn release(mut holder: PgConnection) {
    sqlx::raw_sql("rollback")
        .execute(&mut holder)
        .await
        .expect("release");
}

#[tokio::test]
async fn a_write_stuck_on_a_lock_is_answered_at_its_deadline_and_its_statement_cancelled() {
    let app = spawn_app_with(|vars| {
        vars.insert("KEEL_DEADLINE_WRITE".into(), "400ms".into());
    })
    .await;
    let owner = app.signup().await;
    let project = app.create_project(&owner, "Deadlines").await;
    let task = app.insert_task(project, None).await;

    let lock = hold_row_lock(&app, task).await;

    let started = Instant::now();
    let response = app
        .patch(
            &format!("/v1/tasks/{task}"),
            &owner.token,
            &json!({"title": "blocked"}),
        )
        .await;
    let took = started.elapsed();
    assert!(response.headers().contains_key("retry-after"));
    let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(problem["type"], "urn:keel:problem:deadline-exceeded");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(900),
        "answered after {took:?}, deadline 400 ms"
    );
    // The server cancelled the UPDATE while the lock is still held.
    assert!(
        eventually(Duration::from_secs(2), async || blocked_updates(&app.db)
            .await
            == 0)
        .await,
        "the blocked statement outlived its request"
    );
    release(lock).await;

    // Nothing was written: the request failed as a whole.
    let title: String = sqlx::query_scalar("select title from tasks where id = $1")
        .bind(task)
        .fetch_one(&app.db)
        .await
        .expect("the task");
    assert_ne!(title, "blocked");
}

#[tokio::test]
async fn with_timeouts_off_a_stuck_request_waits_for_as_long_as_it_is_stuck() {
    let app = spawn_app_with(|vars| {
        vars.insert("KEEL_DEADLINE_WRITE".into(), "200ms".into());
    })
    .await;
    let owner = app.signup().await;
    let project = app.create_project(&owner, "Naive").await;
    let task = app.insert_task(project, None).await;
    app.set_flag(keel::flags::Flag::Timeouts, false).await;

    let lock = hold_row_lock(&app, task).await;

    let (path, body) = (format!("/v1/tasks/{task}"), json!({"title": "late"}));
    let request = app.patch(&path, &owner.token, &body);
    tokio::pin!(request);
    // Far past the deadline it would have had, it is still waiting, and so is its statement.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut request)
            .await
            .is_err(),
        "answered while stuck"
    );
    assert_eq!(blocked_updates(&app.db).await, 1);
    release(lock).await;
    let response = request.await;
    assert_eq!(response.status(), StatusCode::OK);
}
