//! The process roles (design.md): one binary, chosen by subcommand.

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::auth::{Keyring, PasswordHasher};
use crate::cache::Cache;
use crate::config::{Config, DatabaseConfig, Environment, LogConfig, LogFormat};
use crate::resilience::{BreakerSwitch, Faults};
use crate::seed::{SeedOptions, generate::Sizes};
use crate::server::{Application, Role};
use crate::{db, demo, flags, jobs, seed, shutdown, telemetry};

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

#[derive(Subcommand, Clone)]
enum Command {
    /// Every role in one process (the default): creates and migrates the database, adds
    /// demo data to an empty one in dev, then serves. KEEL_ENV defaults to dev.
    All,
    /// The public API and the admin listener. KEEL_ENV defaults to prod.
    Serve,
    /// The outbox relay and the job consumers, with the admin listener (probes, metrics).
    /// KEEL_ENV defaults to prod.
    Worker,
    /// Applies the database migrations and exits.
    Migrate,
    /// Generates a realistic data set of a chosen size (for load tests). KEEL_ENV
    /// defaults to prod: set KEEL_ENV=dev (or real secrets) to run it locally.
    Seed(SeedArgs),
    /// The workshop's exercises.
    #[command(subcommand)]
    Workshop(Workshop),
    /// The parked (dead-lettered) jobs.
    #[command(subcommand)]
    Jobs(Jobs),
}

#[derive(Subcommand, Clone)]
enum Jobs {
    /// Lists the parked jobs (kind, id, attempts, last error); they stay parked.
    Dead {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sends parked jobs back to their queues, with a fresh attempt count.
    Replay {
        /// Only jobs of this kind (email.task_assigned, stats.recompute).
        #[arg(long)]
        kind: Option<String>,
        /// Only the job with this id.
        #[arg(long)]
        id: Option<uuid::Uuid>,
    },
    /// Deletes every queue (messages included) and the exchange under KEEL_AMQP_PREFIX:
    /// tearing down an environment, or what a benchmark run declared.
    DeleteTopology,
}

#[derive(Args, Clone)]
struct SeedArgs {
    /// Tasks to generate; users, projects, members and comments follow in proportion.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    tasks: u64,
    /// Users (default: tasks / 50, at least 10).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    users: Option<u64>,
    /// Projects (default: tasks / 200, at least 3).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    projects: Option<u64>,
    /// The share of tasks that have comments, 0 to 1 (default 0.3).
    #[arg(long, value_parser = parse_share)]
    comment_share: Option<f64>,
    /// The random seed: the same seed and anchor give the same data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// "Today" for the data set, YYYY-MM-DD (default: today, UTC).
    #[arg(long)]
    anchor: Option<NaiveDate>,
    /// The password of every seeded user.
    #[arg(long, default_value = "keel-seed-password")]
    password: String,
    /// Empty the data tables first (a database with data is refused otherwise).
    #[arg(long)]
    reset: bool,
    /// Users listed in the report with a bearer token (`sample_users`; members of a project
    /// first): a load test's pre-issued sessions, so that no sign-in costs a password hash
    /// before it measures.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    tokens: u64,
    /// Write the JSON report (ids, tokens) here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_share(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err("expected a number from 0 to 1".into()),
    }
}

#[derive(Subcommand, Clone, Copy)]
enum Workshop {
    /// Drops the secondary (non-key) indexes, for the "missing index" exercise. Idempotent.
    DropIndexes,
    /// Restores what drop-indexes (or an interrupted seed) dropped, concurrently with
    /// traffic. Idempotent.
    RestoreIndexes,
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
            Command::Serve => serve(Role::Serve).await,
            Command::Worker => serve(Role::Worker).await,
            Command::Migrate => migrate().await,
            Command::Seed(args) => seed_data(args).await,
            Command::Workshop(exercise) => workshop(exercise).await,
            Command::Jobs(command) => jobs(command).await,
        }
    })
}

async fn all() -> anyhow::Result<()> {
    let config = Config::from_env(Environment::Dev)?;
    let telemetry = telemetry::init(&config.log, Some(&config.telemetry))?;
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
    let app = Application::build_for(Role::All, config, pool, shutdown).await?;
    if dev {
        let state = app.state();
        if demo::add_if_empty(&state.db, &state.passwords).await? {
            tracing::info!(email = demo::DEMO_EMAIL, "added the demo data set");
        }
        let demo_present = db::users::find_by_email(&state.db, demo::DEMO_EMAIL)
            .await?
            .is_some();
        print_banner(&app, demo_present);
    }
    let stopped = app.run_until_stopped().await;
    telemetry.shutdown();
    stopped
}

async fn serve(role: Role) -> anyhow::Result<()> {
    let config = Config::from_env(Environment::Prod)?;
    let telemetry = telemetry::init(&config.log, Some(&config.telemetry))?;
    let shutdown = shutdown::on_signal()?;
    let pool = db::pool(&config.database);
    let app = Application::build_for(role, config, pool, shutdown).await?;
    match role {
        Role::Worker => tracing::info!(admin = %app.admin_addr(), "working"),
        _ => tracing::info!(public = %app.public_addr(), admin = %app.admin_addr(), "serving"),
    }
    let stopped = app.run_until_stopped().await;
    telemetry.shutdown();
    stopped
}

async fn migrate() -> anyhow::Result<()> {
    let log = LogConfig::from_env()?;
    let database = DatabaseConfig::from_env()?;
    let _logs = telemetry::init(&log, None)?;
    let pool = db::pool(&database);
    db::migrate(&pool).await?;
    pool.close().await;
    tracing::info!(database = database.database_name(), "migrations applied");
    Ok(())
}

async fn seed_data(args: SeedArgs) -> anyhow::Result<()> {
    let config = Config::from_env(Environment::Prod)?;
    let _logs = telemetry::init(&config.log, None)?;
    if config.env == Environment::Dev && db::create_database_if_missing(&config.database).await? {
        tracing::info!(
            database = config.database.database_name(),
            "created the database"
        );
    }
    let pool = db::pool(&config.database);
    db::migrate(&pool).await?;
    let options = SeedOptions {
        sizes: Sizes::for_tasks(args.tasks, args.users, args.projects, args.comment_share),
        seed: args.seed,
        anchor: args
            .anchor
            .unwrap_or_else(|| chrono::Utc::now().date_naive()),
        password: args.password,
        reset: args.reset,
        tokens: args.tokens,
    };
    let passwords = PasswordHasher::new(
        config.auth.password_hash_concurrency,
        config.auth.password_hash_queue_timeout,
    );
    let tokens = Keyring::new(&config.auth.jwt);
    let report = seed::run(&pool, &options, &passwords, &tokens).await?;
    // A running service may hold entries of the data that `--reset` replaced.
    // A one-shot command: its breaker follows no flag (one call could not trip it anyway),
    // and no workshop fault is injected into it.
    let breakers = BreakerSwitch::default();
    if let Err(e) = Cache::new(&config.redis, &breakers, &Faults::default())?
        .drop_all()
        .await
    {
        tracing::warn!(
            error = %e,
            "could not drop the cache's entries: a running service may serve replaced data \
             until KEEL_CACHE_TTL has passed"
        );
    }
    seed::write_report(&report, args.out.as_ref())?;
    pool.close().await;
    Ok(())
}

async fn workshop(exercise: Workshop) -> anyhow::Result<()> {
    let log = LogConfig::from_env()?;
    let database = DatabaseConfig::from_env()?;
    let _logs = telemetry::init(&log, None)?;
    let pool = db::pool(&database);
    let mut conn = pool
        .acquire()
        .await
        .context("Failed to connect to Postgres")?;
    match exercise {
        Workshop::DropIndexes => {
            let dropped = db::schema::drop_secondary_indexes(&mut conn).await?;
            println!("dropped {} indexes: {}", dropped.len(), dropped.join(", "));
        }
        Workshop::RestoreIndexes => {
            let restored = db::schema::restore(&mut conn, db::schema::Build::Concurrently).await?;
            println!("restored {}: {}", restored.len(), restored.join(", "));
        }
    }
    drop(conn);
    pool.close().await;
    Ok(())
}

async fn jobs(command: Jobs) -> anyhow::Result<()> {
    let config = Config::from_env(Environment::Prod)?;
    let _logs = telemetry::init_for_command(&config.log)?;
    let broker = jobs::Broker::new(&config.jobs, &BreakerSwitch::default(), &Faults::default());
    let topology = jobs::relay::topology(&config);
    match command {
        Jobs::Dead { limit, json } => {
            let parked = jobs::dead::list(&broker, &topology, limit, config.jobs.publish_timeout)
                .await
                .map_err(anyhow::Error::msg)?;
            for job in &parked {
                if json {
                    println!("{}", serde_json::to_string(job)?);
                } else {
                    println!(
                        "{}\t{}\tattempts={}\t{}",
                        job.kind, job.id, job.attempts, job.last_error
                    );
                }
            }
            if !json {
                eprintln!("{} parked job(s) in {}", parked.len(), topology.parked());
            }
        }
        Jobs::Replay { kind, id } => {
            let kind = kind
                .map(|k| {
                    jobs::Kind::from_name(&k)
                        .filter(|k| jobs::Kind::QUEUED.contains(k))
                        .with_context(|| {
                            format!("--kind {k:?}: expected email.task_assigned or stats.recompute")
                        })
                })
                .transpose()?;
            let filter = jobs::dead::Filter { kind, id };
            let replayed =
                jobs::dead::replay(&broker, &topology, &filter, config.jobs.publish_timeout)
                    .await
                    .map_err(anyhow::Error::msg)?;
            println!("replayed {replayed} job(s)");
        }
        Jobs::DeleteTopology => {
            let connection = broker
                .connect("keel jobs delete-topology")
                .await
                .map_err(anyhow::Error::msg)?;
            let channel = connection.create_channel().await?;
            topology.delete(&channel).await?;
            connection.close(200, "deleted".into()).await?;
            println!(
                "deleted {} queue(s) and {}",
                topology.queues().len(),
                topology.exchange()
            );
        }
    }
    Ok(())
}

/// What a newcomer needs to try the API, printed once at start-up in dev: on stdout,
/// or on stderr when stdout carries JSON log lines that a parser expects unmixed.
fn print_banner(app: &Application, demo_present: bool) {
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
    let (email, password) = (demo::DEMO_EMAIL, demo::DEMO_PASSWORD);
    let demo = if demo_present {
        format!(
            r#"  Demo     {email} / {password}

  TOKEN=$(curl -s {api}/v1/auth/token -H 'content-type: application/json' \
    -d '{{"email":"{email}","password":"{password}"}}' | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  curl -s {api}/v1/projects -H "authorization: Bearer $TOKEN"
"#
        )
    } else {
        "  Demo     none: the database held data at first start (keel seed's report has logins)\n"
            .to_owned()
    };
    let mail = match config.jobs.smtp() {
        Some(_) => "sent over SMTP (SMTP_URL)".to_owned(),
        None => format!(
            "written to {}/*.eml (set SMTP_URL to send them)",
            config.jobs.mailbox_dir.display()
        ),
    };
    let banner = format!(
        r#"
Keel is up (KEEL_ENV=dev)
  API      {api}/v1
  Docs     {api}/docs   (OpenAPI: {api}/openapi.json)
  Admin    {admin}/readyz, {admin}/admin/flags  (Authorization: Bearer {admin_token})
  Console  {admin}/   (the workshop console: flags, faults, live figures)
  Emails   {mail}
{demo}"#,
    );
    if config.log.format == LogFormat::Json {
        eprintln!("{banner}");
    } else {
        println!("{banner}");
    }
}
