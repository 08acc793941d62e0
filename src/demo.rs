//! The demo data set that `keel all` adds to an empty database in `KEEL_ENV=dev`, so that
//! a newcomer can sign in and `curl` real data in their first minute. (Load tests use
//! `keel seed`, which generates data sets of any size.)

use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::PasswordHasher;
use crate::db;
use crate::domain::Role;

pub const DEMO_EMAIL: &str = "demo@keel.dev";
pub const DEMO_PASSWORD: &str = "keel-demo-password";

/// Adds the demo data when the database has no users. Returns whether it did.
pub async fn add_if_empty(pool: &PgPool, passwords: &PasswordHasher) -> anyhow::Result<bool> {
    if db::users::any(pool).await? {
        return Ok(false);
    }
    // Every demo user shares the password, so it is hashed once.
    let hash = passwords.hash(DEMO_PASSWORD).await?;
    let mut tx = pool.begin().await?;
    let demo = db::users::insert(&mut *tx, Uuid::now_v7(), DEMO_EMAIL, "Demo User", &hash).await?;
    let ada = db::users::insert(
        &mut *tx,
        Uuid::now_v7(),
        "ada@keel.dev",
        "Ada Lovelace",
        &hash,
    )
    .await?;
    let grace = db::users::insert(
        &mut *tx,
        Uuid::now_v7(),
        "grace@keel.dev",
        "Grace Hopper",
        &hash,
    )
    .await?;

    let website = db::projects::create(
        &mut *tx,
        Uuid::now_v7(),
        "Website relaunch",
        Some("The public site, rebuilt for the spring launch."),
        demo.id,
    )
    .await?;
    db::members::add(&mut *tx, website.id, ada.id, Role::Admin).await?;
    db::members::add(&mut *tx, website.id, grace.id, Role::Member).await?;

    let mobile = db::projects::create(&mut *tx, Uuid::now_v7(), "Mobile app", None, ada.id).await?;
    db::members::add(&mut *tx, mobile.id, demo.id, Role::Member).await?;
    tx.commit().await?;
    Ok(true)
}
