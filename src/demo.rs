//! The demo data set that `keel all` adds to an empty database in `KEEL_ENV=dev`, so that
//! a newcomer can sign in and `curl` real data in their first minute. (Load tests use
//! `keel seed`, which generates data sets of any size.)

use chrono::NaiveDate;
use uuid::Uuid;

use crate::auth::PasswordHasher;
use crate::db::tasks::NewTask;
use crate::db::{self, Db};
use crate::domain::{Role, TaskStatus};

pub const DEMO_EMAIL: &str = "demo@keel.dev";
pub const DEMO_PASSWORD: &str = "keel-demo-password";

/// Adds the demo data when the database has no users. Returns whether it did.
pub async fn add_if_empty(db: &Db, passwords: &PasswordHasher) -> anyhow::Result<bool> {
    if db::users::any(db).await? {
        return Ok(false);
    }
    // Every demo user shares the password, so it is hashed once.
    let hash = passwords.hash(DEMO_PASSWORD).await?;
    let mut tx = db.begin().await?;
    let demo = db::users::insert(tx.exec(), Uuid::now_v7(), DEMO_EMAIL, "Demo User", &hash).await?;
    let ada = db::users::insert(
        tx.exec(),
        Uuid::now_v7(),
        "ada@keel.dev",
        "Ada Lovelace",
        &hash,
    )
    .await?;
    let grace = db::users::insert(
        tx.exec(),
        Uuid::now_v7(),
        "grace@keel.dev",
        "Grace Hopper",
        &hash,
    )
    .await?;

    let website = db::projects::create(
        tx.exec(),
        Uuid::now_v7(),
        "Website relaunch",
        Some("The public site, rebuilt for the spring launch."),
        demo.id,
    )
    .await?;
    db::members::add(tx.exec(), website.id, ada.id, Role::Admin).await?;
    db::members::add(tx.exec(), website.id, grace.id, Role::Member).await?;

    let mobile =
        db::projects::create(tx.exec(), Uuid::now_v7(), "Mobile app", None, ada.id).await?;
    db::members::add(tx.exec(), mobile.id, demo.id, Role::Member).await?;

    let tasks = [
        (
            website.id,
            "Draft the new landing page",
            TaskStatus::Doing,
            Some(demo.id),
            Some((2026, 12, 18)),
            ada.id,
        ),
        (
            website.id,
            "Fix the login timeout",
            TaskStatus::Todo,
            Some(ada.id),
            None,
            demo.id,
        ),
        (
            website.id,
            "Move images to the CDN",
            TaskStatus::Done,
            Some(grace.id),
            Some((2026, 11, 1)),
            grace.id,
        ),
        (
            mobile.id,
            "Offline mode for the task list",
            TaskStatus::Todo,
            Some(demo.id),
            Some((2027, 1, 15)),
            ada.id,
        ),
    ];
    for (project_id, title, status, assignee_id, due, commenter) in tasks {
        let new = NewTask {
            title,
            description: None,
            status,
            assignee_id,
            due_date: due.and_then(|(y, m, d)| NaiveDate::from_ymd_opt(y, m, d)),
        };
        let task = db::tasks::create(tx.exec(), Uuid::now_v7(), project_id, new).await?;
        let comment = format!("Picked this up: {}.", title.to_lowercase());
        db::comments::create(tx.exec(), Uuid::now_v7(), task.id, commenter, &comment).await?;
    }
    tx.commit().await?;
    Ok(true)
}
