//! Keel's load-test scenarios, written for [Goose](https://book.goose.rs), a maintained
//! load-testing framework (crates.io: `goose`). `loadtests/scenario` and
//! `loadtests/before-after` build and run this binary; they pick the scenario, the rate and
//! the run's shape, and read its per-request log. It can also be run by hand:
//!
//! ```text
//! KEEL_LOAD_SCENARIO=peak-hour KEEL_LOAD_SEED=seed.json \
//!   target/release/keel-load --host http://127.0.0.1:8080 --users 60 --hatch-rate 60 \
//!   --run-time 30s --throttle-requests 500 --co-mitigation minimum --request-log requests.json
//! ```
//!
//! # The scenarios (`KEEL_LOAD_SCENARIO`)
//!
//! | name | what each user does | the fix it exercises |
//! |---|---|---|
//! | `hot-read` | `GET` a task (50 %), a project (30 %), a project's first task page (20 %), ids drawn with a skew: 80 % of reads go to the first 20 % of the ids it knows | cache |
//! | `task-page` | walks a big project's task list page by page (`limit=50`), 20 pages deep, then starts again | batch loading (N+1), indexes |
//! | `write` | creates a task (30 %), assigns one to another member (25 %: an email), comments (25 %), changes a status (20 %: a stats recompute) | async jobs (the outbox) |
//! | `peak-hour` | the case study's profile: 80 % reads (task 35, first page 20, project 15, `/v1/me` 10), 15 % writes (create 4, assign 3, comment 4, status 4), 5 % sign-ins | all of them |
//! | `overload` | `peak-hour`, plus one scraper per 60 users (a big project's owner walking its task list, 100 a page, with no pause) | load shedding, rate limits |
//! | `soak` | `peak-hour`, at a steady rate for long | leaks: memory, pools, queue backlog |
//!
//! # How the load is shaped
//!
//! Each Goose user pauses `KEEL_LOAD_PACE_MS` between requests, so `--users` of them offer
//! users / pace requests a second while the service keeps up (`--throttle-requests` is only a
//! ceiling above that). When it does not, users wait on their answers and would send less: Goose's
//! coordinated-omission mitigation (`--co-mitigation minimum`) back-fills the requests each
//! user would have sent on its unhindered cadence, so a stall is charged for every request it
//! held up (the runner reads those synthetic rows apart from the real ones).
//!
//! # Users and tokens
//!
//! `keel seed --tokens N --out seed.json` issues N tokens; Goose user `i` takes token
//! `i mod N`, so no sign-in costs a password hash before the measurement. The service is meant
//! to run behind `KEEL_TRUSTED_PROXIES=127.0.0.1`: each user sends from an address of its own
//! in 10.0.0.0/8 (`X-Forwarded-For`), and each sign-in from a fresh one, so the per-address
//! budgets see a crowd, not one machine. Sign-ins use a seeded user's email
//! (`user0000000@seed.keel.dev` …) and the report's password.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use goose::prelude::*;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

/// Sign-ins so far: each comes from a fresh address.
static SIGN_INS: AtomicU32 = AtomicU32::new(0);

/// How deep `task-page` walks a project's task list before starting again.
const PAGE_DEPTH: usize = 20;
/// The page size of `task-page`.
const DEEP_PAGE_LIMIT: usize = 50;

/// What the seed report (`keel seed --out`) tells a load test.
#[derive(Deserialize)]
struct SeedReport {
    password: String,
    counts: Counts,
    sample_users: Vec<SeededUser>,
    largest_projects: Vec<SeededProject>,
}

#[derive(Deserialize)]
struct Counts {
    users: u64,
}

#[derive(Deserialize)]
struct SeededUser {
    token: String,
}

#[derive(Deserialize)]
struct SeededProject {
    id: String,
    owner: SeededUser,
}

/// What one Goose user knows: its token and address, and the ids it reads and writes.
#[derive(Clone)]
struct Session {
    token: String,
    address: String,
    projects: Vec<String>,
    /// Tasks with their project's id (newest writes first).
    tasks: Vec<(String, String)>,
    /// The members of the projects whose tasks it knows: (project id, user ids).
    members: Vec<(String, Vec<String>)>,
    /// `task-page`: the project walked, the next cursor, and the pages walked so far.
    walk_project: Option<String>,
    cursor: Option<String>,
    depth: usize,
}

impl Session {
    fn project(&self) -> Option<&str> {
        skewed(&self.projects).map(String::as_str)
    }

    fn task(&self) -> Option<&str> {
        skewed(&self.tasks).map(|(task, _)| task.as_str())
    }

    /// A task and another member of its project to assign it to.
    fn assignment(&self) -> Option<(String, String)> {
        let (task, project) = skewed(&self.tasks)?;
        let (_, members) = self.members.iter().find(|(p, _)| p == project)?;
        let member = members.get(rand::rng().random_range(0..members.len().max(1)))?;
        Some((task.clone(), member.clone()))
    }
}

/// An element with a skew toward the front: 80 % of the draws fall in the first 20 %
/// (the hot keys), the rest anywhere.
fn skewed<T>(items: &[T]) -> Option<&T> {
    if items.is_empty() {
        return None;
    }
    let mut rng = rand::rng();
    let hot = items.len().div_ceil(5);
    let index = if rng.random_bool(0.8) {
        rng.random_range(0..hot)
    } else {
        rng.random_range(0..items.len())
    };
    items.get(index)
}

static REPORT: std::sync::OnceLock<SeedReport> = std::sync::OnceLock::new();

/// The seed report, read by `main` before the attack starts.
fn seed_report() -> &'static SeedReport {
    REPORT.get().expect("main reads the seed report first")
}

fn read_seed_report() -> Result<SeedReport, GooseError> {
    let invalid = |value: String, detail: String| GooseError::InvalidOption {
        option: "KEEL_LOAD_SEED".into(),
        value,
        detail,
    };
    let path = std::env::var("KEEL_LOAD_SEED").map_err(|_| {
        invalid(
            String::new(),
            "the path of a `keel seed --tokens N --out FILE` report".into(),
        )
    })?;
    let raw = std::fs::read_to_string(&path).map_err(|e| invalid(path.clone(), e.to_string()))?;
    let report: SeedReport =
        serde_json::from_str(&raw).map_err(|e| invalid(path.clone(), e.to_string()))?;
    if report.sample_users.is_empty() || report.largest_projects.is_empty() {
        return Err(invalid(
            path,
            "the report lists no tokens or no projects (keel seed --tokens N)".into(),
        ));
    }
    Ok(report)
}

fn address(n: u32) -> String {
    let [_, a, b, c] = n.to_be_bytes();
    format!("10.{a}.{b}.{c}")
}

/// A request with the user's token and address, named for the metrics (one row per kind,
/// not per id).
async fn send(
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &'static str,
    body: Option<Value>,
) -> Result<Option<Value>, Box<TransactionError>> {
    let (token, address) = {
        let session = user.get_session_data_unchecked::<Session>();
        (session.token.clone(), session.address.clone())
    };
    let mut builder = user
        .get_request_builder(&method, path)?
        .bearer_auth(token)
        .header("x-forwarded-for", address)
        .header("accept", "application/json");
    if let Some(body) = body {
        builder = builder
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let request = GooseRequest::builder()
        .set_request_builder(builder)
        .name(name)
        .build();
    let goose = user.request(request).await?;
    Ok(match goose.response {
        Ok(response) if response.status().is_success() => response
            .text()
            .await
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok()),
        _ => None,
    })
}

fn ids(page: &Option<Value>, pick: impl Fn(&Value) -> Option<&Value>) -> Vec<String> {
    page.as_ref()
        .and_then(|p| p["items"].as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|item| pick(item).and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// On start: take a token, then learn some projects, their members and first tasks.
async fn start(user: &mut GooseUser) -> TransactionResult {
    let report = seed_report();
    let index = user.weighted_users_index;
    let token = report.sample_users[index % report.sample_users.len()]
        .token
        .clone();
    user.set_session_data(Session {
        token,
        address: address(index as u32 + 1),
        projects: Vec::new(),
        tasks: Vec::new(),
        members: Vec::new(),
        walk_project: None,
        cursor: None,
        depth: 0,
    });
    let projects = send(
        user,
        GooseMethod::Get,
        "/v1/projects?limit=10",
        "setup",
        None,
    )
    .await?;
    let projects = ids(&projects, |p| p.get("id"));
    let mut tasks = Vec::new();
    let mut members = Vec::new();
    for project in projects.iter().take(2) {
        let page = send(
            user,
            GooseMethod::Get,
            &format!("/v1/projects/{project}/tasks?limit=50"),
            "setup",
            None,
        )
        .await?;
        tasks.extend(
            ids(&page, |t| t.get("id"))
                .into_iter()
                .map(|task| (task, project.clone())),
        );
        let list = send(
            user,
            GooseMethod::Get,
            &format!("/v1/projects/{project}/members"),
            "setup",
            None,
        )
        .await?;
        members.push((
            project.clone(),
            ids(&list, |m| m.get("user").and_then(|u| u.get("id"))),
        ));
    }
    let session = user.get_session_data_unchecked_mut::<Session>();
    session.projects = projects;
    session.tasks = tasks;
    session.members = members;
    Ok(())
}

/// `task-page` users walk the largest projects, as their owners.
async fn start_walker(user: &mut GooseUser) -> TransactionResult {
    let report = seed_report();
    let project =
        &report.largest_projects[user.weighted_users_index % report.largest_projects.len()];
    user.set_session_data(Session {
        token: project.owner.token.clone(),
        address: address(user.weighted_users_index as u32 + 1),
        projects: vec![project.id.clone()],
        tasks: Vec::new(),
        members: Vec::new(),
        walk_project: Some(project.id.clone()),
        cursor: None,
        depth: 0,
    });
    Ok(())
}

/// One of the ids the user knows, drawn by `draw` (with its skew); `None` when it knows none,
/// and the caller reads `/v1/me` instead.
fn drawn(user: &GooseUser, draw: fn(&Session) -> Option<&str>) -> Option<String> {
    draw(user.get_session_data_unchecked::<Session>()).map(str::to_owned)
}

async fn read_task(user: &mut GooseUser) -> TransactionResult {
    let Some(task) = drawn(user, Session::task) else {
        return read_me(user).await;
    };
    send(
        user,
        GooseMethod::Get,
        &format!("/v1/tasks/{task}"),
        "GET task",
        None,
    )
    .await?;
    Ok(())
}

async fn read_project(user: &mut GooseUser) -> TransactionResult {
    let Some(project) = drawn(user, Session::project) else {
        return read_me(user).await;
    };
    let path = format!("/v1/projects/{project}");
    send(user, GooseMethod::Get, &path, "GET project", None).await?;
    Ok(())
}

async fn read_first_page(user: &mut GooseUser) -> TransactionResult {
    let Some(project) = drawn(user, Session::project) else {
        return read_me(user).await;
    };
    let path = format!("/v1/projects/{project}/tasks?limit=20");
    send(user, GooseMethod::Get, &path, "GET task page", None).await?;
    Ok(())
}

async fn read_me(user: &mut GooseUser) -> TransactionResult {
    send(user, GooseMethod::Get, "/v1/me", "GET me", None).await?;
    Ok(())
}

/// The next page of the walk, or the first again after `PAGE_DEPTH` pages or the last one.
async fn deep_page(user: &mut GooseUser) -> TransactionResult {
    walk(user, DEEP_PAGE_LIMIT, "GET task page", "GET deep page").await
}

/// The scraper of `overload`: the same walk, 100 tasks a page, with no pause — a client
/// copying a big project as fast as the service lets it.
async fn scrape(user: &mut GooseUser) -> TransactionResult {
    walk(user, 100, "scraper: GET page", "scraper: GET page").await
}

async fn walk(
    user: &mut GooseUser,
    limit: usize,
    first: &'static str,
    deeper: &'static str,
) -> TransactionResult {
    let (project, cursor) = {
        let session = user.get_session_data_unchecked::<Session>();
        let Some(project) = &session.walk_project else {
            return Ok(());
        };
        (project.clone(), session.cursor.clone())
    };
    let mut path = format!("/v1/projects/{project}/tasks?limit={limit}");
    if let Some(cursor) = &cursor {
        path.push_str("&cursor=");
        path.push_str(cursor);
    }
    let name = if cursor.is_some() { deeper } else { first };
    let page = send(user, GooseMethod::Get, &path, name, None).await?;
    let next = page
        .as_ref()
        .and_then(|p| p["next_cursor"].as_str())
        .map(str::to_owned);
    let session = user.get_session_data_unchecked_mut::<Session>();
    session.depth += 1;
    if next.is_none() || session.depth >= PAGE_DEPTH {
        session.cursor = None;
        session.depth = 0;
    } else {
        session.cursor = next;
    }
    Ok(())
}

async fn create_task(user: &mut GooseUser) -> TransactionResult {
    let Some(project) = drawn(user, Session::project) else {
        return read_me(user).await;
    };
    let n: u32 = rand::rng().random();
    let body = json!({ "title": format!("load test task {n:08x}") });
    let path = format!("/v1/projects/{project}/tasks");
    let created = send(user, GooseMethod::Post, &path, "POST task", Some(body)).await?;
    if let Some(id) = created.as_ref().and_then(|t| t["id"].as_str()) {
        let session = user.get_session_data_unchecked_mut::<Session>();
        // Newest first: a user reads what it just wrote, as people do.
        session.tasks.insert(0, (id.to_owned(), project));
        session.tasks.truncate(200);
    }
    Ok(())
}

/// Assigns a task to another member: an email through the outbox (or inline, with
/// `async_jobs` off).
async fn assign_task(user: &mut GooseUser) -> TransactionResult {
    let Some((task, member)) = user.get_session_data_unchecked::<Session>().assignment() else {
        return change_status(user).await;
    };
    let body = json!({ "assignee_id": member });
    let path = format!("/v1/tasks/{task}");
    send(
        user,
        GooseMethod::Patch,
        &path,
        "PATCH assignee",
        Some(body),
    )
    .await?;
    Ok(())
}

async fn change_status(user: &mut GooseUser) -> TransactionResult {
    let Some(task) = drawn(user, Session::task) else {
        return read_me(user).await;
    };
    let status = ["todo", "doing", "done"][rand::rng().random_range(0..3)];
    let path = format!("/v1/tasks/{task}");
    send(
        user,
        GooseMethod::Patch,
        &path,
        "PATCH status",
        Some(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

async fn comment(user: &mut GooseUser) -> TransactionResult {
    let Some(task) = drawn(user, Session::task) else {
        return read_me(user).await;
    };
    let path = format!("/v1/tasks/{task}/comments");
    let body = json!({ "body": "Looked at this during the load test." });
    send(user, GooseMethod::Post, &path, "POST comment", Some(body)).await?;
    Ok(())
}

/// A sign-in as a seeded user, from a fresh address: it pays for a password hash.
async fn sign_in(user: &mut GooseUser) -> TransactionResult {
    let report = seed_report();
    let n = rand::rng().random_range(0..report.counts.users.max(1));
    let body = json!({
        "email": format!("user{n:07}@seed.keel.dev"),
        "password": report.password,
    });
    let from = address(0x0080_0000 + SIGN_INS.fetch_add(1, Ordering::Relaxed) % 0x0080_0000);
    let builder = user
        .get_request_builder(&GooseMethod::Post, "/v1/auth/token")?
        .header("x-forwarded-for", from)
        .header("content-type", "application/json")
        .body(body.to_string());
    let request = GooseRequest::builder()
        .set_request_builder(builder)
        .name("POST sign-in")
        .build();
    user.request(request).await?;
    Ok(())
}

fn pace() -> Duration {
    let ms = std::env::var("KEEL_LOAD_PACE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(100);
    Duration::from_millis(ms)
}

/// A user scenario: on start, `start` (a token, then ids); then the transactions, each with
/// its weight, between pauses of the pace.
fn mix(name: &str, transactions: Vec<(Transaction, usize)>) -> Result<Scenario, GooseError> {
    let mut scenario = scenario!(name)
        .set_wait_time(pace(), pace())?
        .register_transaction(transaction!(start).set_on_start());
    for (transaction, weight) in transactions {
        scenario = scenario.register_transaction(transaction.set_weight(weight)?);
    }
    Ok(scenario)
}

/// The case study's peak hour: 80 % reads, 15 % writes, 5 % sign-ins.
fn peak_hour(name: &str) -> Result<Scenario, GooseError> {
    mix(
        name,
        vec![
            (transaction!(read_task), 35),
            (transaction!(read_first_page), 20),
            (transaction!(read_project), 15),
            (transaction!(read_me), 10),
            (transaction!(create_task), 4),
            (transaction!(assign_task), 3),
            (transaction!(comment), 4),
            (transaction!(change_status), 4),
            (transaction!(sign_in), 5),
        ],
    )
}

#[tokio::main]
async fn main() -> Result<(), GooseError> {
    let name = std::env::var("KEEL_LOAD_SCENARIO").unwrap_or_else(|_| "peak-hour".into());
    let mut attack = GooseAttack::initialize()?;
    // Fail before the attack starts, not in every user.
    let _ = REPORT.set(read_seed_report()?);
    attack = match name.as_str() {
        "hot-read" => attack.register_scenario(mix(
            "hot-read",
            vec![
                (transaction!(read_task), 50),
                (transaction!(read_project), 30),
                (transaction!(read_first_page), 20),
            ],
        )?),
        "task-page" => attack.register_scenario(
            scenario!("task-page")
                .set_wait_time(pace(), pace())?
                .register_transaction(transaction!(start_walker).set_on_start())
                .register_transaction(transaction!(deep_page)),
        ),
        "write" => attack.register_scenario(mix(
            "write",
            vec![
                (transaction!(create_task), 30),
                (transaction!(assign_task), 25),
                (transaction!(comment), 25),
                (transaction!(change_status), 20),
            ],
        )?),
        "peak-hour" | "soak" => attack.register_scenario(peak_hour(&name)?),
        // One scraper for every 60 users (Goose hands out users by weight).
        "overload" => attack
            .register_scenario(peak_hour("overload")?.set_weight(60)?)
            .register_scenario(
                scenario!("scraper")
                    .set_weight(1)?
                    .register_transaction(transaction!(start_walker).set_on_start())
                    .register_transaction(transaction!(scrape)),
            ),
        other => {
            return Err(GooseError::InvalidOption {
                option: "KEEL_LOAD_SCENARIO".into(),
                value: other.into(),
                detail: "one of hot-read, task-page, write, peak-hour, overload, soak".into(),
            });
        }
    };
    attack.execute().await?;
    Ok(())
}
