//! Idempotency keys on the five creates: a repeat gets the first response and creates
//! nothing, also when the duplicates arrive together; another request under the same key
//! is 422; a repeat while the first is running is 409; keys are per caller and expire; the
//! key's record commits with the create or not at all.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{PASSWORD, TestApp, assert_problem, eventually, spawn_app, spawn_app_with};

/// One create: where to send what, as whom, and how to count what it created.
struct Create {
    route: &'static str,
    path: String,
    token: Option<String>,
    body: Value,
    /// `select count(*) …` of the rows this create makes, with `$1` bound to `scope`.
    count: &'static str,
    scope: String,
}

/// A response, as much of it as a replay must repeat.
#[derive(Debug, PartialEq)]
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: Vec<u8>,
    replayed: bool,
}

impl Answer {
    /// The answer without the replay mark: what must be identical.
    fn first_response(&self) -> (StatusCode, Option<String>, &[u8]) {
        (self.status, self.location.clone(), &self.body)
    }
}

fn new_email() -> String {
    format!("idem-{}@example.com", Uuid::now_v7().simple())
}

/// Each of the five creates, ready to send: fresh users, a project, a task.
async fn five_creates(app: &TestApp) -> Vec<Create> {
    let owner = app.signup().await;
    let project = app.create_project(&owner, "Idempotency").await;
    let invitee = app.signup().await;
    let task = app
        .create_task(&owner, project, json!({"title": "Commented"}))
        .await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let creator = app.signup().await;
    let email = new_email();
    vec![
        Create {
            route: "/v1/users",
            path: "/v1/users".into(),
            token: None,
            body: json!({"email": email, "name": "Ada", "password": PASSWORD}),
            count: "select count(*) from users where email = $1",
            scope: email,
        },
        Create {
            route: "/v1/projects",
            path: "/v1/projects".into(),
            token: Some(creator.token.clone()),
            body: json!({"name": "Launch", "description": "Go live"}),
            count: "select count(*) from projects where owner_id = $1::uuid",
            scope: creator.id.to_string(),
        },
        Create {
            route: "/v1/projects/{id}/members",
            path: format!("/v1/projects/{project}/members"),
            token: Some(owner.token.clone()),
            body: json!({"email": invitee.email, "role": "member"}),
            count: "select count(*) from project_members where project_id = $1::uuid and role <> 'owner'",
            scope: project.to_string(),
        },
        Create {
            route: "/v1/projects/{id}/tasks",
            path: format!("/v1/projects/{project}/tasks"),
            token: Some(owner.token.clone()),
            body: json!({"title": "Ship it", "assignee_id": owner.id, "due_date": "2030-01-31"}),
            count: "select count(*) from tasks where project_id = $1::uuid and title = 'Ship it'",
            scope: project.to_string(),
        },
        Create {
            route: "/v1/tasks/{id}/comments",
            path: format!("/v1/tasks/{task_id}/comments"),
            token: Some(owner.token.clone()),
            body: json!({"body": "Reproduced on staging."}),
            count: "select count(*) from comments where task_id = $1::uuid",
            scope: task_id,
        },
    ]
}

async fn send_body(app: &TestApp, create: &Create, key: Option<&str>, body: &Value) -> Answer {
    let mut request = app
        .request(Method::POST, &create.path, create.token.as_deref())
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Answer {
        status: response.status(),
        location: header("location"),
        replayed: header("idempotent-replayed").as_deref() == Some("true"),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

async fn send(app: &TestApp, create: &Create, key: Option<&str>) -> Answer {
    send_body(app, create, key, &create.body).await
}

async fn count(app: &TestApp, create: &Create) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(create.count))
        .bind(&create.scope)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn count_sql(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.db).await.unwrap()
}

fn new_key() -> String {
    Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_repeat_with_the_same_key_gets_the_first_response_and_creates_nothing() {
    let app = spawn_app().await;
    for create in five_creates(&app).await {
        let key = new_key();
        let first = send(&app, &create, Some(&key)).await;
        let outbox = count_sql(&app, "select count(*) from outbox").await;

        let repeat = send(&app, &create, Some(&key)).await;

        let route = create.route;
        assert_eq!(first.status, StatusCode::CREATED, "{route}");
        assert!(!first.replayed, "{route}");
        assert_eq!(repeat.first_response(), first.first_response(), "{route}");
        assert!(repeat.replayed, "{route}: the repeat says it is a replay");
        assert_eq!(count(&app, &create).await, 1, "{route}: one row");
        assert_eq!(
            count_sql(&app, "select count(*) from outbox").await,
            outbox,
            "{route}: no jobs for the replay"
        );
    }
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("keel_idempotency_requests_total")
                && line.contains(r#"http_route="/v1/projects/{id}/tasks""#)
                && line.contains(r#"outcome="replayed""#)),
        "replays are counted by route"
    );
}

#[tokio::test]
async fn duplicates_sent_at_once_create_one_row_and_all_get_the_same_201() {
    let app = spawn_app().await;
    for create in five_creates(&app).await {
        let key = new_key();

        let answers = join_all((0..8).map(|_| send(&app, &create, Some(&key)))).await;

        let route = create.route;
        for answer in &answers {
            assert_eq!(answer.status, StatusCode::CREATED, "{route}");
            assert_eq!(
                answer.first_response(),
                answers[0].first_response(),
                "{route}"
            );
        }
        let created = answers.iter().filter(|a| !a.replayed).count();
        assert_eq!(created, 1, "{route}: one created, the others replayed");
        assert_eq!(count(&app, &create).await, 1, "{route}: one row");
    }
}

#[tokio::test]
async fn the_same_key_with_another_body_or_path_is_422_and_creates_nothing() {
    let app = spawn_app().await;
    let creates = five_creates(&app).await;
    let (projects, tasks) = (&creates[1], &creates[3]);
    let key = new_key();
    let first = send(&app, projects, Some(&key)).await;
    assert_eq!(first.status, StatusCode::CREATED);

    let other_body = send_body(&app, projects, Some(&key), &json!({"name": "Other"})).await;
    // The same body under the same key, in another project, is another request too.
    let owner_key = new_key();
    assert_eq!(
        send(&app, tasks, Some(&owner_key)).await.status,
        StatusCode::CREATED
    );
    let token = tasks.token.as_deref().unwrap();
    let second: Value = app
        .post("/v1/projects", Some(token), &json!({"name": "Second"}))
        .await
        .json()
        .await
        .unwrap();
    let elsewhere = Create {
        route: tasks.route,
        path: format!("/v1/projects/{}/tasks", second["id"].as_str().unwrap()),
        token: tasks.token.clone(),
        body: tasks.body.clone(),
        count: tasks.count,
        scope: second["id"].as_str().unwrap().to_owned(),
    };
    let other_path = send(&app, &elsewhere, Some(&owner_key)).await;

    for answer in [other_body, other_path] {
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        let problem: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(problem["type"], "urn:keel:problem:idempotency-key-reused");
        assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    }
    let projects_of_caller =
        sqlx::query_scalar::<_, i64>("select count(*) from projects where owner_id = $1::uuid")
            .bind(&projects.scope)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(projects_of_caller, 1);
    assert_eq!(count(&app, &elsewhere).await, 0);
    let replay = send(&app, projects, Some(&key)).await;
    assert_eq!(
        replay.first_response(),
        first.first_response(),
        "the key still answers"
    );
}

#[tokio::test]
async fn a_repeat_while_the_first_is_in_flight_is_409_and_later_gets_the_first_response() {
    let app = spawn_app_with(|vars| {
        vars.insert("KEEL_IDEMPOTENCY_WAIT".into(), "200ms".into());
    })
    .await;
    let creates = five_creates(&app).await;
    let projects = &creates[1];
    let key = new_key();
    // Hold the first request inside its create: it has claimed the key, and its insert
    // waits for this lock.
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("lock table projects in share mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let first = tokio::spawn({
        let (client, url, token, body) = (
            app.client.clone(),
            format!("{}{}", app.api, projects.path),
            projects.token.clone().unwrap(),
            projects.body.clone(),
        );
        let key = key.clone();
        async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", key)
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .unwrap();
            let location = response.headers()["location"].to_str().unwrap().to_owned();
            (response.status(), location, response.bytes().await.unwrap())
        }
    });
    let waiting = eventually(Duration::from_secs(10), async || {
        sqlx::query_scalar::<_, bool>(
            "select exists (select 1 from pg_locks
                            where not granted and relation = 'projects'::regclass)",
        )
        .fetch_one(&app.db)
        .await
        .unwrap()
    })
    .await;
    assert!(waiting, "the first request is inside its create");

    let repeat = app
        .request(Method::POST, &projects.path, projects.token.as_deref())
        .header("idempotency-key", &key)
        .json(&projects.body)
        // Bounded: a repeat that did not wait for the key would block on the table lock.
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the repeat is answered while the first is still running");

    assert_eq!(repeat.headers()["retry-after"], "1");
    let problem = assert_problem(repeat, StatusCode::CONFLICT).await;
    assert_eq!(
        problem["type"],
        "urn:keel:problem:idempotency-key-in-flight"
    );
    blocker.rollback().await.unwrap();
    let (status, location, body) = first.await.unwrap();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the first request was not disturbed"
    );
    let later = send(&app, projects, Some(&key)).await;
    assert_eq!(later.first_response(), (status, Some(location), &body[..]));
    assert_eq!(count(&app, projects).await, 1);
}

#[tokio::test]
async fn another_caller_with_the_same_key_has_a_key_of_its_own() {
    // The proxy in front is trusted, so X-Forwarded-For names two anonymous clients.
    let app = spawn_app_with(|vars| {
        vars.insert("KEEL_TRUSTED_PROXIES".into(), "127.0.0.1/32".into());
    })
    .await;
    let key = new_key();
    let (ada, grace) = (app.signup().await, app.signup().await);
    let mut ids = Vec::new();
    for user in [&ada, &grace] {
        let response = app
            .request(Method::POST, "/v1/projects", Some(&user.token))
            .header("idempotency-key", &key)
            .json(&json!({"name": "Same key"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(response.headers().get("idempotent-replayed").is_none());
        ids.push(response.json::<Value>().await.unwrap()["owner_id"].clone());
    }
    assert_eq!(ids, [json!(ada.id), json!(grace.id)]);

    for client in ["203.0.113.1", "203.0.113.2"] {
        let response = app
            .request(Method::POST, "/v1/users", None)
            .header("idempotency-key", &key)
            .header("x-forwarded-for", client)
            .json(&json!({"email": new_email(), "name": "Anon", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{client}");
    }
}

#[tokio::test]
async fn an_expired_key_creates_anew_and_the_pruner_deletes_only_expired_keys() {
    let app = spawn_app().await;
    let creates = five_creates(&app).await;
    let projects = &creates[1];
    let (old, live) = (new_key(), new_key());
    let first = send(&app, projects, Some(&old)).await;
    let other = send_body(&app, projects, Some(&live), &json!({"name": "Kept"})).await;
    assert_eq!(
        (first.status, other.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    sqlx::query(
        "update idempotency_keys set expires_at = now() - interval '1 second' where key = $1",
    )
    .bind(&old)
    .execute(&app.db)
    .await
    .unwrap();

    let again = send(&app, projects, Some(&old)).await;

    assert_eq!(again.status, StatusCode::CREATED);
    assert!(!again.replayed);
    assert_ne!(again.location, first.location, "a second project");
    assert_eq!(
        send(&app, projects, Some(&old)).await.first_response(),
        again.first_response()
    );
    sqlx::query(
        "update idempotency_keys set expires_at = now() - interval '1 second' where key = $1",
    )
    .bind(&old)
    .execute(&app.db)
    .await
    .unwrap();
    let pruned = keel::db::idempotency::prune(&app.db, 100).await.unwrap();
    assert_eq!(pruned, 1);
    let left: Vec<String> = sqlx::query_scalar("select key from idempotency_keys")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(left, [live]);
}

#[tokio::test]
async fn a_malformed_key_is_422_naming_the_header_and_creates_nothing() {
    let app = spawn_app().await;
    let creates = five_creates(&app).await;
    let projects = &creates[1];
    let too_long = "k".repeat(256);
    for key in ["", "two words", "\"unterminated", too_long.as_str()] {
        let response = app
            .request(Method::POST, &projects.path, projects.token.as_deref())
            .header("idempotency-key", key)
            .json(&projects.body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], "Idempotency-Key", "{key:?}");
    }
    let twice = app
        .request(Method::POST, &projects.path, projects.token.as_deref())
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .json(&projects.body)
        .send()
        .await
        .unwrap();
    assert_problem(twice, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(count(&app, projects).await, 0);
    // The draft's own syntax, a structured-field string, is the same key as the bare one.
    let quoted = send(&app, projects, Some("\"abc-123\"")).await;
    let bare = send(&app, projects, Some("abc-123")).await;
    assert_eq!(bare.first_response(), quoted.first_response());
    assert!(bare.replayed);
}

#[tokio::test]
async fn a_failed_create_records_no_key_and_its_retry_gets_the_real_error_again() {
    let app = spawn_app().await;
    let taken = app.signup().await;
    let create = Create {
        route: "/v1/users",
        path: "/v1/users".into(),
        token: None,
        body: json!({"email": taken.email, "name": "Twin", "password": PASSWORD}),
        count: "select count(*) from users where email = $1",
        scope: taken.email.clone(),
    };
    let key = new_key();

    for _ in 0..2 {
        let answer = send(&app, &create, Some(&key)).await;
        assert_eq!(answer.status, StatusCode::CONFLICT);
        assert!(!answer.replayed);
        let problem: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(problem["type"], "urn:keel:problem:email-taken");
    }

    assert_eq!(
        count_sql(&app, "select count(*) from idempotency_keys").await,
        0
    );
    assert_eq!(count(&app, &create).await, 1);
}

#[tokio::test]
async fn the_key_and_the_created_row_commit_together_or_not_at_all() {
    let app = spawn_app().await;
    let creates = five_creates(&app).await;
    let projects = &creates[1];
    // Make the record's insert fail: the create it belongs to must go with it.
    sqlx::raw_sql(
        "create function refuse() returns trigger language plpgsql as $$
         begin raise exception 'refused'; end $$;
         create trigger refuse before insert on idempotency_keys
             for each row execute function refuse();",
    )
    .execute(&app.db)
    .await
    .unwrap();

    let keyed = send(&app, projects, Some(&new_key())).await;

    assert_eq!(keyed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(count(&app, projects).await, 0, "no project without its key");
    let unkeyed = send(&app, projects, None).await;
    assert_eq!(unkeyed.status, StatusCode::CREATED, "no key, no record");
}

#[tokio::test]
async fn requests_without_a_key_are_not_remembered() {
    let app = spawn_app().await;
    let creates = five_creates(&app).await;
    let projects = &creates[1];

    let (one, two) = (
        send(&app, projects, None).await,
        send(&app, projects, None).await,
    );

    assert_eq!(
        (one.status, two.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_ne!(one.location, two.location);
    assert_eq!(count(&app, projects).await, 2);
    assert_eq!(
        count_sql(&app, "select count(*) from idempotency_keys").await,
        0
    );
}

#[tokio::test]
async fn the_creates_document_the_key_and_what_it_may_answer() {
    let app = spawn_app().await;
    let spec: Value = app
        .request(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/users",
        "/v1/projects",
        "/v1/projects/{id}/members",
        "/v1/projects/{id}/tasks",
        "/v1/tasks/{id}/comments",
    ] {
        let post = &spec["paths"][path]["post"];
        let header = post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "Idempotency-Key")
            .unwrap_or_else(|| panic!("{path} documents Idempotency-Key"));
        assert_eq!(header["in"], "header");
        let responses = &post["responses"];
        assert!(
            responses["409"]["description"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{path}"
        );
        assert!(
            responses["409"]["headers"]["Retry-After"].is_object(),
            "{path}"
        );
        assert!(
            responses["422"]["description"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{path}"
        );
        assert!(
            responses["201"]["headers"]["Idempotent-Replayed"].is_object(),
            "{path}"
        );
    }
    let token = &spec["paths"]["/v1/auth/token"]["post"];
    assert!(token["parameters"].is_null() || !token.to_string().contains("Idempotency-Key"));
}
