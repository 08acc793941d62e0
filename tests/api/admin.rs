//! The admin listener: liveness, readiness, and the fix flags shared by every instance.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, TcpProxy, TestApp, assert_problem, eventually, pool_through, postgres_addr,
    spawn_app, spawn_app_with_pool,
};

/// Every flag as the admin API lists it.
async fn flag_list(app: &TestApp) -> Vec<Value> {
    let flags: Value = app
        .admin_request(Method::GET, "/admin/flags")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    flags["items"].as_array().unwrap().clone()
}

async fn flag(app: &TestApp, name: &str) -> bool {
    flag_list(app)
        .await
        .iter()
        .find(|f| f["name"] == name)
        .map(|f| f["enabled"].as_bool().unwrap())
        .expect("the flag is listed")
}

async fn put_flag(app: &TestApp, name: &str, body: &Value) -> reqwest::Response {
    app.admin_put(&format!("/admin/flags/{name}"), body).await
}

async fn set_flag(app: &TestApp, name: &str, enabled: bool) -> reqwest::Response {
    put_flag(app, name, &json!({"enabled": enabled})).await
}

#[tokio::test]
async fn healthz_is_200_and_readyz_reports_postgres_up() {
    let app = spawn_app().await;

    let health = app
        .admin_request(Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let ready = app
        .admin_request(Method::GET, "/readyz")
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ready", "dependencies": {"postgres": "up", "rabbitmq": "up", "redis": "up"}})
    );
}

#[tokio::test]
async fn readyz_is_503_while_postgres_is_unreachable_and_recovers() {
    let first = spawn_app().await;
    let proxy = TcpProxy::start(postgres_addr()).await;
    let app = spawn_app_with_pool(
        first.test_db.clone(),
        pool_through(&proxy, &first.test_db),
        |_| {},
    )
    .await;
    let ready = || async {
        app.admin_request(Method::GET, "/readyz")
            .send()
            .await
            .unwrap()
    };
    assert_eq!(ready().await.status(), StatusCode::OK);

    proxy.cut();
    let down = ready().await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = down.json().await.unwrap();
    assert_eq!(body["dependencies"]["postgres"], "down");
    assert_eq!(body["status"], "unready");
    // The liveness probe must not follow: restarting the process would not bring Postgres back.
    let health = app
        .admin_request(Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // API requests that need Postgres fail fast with 503, not 500.
    let user = first.signup().await;
    let api = app.get("/v1/me", &user.token).await;
    assert_problem(api, StatusCode::SERVICE_UNAVAILABLE).await;

    proxy.restore();
    let recovered = eventually(Duration::from_secs(5), async || {
        ready().await.status() == StatusCode::OK
    })
    .await;
    assert!(recovered, "readiness returns once Postgres is reachable");
}

#[tokio::test]
async fn the_console_is_served_on_the_admin_listener_under_a_strict_policy() {
    let app = spawn_app().await;

    let page = app.admin_request(Method::GET, "/").send().await.unwrap();
    let script = app
        .admin_request(Method::GET, "/console.js")
        .send()
        .await
        .unwrap();

    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(page.text().await.unwrap().contains(r#"src="/console.js""#));
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(script.headers()["cache-control"], "no-cache");
}

#[tokio::test]
async fn the_flag_api_needs_the_admin_token() {
    let app = spawn_app().await;
    let user = app.signup().await;

    let none = app
        .admin_request(Method::GET, "/admin/flags")
        .send()
        .await
        .unwrap();
    assert_problem(none, StatusCode::UNAUTHORIZED).await;
    for token in [
        user.token.as_str(),
        "wrong-token",
        &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1],
    ] {
        let response = app
            .admin_request(Method::GET, "/admin/flags")
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::UNAUTHORIZED).await;
        let put = app
            .admin_request(Method::PUT, "/admin/flags/batch_loading")
            .bearer_auth(token)
            .json(&json!({"enabled": false}))
            .send()
            .await
            .unwrap();
        assert_problem(put, StatusCode::UNAUTHORIZED).await;
    }
    assert!(flag(&app, "batch_loading").await, "nothing changed");
}

#[tokio::test]
async fn only_flags_whose_fix_exists_are_listed_registered_and_on_by_default() {
    let app = spawn_app().await;

    let flags = flag_list(&app).await;

    let names: Vec<&str> = flags.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "batch_loading",
            "cache",
            "async_jobs",
            "timeouts",
            "load_shedding",
            "circuit_breaker",
            "rate_limit"
        ]
    );
    assert!(flags.iter().all(|f| f["enabled"] == true));
    let stored: Vec<String> = sqlx::query_scalar("select name from fix_flags order by name")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(
        stored,
        [
            "async_jobs",
            "batch_loading",
            "cache",
            "circuit_breaker",
            "load_shedding",
            "rate_limit",
            "timeouts"
        ]
    );
    // A name the build does not know is not a switch.
    let response = set_flag(&app, "made_up", false).await;
    assert_problem(response, StatusCode::NOT_FOUND).await;
    let metrics = app.metrics().await;
    // (The recorder is shared by every app of the test process, so the gauge's value may
    // be another test's; that the series exists, and no other, is what is checked here.)
    for name in names {
        let series = format!(r#"keel_fix_flag_enabled{{flag="{name}"}}"#);
        assert!(metrics.contains(&series), "{series} missing");
    }
    assert!(
        !metrics.contains(r#"flag="made_up""#),
        "no gauge for a flag the build does not know"
    );
}

#[tokio::test]
async fn switching_a_flag_applies_at_once_and_is_stored() {
    let app = spawn_app().await;

    let response = set_flag(&app, "batch_loading", false).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], "batch_loading");
    assert_eq!(body["enabled"], false);
    assert!(!flag(&app, "batch_loading").await);
    assert!(!app.state.flags.enabled(keel::flags::Flag::BatchLoading));
    let stored: bool =
        sqlx::query_scalar("select enabled from fix_flags where name = 'batch_loading'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(!stored);
}

#[tokio::test]
async fn unknown_flags_are_404_and_bad_bodies_422() {
    let app = spawn_app().await;

    assert_problem(
        set_flag(&app, "warp_drive", false).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    for body in [
        json!({"enabled": "no"}),
        json!({}),
        json!({"enabled": true, "extra": 1}),
    ] {
        let response = put_flag(&app, "batch_loading", &body).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
}

#[tokio::test]
async fn a_flag_change_reaches_another_instance_within_5_seconds() {
    let a = spawn_app().await;
    let b = a.another_instance(a.test_db.pool.clone()).await;
    assert!(flag(&b, "batch_loading").await);

    set_flag(&a, "batch_loading", false).await;

    let seen = eventually(Duration::from_secs(5), async || {
        !flag(&b, "batch_loading").await
    })
    .await;
    assert!(
        seen,
        "instance b applies the change within 5 s, without a restart"
    );

    // A change made outside the API (psql, during a workshop) travels the same way.
    sqlx::query("update fix_flags set enabled = true where name = 'batch_loading'")
        .execute(&a.db)
        .await
        .unwrap();
    let seen_a = eventually(Duration::from_secs(5), async || {
        flag(&a, "batch_loading").await
    })
    .await;
    let seen_b = eventually(Duration::from_secs(5), async || {
        flag(&b, "batch_loading").await
    })
    .await;
    assert!(seen_a && seen_b);
}

#[tokio::test]
async fn a_flag_change_made_while_the_listen_connection_was_down_still_arrives() {
    let a = spawn_app().await;
    let proxy = TcpProxy::start(postgres_addr()).await;
    let b = spawn_app_with_pool(
        Arc::clone(&a.test_db),
        pool_through(&proxy, &a.test_db),
        |vars| {
            vars.insert("KEEL_FLAGS_POLL_INTERVAL".into(), "500ms".into());
        },
    )
    .await;
    assert!(flag(&b, "batch_loading").await);

    proxy.cut();
    set_flag(&a, "batch_loading", false).await; // b cannot hear this notification
    proxy.restore();

    let seen = eventually(Duration::from_secs(5), async || {
        !flag(&b, "batch_loading").await
    })
    .await;
    assert!(seen, "the poll fallback picks the change up");
}
