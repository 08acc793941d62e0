//! `keel seed`: a realistic data set of a chosen size, fast, for load tests and the
//! workshop's "database bottleneck" chapter.
//!
//! # How it is fast
//!
//! Rows go in through `COPY … FROM STDIN`, the bulk path of Postgres, with the secondary
//! indexes and foreign keys dropped first and rebuilt once at the end: one sorted build
//! per index instead of an index update per row (docs/benchmarks.md has the figures).
//! Tasks and comments stream on two connections at
//! once, from one generator thread, so both cores are busy. Seeded users share one
//! password, hashed once. The drop and restore go through `db::schema`, which records the
//! DDL in `dropped_schema_objects`: should a seed die half-way, `keel workshop
//! restore-indexes` puts everything back.
//!
//! # What it prints
//!
//! Progress on stderr (a bar on a terminal, plain lines otherwise), and a JSON report —
//! counts, throughput, the largest projects with their owners, the busiest assignee, and
//! access tokens for them — to `--out` or stdout, for load tests to read.

mod copy;
pub mod generate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::NaiveDate;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::{Keyring, PasswordHasher};
use crate::db;
use copy::{CopyBuffer, copy_in};
use generate::{Generator, Sizes, World};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub sizes: Sizes,
    pub seed: u64,
    /// "Today" for the data set: creation times fall before it, due dates around it.
    pub anchor: NaiveDate,
    /// The password of every seeded user.
    pub password: String,
    /// Empty the data tables first (otherwise a non-empty database is refused).
    pub reset: bool,
    /// How many users the report lists with a token (at most every user): members of a
    /// project first, in the generator's order.
    pub tokens: u64,
}

/// The report: what load tests need to know about the data set.
#[derive(Debug, Serialize)]
pub struct SeedReport {
    pub seed: u64,
    pub anchor: NaiveDate,
    pub password: String,
    pub counts: Counts,
    pub elapsed_seconds: f64,
    pub rows_per_second: f64,
    pub largest_projects: Vec<ProjectReport>,
    pub busiest_assignee: Option<UserReport>,
    pub sample_users: Vec<UserReport>,
}

#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Counts {
    pub users: u64,
    pub projects: u64,
    pub members: u64,
    pub tasks: u64,
    pub comments: u64,
}

impl Counts {
    pub fn rows(&self) -> u64 {
        self.users + self.projects + self.members + self.tasks + self.comments
    }
}

#[derive(Debug, Serialize)]
pub struct ProjectReport {
    pub id: Uuid,
    pub name: String,
    pub tasks: u64,
    pub owner: UserReport,
}

#[derive(Debug, Serialize)]
pub struct UserReport {
    pub id: Uuid,
    pub email: String,
    /// A bearer token, valid for `KEEL_JWT_TTL` from the seed.
    pub token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_tasks: Option<u64>,
}

/// The rows sent per COPY message: big enough to amortise the round trip, small enough to
/// keep the generator and Postgres working in parallel.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks in flight per table before the generator waits for Postgres.
const CHANNEL_DEPTH: usize = 4;

/// Generates the data set into the database behind `pool`.
pub async fn run(
    pool: &PgPool,
    options: &SeedOptions,
    passwords: &PasswordHasher,
    tokens: &Keyring,
) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    prepare_tables(pool, options.reset).await?;
    let password_hash = passwords.hash(&options.password).await?;

    let mut generator = Generator::new(options.seed, options.anchor);
    let world = generator.world(options.sizes);
    let planned = planned_rows(&world, options.sizes);
    let progress = Progress::new(planned);

    let mut conn = pool.acquire().await?;
    db::schema::drop_foreign_keys(&mut conn).await?;
    db::schema::drop_secondary_indexes(&mut conn).await?;
    drop(conn);

    let mut counts = copy_world(pool, &world, &password_hash, &progress).await?;
    let loaded = copy_tasks(
        pool,
        generator,
        world,
        options.sizes.comment_share,
        &progress,
    )
    .await?;
    counts.tasks = loaded.tasks;
    counts.comments = loaded.comments;
    progress.finish_loading();

    progress.stage("building indexes and foreign keys");
    let mut conn = pool.acquire().await?;
    db::schema::restore(&mut conn, db::schema::Build::Blocking).await?;
    progress.stage("analyzing");
    sqlx::query!("analyze users, projects, project_members, tasks, comments")
        .execute(&mut *conn)
        .await?;
    // The worker keeps stats current from now on; a seeded project starts with its own.
    progress.stage("computing project stats");
    let projects: Vec<uuid::Uuid> = loaded.world.projects.iter().map(|p| p.id).collect();
    db::stats::recompute(&mut *conn, &projects).await?;
    drop(conn);

    let elapsed = started.elapsed();
    progress.done(counts, elapsed);
    report(
        options,
        &loaded.world,
        counts,
        elapsed,
        &loaded.assigned,
        tokens,
    )
}

/// Refuses a database that holds data, or empties it with `reset`.
async fn prepare_tables(pool: &PgPool, reset: bool) -> anyhow::Result<()> {
    if reset {
        sqlx::query!(
            "truncate comments, tasks, project_members, project_stats, projects, users,
                  outbox, processed_jobs, email_deliveries"
        )
        .execute(pool)
        .await
        .context("Failed to empty the data tables")?;
    } else if db::users::any(pool).await? {
        anyhow::bail!("the database already holds users; pass --reset to replace its data");
    }
    Ok(())
}

fn planned_rows(world: &World, sizes: Sizes) -> u64 {
    let members: u64 = world.projects.iter().map(|p| p.members.len() as u64).sum();
    // Comments are random; the estimate (mean 2.5 per commented task) only sizes the bar.
    let comments = (sizes.tasks as f64 * sizes.comment_share * 2.5) as u64;
    world.users.len() as u64 + world.projects.len() as u64 + members + sizes.tasks + comments
}

/// Users, projects and members: small, loaded one table after the other.
async fn copy_world(
    pool: &PgPool,
    world: &World,
    password_hash: &str,
    progress: &Progress,
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let mut users = CopyBuffer::default();
    for user in &world.users {
        users.row(&[
            &user.id.to_string(),
            &user.email,
            &user.name,
            password_hash,
            &copy::timestamp(user.created_at),
        ]);
    }
    counts.users = world.users.len() as u64;
    copy_in(
        pool,
        "copy users (id, email, name, password_hash, created_at) from stdin",
        vec![users.take()],
    )
    .await?;
    progress.add(counts.users);

    let mut projects = CopyBuffer::default();
    let mut members = CopyBuffer::default();
    for project in &world.projects {
        let created = copy::timestamp(project.created_at);
        let owner = world.users[project.owner()].id.to_string();
        projects.row_nullable(&[
            Some(&project.id.to_string()),
            Some(&project.name),
            project.description.as_deref(),
            Some(&owner),
            Some(&created),
            Some(&created),
        ]);
        for (user, role) in &project.members {
            members.row(&[
                &project.id.to_string(),
                &world.users[*user].id.to_string(),
                role.as_str(),
                &created,
                &created,
            ]);
            counts.members += 1;
        }
    }
    counts.projects = world.projects.len() as u64;
    copy_in(
        pool,
        "copy projects (id, name, description, owner_id, created_at, updated_at) from stdin",
        vec![projects.take()],
    )
    .await?;
    copy_in(
        pool,
        "copy project_members (project_id, user_id, role, added_at, project_created_at) from stdin",
        vec![members.take()],
    )
    .await?;
    progress.add(counts.projects + counts.members);
    Ok(counts)
}

/// What the task and comment load produced.
struct TaskLoad {
    /// Handed back by the generator thread, for the report.
    world: World,
    tasks: u64,
    comments: u64,
    /// Tasks per assignee (an index into the users).
    assigned: HashMap<usize, u64>,
}

/// Tasks and comments, generated on a blocking thread and streamed to two COPYs at once.
async fn copy_tasks(
    pool: &PgPool,
    mut generator: Generator,
    world: World,
    comment_share: f64,
    progress: &Progress,
) -> anyhow::Result<TaskLoad> {
    let (task_tx, task_rx) = mpsc::channel::<Vec<u8>>(CHANNEL_DEPTH);
    let (comment_tx, comment_rx) = mpsc::channel::<Vec<u8>>(CHANNEL_DEPTH);
    let loaded = progress.counter();
    let generated = tokio::task::spawn_blocking(move || {
        let mut tasks = CopyBuffer::default();
        let mut comments = CopyBuffer::default();
        let (mut task_rows, mut comment_rows) = (0u64, 0u64);
        let mut assigned: HashMap<usize, u64> = HashMap::new();
        // A closed channel means its COPY failed: stop feeding it (its error is reported).
        let (mut tasks_open, mut comments_open) = (true, true);
        generator.tasks(
            &world,
            comment_share,
            |t| {
                let assignee = t.assignee.map(|a| world.users[a].id.to_string());
                if let Some(a) = t.assignee {
                    *assigned.entry(a).or_default() += 1;
                }
                tasks.row_nullable(&[
                    Some(&t.id.to_string()),
                    Some(&t.project_id.to_string()),
                    Some(&t.title),
                    t.description,
                    Some(t.status.as_str()),
                    assignee.as_deref(),
                    t.due_date.map(|d| d.to_string()).as_deref(),
                    Some(&copy::timestamp(t.created_at)),
                    Some(&copy::timestamp(t.updated_at)),
                ]);
                task_rows += 1;
                if tasks.len() >= CHUNK_BYTES && tasks_open {
                    tasks_open = task_tx.blocking_send(tasks.take()).is_ok();
                    loaded.fetch_add(task_rows, Ordering::Relaxed);
                    task_rows = 0;
                }
            },
            |c| {
                comments.row(&[
                    &c.id.to_string(),
                    &c.task_id.to_string(),
                    &world.users[c.author].id.to_string(),
                    c.body,
                    &copy::timestamp(c.created_at),
                ]);
                comment_rows += 1;
                if comments.len() >= CHUNK_BYTES && comments_open {
                    comments_open = comment_tx.blocking_send(comments.take()).is_ok();
                    loaded.fetch_add(comment_rows, Ordering::Relaxed);
                    comment_rows = 0;
                }
            },
        );
        task_tx.blocking_send(tasks.take()).ok();
        comment_tx.blocking_send(comments.take()).ok();
        loaded.fetch_add(task_rows + comment_rows, Ordering::Relaxed);
        (world, assigned)
    });
    let task_copy = copy::copy_stream(
        pool,
        "copy tasks (id, project_id, title, description, status, assignee_id, due_date, created_at, updated_at) from stdin",
        task_rx,
    );
    let comment_copy = copy::copy_stream(
        pool,
        "copy comments (id, task_id, author_id, body, created_at) from stdin",
        comment_rx,
    );
    let ticker = progress.tick_while_loading();
    let (tasks, comments) = tokio::try_join!(task_copy, comment_copy)?;
    ticker.abort();
    let (world, assigned) = generated.await.context("the generator thread failed")?;
    Ok(TaskLoad {
        world,
        tasks,
        comments,
        assigned,
    })
}

fn report(
    options: &SeedOptions,
    world: &World,
    counts: Counts,
    elapsed: Duration,
    assigned: &HashMap<usize, u64>,
    tokens: &Keyring,
) -> anyhow::Result<SeedReport> {
    let user = |index: usize, assigned_tasks: Option<u64>| -> anyhow::Result<UserReport> {
        let seed = &world.users[index];
        Ok(UserReport {
            id: seed.id,
            email: seed.email.clone(),
            token: tokens.issue(seed.id).context("signing a token")?.token,
            assigned_tasks,
        })
    };
    let mut by_size: Vec<&generate::ProjectSeed> = world.projects.iter().collect();
    by_size.sort_by_key(|p| std::cmp::Reverse(p.tasks));
    let largest_projects = by_size
        .iter()
        .take(3)
        .map(|p| {
            Ok(ProjectReport {
                id: p.id,
                name: p.name.clone(),
                tasks: p.tasks,
                owner: user(p.owner(), None)?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    // Ties broken by index, so the report is as deterministic as the data.
    let busiest = assigned
        .iter()
        .max_by_key(|(index, count)| (**count, std::cmp::Reverse(**index)));
    let busiest_assignee = busiest
        .map(|(index, count)| user(*index, Some(*count)))
        .transpose()?;
    // Members of a project first: a load test's users need something to read and write.
    let mut member = vec![false; world.users.len()];
    for project in &world.projects {
        for (index, _) in &project.members {
            member[*index] = true;
        }
    }
    let wanted = usize::try_from(options.tokens).unwrap_or(usize::MAX);
    let sample_users = (0..world.users.len())
        .filter(|&i| member[i])
        .chain((0..world.users.len()).filter(|&i| !member[i]))
        .take(wanted)
        .map(|i| user(i, None))
        .collect::<anyhow::Result<_>>()?;
    let seconds = elapsed.as_secs_f64();
    Ok(SeedReport {
        seed: options.seed,
        anchor: options.anchor,
        password: options.password.clone(),
        counts,
        elapsed_seconds: (seconds * 100.0).round() / 100.0,
        rows_per_second: (counts.rows() as f64 / seconds).round(),
        largest_projects,
        busiest_assignee,
        sample_users,
    })
}

/// Progress on stderr: an indicatif bar on a terminal, a plain line every few seconds
/// otherwise (a CI log or a pipe has no use for redrawn bars).
struct Progress {
    bar: ProgressBar,
    loaded: Arc<AtomicU64>,
    started: Instant,
}

impl Progress {
    fn new(planned: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(planned), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:<12} [{bar:40}] {human_pos}/~{human_len} rows ({per_sec}, {elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message("loading");
        if bar.is_hidden() {
            eprintln!("seeding about {planned} rows");
        }
        Self {
            bar,
            loaded: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        }
    }

    fn counter(&self) -> Arc<AtomicU64> {
        self.loaded.clone()
    }

    fn add(&self, rows: u64) {
        self.loaded.fetch_add(rows, Ordering::Relaxed);
        self.bar.set_position(self.loaded.load(Ordering::Relaxed));
    }

    /// Mirrors the generator's counter into the bar (or a line every 5 s) until aborted.
    fn tick_while_loading(&self) -> tokio::task::JoinHandle<()> {
        let (bar, loaded, started) = (self.bar.clone(), self.loaded.clone(), self.started);
        tokio::spawn(async move {
            let mut last_line = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let rows = loaded.load(Ordering::Relaxed);
                bar.set_position(rows);
                if bar.is_hidden() && last_line.elapsed() >= Duration::from_secs(5) {
                    eprintln!(
                        "  {rows} rows loaded ({:.0} s)",
                        started.elapsed().as_secs_f64()
                    );
                    last_line = Instant::now();
                }
            }
        })
    }

    fn finish_loading(&self) {
        self.bar.set_position(self.loaded.load(Ordering::Relaxed));
    }

    fn stage(&self, what: &str) {
        self.bar.set_message(what.to_owned());
        if self.bar.is_hidden() {
            eprintln!("  {what}");
        }
    }

    fn done(&self, counts: Counts, elapsed: Duration) {
        self.bar.finish_and_clear();
        let seconds = elapsed.as_secs_f64();
        eprintln!(
            "seeded {} rows in {seconds:.1} s ({:.0} rows/s): {} users, {} projects, {} members, {} tasks, {} comments",
            counts.rows(),
            counts.rows() as f64 / seconds,
            counts.users,
            counts.projects,
            counts.members,
            counts.tasks,
            counts.comments
        );
    }
}

/// Where the report goes.
pub fn write_report(report: &SeedReport, out: Option<&PathBuf>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    match out {
        Some(path) => {
            std::fs::write(path, json)
                .with_context(|| format!("Failed to write {}", path.display()))?;
            eprintln!("report written to {}", path.display());
        }
        None => println!("{json}"),
    }
    Ok(())
}
