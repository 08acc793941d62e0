//! Keyset pagination of tasks, `/v1/me/tasks` and comments: exactly once, stable under
//! inserts, combined with filters, and cursors that only work on their own list.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, TestUser, assert_problem, spawn_app};

/// Every id of a list, walking `next_cursor` (bounded).
async fn walk(app: &TestApp, user: &TestUser, path: &str, limit: usize) -> (Vec<String>, usize) {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for pages in 1..=50 {
        let url = match &cursor {
            Some(c) => format!("{path}{separator}limit={limit}&cursor={c}"),
            None => format!("{path}{separator}limit={limit}"),
        };
        let page = app.get_json(&url, &user.token).await;
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (ids, pages),
        }
    }
    panic!("more than 50 pages");
}

async fn project_with_tasks(app: &TestApp, owner: &TestUser, count: usize) -> (Uuid, Vec<String>) {
    let project = app.create_project(owner, "p").await;
    let mut ids = Vec::new();
    for i in 0..count {
        let status = ["todo", "doing", "done"][i % 3];
        let assignee = (i % 2 == 0).then_some(owner.id);
        let task = app
            .create_task(
                owner,
                project,
                json!({"title": format!("t{i}"), "status": status, "assignee_id": assignee}),
            )
            .await;
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    (project, ids)
}

#[tokio::test]
async fn walking_every_page_returns_each_task_exactly_once() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let (project, created) = project_with_tasks(&app, &owner, 45).await;

    let (ids, pages) = walk(&app, &owner, &format!("/v1/projects/{project}/tasks"), 20).await;

    assert_eq!(pages, 3);
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(ids, newest_first);
}

#[tokio::test]
async fn filters_combine_with_cursors() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let (project, created) = project_with_tasks(&app, &owner, 30).await;
    let expected = |keep: &dyn Fn(usize) -> bool| -> Vec<String> {
        created
            .iter()
            .enumerate()
            .rev()
            .filter(|(i, _)| keep(*i))
            .map(|(_, id)| id.clone())
            .collect()
    };

    let (done, _) = walk(
        &app,
        &owner,
        &format!("/v1/projects/{project}/tasks?status=done"),
        4,
    )
    .await;
    assert_eq!(done, expected(&|i| i % 3 == 2));
    let path = format!(
        "/v1/projects/{project}/tasks?assignee_id={}&status=todo",
        owner.id
    );
    let (mine_todo, _) = walk(&app, &owner, &path, 2).await;
    assert_eq!(mine_todo, expected(&|i| i % 3 == 0 && i % 2 == 0));
    let (me, _) = walk(&app, &owner, "/v1/me/tasks?status=doing", 2).await;
    assert_eq!(me, expected(&|i| i % 3 == 1 && i % 2 == 0));
}

#[tokio::test]
async fn pages_neither_skip_nor_repeat_while_tasks_and_comments_are_added() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let (project, _) = project_with_tasks(&app, &owner, 12).await;
    let path = format!("/v1/projects/{project}/tasks");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let url = match &cursor {
            Some(c) => format!("{path}?limit=5&cursor={c}"),
            None => format!("{path}?limit=5"),
        };
        let page = app.get_json(&url, &owner.token).await;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned()),
        );
        // Between pages, new tasks arrive (newest first: before the walk's position).
        app.create_task(&owner, project, json!({"title": "arrived meanwhile"}))
            .await;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen.len(),
        12,
        "exactly the 12 tasks that existed when the walk began"
    );
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 12);
}

#[tokio::test]
async fn a_cursor_works_only_on_the_list_and_filters_it_came_from() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let (project, _) = project_with_tasks(&app, &owner, 6).await;
    let (other, _) = project_with_tasks(&app, &owner, 6).await;
    let first = app
        .get_json(
            &format!("/v1/projects/{project}/tasks?limit=2"),
            &owner.token,
        )
        .await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let task = first["items"][0]["id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        app.post(
            &format!("/v1/tasks/{task}/comments"),
            Some(&owner.token),
            &json!({"body": format!("c{i}")}),
        )
        .await;
    }
    let comments = app
        .get_json(&format!("/v1/tasks/{task}/comments?limit=1"), &owner.token)
        .await;
    let comment_cursor = comments["next_cursor"].as_str().unwrap().to_owned();
    let mut tampered = cursor.clone().into_bytes();
    tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let other_task = app
        .get_json(&format!("/v1/projects/{other}/tasks?limit=1"), &owner.token)
        .await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let refused = [
        format!("/v1/projects/{other}/tasks?cursor={cursor}"),
        format!("/v1/projects/{project}/tasks?status=todo&cursor={cursor}"),
        format!(
            "/v1/projects/{project}/tasks?assignee_id={}&cursor={cursor}",
            owner.id
        ),
        format!("/v1/me/tasks?cursor={cursor}"),
        format!("/v1/tasks/{task}/comments?cursor={cursor}"),
        format!("/v1/tasks/{other_task}/comments?cursor={comment_cursor}"),
        format!("/v1/projects/{project}/tasks?cursor={comment_cursor}"),
        format!("/v1/projects/{project}/tasks?cursor={tampered}"),
        format!("/v1/projects/{project}/tasks?cursor=not-a-cursor"),
    ];
    for path in refused {
        let problem = assert_problem(
            app.get(&path, &owner.token).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], "cursor", "{path}");
    }
    // On its own list it works; the limit may change between pages.
    let next = app
        .get(
            &format!("/v1/projects/{project}/tasks?limit=3&cursor={cursor}"),
            &owner.token,
        )
        .await;
    assert_eq!(next.status(), StatusCode::OK);
}
