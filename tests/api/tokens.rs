//! `POST /v1/auth/token`, and every way a bearer token can be wrong.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, JWT_SECRET, PASSWORD, TestApp, assert_problem, spawn_app};

#[tokio::test]
async fn valid_credentials_get_a_bearer_token() {
    let app = spawn_app().await;
    let user = app.signup().await;

    let response = app
        .post(
            "/v1/auth/token",
            None,
            &json!({"email": user.email, "password": PASSWORD}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["access_token"].as_str().unwrap().split('.').count() == 3);
}

#[tokio::test]
async fn the_email_is_matched_case_insensitively_at_sign_in() {
    let app = spawn_app().await;
    let user = app.signup().await;

    let token = app.login(&user.email.to_uppercase(), PASSWORD).await;

    assert_eq!(app.get("/v1/me", &token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_401() {
    let app = spawn_app().await;
    let user = app.signup().await;

    let wrong_password = app
        .post(
            "/v1/auth/token",
            None,
            &json!({"email": user.email, "password": "not the password"}),
        )
        .await;
    let unknown_email = app
        .post(
            "/v1/auth/token",
            None,
            &json!({"email": "nobody@example.com", "password": PASSWORD}),
        )
        .await;

    let a = assert_problem(wrong_password, StatusCode::UNAUTHORIZED).await;
    let b = assert_problem(unknown_email, StatusCode::UNAUTHORIZED).await;
    assert_eq!(a, b);
}

async fn assert_refused(app: &TestApp, token: &str) {
    let response = app.get("/v1/me", token).await;
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#,
        "token {token:?}"
    );
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
}

fn claims(user: uuid::Uuid, exp_offset: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": user, "iss": "keel", "aud": "keel-api", "iat": now, "exp": now + exp_offset})
}

fn sign(claims: &Value, kid: Option<&str>, secret: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_expired_tampered_and_alg_none_tokens_are_401() {
    let app = spawn_app().await;
    let user = app.signup().await;

    // Expired (beyond the 30 s clock-skew leeway).
    assert_refused(&app, &sign(&claims(user.id, -120), Some("k1"), JWT_SECRET)).await;
    // Signed with another secret.
    assert_refused(
        &app,
        &sign(
            &claims(user.id, 600),
            Some("k1"),
            "some-other-secret-entirely-32-bytes",
        ),
    )
    .await;
    // An unknown key id, and none at all.
    assert_refused(&app, &sign(&claims(user.id, 600), Some("k9"), JWT_SECRET)).await;
    assert_refused(&app, &sign(&claims(user.id, 600), None, JWT_SECRET)).await;
    // A valid token whose payload was edited to another user.
    let (header, rest) = user.token.split_once('.').unwrap();
    let signature = rest.split_once('.').unwrap().1;
    let other = URL_SAFE_NO_PAD.encode(claims(uuid::Uuid::now_v7(), 600).to_string());
    assert_refused(&app, &format!("{header}.{other}.{signature}")).await;
    // alg: none.
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(user.id, 600).to_string());
    assert_refused(&app, &format!("{none_header}.{payload}.")).await;
    // Garbage, and the admin token (which is no user token).
    assert_refused(&app, "garbage").await;
    assert_refused(&app, ADMIN_TOKEN).await;
}

#[tokio::test]
async fn a_non_bearer_authorization_header_is_401() {
    let app = spawn_app().await;
    let user = app.signup().await;

    let response = app
        .request(Method::GET, "/v1/me", None)
        .header("authorization", format!("Basic {}", user.token))
        .send()
        .await
        .unwrap();

    assert_problem(response, StatusCode::UNAUTHORIZED).await;
    let lower_case_scheme = app
        .request(Method::GET, "/v1/me", None)
        .header("authorization", format!("bearer {}", user.token))
        .send()
        .await
        .unwrap();
    assert_eq!(
        lower_case_scheme.status(),
        StatusCode::OK,
        "the scheme is case-insensitive"
    );
}

#[tokio::test]
async fn a_token_signed_with_the_previous_key_works_during_rotation() {
    let app = crate::helpers::spawn_app_with(|vars| {
        vars.insert(
            "KEEL_JWT_SECRET".into(),
            "the-new-secret-after-rotation-0123456789".into(),
        );
        vars.insert("KEEL_JWT_KID".into(), "k2".into());
        vars.insert("KEEL_JWT_PREVIOUS_SECRET".into(), JWT_SECRET.into());
        vars.insert("KEEL_JWT_PREVIOUS_KID".into(), "k1".into());
    })
    .await;
    let user = app.signup().await;

    let old_token = sign(&claims(user.id, 600), Some("k1"), JWT_SECRET);

    assert_eq!(app.get("/v1/me", &old_token).await.status(), StatusCode::OK);
    let header = jsonwebtoken::decode_header(&user.token).unwrap();
    assert_eq!(
        header.kid.as_deref(),
        Some("k2"),
        "new tokens use the current key"
    );
}
