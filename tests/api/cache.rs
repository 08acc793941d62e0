//! The Redis cache, end to end: real Redis and Postgres, every key under the test's own
//! prefix, statements counted on the wire.
//!
//! The oracle for "is this read fresh" is a second instance whose Redis is a closed port:
//! its reads always come from Postgres (the cache degrades to a miss), so whatever it
//! answers is the truth the cached instance must match.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use keel::cache::FillHook;
use keel::flags::Flag;
use keel::resilience::BreakerState;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use crate::helpers::{
    TcpProxy, TestApp, TestDb, TestUser, eventually, redis_addr, redis_keys, spawn_app_with_pool,
};
use crate::pgwire::{StatementLog, logged_pool};

/// An instance with its statements logged on the wire.
async fn logged_app() -> (TestApp, StatementLog) {
    let test_db = Arc::new(TestDb::create().await);
    let (pool, log) = logged_pool(&test_db).await;
    let app = spawn_app_with_pool(test_db, pool, |_| {}).await;
    (app, log)
}

/// An instance on the same database that cannot reach Redis: it serves every read from
/// Postgres. Its breaker opens after the first failures; until then each read pays a
/// refused connection, which is fast on loopback.
async fn postgres_only(app: &TestApp) -> TestApp {
    spawn_app_with_pool(app.test_db.clone(), app.db.clone(), |vars| {
        // Port 9 (discard) on loopback: nothing listens there, connects are refused.
        vars.insert("REDIS_URL".into(), "redis://127.0.0.1:9".into());
    })
    .await
}

/// The SQL statements sent since the last call, without the flag refresher's.
fn statements(log: &StatementLog) -> Vec<String> {
    log.take()
        .into_iter()
        .filter(|sql| !sql.contains("fix_flags") && !sql.contains("fault_injections"))
        .collect()
}

/// A project with an owner, a member, and a task assigned to the member with a comment.
struct World {
    owner: TestUser,
    member: TestUser,
    project: Uuid,
    task: Uuid,
}

async fn world(app: &TestApp) -> World {
    let owner = app.signup().await;
    let member = app.signup().await;
    let project = app.create_project(&owner, "cached").await;
    app.add_member(&owner, project, &member, "member").await;
    let task = app
        .create_task(
            &owner,
            project,
            json!({"title": "first", "assignee_id": member.id}),
        )
        .await;
    let task: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    let response = app
        .post(
            &format!("/v1/tasks/{task}/comments"),
            Some(&owner.token),
            &json!({"body": "hello"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    World {
        owner,
        member,
        project,
        task,
    }
}

/// Status and body of a GET.
async fn read(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    let response = app.get(path, token).await;
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn a_second_read_of_each_hot_resource_sends_no_statement() {
    let (app, log) = logged_app().await;
    let w = world(&app).await;
    let paths = [
        format!("/v1/tasks/{}", w.task),
        format!("/v1/projects/{}", w.project),
        format!("/v1/projects/{}/tasks", w.project),
        "/v1/me".to_owned(),
    ];
    for path in &paths {
        statements(&log);
        let (status, first) = read(&app, path, &w.owner.token).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let misses = statements(&log);
        // A task read's entries fill over two reads: the first loads the task and its
        // count in one statement; the membership and assignee are named by the task.
        let (status, second) = read(&app, path, &w.owner.token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first, second, "{path}");
        statements(&log);
        let (_, third) = read(&app, path, &w.owner.token).await;
        assert_eq!(third, first);
        assert_eq!(statements(&log), Vec::<String>::new(), "{path}: a hit");
        assert!(!misses.is_empty(), "{path}: the first read missed");
    }
    // A cold single-task read is one statement, role check included.
    let (app2, log2) = logged_app().await;
    let w2 = world(&app2).await;
    app2.state.cache.drop_all().await.expect("Redis answers");
    statements(&log2);
    let (status, _) = read(&app2, &format!("/v1/tasks/{}", w2.task), &w2.member.token).await;
    assert_eq!(status, StatusCode::OK);
    let cold = statements(&log2);
    assert_eq!(cold.len(), 1, "{cold:#?}");

    // Everything lives under the test's prefix.
    let keys = redis_keys(&app.test_db.redis_prefix()).await;
    assert!(
        keys.iter().any(|k| k.contains(&format!(":t:{}", w.task))),
        "{keys:?}"
    );
}

#[tokio::test]
async fn with_the_cache_flag_off_every_read_goes_to_postgres() {
    let (app, log) = logged_app().await;
    let w = world(&app).await;
    let path = format!("/v1/tasks/{}", w.task);
    for _ in 0..3 {
        read(&app, &path, &w.owner.token).await;
    }
    app.set_flag(Flag::Cache, false).await;
    statements(&log);
    for _ in 0..3 {
        let (status, _) = read(&app, &path, &w.owner.token).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(statements(&log).len(), 3, "one statement per uncached read");
}

/// A write through the API, and the resources it can make stale.
struct Write {
    name: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    status: StatusCode,
}

#[tokio::test]
async fn every_write_invalidates_what_it_made_stale() {
    let test_db = Arc::new(TestDb::create().await);
    let pool = test_db.pool.clone();
    let app = spawn_app_with_pool(test_db, pool, |_| {}).await;
    let truth = postgres_only(&app).await;
    let w = world(&app).await;
    let other = app
        .create_task(&w.owner, w.project, json!({"title": "second"}))
        .await;
    let other: Uuid = other["id"].as_str().unwrap().parse().unwrap();
    let newcomer = app.signup().await;

    let writes = [
        Write {
            name: "rename a task",
            method: Method::PATCH,
            path: format!("/v1/tasks/{}", w.task),
            body: Some(json!({"title": "renamed"})),
            status: StatusCode::OK,
        },
        Write {
            name: "change a task's status",
            method: Method::PATCH,
            path: format!("/v1/tasks/{}", w.task),
            body: Some(json!({"status": "doing"})),
            status: StatusCode::OK,
        },
        Write {
            name: "assign a task",
            method: Method::PATCH,
            path: format!("/v1/tasks/{other}"),
            body: Some(json!({"assignee_id": w.member.id})),
            status: StatusCode::OK,
        },
        Write {
            name: "comment on a task",
            method: Method::POST,
            path: format!("/v1/tasks/{}/comments", w.task),
            body: Some(json!({"body": "another"})),
            status: StatusCode::CREATED,
        },
        Write {
            name: "create a task",
            method: Method::POST,
            path: format!("/v1/projects/{}/tasks", w.project),
            body: Some(json!({"title": "third", "status": "doing"})),
            status: StatusCode::CREATED,
        },
        Write {
            name: "rename the project",
            method: Method::PATCH,
            path: format!("/v1/projects/{}", w.project),
            body: Some(json!({"name": "renamed project"})),
            status: StatusCode::OK,
        },
        Write {
            name: "add a member",
            method: Method::POST,
            path: format!("/v1/projects/{}/members", w.project),
            body: Some(json!({"email": newcomer.email, "role": "member"})),
            status: StatusCode::CREATED,
        },
        Write {
            name: "remove the assignee",
            method: Method::DELETE,
            path: format!("/v1/projects/{}/members/{}", w.project, w.member.id),
            body: None,
            status: StatusCode::NO_CONTENT,
        },
        Write {
            name: "delete a task",
            method: Method::DELETE,
            path: format!("/v1/tasks/{other}"),
            body: None,
            status: StatusCode::NO_CONTENT,
        },
        Write {
            name: "delete the project",
            method: Method::DELETE,
            path: format!("/v1/projects/{}", w.project),
            body: None,
            status: StatusCode::NO_CONTENT,
        },
    ];
    // What every write can affect, read by everyone it can affect.
    let reads = [
        format!("/v1/tasks/{}", w.task),
        format!("/v1/tasks/{other}"),
        format!("/v1/projects/{}", w.project),
        format!("/v1/projects/{}/tasks", w.project),
        format!("/v1/projects/{}/tasks?status=doing", w.project),
        format!("/v1/projects/{}/tasks?limit=1", w.project),
        "/v1/me".to_owned(),
    ];
    let readers = [&w.owner, &w.member, &newcomer];
    let check = async |after: &str| {
        for reader in readers {
            for path in &reads {
                let cached = read(&app, path, &reader.token).await;
                let fresh = read(&truth, path, &reader.token).await;
                assert_eq!(
                    cached, fresh,
                    "after {after:?}: {path} as {} is stale",
                    reader.email
                );
            }
        }
    };
    // Warm every entry (twice: a task read fills its derived entries on the second).
    check("nothing").await;
    check("nothing").await;
    for write in writes {
        let mut request = app.request(write.method.clone(), &write.path, Some(&w.owner.token));
        if let Some(body) = &write.body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), write.status, "{}", write.name);
        check(write.name).await;
        check(write.name).await;
    }
}

#[tokio::test]
async fn a_write_through_one_instance_is_seen_through_another_at_once() {
    let test_db = Arc::new(TestDb::create().await);
    let a = spawn_app_with_pool(test_db.clone(), test_db.pool.clone(), |_| {}).await;
    let b = a.another_instance(a.db.clone()).await;
    let w = world(&a).await;
    let task_path = format!("/v1/tasks/{}", w.task);
    for _ in 0..2 {
        assert_eq!(
            read(&b, &task_path, &w.member.token).await.0,
            StatusCode::OK
        );
    }
    let response = a
        .patch(
            &task_path,
            &w.owner.token,
            &json!({"title": "seen everywhere"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (_, body) = read(&b, &task_path, &w.member.token).await;
    assert_eq!(body["title"], "seen everywhere");

    // A removed member is a stranger on their very next request, on any instance.
    let project_path = format!("/v1/projects/{}", w.project);
    assert_eq!(
        read(&b, &project_path, &w.member.token).await.0,
        StatusCode::OK
    );
    let response = a
        .delete(
            &format!("/v1/projects/{}/members/{}", w.project, w.member.id),
            &w.owner.token,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        read(&b, &project_path, &w.member.token).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        read(&b, &task_path, &w.member.token).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_fill_that_lost_the_race_against_a_write_is_refused() {
    let test_db = Arc::new(TestDb::create().await);
    let app = spawn_app_with_pool(test_db.clone(), test_db.pool.clone(), |_| {}).await;
    let w = world(&app).await;
    let path = format!("/v1/tasks/{}", w.task);
    app.state.cache.drop_all().await.expect("Redis answers");

    // The hook parks the first fill of a task entry until the test lets it go.
    let loaded = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hook: FillHook = {
        let (loaded, release, armed) = (loaded.clone(), release.clone(), armed.clone());
        Arc::new(move |kind: &'static str| {
            let (loaded, release) = (loaded.clone(), release.clone());
            let park = kind == "task" && armed.swap(false, Ordering::SeqCst);
            async move {
                if park {
                    loaded.notify_one();
                    release.acquire().await.expect("open").forget();
                }
            }
            .boxed()
        })
    };
    app.state.cache.set_fill_hook(Some(hook));

    // The reader (the owner) misses, loads "first" from Postgres, and is parked.
    let reader = {
        let (client, url, token) = (
            app.client.clone(),
            format!("{}{path}", app.api),
            w.owner.token.clone(),
        );
        tokio::spawn(async move {
            let response = client.get(url).bearer_auth(token).send().await.unwrap();
            response.json::<Value>().await.unwrap()
        })
    };
    tokio::time::timeout(Duration::from_secs(10), loaded.notified())
        .await
        .expect("the reader missed and loaded");
    // Meanwhile another member renames the task: commit, then invalidate.
    let response = app
        .patch(&path, &w.member.token, &json!({"title": "second"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // The parked reader fills now: refused, because the write removed its lease.
    release.add_permits(1);
    let seen_by_reader = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the reader finished")
        .unwrap();
    assert_eq!(seen_by_reader["title"], "first", "it read before the write");
    app.state.cache.set_fill_hook(None);
    for _ in 0..3 {
        let (_, body) = read(&app, &path, &w.owner.token).await;
        assert_eq!(
            body["title"], "second",
            "the old row must not have been stored"
        );
    }
}

#[tokio::test]
async fn reads_that_start_after_a_write_see_it_under_concurrent_readers_and_writers() {
    let test_db = Arc::new(TestDb::create().await);
    let a = spawn_app_with_pool(test_db.clone(), test_db.pool.clone(), |_| {}).await;
    let b = Arc::new(a.another_instance(a.db.clone()).await);
    let a = Arc::new(a);
    let w = world(&a).await;
    let path = format!("/v1/tasks/{}", w.task);
    // The version the last acknowledged write set; versions only grow.
    let committed = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);

    let writer = {
        let (a, b, committed, path, token) = (
            a.clone(),
            b.clone(),
            committed.clone(),
            path.clone(),
            w.owner.token.clone(),
        );
        tokio::spawn(async move {
            let mut version = 0u64;
            while tokio::time::Instant::now() < deadline && version < 2_000 {
                version += 1;
                let via = if version.is_multiple_of(2) { &a } else { &b };
                let response = via
                    .patch(&path, &token, &json!({"title": format!("v{version}")}))
                    .await;
                assert_eq!(response.status(), StatusCode::OK);
                committed.store(version, Ordering::SeqCst);
            }
            version
        })
    };
    let mut readers = Vec::new();
    for i in 0..6 {
        let (app, committed, path, token) = (
            if i % 2 == 0 { a.clone() } else { b.clone() },
            committed.clone(),
            path.clone(),
            if i % 3 == 0 {
                w.owner.token.clone()
            } else {
                w.member.token.clone()
            },
        );
        readers.push(tokio::spawn(async move {
            let mut reads = 0u32;
            while tokio::time::Instant::now() < deadline && reads < 20_000 {
                let floor = committed.load(Ordering::SeqCst);
                let (status, body) = read(&app, &path, &token).await;
                assert_eq!(status, StatusCode::OK);
                let seen: u64 = body["title"]
                    .as_str()
                    .and_then(|t| t.strip_prefix('v'))
                    .map_or(0, |v| v.parse().unwrap());
                assert!(
                    seen >= floor,
                    "read v{seen} after v{floor} was acknowledged"
                );
                reads += 1;
            }
            reads
        }));
    }
    let writes = writer.await.unwrap();
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    assert!(writes > 10 && reads > 100, "{writes} writes, {reads} reads");
}

#[tokio::test]
async fn a_cold_key_under_200_concurrent_reads_on_two_instances_loads_at_most_twice() {
    let test_db = Arc::new(TestDb::create().await);
    let (pool, log) = logged_pool(&test_db).await;
    // Waiters wait for the fill rather than give up, however slowly this machine runs
    // 200 requests on one test thread.
    let patient = |vars: &mut std::collections::HashMap<String, String>| {
        vars.insert("KEEL_CACHE_LEASE_TTL".into(), "10s".into());
        vars.insert("KEEL_CACHE_LEASE_WAIT".into(), "5s".into());
        vars.insert("KEEL_REDIS_POOL_WAIT_TIMEOUT".into(), "5s".into());
        // 100 reads arrive at each instance at once: admit them all, rather than let the
        // load shedder refuse what its starting limit has no room for.
        vars.insert("KEEL_SHED_INITIAL_LIMIT".into(), "256".into());
    };
    let a = spawn_app_with_pool(test_db.clone(), pool.clone(), patient).await;
    let b = spawn_app_with_pool(test_db.clone(), pool, patient).await;
    // Each request's rate-limit check is a Redis call of its own on the same pool: 200 of
    // them at once can push a cache read past its command timeout, and a read that gets no
    // answer loads from Postgres without the lease. Only the cache talks to Redis here.
    for app in [&a, &b] {
        app.set_flag(Flag::RateLimit, false).await;
    }
    let w = world(&a).await;
    let path = format!("/v1/tasks/{}", w.task);
    a.state.cache.drop_all().await.expect("Redis answers");
    statements(&log);
    let mut reads = Vec::new();
    for i in 0..200 {
        let app = if i % 2 == 0 { &a } else { &b };
        reads.push(read(app, &path, &w.member.token));
    }
    for (status, body) in futures_util::future::join_all(reads).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["title"], "first");
    }
    let task_loads = statements(&log)
        .into_iter()
        .filter(|sql| sql.contains("from tasks t"))
        .count();
    assert!(task_loads <= 2, "{task_loads} loads of the task");
}

#[tokio::test]
async fn with_redis_cut_the_service_serves_from_postgres_and_nothing_stale_comes_back() {
    let proxy = TcpProxy::start(redis_addr()).await;
    let test_db = Arc::new(TestDb::create().await);
    let url = format!("redis://{}", proxy.addr);
    let app = spawn_app_with_pool(test_db.clone(), test_db.pool.clone(), |vars| {
        vars.insert("REDIS_URL".into(), url);
        vars.insert("KEEL_REDIS_BREAKER_COOLDOWN".into(), "500ms".into());
    })
    .await;
    let w = world(&app).await;
    let path = format!("/v1/tasks/{}", w.task);
    for _ in 0..3 {
        read(&app, &path, &w.member.token).await;
    }
    assert_eq!(app.state.cache.breaker_state(), BreakerState::Closed);

    proxy.cut();
    // Reads and writes keep succeeding, each within a bounded delay.
    for i in 0..30 {
        let started = std::time::Instant::now();
        let (status, _) = read(&app, &path, &w.member.token).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "read {i} took {:?}",
            started.elapsed()
        );
    }
    let response = app
        .patch(
            &path,
            &w.owner.token,
            &json!({"title": "written during the outage"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.state.cache.breaker_state(), BreakerState::Open);
    let (status, ready) = app.readyz().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["dependencies"]["redis"], "down");

    proxy.restore();
    // Caching resumes by itself, and the entry from before the outage never comes back.
    let resumed = eventually(Duration::from_secs(5), async || {
        let (_, body) = read(&app, &path, &w.member.token).await;
        assert_eq!(
            body["title"], "written during the outage",
            "stale after the outage"
        );
        app.state.cache.breaker_state() == BreakerState::Closed
    })
    .await;
    assert!(resumed, "the breaker closed again");
    for _ in 0..3 {
        let (_, body) = read(&app, &path, &w.member.token).await;
        assert_eq!(body["title"], "written during the outage");
    }
    let (status, ready) = app.readyz().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn single_resources_carry_a_strong_tag_that_a_write_changes() {
    let app = crate::helpers::spawn_app().await;
    let w = world(&app).await;
    let task = format!("/v1/tasks/{}", w.task);
    let project = format!("/v1/projects/{}", w.project);
    let tag_of = async |path: &str| {
        let response = app.get(path, &w.owner.token).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert_eq!(headers["cache-control"], "private, no-cache", "{path}");
        let tag = headers["etag"].to_str().unwrap().to_owned();
        assert!(
            tag.starts_with('"') && tag.ends_with('"'),
            "a strong tag: {tag}"
        );
        tag
    };
    for path in [task.as_str(), project.as_str(), "/v1/me"] {
        let tag = tag_of(path).await;
        let response = app
            .request(Method::GET, path, Some(&w.owner.token))
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(response.headers()["etag"], tag.as_str());
        assert!(
            response.bytes().await.unwrap().is_empty(),
            "a 304 has no body"
        );
        let other = app
            .request(Method::GET, path, Some(&w.owner.token))
            .header("if-none-match", "\"something-else\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK, "{path}");
    }

    // Writes that change the representation change the tag.
    let before = tag_of(&task).await;
    app.patch(&task, &w.owner.token, &json!({"status": "done"}))
        .await;
    let after_patch = tag_of(&task).await;
    assert_ne!(before, after_patch, "a change of the task");
    let response = app
        .post(
            &format!("{task}/comments"),
            Some(&w.owner.token),
            &json!({"body": "counted"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_ne!(
        after_patch,
        tag_of(&task).await,
        "a new comment changes the count"
    );
    let before = tag_of(&project).await;
    app.patch(
        &project,
        &w.owner.token,
        &json!({"description": "now with one"}),
    )
    .await;
    assert_ne!(before, tag_of(&project).await, "a change of the project");
}

#[tokio::test]
async fn scripts_are_reloaded_after_redis_forgets_them() {
    let (app, log) = logged_app().await;
    let w = world(&app).await;
    let path = format!("/v1/tasks/{}", w.task);
    for _ in 0..2 {
        read(&app, &path, &w.owner.token).await;
    }
    // As after a Redis restart. (Other tests' instances reload theirs the same way.)
    let mut redis = crate::helpers::redis().await;
    let () = deadpool_redis::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();
    statements(&log);
    let (status, body) = read(&app, &path, &w.owner.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["title"], "first");
    assert_eq!(
        statements(&log),
        Vec::<String>::new(),
        "still a hit: EVALSHA, NOSCRIPT, reload"
    );
    assert_eq!(app.state.cache.breaker_state(), BreakerState::Closed);
}
