//! The seeder: the counts asked for, and the same data for the same seed.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use keel::seed::generate::Sizes;
use keel::seed::{SeedOptions, SeedReport};
use sqlx::PgPool;

use crate::helpers::{TestDb, base_vars};

fn options(seed: u64) -> SeedOptions {
    SeedOptions {
        sizes: Sizes::for_tasks(3_000, Some(40), Some(25), Some(0.5)),
        seed,
        anchor: NaiveDate::from_ymd_opt(2026, 6, 1).unwrap(),
        password: "seeded-password".into(),
        reset: false,
        tokens: 25,
    }
}

async fn seed(pool: &PgPool, options: &SeedOptions) -> anyhow::Result<SeedReport> {
    let config =
        keel::config::Config::from_map(&base_vars(), keel::config::Environment::Dev).unwrap();
    let passwords = keel::auth::PasswordHasher::new(2, Duration::from_secs(10));
    keel::seed::run(
        pool,
        options,
        &passwords,
        &keel::auth::Keyring::new(&config.auth.jwt),
    )
    .await
}

/// A fingerprint of every data table's contents — all but the password hash, whose salt
/// is random by design (the seeder hashes the way sign-up does).
async fn fingerprint(pool: &PgPool) -> Vec<String> {
    let mut prints = Vec::new();
    let tables = [
        "(select id, email, name, created_at from users)",
        "projects",
        "project_members",
        "tasks",
        "comments",
    ];
    for table in tables {
        let sql = format!(
            "select md5(coalesce(string_agg(t::text, '|' order by t::text), '')) from {table} t"
        );
        prints.push(
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
                .unwrap(),
        );
    }
    prints
}

#[tokio::test]
async fn the_counts_are_as_asked_and_the_same_seed_gives_the_same_data() {
    let (a, b, c) = (
        TestDb::create().await,
        TestDb::create().await,
        TestDb::create().await,
    );

    let report = seed(&a.pool, &options(11)).await.unwrap();
    seed(&b.pool, &options(11)).await.unwrap();
    seed(&c.pool, &options(12)).await.unwrap();

    assert_eq!(
        (
            report.counts.users,
            report.counts.projects,
            report.counts.tasks
        ),
        (40, 25, 3_000)
    );
    let counted: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from users), (select count(*) from projects),
                (select count(*) from project_members), (select count(*) from tasks),
                (select count(*) from comments)",
    )
    .fetch_one(&a.pool)
    .await
    .unwrap();
    let c_ = report.counts;
    assert_eq!(
        counted,
        (
            c_.users as i64,
            c_.projects as i64,
            c_.members as i64,
            c_.tasks as i64,
            c_.comments as i64
        )
    );
    assert_eq!(
        fingerprint(&a.pool).await,
        fingerprint(&b.pool).await,
        "same seed, same rows"
    );
    assert_ne!(
        fingerprint(&a.pool).await,
        fingerprint(&c.pool).await,
        "another seed, other rows"
    );
    // Skewed: a Zipf law gives the largest of 25 projects about a quarter of the tasks.
    assert!(
        report.largest_projects[0].tasks >= 600,
        "{}",
        report.largest_projects[0].tasks
    );
    // Nothing left dropped: every index and foreign key is back.
    let leftover: i64 = sqlx::query_scalar("select count(*) from dropped_schema_objects")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(leftover, 0);
}

#[tokio::test]
async fn seeded_users_can_sign_in_and_read_their_largest_project() {
    let test_db = Arc::new(TestDb::create().await);
    let report = seed(&test_db.pool, &options(3)).await.unwrap();
    let app =
        crate::helpers::spawn_app_with_pool(test_db.clone(), test_db.pool.clone(), |_| {}).await;
    let project = &report.largest_projects[0];

    let token = app.login(&project.owner.email, "seeded-password").await;
    let page = app
        .get_json(
            &format!("/v1/projects/{}/tasks?limit=100", project.id),
            &token,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 100);
    // The report's own token works too.
    let me = app.get_json("/v1/me", &project.owner.token).await;
    assert_eq!(me["email"], project.owner.email.as_str());
    // `--tokens`: a load test's pre-issued sessions, each for a different user.
    assert_eq!(report.sample_users.len(), 25);
    let last = report.sample_users.last().unwrap();
    let me = app.get_json("/v1/me", &last.token).await;
    assert_eq!(me["email"], last.email.as_str());
}

#[tokio::test]
async fn a_database_with_data_is_refused_unless_reset() {
    let test_db = TestDb::create().await;
    seed(&test_db.pool, &options(1)).await.unwrap();

    let refused = seed(&test_db.pool, &options(1)).await;
    assert!(refused.unwrap_err().to_string().contains("--reset"));

    let mut reset = options(2);
    reset.reset = true;
    let report = seed(&test_db.pool, &reset).await.unwrap();
    let tasks: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(&test_db.pool)
        .await
        .unwrap();
    assert_eq!(tasks as u64, report.counts.tasks);
}
