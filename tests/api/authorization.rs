//! Object-level authorization across every endpoint: a second user can neither read,
//! change nor delete anything of the first, and cannot even learn that it exists.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app};

/// Every project-scoped request of the contract so far, for project `{p}` and user `{u}`.
fn project_requests(p: Uuid, u: Uuid) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/v1/projects/{p}"), None),
        (
            Method::PATCH,
            format!("/v1/projects/{p}"),
            Some(json!({"name": "mine now"})),
        ),
        (Method::DELETE, format!("/v1/projects/{p}"), None),
        (Method::GET, format!("/v1/projects/{p}/members"), None),
        (
            Method::POST,
            format!("/v1/projects/{p}/members"),
            Some(json!({"email": "x@example.com", "role": "admin"})),
        ),
        (
            Method::DELETE,
            format!("/v1/projects/{p}/members/{u}"),
            None,
        ),
    ]
}

#[tokio::test]
async fn a_non_member_gets_the_same_404_as_for_a_missing_project_everywhere() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let stranger = app.signup().await;
    let project = app.create_project(&owner, "private").await;
    let missing = Uuid::now_v7();

    for ((method, path, body), (_, missing_path, _)) in project_requests(project, owner.id)
        .into_iter()
        .zip(project_requests(missing, owner.id))
    {
        let send = |path: String| {
            let mut request = app.request(method.clone(), &path, Some(&stranger.token));
            if let Some(body) = &body {
                request = request.json(body);
            }
            request.send()
        };
        let hidden = assert_problem(send(path.clone()).await.unwrap(), StatusCode::NOT_FOUND).await;
        let absent = assert_problem(send(missing_path).await.unwrap(), StatusCode::NOT_FOUND).await;
        assert_eq!(hidden, absent, "{method} {path}");
    }

    // Nothing changed: the owner still sees the project as it was, with its one member.
    let project_now: Value = app
        .get(&format!("/v1/projects/{project}"), &owner.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(project_now["name"], "private");
    let members: Value = app
        .get(&format!("/v1/projects/{project}/members"), &owner.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(members["items"].as_array().unwrap().len(), 1);
    let strangers_list: Value = app
        .get("/v1/projects", &stranger.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(strangers_list["items"], json!([]));
}

#[tokio::test]
async fn every_protected_endpoint_needs_a_token() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let project = app.create_project(&owner, "p").await;
    let mut requests = project_requests(project, owner.id);
    requests.push((Method::GET, "/v1/me".into(), None));
    requests.push((Method::GET, "/v1/projects".into(), None));
    requests.push((
        Method::POST,
        "/v1/projects".into(),
        Some(json!({"name": "n"})),
    ));

    for (method, path, body) in requests {
        let mut request = app.request(method.clone(), &path, None);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer",
            "{method} {path}"
        );
        assert_problem(response, StatusCode::UNAUTHORIZED).await;
    }
}

#[tokio::test]
async fn authorization_is_checked_before_the_body_is_judged() {
    let app = spawn_app().await;
    let owner = app.signup().await;
    let stranger = app.signup().await;
    let project = app.create_project(&owner, "p").await;

    // An invalid body from a non-member is still "no such project", not a 422 that would
    // confirm the project exists.
    let response = app
        .patch(
            &format!("/v1/projects/{project}"),
            &stranger.token,
            &json!({"name": ""}),
        )
        .await;

    assert_problem(response, StatusCode::NOT_FOUND).await;
}
