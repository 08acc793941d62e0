//! The process roles (design.md): one binary, chosen by subcommand.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::app::Application;
use crate::config::{Config, DatabaseConfig, Environment, LogConfig, LogFormat};
use crate::{db, demo, flags, shutdown, telemetry};

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: the stabilize-first-then-scale playbook, as a running service"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Clone, Copy)]
enum Command {
    /// Every role in one process (the default): creates and migrates the database, adds
    /// demo data to an empty one in dev, then serves. KEEL_ENV defaults to dev.
    All,
    /// The public API and the admin listener. KEEL_ENV defaults to prod.
    Serve,
    /// Applies the database migrations and exits.
    Migrate,
}

/// Parses the command line and runs the chosen role to completion.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("Failed to start the async runtime")?;
    runtime.block_on(async {
        match cli.command.unwrap_or(Command::All) {
            Command::All => all().await,
            Command::Serve => serve().await,
            Command::Migrate => migrate().await,
        }
    })
}

async fn all() -> anyhow::Result<()> {
    let config = Config::from_env(Environment::Dev)?;
    telemetry::init(&config.log)?;
    if db::create_database_if_missing(&config.database).await? {
        tracing::info!(
            database = config.database.database_name(),
            "created the database"
        );
    }
    let pool = db::pool(&config.database);
    db::migrate(&pool).await?;
    flags::register(&pool)
        .await
        .context("Failed to register the fix flags")?;
    let shutdown = shutdown::on_signal()?;
    let dev = config.env == Environment::Dev;
    let app = Application::build_with_pool(config, pool, shutdown).await?;
    if dev {
        let state = app.state();
        if demo::add_if_empty(&state.db, &state.passwords).await? {
            tracing::info!(email = demo::DEMO_EMAIL, "added the demo data set");
        }
        print_banner(&app);
    }
    app.run_until_stopped().await
}

async fn serve() -> anyhow::Result<()> {
    let config = Config::from_env(Environment::Prod)?;
    telemetry::init(&config.log)?;
    let shutdown = shutdown::on_signal()?;
    let app = Application::build(config, shutdown).await?;
    tracing::info!(public = %app.public_addr(), admin = %app.admin_addr(), "serving");
    app.run_until_stopped().await
}

async fn migrate() -> anyhow::Result<()> {
    let log = LogConfig::from_env()?;
    let database = DatabaseConfig::from_env()?;
    telemetry::init(&log)?;
    let pool = db::pool(&database);
    db::migrate(&pool).await?;
    pool.close().await;
    tracing::info!(database = database.database_name(), "migrations applied");
    Ok(())
}

/// What a newcomer needs to try the API, printed once at start-up in dev: on stdout,
/// or on stderr when stdout carries JSON log lines that a parser expects unmixed.
fn print_banner(app: &Application) {
    let host = |addr: std::net::SocketAddr| {
        if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        }
    };
    let api = format!("http://{}", host(app.public_addr()));
    let admin = format!("http://{}", host(app.admin_addr()));
    let config = &app.state().config;
    let admin_token = if config.auth.admin_token.expose_secret() == crate::config::DEV_ADMIN_TOKEN {
        crate::config::DEV_ADMIN_TOKEN
    } else {
        "<KEEL_ADMIN_TOKEN>"
    };
    let banner = format!(
        r#"
Keel is up (KEEL_ENV=dev)
  API      {api}/v1
  Docs     {api}/docs   (OpenAPI: {api}/openapi.json)
  Admin    {admin}/readyz, {admin}/admin/flags  (Authorization: Bearer {admin_token})
  Demo     {email} / {password}

  TOKEN=$(curl -s {api}/v1/auth/token -H 'content-type: application/json' \
    -d '{{"email":"{email}","password":"{password}"}}' | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  curl -s {api}/v1/projects -H "authorization: Bearer $TOKEN"
"#,
        email = demo::DEMO_EMAIL,
        password = demo::DEMO_PASSWORD,
    );
    if config.log.format == LogFormat::Json {
        eprintln!("{banner}");
    } else {
        println!("{banner}");
    }
}
