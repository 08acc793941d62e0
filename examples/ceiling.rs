//! The hardware's ceiling for Keel's reads: a bare axum server on the same machine and
//! the same clients that Keel uses, doing one thing per route.
//!
//! * `GET /plain` — a constant body: the HTTP stack alone.
//! * `GET /redis` — one Redis `GET` of a task-sized value, through the pool Keel uses
//!   (`keel::cache::pool`: deadpool-redis without the recycle `PING`).
//! * `GET /redis-ping` — the same through deadpool-redis' own pool, whose checkout sends
//!   `UNWATCH` + `PING` first: the difference is what the recycle check costs.
//! * `GET /pg` — one primary-key select of a task through sqlx.
//!
//! `loadtests/cache-bench.sh` runs it beside Keel and reports Keel's cached and
//! uncached reads as a share of these. Run by hand:
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/keel_bench \
//!     cargo run --release --example ceiling -- 127.0.0.1:8099
//! ```
//!
//! It reads `DATABASE_URL` and the `REDIS_URL`/`KEEL_REDIS_*` settings as Keel does, and
//! serves the newest task of the database.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use deadpool_redis::redis::AsyncCommands as _;
use keel::cache::pool::{Conn, Pool};
use keel::config::{DatabaseConfig, RedisConfig};
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use uuid::Uuid;

struct Ceiling {
    redis: Pool,
    redis_with_ping: deadpool_redis::Pool,
    pg: PgPool,
    key: String,
    task: Uuid,
}

type Shared = State<Arc<Ceiling>>;

async fn plain() -> &'static str {
    "ok"
}

async fn redis_get(State(c): Shared) -> Result<Vec<u8>, StatusCode> {
    let mut conn = Conn::get(&c.redis)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    conn.get(&c.key)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
}

async fn redis_ping(State(c): Shared) -> Result<Vec<u8>, StatusCode> {
    let mut conn = c
        .redis_with_ping
        .get()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    conn.get(&c.key)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
}

async fn pg_select(State(c): Shared) -> Result<String, StatusCode> {
    let title: String = sqlx::query_scalar("select title from tasks where id = $1")
        .bind(c.task)
        .fetch_one(&c.pg)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(title)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let database = DatabaseConfig::from_env()?;
    let redis_config = RedisConfig::from_lookup(&|name| std::env::var(name).ok())?;
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(database.max_connections)
        .connect_with(database.connect.clone())
        .await
        .context("connect to Postgres")?;
    let task: Uuid = sqlx::query_scalar("select id from tasks order by created_at desc limit 1")
        .fetch_one(&pg)
        .await
        .context("the database has no task: seed it first (keel seed)")?;
    // A value the size of a cached task entry.
    let row: String = sqlx::query_scalar("select row_to_json(t)::text from tasks t where id = $1")
        .bind(task)
        .fetch_one(&pg)
        .await?;
    let redis = keel::cache::pool::pool(&redis_config)?;
    let redis_with_ping = deadpool_redis::Config::from_url(redis_config.url.expose_secret())
        .builder()?
        .max_size(redis_config.pool_size)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()?;
    let key = format!("{}ceiling:task", redis_config.prefix);
    let mut conn = Conn::get(&redis).await.context("connect to Redis")?;
    let () = conn.set(&key, format!("{:072}{row}", 0)).await?;
    drop(conn);

    let state = Arc::new(Ceiling {
        redis,
        redis_with_ping,
        pg,
        key,
        task,
    });
    let app = Router::new()
        .route("/plain", get(plain))
        .route("/redis", get(redis_get))
        .route("/redis-ping", get(redis_ping))
        .route("/pg", get(pg_select))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("ceiling listening on {addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
