//! `keel workshop drop-indexes` / `restore-indexes`: what is dropped comes back exactly,
//! and both are idempotent.

use keel::db::schema::{self, Build};
use sqlx::PgPool;
use sqlx::postgres::PgConnection;

use crate::helpers::TestDb;

async fn indexes(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "select indexname, indexdef from pg_indexes
         where schemaname = current_schema()
           and tablename in ('users', 'projects', 'project_members', 'tasks', 'comments')
         order by indexname",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn connection(test_db: &TestDb) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    test_db.pool.acquire().await.unwrap()
}

#[tokio::test]
async fn drop_then_restore_brings_back_exactly_the_same_indexes() {
    let test_db = TestDb::create().await;
    let before = indexes(&test_db.pool).await;
    let mut conn = connection(&test_db).await;
    let conn: &mut PgConnection = &mut conn;

    let dropped = schema::drop_secondary_indexes(conn).await.unwrap();
    let dropped_again = schema::drop_secondary_indexes(conn).await.unwrap();
    let during = indexes(&test_db.pool).await;
    let restored = schema::restore(conn, Build::Concurrently).await.unwrap();
    let restored_again = schema::restore(conn, Build::Concurrently).await.unwrap();

    assert_eq!(dropped.len(), 11, "{dropped:?}");
    assert!(dropped.contains(&"tasks_project_created_idx".to_owned()));
    assert!(
        dropped_again.is_empty(),
        "dropping twice drops nothing more"
    );
    // Keys stay: primary keys and the unique email index are correctness, not speed.
    let kept: Vec<&str> = during.iter().map(|(name, _)| name.as_str()).collect();
    assert!(
        kept.contains(&"users_email_key") && kept.contains(&"tasks_pkey"),
        "{kept:?}"
    );
    assert!(!kept.iter().any(|name| dropped.iter().any(|d| d == name)));
    assert_eq!(restored.len(), 11);
    assert!(
        restored_again.is_empty(),
        "restoring twice restores nothing more"
    );
    assert_eq!(
        indexes(&test_db.pool).await,
        before,
        "the same names and definitions"
    );
}

#[tokio::test]
async fn foreign_keys_dropped_for_a_bulk_load_come_back_and_hold() {
    let test_db = TestDb::create().await;
    let mut conn = connection(&test_db).await;
    let conn: &mut PgConnection = &mut conn;

    let dropped = schema::drop_foreign_keys(conn).await.unwrap();
    schema::restore(conn, Build::Blocking).await.unwrap();

    assert_eq!(dropped.len(), 7, "{dropped:?}");
    let orphan = sqlx::query(
        "insert into tasks (id, project_id, title, created_at, updated_at)
         values (gen_random_uuid(), gen_random_uuid(), 'orphan', now(), now())",
    )
    .execute(&test_db.pool)
    .await;
    assert!(orphan.is_err(), "the foreign keys are enforced again");
}

#[tokio::test]
async fn the_cli_commands_drop_and_restore_indexes() {
    let test_db = TestDb::create().await;
    let url = sqlx::ConnectOptions::to_url_lossy(&test_db.options).to_string();
    let run = |command: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["workshop", command])
            .env_clear()
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run keel workshop");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };

    assert!(run("drop-indexes").starts_with("dropped 11 indexes"));
    assert!(run("drop-indexes").starts_with("dropped 0 indexes"));
    assert!(run("restore-indexes").starts_with("restored 11"));
    assert!(run("restore-indexes").starts_with("restored 0"));
}
