//! The read replica (`DATABASE_READ_URL`): list reads go to it, a writer's reads wait for
//! it to have their write, and a replica that dies costs no request an error.
//!
//! The "replica" here is the test's own database, reached through a proxy the test owns (a
//! streaming replica takes a `pg_basebackup` of the whole server: `loadtests/scale-out`
//! runs one). It is not in recovery, so Keel takes it as caught up as of each poll; the
//! poll is set long, so that the replay position stays the one read at start-up and a
//! write made afterwards is, as far as Keel knows, not on the replica yet.
//!
//! Routing is observed in Postgres itself, per test database: the replica pool connects as
//! application `keel-read`, and its connections' last statements are in
//! `pg_stat_activity`. The route metric is process-wide (other tests' instances share the
//! recorder), so it is only compared before and after, on series no other test touches.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{
    TcpProxy, TestApp, TestDb, counter_sum, eventually, postgres_addr, redis_keys,
    spawn_app_with_pool,
};

/// An app whose read replica is `test_db` through `proxy`, polled every `poll`.
async fn app_with_replica(
    test_db: std::sync::Arc<TestDb>,
    proxy: &TcpProxy,
    poll: &str,
) -> TestApp {
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        test_db.options.get_username(),
        proxy.addr.port(),
        test_db.name
    );
    let (poll, pool) = (poll.to_owned(), test_db.pool.clone());
    spawn_app_with_pool(test_db, pool, move |vars| {
        vars.insert("DATABASE_READ_URL".into(), url);
        vars.insert("KEEL_DB_READ_POLL".into(), poll);
        vars.insert("KEEL_DB_READ_YOUR_WRITES_WINDOW".into(), "1m".into());
        vars.insert("KEEL_DB_READ_MAX_CONNECTIONS".into(), "2".into());
    })
    .await
}

/// The statements the replica pool's connections ran last.
async fn replica_statements(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar::<_, String>(
        "select query from pg_stat_activity where datname = $1 and application_name = 'keel-read'",
    )
    .bind(&app.test_db.name)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

async fn replica_ran(app: &TestApp, table: &str) -> bool {
    replica_statements(app)
        .await
        .iter()
        .any(|q| q.contains(&format!("from {table}")) || q.contains(&format!("join {table}")))
}

#[tokio::test]
async fn list_reads_go_to_the_replica_and_a_writer_reads_the_primary_until_it_has_the_write() {
    let test_db = std::sync::Arc::new(TestDb::create().await);
    let proxy = TcpProxy::start(postgres_addr()).await;
    // One poll at start-up, then none for the rest of the test.
    let app = app_with_replica(test_db, &proxy, "10s").await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            app.readyz().await.1["dependencies"]["postgres_replica"] == "up"
        })
        .await,
        "the replica is reported in readiness"
    );
    let owner = app.signup().await;
    let reader = app.signup().await;
    let project = app.create_project(&owner, "replicated").await;
    app.add_member(&owner, project, &reader, "member").await;

    // The writer: a marker in Redis, and their list read on the primary, complete.
    let markers: Vec<String> = redis_keys(&app.test_db.redis_prefix())
        .await
        .into_iter()
        .filter(|k| k.contains("ryw:"))
        .collect();
    assert!(
        markers.iter().any(|k| k.ends_with(&owner.id.to_string())),
        "a marker for the writer: {markers:?}"
    );
    let before = app.metrics().await;
    let own = app.get_json("/v1/projects", &owner.token).await;
    assert_eq!(own["items"][0]["id"], project.to_string());
    let after = app.metrics().await;
    let ryw = r#"keel_db_read_route_total{target="primary",reason="read_your_writes"}"#;
    assert!(
        counter_sum(&after, ryw) > counter_sum(&before, ryw),
        "the writer's read went to the primary"
    );
    assert!(
        !replica_ran(&app, "projects").await,
        "{:?}",
        replica_statements(&app).await
    );

    // A reader who wrote nothing: the replica answers their list reads.
    let theirs = app.get_json("/v1/projects", &reader.token).await;
    assert_eq!(theirs["items"][0]["id"], project.to_string());
    assert!(
        replica_ran(&app, "projects").await,
        "{:?}",
        replica_statements(&app).await
    );
    let members = app
        .get_json(&format!("/v1/projects/{project}/members"), &reader.token)
        .await;
    assert_eq!(members["items"].as_array().unwrap().len(), 2);
    assert!(
        replica_ran(&app, "project_members").await,
        "{:?}",
        replica_statements(&app).await
    );

    // The replica dies: the same reads still answer, from the primary.
    proxy.cut();
    let before = app.metrics().await;
    for _ in 0..3 {
        let response = app.get("/v1/projects", &reader.token).await;
        assert_eq!(response.status(), StatusCode::OK);
        let tasks = app
            .get(
                &format!("/v1/projects/{project}/tasks?limit=5"),
                &reader.token,
            )
            .await;
        assert_eq!(tasks.status(), StatusCode::OK);
    }
    let after = app.metrics().await;
    let fallback = r#"keel_db_read_route_total{target="primary",reason="replica_error"}"#;
    assert!(
        counter_sum(&after, fallback) > counter_sum(&before, fallback),
        "a failed replica read is answered by the primary"
    );
    let (status, report) = app.readyz().await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a dead replica degrades, never unreadies: {report}"
    );
    assert_eq!(report["status"], "degraded");
    assert_eq!(report["dependencies"]["postgres_replica"], "down");
}

#[tokio::test]
async fn a_replica_that_stops_answering_its_poll_is_taken_out_of_the_reads() {
    let test_db = std::sync::Arc::new(TestDb::create().await);
    let proxy = TcpProxy::start(postgres_addr()).await;
    let app = app_with_replica(test_db, &proxy, "100ms").await;
    let reader = app.signup().await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            app.get("/v1/projects", &reader.token).await;
            replica_ran(&app, "projects").await
        })
        .await,
        "the replica serves once polled"
    );
    proxy.cut();
    // Marked down within a few polls; from then on reads go straight to the primary
    // (`replica_down`), with no failed attempt on the replica first.
    let down = r#"keel_db_read_route_total{target="primary",reason="replica_down"}"#;
    let before = counter_sum(&app.metrics().await, down);
    assert!(
        eventually(Duration::from_secs(10), async || {
            let response = app.get("/v1/projects", &reader.token).await;
            assert_eq!(response.status(), StatusCode::OK);
            counter_sum(&app.metrics().await, down) > before
        })
        .await,
        "the monitor takes the replica out of the reads"
    );
    // Its connections died with the proxy's: whatever it ran next, it ran after the cut.
    proxy.restore();
    assert!(
        eventually(Duration::from_secs(10), async || {
            app.get("/v1/projects", &reader.token).await;
            replica_ran(&app, "projects").await
        })
        .await,
        "and back in once it answers its poll again"
    );
}
