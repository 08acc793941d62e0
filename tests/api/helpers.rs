//! Test fixtures: a database per test, the service on port 0, and a client that speaks
//! the contract.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use keel::config::{Config, Environment};
use keel::server::{Application, Role};
use keel::state::AppState;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, Executor as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The JWT secret of every test app, so that tests can forge and tamper with tokens.
pub const JWT_SECRET: &str = "test-jwt-secret-with-enough-bytes-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789-abcdefghij";
pub const PASSWORD: &str = "correct horse battery staple";

/// The server that hosts the per-test databases: `KEEL_TEST_DATABASE_URL`, by default
/// the local Postgres's maintenance database.
pub fn maintenance_options() -> PgConnectOptions {
    let url = std::env::var("KEEL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    url.parse()
        .expect("KEEL_TEST_DATABASE_URL is a Postgres URL")
}

/// A database of its own for one test: created and migrated on `create`, dropped on
/// drop — also when the test fails, since `Drop` runs while a panic unwinds.
pub struct TestDb {
    pub name: String,
    pub options: PgConnectOptions,
    pub pool: PgPool,
    /// The RabbitMQ topologies its instances declared, deleted with the database.
    topologies: Mutex<Vec<keel::jobs::Topology>>,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("keel_test_{}", Uuid::now_v7().simple());
        let mut admin = maintenance_options()
            .connect()
            .await
            .expect("Postgres must be running on 127.0.0.1:5432 (or set KEEL_TEST_DATABASE_URL)");
        admin
            .execute(sqlx::AssertSqlSafe(format!(r#"create database "{name}""#)))
            .await
            .expect("create the test database");
        admin.close().await.ok();
        let options = maintenance_options().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect_lazy_with(options.clone());
        keel::db::migrate(&pool)
            .await
            .expect("migrate the test database");
        Self {
            name,
            options,
            pool,
            topologies: Mutex::default(),
        }
    }
}

impl TestDb {
    /// The Redis key prefix of every instance on this database: the test's own keys.
    pub fn redis_prefix(&self) -> String {
        format!("keel-test:{}:", self.name)
    }

    /// The RabbitMQ name prefix of every instance on this database: the test's own
    /// exchange and queues.
    pub fn amqp_prefix(&self) -> String {
        format!("keel-test.{}.", self.name)
    }

    /// Where emails go without an SMTP server: the test's own directory.
    pub fn mailbox_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir()
            .join("keel-test-mailbox")
            .join(&self.name)
    }

    /// Notes a topology its instances declare, to delete it with the database.
    pub fn declared(&self, topology: &keel::jobs::Topology) {
        self.topologies
            .lock()
            .expect("topologies lock")
            .push(topology.clone());
    }
}

/// The shared RabbitMQ's URL (`KEEL_TEST_AMQP_URL` to point elsewhere).
pub fn amqp_url() -> String {
    std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The shared RabbitMQ's address, for a proxy in front of it.
pub fn amqp_addr() -> SocketAddr {
    let url = amqp_url();
    let authority = url
        .split('@')
        .next_back()
        .expect("a host")
        .split('/')
        .next()
        .expect("a host");
    authority
        .parse()
        .expect("KEEL_TEST_AMQP_URL names an IP host and port")
}

/// Deletes the queues and exchanges a test declared on the shared broker.
async fn delete_topologies(topologies: Vec<keel::jobs::Topology>) -> Result<(), lapin::Error> {
    if topologies.is_empty() {
        return Ok(());
    }
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for topology in topologies {
        topology.delete(&channel).await?;
    }
    connection.close(200, "bye".into()).await
}

/// The shared Redis's URL (`KEEL_TEST_REDIS_URL` to point elsewhere).
pub fn redis_url() -> String {
    std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The shared Redis's address, for a proxy in front of it.
pub fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let authority = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .expect("a host");
    authority
        .parse()
        .expect("KEEL_TEST_REDIS_URL names an IP host and port")
}

/// A plain connection to the shared Redis, to look at what a test's instances stored.
pub async fn redis() -> deadpool_redis::redis::aio::MultiplexedConnection {
    deadpool_redis::redis::Client::open(redis_url())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be running on 127.0.0.1:6379 (or set KEEL_TEST_REDIS_URL)")
}

/// Every key under `prefix`.
pub async fn redis_keys(prefix: &str) -> Vec<String> {
    let mut conn = redis().await;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, mut batch): (u64, Vec<String>) = deadpool_redis::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        keys.append(&mut batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let prefix = self.redis_prefix();
        let topologies =
            std::mem::take(&mut *self.topologies.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = std::fs::remove_dir_all(self.mailbox_dir());
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread with
        // a runtime of its own can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async move {
                let mut admin = maintenance_options().connect().await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        r#"drop database if exists "{name}" with (force)"#
                    )))
                    .await?;
                admin.close().await?;
                // The test's cache entries (most would expire; the epoch key would not).
                let keys = redis_keys(&prefix).await;
                if !keys.is_empty() {
                    let mut conn = redis().await;
                    let _: Result<(), _> = deadpool_redis::redis::cmd("DEL")
                        .arg(keys)
                        .query_async(&mut conn)
                        .await;
                }
                if let Err(e) = delete_topologies(topologies).await {
                    eprintln!("warning: could not delete the test's queues: {e}");
                }
                Ok::<(), sqlx::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// The variables every test app starts from; tests override what they need.
pub fn base_vars() -> HashMap<String, String> {
    [
        ("KEEL_ENV", "dev"),
        ("KEEL_HTTP_ADDR", "127.0.0.1:0"),
        ("KEEL_ADMIN_ADDR", "127.0.0.1:0"),
        ("KEEL_JWT_SECRET", JWT_SECRET),
        ("KEEL_ADMIN_TOKEN", ADMIN_TOKEN),
        ("KEEL_SHUTDOWN_TIMEOUT", "5s"),
        ("KEEL_FLAGS_POLL_INTERVAL", "5s"),
        // The suite runs many apps on two shared cores, where latency swings with what the
        // other tests do; the load shedder would read that as overload and refuse the
        // bursts some tests send on purpose. Its floor is raised above any test's burst;
        // its own behaviour is tested in `middleware::shed` on a clock the test controls.
        ("KEEL_SHED_MIN_LIMIT", "64"),
        ("KEEL_SHED_INITIAL_LIMIT", "64"),
        // Tests sign users up several at a time on those same loaded cores, where one hash
        // can take longer than the production queue (100 ms) lets a sign-up wait for a
        // hashing slot: a queue long enough that no test's sign-up is shed.
        ("KEEL_PASSWORD_HASH_QUEUE_TIMEOUT", "5s"),
        // The suite signs many users up and in from 127.0.0.1 and fires hundreds of
        // requests at once as one user: budgets far above any test's traffic, so that only
        // the rate-limit tests, which set small ones, meet a limit.
        ("KEEL_RATE_LIMIT_TOKEN_IP", "100000/1s"),
        ("KEEL_RATE_LIMIT_TOKEN_EMAIL", "100000/1s"),
        ("KEEL_RATE_LIMIT_SIGNUP_IP", "100000/1s"),
        ("KEEL_RATE_LIMIT_USER", "100000/1s"),
        ("KEEL_RATE_LIMIT_ANON", "100000/1s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A running instance of the service with its own database.
pub struct TestApp {
    pub api: String,
    pub admin: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub db: PgPool,
    shutdown: CancellationToken,
    // Declared last: dropped after the server has been told to stop. Shared by every
    // instance on the same database; dropped with the last one.
    pub test_db: Arc<TestDb>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Log output, captured: a test's own subscriber writes into it (`with_writer(move ||
/// writer.clone())`), and the test reads what was written.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Call before installing a test's own (thread-local) subscriber.
///
/// tracing caches, per callsite, whether anyone wants it. With exactly one dispatcher
/// registered, it takes that one for the global one, and a callsite first reached on another
/// test's thread is cached as wanted by no one — invisible to this test's subscriber from
/// then on. A second, idle dispatcher, registered for the whole run, makes tracing ask every
/// registered subscriber instead.
pub fn share_callsites_with_scoped_subscribers() {
    static IDLE: OnceLock<tracing::Dispatch> = OnceLock::new();
    IDLE.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
}

/// Logs of the app under test go to the test's output with `TEST_LOG=1`.
fn init_test_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let log = keel::config::LogConfig {
                filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                format: keel::config::LogFormat::Text,
            };
            // Logs only: a test that needs traces installs its own subscriber.
            let _ = keel::telemetry::init(&log, None);
        }
    });
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns the app after `customize` has adjusted its variables.
pub async fn spawn_app_with(customize: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
    let test_db = Arc::new(TestDb::create().await);
    let pool = test_db.pool.clone();
    spawn_app_with_pool(test_db, pool, customize).await
}

/// Spawns the app with a pool of the test's choosing (through a proxy, say).
pub async fn spawn_app_with_pool(
    test_db: Arc<TestDb>,
    pool: PgPool,
    customize: impl FnOnce(&mut HashMap<String, String>),
) -> TestApp {
    spawn_role(Role::Serve, test_db, pool, customize).await
}

/// Spawns a process of `role` (`Role::All` runs the relay and the consumers too) on the
/// test's database, cache prefix, broker names and mailbox.
pub async fn spawn_role(
    role: Role,
    test_db: Arc<TestDb>,
    pool: PgPool,
    customize: impl FnOnce(&mut HashMap<String, String>),
) -> TestApp {
    init_test_logging();
    let mut vars = base_vars();
    // Instances on one test database share one cache, one set of queues and one mailbox,
    // and no other test's.
    vars.insert("KEEL_REDIS_PREFIX".into(), test_db.redis_prefix());
    vars.insert("KEEL_AMQP_PREFIX".into(), test_db.amqp_prefix());
    vars.insert("AMQP_URL".into(), amqp_url());
    vars.insert(
        "KEEL_MAILBOX_DIR".into(),
        test_db.mailbox_dir().display().to_string(),
    );
    customize(&mut vars);
    let config = Config::from_map(&vars, Environment::Dev).expect("a valid test configuration");
    test_db.declared(&keel::jobs::relay::topology(&config));
    let shutdown = CancellationToken::new();
    let app = Application::build_for(role, config, pool, shutdown.clone())
        .await
        .expect("build the app");
    let api = format!("http://{}", app.public_addr());
    let admin = format!("http://{}", app.admin_addr());
    let state = app.state().clone();
    keel::flags::register(state.db.pool())
        .await
        .expect("register the flags");
    tokio::spawn(app.run_until_stopped());
    TestApp {
        api,
        admin,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client"),
        db: test_db.pool.clone(),
        state,
        shutdown,
        test_db,
    }
}

/// An instance of `role` on a fresh database, mailing the SMTP server at `smtp_url`, with
/// job retries, broker reconnections and outbox polls quick enough for a test; `customize`
/// runs last and may change any of them.
pub async fn spawn_mailing(
    role: Role,
    smtp_url: String,
    customize: impl FnOnce(&mut HashMap<String, String>),
) -> TestApp {
    let test_db = Arc::new(TestDb::create().await);
    let pool = test_db.pool.clone();
    spawn_role(role, test_db, pool, |vars| {
        vars.insert("SMTP_URL".into(), smtp_url);
        vars.insert("KEEL_JOBS_RETRY_DELAYS".into(), "100ms,200ms".into());
        vars.insert("KEEL_AMQP_RECONNECT_MAX_DELAY".into(), "500ms".into());
        vars.insert("KEEL_OUTBOX_POLL_INTERVAL".into(), "200ms".into());
        customize(vars);
    })
    .await
}

/// A signed-up user with a token.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: Uuid,
    pub email: String,
    pub token: String,
}

impl TestApp {
    /// Switches a fix flag in the store (so that the flag refresher keeps it) and on this
    /// instance at once (rather than within the poll interval).
    pub async fn set_flag(&self, flag: keel::flags::Flag, enabled: bool) {
        let row = keel::db::flags::set(&self.db, flag.name(), enabled)
            .await
            .expect("the store answers")
            .expect("the flag is registered");
        self.state.flags.apply(&[row]);
    }

    /// A second instance of the service on the same database, as behind a load balancer.
    pub async fn another_instance(&self, pool: PgPool) -> TestApp {
        spawn_app_with_pool(self.test_db.clone(), pool, |_| {}).await
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.api));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, Some(token))
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.request(Method::DELETE, path, Some(token))
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        self.request(Method::POST, path, token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(Method::PATCH, path, Some(token))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Tells the instance to stop, as SIGTERM would: it drains and exits in the background.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    pub fn admin_request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.admin))
    }

    /// `PUT` a JSON body to the admin API with the admin token, as an operator, the
    /// console or a workshop runner does (a flag, a fault).
    pub async fn admin_put(&self, path: &str, body: &Value) -> Response {
        self.admin_request(Method::PUT, path)
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .expect("the admin listener answers")
    }

    /// `GET /metrics` on the admin listener: the Prometheus exposition.
    pub async fn metrics(&self) -> String {
        let response = self
            .admin_request(Method::GET, "/metrics")
            .send()
            .await
            .expect("the admin listener answers");
        assert_eq!(response.status(), StatusCode::OK, "GET /metrics");
        response.text().await.expect("a metrics exposition")
    }

    /// `GET /readyz` on the admin listener: the status and the report.
    pub async fn readyz(&self) -> (StatusCode, Value) {
        let response = self
            .admin_request(Method::GET, "/readyz")
            .send()
            .await
            .expect("the admin listener answers");
        let status = response.status();
        (status, response.json().await.expect("a readiness report"))
    }

    /// Signs up a fresh user and signs them in.
    pub async fn signup(&self) -> TestUser {
        let email = format!("user-{}@example.com", Uuid::now_v7().simple());
        let response = self
            .post(
                "/v1/users",
                None,
                &json!({"email": email, "name": "Test User", "password": PASSWORD}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "sign-up");
        let user: Value = response.json().await.expect("user json");
        let token = self.login(&email, PASSWORD).await;
        TestUser {
            id: user["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("user id"),
            email,
            token,
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .post(
                "/v1/auth/token",
                None,
                &json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "sign-in");
        let body: Value = response.json().await.expect("token json");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Creates a project owned by `owner`; returns its id.
    pub async fn create_project(&self, owner: &TestUser, name: &str) -> Uuid {
        let response = self
            .post("/v1/projects", Some(&owner.token), &json!({"name": name}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "create project");
        let body: Value = response.json().await.expect("project json");
        body["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("project id")
    }

    /// Adds `user` to `project` with `role`, as `by`.
    pub async fn add_member(&self, by: &TestUser, project: Uuid, user: &TestUser, role: &str) {
        let response = self
            .post(
                &format!("/v1/projects/{project}/members"),
                Some(&by.token),
                &json!({"email": user.email, "role": role}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "add member");
    }

    /// Creates a task through the API; returns its body.
    pub async fn create_task(&self, by: &TestUser, project: Uuid, body: Value) -> Value {
        let response = self
            .post(
                &format!("/v1/projects/{project}/tasks"),
                Some(&by.token),
                &body,
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "create task");
        response.json().await.expect("task json")
    }

    /// A GET that must succeed; returns the JSON body.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let response = self.get(path, token).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.expect("json body")
    }

    /// Inserts a task straight into the database (for cascade and unassignment checks).
    pub async fn insert_task(&self, project: Uuid, assignee: Option<Uuid>) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into tasks (id, project_id, title, assignee_id, created_at, updated_at)
             values ($1, $2, 'a task', $3, now(), now())",
        )
        .bind(id)
        .bind(project)
        .bind(assignee)
        .execute(&self.db)
        .await
        .expect("insert a task");
        id
    }
}

/// Asserts a problem+json response with `status`, and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    for member in ["type", "title", "detail"] {
        assert!(body[member].is_string(), "problem lacks {member}: {body}");
    }
    body
}

/// Retries `check` until it returns true, for at most `within`.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy that a test owns, to break the connection to a dependency without
/// touching the shared server: `cut()` drops every open connection and refuses new ones
/// until `restore()`.
pub struct TcpProxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    connections: Arc<Mutex<CancellationToken>>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let down = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(CancellationToken::new()));
        let (down_flag, tokens) = (down.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if down_flag.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close at once
                }
                let cancelled = tokens.lock().expect("proxy lock").clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cancelled.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            down,
            connections,
        }
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        let mut current = self.connections.lock().expect("proxy lock");
        current.cancel();
        *current = CancellationToken::new();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// The local Postgres's address, for a proxy in front of it.
pub fn postgres_addr() -> SocketAddr {
    let options = maintenance_options();
    format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .expect("KEEL_TEST_DATABASE_URL names an IP host")
}

/// A pool to the test database through `proxy`. A cut proxy refuses connections at
/// once, so requests fail fast; the acquire timeout only has to cover connecting while
/// other tests load the machine (the 200 000-task seed does).
pub fn pool_through(proxy: &TcpProxy, test_db: &TestDb) -> PgPool {
    PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(
            test_db
                .options
                .clone()
                .host("127.0.0.1")
                .port(proxy.addr.port()),
        )
}

/// The sum of the series in a metrics scrape whose line starts with `prefix` (a full series
/// such as `name{label="v"}`, or a name and the start of its labels); 0 when none. The
/// recorder is shared by the test process and counters start at zero, so a test compares
/// the sum before and after what it does.
pub fn counter_sum(scrape: &str, prefix: &str) -> f64 {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .filter_map(|rest| rest.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
