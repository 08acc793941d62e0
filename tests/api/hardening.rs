//! Bad input of every shape gets the contract's 4xx as problem+json — never a 500,
//! never a plain-text body, never an internal name.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, spawn_app};

const INTERNAL_WORDS: [&str; 8] = [
    "sqlx",
    "postgres",
    "axum",
    "serde",
    "CreateUser",
    "src/",
    "panicked",
    "SELECT",
];

fn assert_nothing_internal(body: &Value) {
    let text = body.to_string();
    for word in INTERNAL_WORDS {
        assert!(!text.contains(word), "{word:?} leaked in {text}");
    }
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    // Each is broken before any field could be judged (a streaming parser reports the
    // first problem it meets: `[1, 2` is a type error before it is a syntax error).
    let complete = json!({"email": "a@b.co", "name": "n", "password": PASSWORD}).to_string();
    let trailing = format!("{complete}}}");
    let trailing_comma = format!("{},}}", &complete[..complete.len() - 1]);
    for body in [
        "{",
        "{\"email\": }",
        "nul",
        "\u{1}",
        &trailing,
        &trailing_comma,
    ] {
        let response = app
            .request(Method::POST, "/v1/users", None)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert_nothing_internal(&problem);
    }
}

#[tokio::test]
async fn a_body_must_be_a_json_object_even_when_every_field_is_optional() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let project = app.create_project(&user, "p").await;

    // serde would read `[]` as a struct with every field absent: "change nothing".
    for body in [json!([]), json!(["renamed"]), json!(null), json!(1)] {
        let response = app
            .patch(&format!("/v1/projects/{project}"), &user.token, &body)
            .await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], "body", "{body}");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "/v1/users", None)
        .header("content-type", "text/plain")
        .body("email=a@b.co")
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

#[tokio::test]
async fn wrong_types_and_unknown_fields_are_422_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"email": 5, "name": "n", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"email": "a@b.co", "name": ["n"], "password": PASSWORD}),
            "name",
        ),
        (
            json!({"email": "a@b.co", "name": "n", "password": PASSWORD, "is_admin": true}),
            "is_admin",
        ),
        (json!({"email": "a@b.co", "name": "n"}), "body"),
        (json!([]), "body"),
        (json!("a string"), "body"),
    ];
    for (body, field) in cases {
        let response = app.post("/v1/users", None, &body).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
        assert_nothing_internal(&problem);
    }
}

#[tokio::test]
async fn a_body_over_64_kib_is_413_whether_or_not_its_length_is_announced() {
    let app = spawn_app().await;
    let big =
        json!({"email": "a@b.co", "name": "x".repeat(70_000), "password": PASSWORD}).to_string();

    let announced = app
        .request(Method::POST, "/v1/users", None)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_problem(announced, StatusCode::PAYLOAD_TOO_LARGE).await;

    // Chunked: no Content-Length, so the limit trips while the body streams in.
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(8192)
        .map(|c| Ok(String::from_utf8_lossy(c).into_owned()))
        .collect();
    let streamed = app
        .request(Method::POST, "/v1/users", None)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_problem(streamed, StatusCode::PAYLOAD_TOO_LARGE).await;
}

#[tokio::test]
async fn ids_that_are_not_uuids_are_404() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for path in [
        "/v1/projects/123",
        "/v1/projects/not-a-uuid",
        "/v1/projects/%00/members",
        "/v1/projects/'or'1'='1",
    ] {
        let response = app.get(path, &user.token).await;
        let problem = assert_problem(response, StatusCode::NOT_FOUND).await;
        assert_nothing_internal(&problem);
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems_too() {
    let app = spawn_app().await;
    let user = app.signup().await;

    assert_problem(
        app.get("/v1/nothing-here", &user.token).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let wrong_method = app
        .request(Method::PUT, "/v1/me", Some(&user.token))
        .send()
        .await
        .unwrap();
    assert!(wrong_method.headers().contains_key("allow"));
    assert_problem(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;
}

#[tokio::test]
async fn the_public_listener_serves_no_admin_endpoint() {
    let app = spawn_app().await;
    for path in [
        "/healthz",
        "/readyz",
        "/admin/flags",
        "/admin/faults",
        "/metrics",
        "/",
        "/console.js",
    ] {
        let response = app.request(Method::GET, path, None).send().await.unwrap();
        assert_problem(response, StatusCode::NOT_FOUND).await;
    }
}

async fn request_id_for(app: &crate::helpers::TestApp, sent: &str) -> String {
    let response = app
        .request(Method::GET, "/v1/me", None)
        .header("x-request-id", sent)
        .send()
        .await
        .unwrap();
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_sane_request_id_is_echoed_and_any_other_replaced() {
    let app = spawn_app().await;

    assert_eq!(
        request_id_for(&app, "trace-abc.123:x/y").await,
        "trace-abc.123:x/y"
    );
    for insane in [
        "has spaces".to_owned(),
        "<script>".to_owned(),
        "quote\"d".to_owned(),
        "a".repeat(200),
    ] {
        let id = request_id_for(&app, &insane).await;
        assert_ne!(id, insane);
        assert_eq!(
            id.parse::<uuid::Uuid>().unwrap().get_version_num(),
            7,
            "a fresh v7 id replaces {insane:?}"
        );
    }
    let generated = app
        .request(Method::GET, "/v1/me", None)
        .send()
        .await
        .unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.parse::<uuid::Uuid>().unwrap().get_version_num(), 7);
}

#[tokio::test]
async fn large_responses_are_compressed_when_the_client_accepts_it() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for i in 0..30 {
        app.post(
            "/v1/projects",
            Some(&user.token),
            &json!({"name": format!("project {i}"), "description": "d".repeat(200)}),
        )
        .await;
    }

    let response = app
        .request(Method::GET, "/v1/projects?limit=30", Some(&user.token))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    // A response smaller than KEEL_COMPRESSION_MIN_BYTES (1 KiB) is not worth gzip.
    let small = app
        .request(Method::GET, "/v1/me", Some(&user.token))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), StatusCode::OK);
    assert!(small.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn the_openapi_document_and_the_docs_page_are_served() {
    let app = spawn_app().await;

    let spec: Value = app
        .request(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    for path in [
        "/v1/users",
        "/v1/auth/token",
        "/v1/me",
        "/v1/projects",
        "/v1/projects/{id}",
        "/v1/projects/{id}/members",
        "/v1/projects/{id}/members/{user_id}",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let me_401 = &spec["paths"]["/v1/me"]["get"]["responses"]["401"];
    assert!(me_401["content"]["application/problem+json"].is_object());
    let next_page = &spec["paths"]["/v1/projects"]["get"]["responses"]["200"]["links"]["next_page"];
    assert_eq!(
        next_page["parameters"]["cursor"],
        "$response.body#/next_cursor"
    );

    let docs = app
        .request(Method::GET, "/docs/", None)
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));
}

#[tokio::test]
async fn a_500_logs_its_cause_with_the_request_id_and_tells_the_client_nothing() {
    let captured = crate::helpers::Captured::default();
    let writer = captured.clone();
    // WARN, as an operator who turned logging down would run it: the INFO request span
    // is off, and the error line must carry the request id by itself.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    crate::helpers::share_callsites_with_scoped_subscribers();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = spawn_app().await;
    let user = app.signup().await;
    sqlx::query("alter table users rename column name to full_name")
        .execute(&app.db)
        .await
        .unwrap();

    let response = app
        .request(Method::GET, "/v1/me", Some(&user.token))
        .header("x-request-id", "trace-me-500")
        .send()
        .await
        .unwrap();

    assert_eq!(response.headers()["x-request-id"], "trace-me-500");
    let problem = assert_problem(response, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_nothing_internal(&problem);
    assert!(!problem.to_string().contains("name"), "{problem}");
    let logs = captured.text();
    let line = logs
        .lines()
        .find(|l| l.contains("request failed"))
        .expect("an error line");
    assert!(line.contains("trace-me-500"), "{line}");
    assert!(line.contains("/v1/me"), "{line}");
    assert!(
        line.contains("column") && line.contains("does not exist"),
        "the cause is logged: {line}"
    );
}
