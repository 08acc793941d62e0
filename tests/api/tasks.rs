//! Tasks: create, read, change, delete, the project list and `/v1/me/tasks`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, TestUser, assert_problem, spawn_app};

struct Team {
    project: Uuid,
    owner: TestUser,
    member: TestUser,
}

async fn team(app: &TestApp) -> Team {
    let owner = app.signup().await;
    let member = app.signup().await;
    let project = app.create_project(&owner, "team").await;
    app.add_member(&owner, project, &member, "member").await;
    Team {
        project,
        owner,
        member,
    }
}

fn tasks_path(project: Uuid) -> String {
    format!("/v1/projects/{project}/tasks")
}

#[tokio::test]
async fn a_created_task_has_the_contracts_shape_and_defaults() {
    let app = spawn_app().await;
    let t = team(&app).await;

    let response = app
        .post(
            &tasks_path(t.project),
            Some(&t.member.token),
            &json!({"title": "Write docs"}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let task: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/tasks/{}", task["id"].as_str().unwrap())
    );
    assert_eq!(task["project_id"], t.project.to_string());
    assert_eq!(task["title"], "Write docs");
    assert_eq!(task["description"], Value::Null);
    assert_eq!(task["status"], "todo");
    assert_eq!(task["assignee"], Value::Null);
    assert_eq!(task["due_date"], Value::Null);
    assert_eq!(task["comment_count"], 0);
    assert_eq!(task["created_at"], task["updated_at"]);
    let mut keys: Vec<&str> = task
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "assignee",
            "comment_count",
            "created_at",
            "description",
            "due_date",
            "id",
            "project_id",
            "status",
            "title",
            "updated_at"
        ]
    );
}

#[tokio::test]
async fn a_task_embeds_its_assignee_and_due_date() {
    let app = spawn_app().await;
    let t = team(&app).await;

    let task = app
        .create_task(
            &t.owner,
            t.project,
            json!({"title": "Ship", "description": "line one\nline two", "status": "doing",
                   "assignee_id": t.member.id, "due_date": "2026-12-24"}),
        )
        .await;

    assert_eq!(task["status"], "doing");
    assert_eq!(task["description"], "line one\nline two");
    assert_eq!(task["due_date"], "2026-12-24");
    assert_eq!(
        task["assignee"],
        json!({"id": t.member.id, "name": "Test User", "email": t.member.email})
    );
    let read = app
        .get_json(
            &format!("/v1/tasks/{}", task["id"].as_str().unwrap()),
            &t.member.token,
        )
        .await;
    assert_eq!(read, task);
}

#[tokio::test]
async fn a_non_member_can_never_be_made_an_assignee() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let outsider = app.signup().await;
    let task = app
        .create_task(&t.owner, t.project, json!({"title": "x"}))
        .await;
    let task_path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());

    for assignee in [outsider.id, Uuid::now_v7()] {
        let create = app
            .post(
                &tasks_path(t.project),
                Some(&t.owner.token),
                &json!({"title": "x", "assignee_id": assignee}),
            )
            .await;
        let problem = assert_problem(create, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], "assignee_id");
        let patch = app
            .patch(
                &task_path,
                &t.owner.token,
                &json!({"assignee_id": assignee}),
            )
            .await;
        assert_problem(patch, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let unchanged = app.get_json(&task_path, &t.owner.token).await;
    assert_eq!(unchanged["assignee"], Value::Null);
}

#[tokio::test]
async fn invalid_task_fields_are_422_naming_each() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let cases = [
        (json!({"title": ""}), "title"),
        (json!({"title": "x".repeat(201)}), "title"),
        (json!({"title": "tab\there"}), "title"),
        (json!({"title": "x", "status": "blocked"}), "status"),
        (json!({"title": "x", "due_date": "2026-02-30"}), "due_date"),
        (json!({"title": "x", "due_date": "24/12/2026"}), "due_date"),
        (
            json!({"title": "x", "due_date": "2026-12-24T10:00:00Z"}),
            "due_date",
        ),
        (
            json!({"title": "x", "assignee_id": "not-a-uuid"}),
            "assignee_id",
        ),
        (
            json!({"title": "x", "description": "d".repeat(10_001)}),
            "description",
        ),
        (json!({"title": "x", "comment_count": 5}), "comment_count"),
    ];
    for (body, field) in cases {
        let response = app
            .post(&tasks_path(t.project), Some(&t.owner.token), &body)
            .await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
}

#[tokio::test]
async fn patch_changes_only_what_it_names_and_null_clears() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let task = app
        .create_task(
            &t.owner,
            t.project,
            json!({"title": "a", "description": "d", "assignee_id": t.member.id, "due_date": "2026-01-01"}),
        )
        .await;
    let path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());

    let retitled = app
        .patch(
            &path,
            &t.member.token,
            &json!({"title": "b", "status": "done"}),
        )
        .await;
    assert_eq!(retitled.status(), StatusCode::OK);
    let retitled: Value = retitled.json().await.unwrap();
    assert_eq!(
        (retitled["title"].as_str(), retitled["status"].as_str()),
        (Some("b"), Some("done"))
    );
    assert_eq!(retitled["description"], "d");
    assert_eq!(retitled["assignee"]["id"], t.member.id.to_string());
    assert_ne!(retitled["updated_at"], task["updated_at"]);

    let cleared: Value = app
        .patch(
            &path,
            &t.owner.token,
            &json!({"assignee_id": null, "due_date": null, "description": null}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["assignee"], Value::Null);
    assert_eq!(cleared["due_date"], Value::Null);
    assert_eq!(cleared["description"], Value::Null);
    assert_eq!(cleared["title"], "b");

    for body in [
        json!({"title": null}),
        json!({"status": null}),
        json!({"project_id": Uuid::now_v7()}),
        json!([]),
    ] {
        assert_problem(
            app.patch(&path, &t.owner.token, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
}

#[tokio::test]
async fn deleting_a_task_takes_its_comments() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let task = app
        .create_task(&t.owner, t.project, json!({"title": "a"}))
        .await;
    let path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
    app.post(
        &format!("{path}/comments"),
        Some(&t.member.token),
        &json!({"body": "hi"}),
    )
    .await;

    assert_eq!(
        app.delete(&path, &t.member.token).await.status(),
        StatusCode::NO_CONTENT
    );

    assert_problem(app.get(&path, &t.owner.token).await, StatusCode::NOT_FOUND).await;
    assert_problem(
        app.delete(&path, &t.owner.token).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let comments: i64 = sqlx::query_scalar("select count(*) from comments")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(comments, 0);
}

#[tokio::test]
async fn a_non_member_gets_404_for_a_task_by_every_id_it_could_use() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let outsider = app.signup().await;
    let task = app
        .create_task(&t.owner, t.project, json!({"title": "secret"}))
        .await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let missing = Uuid::now_v7();

    let requests = |task: &str, project: &str| {
        vec![
            (Method::GET, format!("/v1/tasks/{task}"), None),
            (
                Method::PATCH,
                format!("/v1/tasks/{task}"),
                Some(json!({"title": "mine"})),
            ),
            (Method::DELETE, format!("/v1/tasks/{task}"), None),
            (Method::GET, format!("/v1/tasks/{task}/comments"), None),
            (
                Method::POST,
                format!("/v1/tasks/{task}/comments"),
                Some(json!({"body": "hi"})),
            ),
            (Method::GET, format!("/v1/projects/{project}/tasks"), None),
            (
                Method::GET,
                format!("/v1/projects/{project}/tasks?status=todo"),
                None,
            ),
            (
                Method::POST,
                format!("/v1/projects/{project}/tasks"),
                Some(json!({"title": "x"})),
            ),
        ]
    };
    let hidden = requests(&task_id, &t.project.to_string());
    let absent = requests(&missing.to_string(), &missing.to_string());
    for ((method, path, body), (_, missing_path, _)) in hidden.into_iter().zip(absent) {
        let send = |path: String| {
            let mut request = app.request(method.clone(), &path, Some(&outsider.token));
            if let Some(body) = &body {
                request = request.json(body);
            }
            request.send()
        };
        let a = assert_problem(send(path.clone()).await.unwrap(), StatusCode::NOT_FOUND).await;
        let b = assert_problem(send(missing_path).await.unwrap(), StatusCode::NOT_FOUND).await;
        assert_eq!(a["type"], b["type"], "{method} {path}");
        assert_eq!(a["title"], b["title"], "{method} {path}");
    }
    // Nothing of it changed, and the outsider's own list does not show it.
    let unchanged = app
        .get_json(&format!("/v1/tasks/{task_id}"), &t.owner.token)
        .await;
    assert_eq!(unchanged["title"], "secret");
    assert_eq!(unchanged["comment_count"], 0);
    assert_eq!(
        app.get_json("/v1/me/tasks", &outsider.token).await["items"],
        json!([])
    );
}

#[tokio::test]
async fn the_project_list_filters_by_status_and_assignee() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let specs = [
        ("todo", None),
        ("done", Some(t.member.id)),
        ("todo", Some(t.member.id)),
        ("doing", Some(t.owner.id)),
    ];
    let mut ids = Vec::new();
    for (i, (status, assignee)) in specs.iter().enumerate() {
        let task = app
            .create_task(
                &t.owner,
                t.project,
                json!({"title": format!("t{i}"), "status": status, "assignee_id": assignee}),
            )
            .await;
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let list = |query: String| {
        let app = &app;
        let token = t.owner.token.clone();
        let path = format!("{}{query}", tasks_path(t.project));
        async move {
            let page = app.get_json(&path, &token).await;
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };

    assert_eq!(
        list(String::new()).await,
        [
            ids[3].clone(),
            ids[2].clone(),
            ids[1].clone(),
            ids[0].clone()
        ]
    );
    assert_eq!(
        list("?status=todo".into()).await,
        [ids[2].clone(), ids[0].clone()]
    );
    assert_eq!(
        list(format!("?assignee_id={}", t.member.id)).await,
        [ids[2].clone(), ids[1].clone()]
    );
    assert_eq!(
        list(format!("?assignee_id={}&status=done", t.member.id)).await,
        [ids[1].clone()]
    );
    for query in [
        "?status=blocked",
        "?assignee_id=nope",
        "?status=",
        "?limit=0",
    ] {
        let response = app
            .get(&format!("{}{query}", tasks_path(t.project)), &t.owner.token)
            .await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
}

#[tokio::test]
async fn my_tasks_span_projects_and_leave_with_the_membership() {
    let app = spawn_app().await;
    let alice = app.signup().await;
    let bob = app.signup().await;
    let first = app.create_project(&alice, "first").await;
    let second = app.create_project(&bob, "second").await;
    app.add_member(&bob, second, &alice, "member").await;
    let a = app
        .create_task(
            &alice,
            first,
            json!({"title": "a", "assignee_id": alice.id}),
        )
        .await;
    let b = app
        .create_task(
            &bob,
            second,
            json!({"title": "b", "assignee_id": alice.id, "status": "done"}),
        )
        .await;
    app.create_task(&bob, second, json!({"title": "c", "assignee_id": bob.id}))
        .await;

    let mine = app.get_json("/v1/me/tasks", &alice.token).await;
    let ids: Vec<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b["id"].as_str().unwrap(), a["id"].as_str().unwrap()]);
    let done = app.get_json("/v1/me/tasks?status=done", &alice.token).await;
    assert_eq!(done["items"].as_array().unwrap().len(), 1);
    assert_problem(
        app.get("/v1/me/tasks?status=nope", &alice.token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    // Removed from the second project, Alice's task there is unassigned and leaves her list.
    let removed = app
        .delete(
            &format!("/v1/projects/{second}/members/{}", alice.id),
            &bob.token,
        )
        .await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let mine = app.get_json("/v1/me/tasks", &alice.token).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    let b_now = app
        .get_json(
            &format!("/v1/tasks/{}", b["id"].as_str().unwrap()),
            &bob.token,
        )
        .await;
    assert_eq!(b_now["assignee"], Value::Null);
}
