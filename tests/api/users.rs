//! `POST /v1/users`, `GET /v1/me`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, spawn_app};

#[tokio::test]
async fn sign_up_returns_the_user_without_any_password_material() {
    let app = spawn_app().await;

    let response = app
        .post(
            "/v1/users",
            None,
            &json!({"email": "Ada@Example.com", "name": "Ada", "password": PASSWORD}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "Ada@Example.com");
    assert_eq!(user["name"], "Ada");
    assert!(user["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert!(user["created_at"].is_string());
    let keys: Vec<&str> = user
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.len(),
        4,
        "exactly id, email, name, created_at: {keys:?}"
    );
    let stored: String = sqlx::query_scalar("select password_hash from users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "OWASP argon2id parameters"
    );
}

#[tokio::test]
async fn a_taken_email_is_409_whatever_its_case() {
    let app = spawn_app().await;
    let user = app.signup().await;

    let response = app
        .post(
            "/v1/users",
            None,
            &json!({"email": user.email.to_uppercase(), "name": "Copy", "password": PASSWORD}),
        )
        .await;

    let problem = assert_problem(response, StatusCode::CONFLICT).await;
    assert_eq!(problem["type"], "urn:keel:problem:email-taken");
}

#[tokio::test]
async fn invalid_sign_ups_are_422_naming_every_bad_field() {
    let app = spawn_app().await;

    let response = app
        .post(
            "/v1/users",
            None,
            &json!({"email": "not-an-email", "name": "", "password": "short"}),
        )
        .await;

    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "name", "password"]);
}

#[tokio::test]
async fn each_field_limit_is_enforced() {
    let app = spawn_app().await;
    let cases = [
        json!({"email": "a@b.co", "name": "x".repeat(101), "password": PASSWORD}),
        json!({"email": "a@b.co", "name": "Ada", "password": "p".repeat(257)}),
        json!({"email": "a@b.co", "name": "Ada", "password": "p".repeat(11)}),
        json!({"email": format!("{}@b.co", "a".repeat(250)), "name": "Ada", "password": PASSWORD}),
        json!({"email": "a@b.co", "name": "line\nbreak", "password": PASSWORD}),
        json!({"email": "a@b.co", "name": "nul\u{0}", "password": PASSWORD}),
    ];
    for body in cases {
        let response = app.post("/v1/users", None, &body).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let accepted = app
        .post(
            "/v1/users",
            None,
            &json!({"email": "a@b.co", "name": "é".repeat(100), "password": "p".repeat(256)}),
        )
        .await;
    assert_eq!(
        accepted.status(),
        StatusCode::CREATED,
        "limits are inclusive, in characters"
    );
}

#[tokio::test]
async fn me_returns_the_caller() {
    let app = spawn_app().await;
    let user = app.signup().await;

    let response = app.get("/v1/me", &user.token).await;

    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["id"], user.id.to_string());
    assert_eq!(me["email"], user.email);
}

#[tokio::test]
async fn me_without_a_token_is_401_with_a_bearer_challenge() {
    let app = spawn_app().await;

    let response = app
        .request(Method::GET, "/v1/me", None)
        .send()
        .await
        .unwrap();

    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
}
