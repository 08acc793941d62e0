//! `/v1/projects`: create, list (keyset pages), read, change, delete.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, TestUser, assert_problem, spawn_app};

async fn project_ids(app: &TestApp, user: &TestUser, query: &str) -> (Vec<String>, Option<String>) {
    let response = app.get(&format!("/v1/projects{query}"), &user.token).await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    let page: Value = response.json().await.unwrap();
    let ids = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, page["next_cursor"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn creating_a_project_makes_the_caller_its_owner() {
    let app = spawn_app().await;
    let user = app.signup().await;

    let response = app
        .post(
            "/v1/projects",
            Some(&user.token),
            &json!({"name": "Launch", "description": "Go live"}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let project: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/projects/{}", project["id"].as_str().unwrap())
    );
    assert_eq!(project["name"], "Launch");
    assert_eq!(project["description"], "Go live");
    assert_eq!(project["owner_id"], user.id.to_string());
    assert_eq!(project["created_at"], project["updated_at"]);
    let members: Value = app
        .get(&format!("{location}/members"), &user.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(members["items"][0]["role"], "owner");
    assert_eq!(members["items"][0]["user"]["id"], user.id.to_string());
}

#[tokio::test]
async fn a_project_name_must_be_one_to_two_hundred_characters() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for name in [json!(""), json!("x".repeat(201)), json!(null), json!(42)] {
        let response = app
            .post("/v1/projects", Some(&user.token), &json!({"name": name}))
            .await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let missing = app
        .post("/v1/projects", Some(&user.token), &json!({}))
        .await;
    assert_problem(missing, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test]
async fn the_list_holds_only_the_callers_projects_newest_first() {
    let app = spawn_app().await;
    let alice = app.signup().await;
    let bob = app.signup().await;
    let first = app.create_project(&alice, "first").await;
    let second = app.create_project(&alice, "second").await;
    app.create_project(&bob, "bob's").await;

    let (ids, next) = project_ids(&app, &alice, "").await;

    assert_eq!(ids, [second.to_string(), first.to_string()]);
    assert_eq!(next, None);
}

#[tokio::test]
async fn walking_every_page_returns_each_project_exactly_once() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let mut created = HashSet::new();
    for i in 0..25 {
        created.insert(
            app.create_project(&user, &format!("p{i}"))
                .await
                .to_string(),
        );
    }

    let mut seen = Vec::new();
    let mut query = "?limit=10".to_owned();
    let mut pages = 0;
    loop {
        let (ids, next) = project_ids(&app, &user, &query).await;
        pages += 1;
        seen.extend(ids);
        match next {
            Some(cursor) => query = format!("?limit=10&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 10, "bounded walk");
    }

    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created);
}

#[tokio::test]
async fn pages_neither_skip_nor_repeat_while_projects_are_created() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let mut before = Vec::new();
    for i in 0..6 {
        before.push(
            app.create_project(&user, &format!("old{i}"))
                .await
                .to_string(),
        );
    }

    let (page1, cursor) = project_ids(&app, &user, "?limit=3").await;
    // New projects land before the first page (newest first): they must not shift page 2.
    for i in 0..4 {
        app.create_project(&user, &format!("new{i}")).await;
    }
    let (page2, end) =
        project_ids(&app, &user, &format!("?limit=3&cursor={}", cursor.unwrap())).await;

    let mut walked = page1;
    walked.extend(page2);
    before.reverse();
    assert_eq!(walked, before);
    assert_eq!(end, None, "the oldest project ends the walk");
}

#[tokio::test]
async fn bad_limits_and_cursors_are_422() {
    let app = spawn_app().await;
    let alice = app.signup().await;
    let bob = app.signup().await;
    for i in 0..3 {
        app.create_project(&alice, &format!("a{i}")).await;
        app.create_project(&bob, &format!("b{i}")).await;
    }
    let (_, alice_cursor) = project_ids(&app, &alice, "?limit=1").await;
    let alice_cursor = alice_cursor.unwrap();

    let mut tampered = alice_cursor.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for query in [
        "?limit=0".to_owned(),
        "?limit=101".to_owned(),
        "?limit=-5".to_owned(),
        "?limit=ten".to_owned(),
        "?cursor=garbage".to_owned(),
        format!("?cursor={tampered}"),
    ] {
        let response = app.get(&format!("/v1/projects{query}"), &alice.token).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    // Alice's cursor is not a cursor of Bob's list.
    let foreign = app
        .get(&format!("/v1/projects?cursor={alice_cursor}"), &bob.token)
        .await;
    let problem = assert_problem(foreign, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["field"], "cursor");
    // An empty cursor is no cursor: the first page.
    let (first, _) = project_ids(&app, &alice, "?limit=1").await;
    assert_eq!(project_ids(&app, &alice, "?limit=1&cursor=").await.0, first);
    // The limits themselves are fine.
    assert_eq!(
        app.get("/v1/projects?limit=100", &alice.token)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get("/v1/projects?limit=1", &alice.token).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_member_reads_a_project_and_others_get_404() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let stranger = app.signup().await;
    let project = app.create_project(&owner, "secret plans").await;

    let response = app
        .get(&format!("/v1/projects/{project}"), &owner.token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], "secret plans");
    assert_eq!(body["description"], Value::Null);

    let hidden = app
        .get(&format!("/v1/projects/{project}"), &stranger.token)
        .await;
    let missing = app
        .get(&format!("/v1/projects/{}", Uuid::now_v7()), &stranger.token)
        .await;
    let hidden = assert_problem(hidden, StatusCode::NOT_FOUND).await;
    let missing = assert_problem(missing, StatusCode::NOT_FOUND).await;
    assert_eq!(
        hidden, missing,
        "a hidden project looks exactly like a missing one"
    );
}

#[tokio::test]
async fn owners_and_admins_change_a_project_members_get_403() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let admin = app.signup().await;
    let member = app.signup().await;
    let project = app.create_project(&owner, "before").await;
    app.add_member(&owner, project, &admin, "admin").await;
    app.add_member(&owner, project, &member, "member").await;
    let path = format!("/v1/projects/{project}");

    let by_owner = app
        .patch(
            &path,
            &owner.token,
            &json!({"name": "by owner", "description": "d"}),
        )
        .await;
    assert_eq!(by_owner.status(), StatusCode::OK);
    let by_admin = app
        .patch(&path, &admin.token, &json!({"name": "by admin"}))
        .await;
    assert_eq!(by_admin.status(), StatusCode::OK);
    let body: Value = by_admin.json().await.unwrap();
    assert_eq!(body["name"], "by admin");
    assert_eq!(body["description"], "d", "absent fields stay as they are");
    assert_ne!(body["updated_at"], body["created_at"]);

    let by_member = app
        .patch(&path, &member.token, &json!({"name": "by member"}))
        .await;
    assert_problem(by_member, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn patch_clears_the_description_with_null_and_refuses_a_null_name() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let project = app.create_project(&owner, "p").await;
    let path = format!("/v1/projects/{project}");
    app.patch(&path, &owner.token, &json!({"description": "something"}))
        .await;

    let cleared = app
        .patch(&path, &owner.token, &json!({"description": null}))
        .await;
    let body: Value = cleared.json().await.unwrap();
    assert_eq!(body["description"], Value::Null);

    let null_name = app.patch(&path, &owner.token, &json!({"name": null})).await;
    assert_problem(null_name, StatusCode::UNPROCESSABLE_ENTITY).await;
    let empty_name = app.patch(&path, &owner.token, &json!({"name": ""})).await;
    assert_problem(empty_name, StatusCode::UNPROCESSABLE_ENTITY).await;
    let unknown = app
        .patch(&path, &owner.token, &json!({"owner_id": owner.id}))
        .await;
    assert_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test]
async fn only_the_owner_deletes_a_project_and_everything_in_it_goes() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let admin = app.signup().await;
    let member = app.signup().await;
    let project = app.create_project(&owner, "doomed").await;
    app.add_member(&owner, project, &admin, "admin").await;
    app.add_member(&owner, project, &member, "member").await;
    let task = app.insert_task(project, Some(member.id)).await;
    sqlx::query("insert into comments (id, task_id, author_id, body, created_at) values ($1, $2, $3, 'hi', now())")
        .bind(Uuid::now_v7())
        .bind(task)
        .bind(member.id)
        .execute(&app.db)
        .await
        .unwrap();
    let path = format!("/v1/projects/{project}");

    assert_problem(app.delete(&path, &admin.token).await, StatusCode::FORBIDDEN).await;
    assert_problem(
        app.delete(&path, &member.token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        app.delete(&path, &owner.token).await.status(),
        StatusCode::NO_CONTENT
    );

    assert_problem(app.get(&path, &owner.token).await, StatusCode::NOT_FOUND).await;
    assert_problem(app.delete(&path, &owner.token).await, StatusCode::NOT_FOUND).await;
    let left: (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from project_members), (select count(*) from tasks),
                (select count(*) from comments)",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(left, (0, 0, 0));
}
