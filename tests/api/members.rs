//! `/v1/projects/{id}/members`: the role rules of the contract.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, TestUser, assert_problem, spawn_app};

struct Team {
    project: Uuid,
    owner: TestUser,
    admin: TestUser,
    member: TestUser,
}

async fn team(app: &TestApp) -> Team {
    let owner = app.signup().await;
    let admin = app.signup().await;
    let member = app.signup().await;
    let project = app.create_project(&owner, "team").await;
    app.add_member(&owner, project, &admin, "admin").await;
    app.add_member(&owner, project, &member, "member").await;
    Team {
        project,
        owner,
        admin,
        member,
    }
}

fn member_path(project: Uuid, user: Uuid) -> String {
    format!("/v1/projects/{project}/members/{user}")
}

#[tokio::test]
async fn members_are_listed_in_the_order_they_joined() {
    let app = spawn_app().await;
    let t = team(&app).await;

    let response = app
        .get(
            &format!("/v1/projects/{}/members", t.project),
            &t.member.token,
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let roles: Vec<(&str, &str)> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"]["email"].as_str().unwrap(),
                m["role"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            (t.owner.email.as_str(), "owner"),
            (t.admin.email.as_str(), "admin"),
            (t.member.email.as_str(), "member")
        ]
    );
    assert!(body["items"][0]["added_at"].is_string());
    assert!(body["items"][0]["user"]["name"].is_string());
}

#[tokio::test]
async fn owners_and_admins_add_members_and_members_cannot() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let newcomer = app.signup().await;
    let other = app.signup().await;
    let path = format!("/v1/projects/{}/members", t.project);

    let by_admin = app
        .post(
            &path,
            Some(&t.admin.token),
            &json!({"email": newcomer.email.to_uppercase(), "role": "admin"}),
        )
        .await;
    assert_eq!(by_admin.status(), StatusCode::CREATED);
    let added: Value = by_admin.json().await.unwrap();
    assert_eq!(added["user"]["id"], newcomer.id.to_string());
    assert_eq!(added["role"], "admin");

    let by_member = app
        .post(
            &path,
            Some(&t.member.token),
            &json!({"email": other.email, "role": "member"}),
        )
        .await;
    assert_problem(by_member, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn adding_is_404_for_an_unknown_email_and_409_for_a_member() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let path = format!("/v1/projects/{}/members", t.project);

    let unknown = app
        .post(
            &path,
            Some(&t.owner.token),
            &json!({"email": "ghost@example.com", "role": "member"}),
        )
        .await;
    assert_problem(unknown, StatusCode::NOT_FOUND).await;

    let again = app
        .post(
            &path,
            Some(&t.owner.token),
            &json!({"email": t.member.email, "role": "admin"}),
        )
        .await;
    let problem = assert_problem(again, StatusCode::CONFLICT).await;
    assert_eq!(problem["type"], "urn:keel:problem:already-member");
}

#[tokio::test]
async fn ownership_cannot_be_granted_and_roles_must_be_known() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let newcomer = app.signup().await;
    let path = format!("/v1/projects/{}/members", t.project);

    for role in ["owner", "superuser", ""] {
        let response = app
            .post(
                &path,
                Some(&t.owner.token),
                &json!({"email": newcomer.email, "role": role}),
            )
            .await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let bad_email = app
        .post(
            &path,
            Some(&t.owner.token),
            &json!({"email": "nope", "role": "member"}),
        )
        .await;
    assert_problem(bad_email, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test]
async fn owners_and_admins_remove_members_but_an_admin_cannot_remove_an_owner() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let extra = app.signup().await;
    app.add_member(&t.owner, t.project, &extra, "member").await;

    let by_admin = app
        .delete(&member_path(t.project, extra.id), &t.admin.token)
        .await;
    assert_eq!(by_admin.status(), StatusCode::NO_CONTENT);

    let admin_on_owner = app
        .delete(&member_path(t.project, t.owner.id), &t.admin.token)
        .await;
    assert_problem(admin_on_owner, StatusCode::FORBIDDEN).await;

    let by_owner = app
        .delete(&member_path(t.project, t.admin.id), &t.owner.token)
        .await;
    assert_eq!(by_owner.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_member_cannot_remove_others_but_may_leave() {
    let app = spawn_app().await;
    let t = team(&app).await;

    let on_admin = app
        .delete(&member_path(t.project, t.admin.id), &t.member.token)
        .await;
    assert_problem(on_admin, StatusCode::FORBIDDEN).await;

    let leave = app
        .delete(&member_path(t.project, t.member.id), &t.member.token)
        .await;
    assert_eq!(leave.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn the_last_owner_cannot_leave() {
    let app = spawn_app().await;
    let t = team(&app).await;

    let response = app
        .delete(&member_path(t.project, t.owner.id), &t.owner.token)
        .await;

    let problem = assert_problem(response, StatusCode::CONFLICT).await;
    assert_eq!(problem["type"], "urn:keel:problem:last-owner");
}

#[tokio::test]
async fn removing_someone_who_is_not_a_member_is_404() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let outsider = app.signup().await;

    for target in [outsider.id, Uuid::now_v7()] {
        let response = app
            .delete(&member_path(t.project, target), &t.owner.token)
            .await;
        assert_problem(response, StatusCode::NOT_FOUND).await;
    }
    let not_a_uuid = app
        .delete(
            &format!("/v1/projects/{}/members/nope", t.project),
            &t.owner.token,
        )
        .await;
    assert_problem(not_a_uuid, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn a_removed_member_gets_404_on_the_very_next_request() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let project_path = format!("/v1/projects/{}", t.project);
    assert_eq!(
        app.get(&project_path, &t.member.token).await.status(),
        StatusCode::OK
    );

    let removed = app
        .delete(&member_path(t.project, t.member.id), &t.owner.token)
        .await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);

    assert_problem(
        app.get(&project_path, &t.member.token).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let members = app
        .get(&format!("{project_path}/members"), &t.member.token)
        .await;
    assert_problem(members, StatusCode::NOT_FOUND).await;
    let page: Value = app
        .get("/v1/projects", &t.member.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["items"],
        json!([]),
        "the project left the removed member's list"
    );
}

#[tokio::test]
async fn a_removed_members_tasks_become_unassigned() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let task = app.insert_task(t.project, Some(t.member.id)).await;

    app.delete(&member_path(t.project, t.member.id), &t.owner.token)
        .await;

    let assignee: Option<Uuid> = sqlx::query_scalar("select assignee_id from tasks where id = $1")
        .bind(task)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(assignee, None);
}

#[tokio::test]
async fn the_database_refuses_a_non_member_assignee() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let outsider = app.signup().await;

    let result = sqlx::query(
        "insert into tasks (id, project_id, title, assignee_id, created_at, updated_at)
         values ($1, $2, 't', $3, now(), now())",
    )
    .bind(Uuid::now_v7())
    .bind(t.project)
    .bind(outsider.id)
    .execute(&app.db)
    .await;

    let error = result.expect_err("a non-member cannot be assigned");
    let constraint = error
        .as_database_error()
        .and_then(|e| e.constraint().map(str::to_owned));
    assert_eq!(constraint.as_deref(), Some("tasks_assignee_member_fkey"));
}
