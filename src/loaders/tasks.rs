//! Tasks with their assignee and comment count: one task, a page, the first page of a
//! project.
//!
//! # A fixed number of round trips
//!
//! A task in a response embeds its assignee and its comment count. With the
//! `batch_loading` fix on, a page loads them with one `= any($1)` statement for the
//! page's distinct assignees and one grouped count over the page's task ids: two
//! statements whatever the page size — or, with the cache on, one Redis read for each
//! kind, Postgres loading only what missed. Off, `per_row` loads them task by task, so a
//! page of 100 costs 200 extra round trips — the N+1 of the case study.
//!
//! Batched by-id loads rather than one join with a lateral count: the page query stays a
//! pure index range scan (the EXPLAIN tests hold it to that), a page with three assignees
//! loads three users rather than a hundred joined copies, and the loads are by id, which
//! is what the cache stands in front of.
//!
//! # One task
//!
//! A single-task read is one round trip either way: cached, one script reads the task,
//! its count, the caller's membership and the assignee ([`crate::cache::Cache::read_task`]);
//! uncached, one statement joins them ([`db::tasks::read`]).

use std::collections::HashMap;

use tokio::time::Instant;
use uuid::Uuid;

use super::Loaders;
use crate::cache::{
    Cache, CommentCount, Fills, Fresh, Membership, Slot, TaskPage, TaskSlots, Token, Unavailable,
    entries,
};
use crate::db::tasks::{Task, TaskFilter, TaskRead};
use crate::db::users::{User, UserSummary};
use crate::db::{self, Db, Keyset};
use crate::domain::TaskStatus;
use crate::flags::Flag;

/// A task with what it embeds.
#[derive(Debug, Clone)]
pub struct TaskDetails {
    pub task: Task,
    pub assignee: Option<UserSummary>,
    pub comment_count: i64,
}

/// What the tasks point at: assignees by id, comment counts by task id.
#[derive(Default)]
struct Embedded {
    users: HashMap<Uuid, UserSummary>,
    counts: HashMap<Uuid, i64>,
}

impl Embedded {
    fn attach(&self, task: Task) -> TaskDetails {
        TaskDetails {
            assignee: task.assignee_id.and_then(|id| self.users.get(&id).cloned()),
            comment_count: self.counts.get(&task.id).copied().unwrap_or(0),
            task,
        }
    }
}

fn summary(user: User) -> UserSummary {
    UserSummary {
        id: user.id,
        name: user.name,
        email: user.email,
    }
}

impl Loaders {
    /// Tasks (a page, in order) with their assignees and comment counts.
    pub async fn tasks_with_details(
        &self,
        tasks: Vec<Task>,
    ) -> Result<Vec<TaskDetails>, sqlx::Error> {
        let embedded = self.embedded(&tasks).await?;
        Ok(tasks
            .into_iter()
            .map(|task| embedded.attach(task))
            .collect())
    }

    /// One task with its assignee and comment count.
    pub async fn task_with_details(&self, task: Task) -> Result<TaskDetails, sqlx::Error> {
        let embedded = self.embedded(std::slice::from_ref(&task)).await?;
        Ok(embedded.attach(task))
    }

    /// The `batch_loading` fix flag picks the strategy, per call; the cache stands in
    /// front of the batched loads.
    async fn embedded(&self, tasks: &[Task]) -> Result<Embedded, sqlx::Error> {
        if !self.flags.enabled(Flag::BatchLoading) {
            return per_row(&self.db, tasks).await;
        }
        match self.cache() {
            Some(cache) => through_cache(cache, &self.db, tasks).await,
            None => batched(&self.db, tasks).await,
        }
    }

    /// The task named by a request, with its details, if `user_id` may see it (a member
    /// of its project); `None` for a missing task and for a non-member alike.
    pub async fn task_for(
        &self,
        task_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<TaskDetails>, sqlx::Error> {
        match self.cache() {
            Some(cache) => {
                cache
                    .single_flight(format!("task-for:{task_id}:{user_id}"), || {
                        cached_task_for(cache, &self.db, task_id, user_id)
                    })
                    .await
            }
            None => Ok(db::tasks::read(&self.db, task_id, user_id)
                .await?
                .and_then(visible)),
        }
    }

    /// A page of a project's tasks, newest first, for `reader`. The first page (no cursor)
    /// comes from the cache, under the project's generation, filled from the primary;
    /// deeper pages are range scans that the index serves well, too many to be worth
    /// caching, and list reads for the read replica (`reads`).
    pub async fn project_tasks(
        &self,
        reader: Uuid,
        project_id: Uuid,
        filter: TaskFilter,
        after: Keyset,
        limit: i64,
    ) -> Result<Vec<Task>, sqlx::Error> {
        let load = || db::tasks::list_for_project(&self.db, project_id, filter, after, limit);
        let cache = match self.cache() {
            Some(cache) if after == Keyset::NEWEST => cache,
            _ => {
                return self
                    .reads
                    .list(reader, move |db| async move {
                        db::tasks::list_for_project(&db, project_id, filter, after, limit).await
                    })
                    .await;
            }
        };
        let variant = format!(
            "{}:{}:{limit}",
            filter.status.map_or("-", TaskStatus::as_str),
            filter
                .assignee_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
        );
        let read = |token: &Token| {
            let token = token.clone();
            let variant = variant.clone();
            async move { cache.read_page(&token, project_id, &variant).await }
        };
        let page = cache
            .fetch_via(format!("page:{project_id}:{variant}"), read, || async {
                load().await.map(|rows| Some(TaskPage(rows)))
            })
            .await?;
        Ok(page.map(|page| page.0).unwrap_or_default())
    }
}

/// The read's details when the caller is a member.
fn visible(read: TaskRead) -> Option<TaskDetails> {
    read.role?;
    Some(TaskDetails {
        task: read.task,
        assignee: read.assignee,
        comment_count: read.comment_count,
    })
}

/// A single-task read through the cache: one script call on a hit. On a miss of the task
/// the one-statement read fills the task and its count; on a hit whose membership,
/// count or assignee missed, each is loaded by id (concurrently) and filled.
///
/// What the result is current as of (for sharing it, `crate::cache::flight`): the read
/// script when the task entry was there — the other parts are as new or newer — else the
/// statement, whose snapshot also gave the membership and the assignee, which the fill of
/// the task does not vouch for.
async fn cached_task_for(
    cache: &Cache,
    db: &Db,
    task_id: Uuid,
    user_id: Uuid,
) -> Result<Fresh<Option<TaskDetails>>, sqlx::Error> {
    let token = cache.token();
    let deadline = Instant::now() + cache.lease_wait();
    loop {
        let sent = Instant::now();
        let mut slots = match cache.read_task(&token, task_id, user_id).await {
            Ok(slots) => slots,
            Err(Unavailable) => return uncached(db, task_id, user_id).await,
        };
        // Taken out, so that the task and the other slots can go separate ways.
        match std::mem::replace(&mut slots.task, Slot::Busy) {
            Slot::Hit(task) => {
                let value = complete(cache, db, &token, user_id, task, slots).await?;
                return Ok(Fresh { value, as_of: sent });
            }
            Slot::Leased => {
                let as_of = Instant::now();
                let read = db::tasks::read(db, task_id, user_id).await;
                let mut fills = Fills::default();
                let found = read.as_ref().ok().and_then(Option::as_ref);
                fills.add(&entries::task(task_id), found.map(|r| &r.task));
                if matches!(slots.count, Slot::Leased) {
                    let count = found.map(|r| CommentCount(r.comment_count));
                    fills.add(&entries::comment_count(task_id), count.as_ref());
                }
                cache.fill(&token, fills).await;
                let value = read?.and_then(visible);
                return Ok(Fresh { value, as_of });
            }
            Slot::Busy if Instant::now() < deadline => {
                tokio::time::sleep(crate::cache::POLL_STEP).await;
            }
            Slot::Busy => return uncached(db, task_id, user_id).await,
        }
    }
}

/// The one-statement read, without the cache.
async fn uncached(
    db: &Db,
    task_id: Uuid,
    user_id: Uuid,
) -> Result<Fresh<Option<TaskDetails>>, sqlx::Error> {
    let as_of = Instant::now();
    let value = db::tasks::read(db, task_id, user_id)
        .await?
        .and_then(visible);
    Ok(Fresh { value, as_of })
}

/// The task entry was there: load what else missed, by id and concurrently, and fill it.
async fn complete(
    cache: &Cache,
    db: &Db,
    token: &Token,
    user_id: Uuid,
    task: Task,
    slots: TaskSlots,
) -> Result<Option<TaskDetails>, sqlx::Error> {
    let project_id = task.project_id;
    let membership = async {
        match &slots.membership {
            Some(Slot::Hit(m)) => Ok(*m),
            _ => db::members::role_of(db, project_id, user_id)
                .await
                .map(Membership),
        }
    };
    let count = async {
        match &slots.count {
            Slot::Hit(c) => Ok(*c),
            _ => db::comments::count(db, task.id).await.map(CommentCount),
        }
    };
    let assignee = async {
        match (&slots.assignee, task.assignee_id) {
            (Some(Slot::Hit(user)), _) => Ok(Some(user.clone())),
            (_, Some(id)) => db::users::find(db, id).await,
            (_, None) => Ok(None),
        }
    };
    let loaded = tokio::try_join!(membership, count, assignee);
    let mut fills = Fills::default();
    let ok = loaded.as_ref().ok();
    if matches!(slots.membership, Some(Slot::Leased)) {
        fills.add(
            &entries::membership(project_id, user_id),
            ok.map(|(m, _, _)| m),
        );
    }
    if matches!(slots.count, Slot::Leased) {
        fills.add(&entries::comment_count(task.id), ok.map(|(_, c, _)| c));
    }
    if let (Some(Slot::Leased), Some(id)) = (&slots.assignee, task.assignee_id) {
        fills.add(&entries::user(id), ok.and_then(|(_, _, u)| u.as_ref()));
    }
    cache.fill(token, fills).await;
    let (membership, count, assignee) = loaded?;
    if membership.0.is_none() {
        return Ok(None);
    }
    Ok(Some(TaskDetails {
        task,
        assignee: assignee.map(summary),
        comment_count: count.0,
    }))
}

/// The fix, through the cache: one read of the page's assignees, one of its counts (the
/// two concurrently); Postgres loads only what missed, in one statement per kind.
async fn through_cache(cache: &Cache, db: &Db, tasks: &[Task]) -> Result<Embedded, sqlx::Error> {
    let (assignee_ids, task_ids) = ids(tasks);
    let users = cache.fetch_many(&assignee_ids, entries::user, |missing| async move {
        let users = db::users::by_ids(db, &missing).await?;
        Ok::<_, sqlx::Error>(users.into_iter().map(|u| (u.id, u)).collect())
    });
    let counts = cache.fetch_many(&task_ids, entries::comment_count, |missing| async move {
        let counts = db::comments::counts(db, &missing).await?;
        let mut counts: HashMap<Uuid, i64> = counts.into_iter().collect();
        // A task without comments has no row in the grouped count: it is a zero, and a
        // zero is worth caching too.
        Ok::<_, sqlx::Error>(
            missing
                .into_iter()
                .map(|id| (id, CommentCount(counts.remove(&id).unwrap_or(0))))
                .collect(),
        )
    });
    let (users, counts) = tokio::try_join!(users, counts)?;
    Ok(Embedded {
        users: users.into_iter().map(|(id, u)| (id, summary(u))).collect(),
        counts: counts.into_iter().map(|(id, c)| (id, c.0)).collect(),
    })
}

/// The page's distinct assignees, and its task ids.
fn ids(tasks: &[Task]) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut assignee_ids: Vec<Uuid> = tasks.iter().filter_map(|t| t.assignee_id).collect();
    assignee_ids.sort_unstable();
    assignee_ids.dedup();
    (assignee_ids, tasks.iter().map(|t| t.id).collect())
}

/// The fix: one statement for the distinct assignees, one for all the counts.
async fn batched(db: &Db, tasks: &[Task]) -> Result<Embedded, sqlx::Error> {
    let (assignee_ids, task_ids) = ids(tasks);
    let users = if assignee_ids.is_empty() {
        Vec::new()
    } else {
        db::users::summaries(db, &assignee_ids).await?
    };
    let counts = if task_ids.is_empty() {
        Vec::new()
    } else {
        db::comments::counts(db, &task_ids).await?
    };
    Ok(Embedded {
        users: users.into_iter().map(|u| (u.id, u)).collect(),
        counts: counts.into_iter().collect(),
    })
}

// naive: the N+1 the workshop shows. Each task costs a user statement (when assigned)
// and a count statement, one round trip each, one after the other. Kept beside the fix
// so that the `batch_loading` flag can switch between them; a template user deletes
// this function and the branch in `Loaders::embedded`.
async fn per_row(db: &Db, tasks: &[Task]) -> Result<Embedded, sqlx::Error> {
    let mut embedded = Embedded::default();
    for task in tasks {
        if let Some(assignee_id) = task.assignee_id
            && let Some(user) = db::users::summary(db, assignee_id).await?
        {
            embedded.users.insert(user.id, user);
        }
        let count = db::comments::count(db, task.id).await?;
        embedded.counts.insert(task.id, count);
    }
    Ok(embedded)
}
