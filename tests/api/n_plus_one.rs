//! The N+1, counted: the statements one task-page request sends, read off the wire.

use std::sync::Arc;

use keel::flags::Flag;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, spawn_app_with_pool};
use crate::pgwire::{StatementLog, logged_pool};

/// A project of 100 tasks, every one assigned (to three members in turn) and commented.
async fn project_with_tasks(app: &TestApp) -> (uuid::Uuid, String) {
    let owner = app.signup().await;
    let project = app.create_project(&owner, "busy").await;
    let mut assignees = vec![owner.id];
    for _ in 0..2 {
        let member = app.signup().await;
        app.add_member(&owner, project, &member, "member").await;
        assignees.push(member.id);
    }
    for i in 0..100 {
        let task = app
            .create_task(
                &owner,
                project,
                json!({"title": format!("task {i}"), "assignee_id": assignees[i % 3]}),
            )
            .await;
        let id = task["id"].as_str().unwrap();
        let response = app
            .post(
                &format!("/v1/tasks/{id}/comments"),
                Some(&owner.token),
                &json!({"body": "hi"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    (project, owner.token)
}

/// The statements of one `GET …/tasks?limit=N`, leaving out the fix-flag refresher's.
async fn statements_for_page(
    app: &TestApp,
    log: &StatementLog,
    project: uuid::Uuid,
    token: &str,
    limit: usize,
) -> Vec<String> {
    log.take();
    let response = app
        .get(
            &format!("/v1/projects/{project}/tasks?limit={limit}"),
            token,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), limit);
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["assignee"].is_object() && t["comment_count"] == 1)
    );
    log.take()
        .into_iter()
        .filter(|sql| !sql.contains("fix_flags") && !sql.contains("fault_injections"))
        .collect()
}

#[tokio::test]
async fn a_page_of_tasks_costs_the_same_statements_at_any_size_and_n_plus_1_without_batching() {
    let test_db = Arc::new(TestDb::create().await);
    let (pool, log) = logged_pool(&test_db).await;
    let app = spawn_app_with_pool(test_db, pool, |_| {}).await;
    // What Postgres sees of a page: with the cache on, a repeated page sends nothing.
    app.set_flag(Flag::Cache, false).await;
    let (project, token) = project_with_tasks(&app).await;
    // Warm up: every statement prepared once, the pool's connections open.
    statements_for_page(&app, &log, project, &token, 1).await;

    let mut batched = Vec::new();
    for limit in [1, 20, 100] {
        batched.push(statements_for_page(&app, &log, project, &token, limit).await);
    }
    app.set_flag(Flag::BatchLoading, false).await;
    let mut naive = Vec::new();
    for limit in [1, 20, 100] {
        naive.push(statements_for_page(&app, &log, project, &token, limit).await);
    }

    // Batched: the membership check, the page, the assignees, the counts — at any size.
    let counts: Vec<usize> = batched.iter().map(Vec::len).collect();
    assert_eq!(counts, [4, 4, 4], "{batched:#?}");
    assert!(batched[2].iter().any(|sql| sql.contains("id = any($1)")));
    assert!(
        batched[2]
            .iter()
            .any(|sql| sql.contains("task_id = any($1)"))
    );
    // Per row: the check and the page, then a user and a count query for each task.
    let counts: Vec<usize> = naive.iter().map(Vec::len).collect();
    assert_eq!(counts, [2 + 2, 2 + 2 * 20, 2 + 2 * 100]);
}
