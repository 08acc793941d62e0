//! A task with its assignee and comment count, for one task or a page.
//!
//! # A fixed number of round trips
//!
//! A task in a response embeds its assignee and its comment count. With the
//! `batch_loading` fix on, a page loads them with one `= any($1)` statement for the
//! page's distinct assignees and one grouped count over the page's task ids: two
//! statements whatever the page size. Off, `per_row` loads them task by task, so a page
//! of 100 costs 200 extra round trips — the N+1 of the case study.
//!
//! Batched by-id loads rather than one join with a lateral count: the page query stays a
//! pure index range scan (the EXPLAIN tests hold it to that), a page with three assignees
//! loads three users rather than a hundred joined copies, and the loads are by id, which
//! is what a cache can stand in front of.

use std::collections::HashMap;

use uuid::Uuid;

use super::Loaders;
use crate::db::tasks::Task;
use crate::db::users::UserSummary;
use crate::db::{self, Db};
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

    /// The `batch_loading` fix flag picks the strategy, per call.
    async fn embedded(&self, tasks: &[Task]) -> Result<Embedded, sqlx::Error> {
        if self.flags.enabled(Flag::BatchLoading) {
            batched(&self.db, tasks).await
        } else {
            per_row(&self.db, tasks).await
        }
    }
}

/// The fix: one statement for the distinct assignees, one for all the counts.
async fn batched(db: &Db, tasks: &[Task]) -> Result<Embedded, sqlx::Error> {
    let mut assignee_ids: Vec<Uuid> = tasks.iter().filter_map(|t| t.assignee_id).collect();
    assignee_ids.sort_unstable();
    assignee_ids.dedup();
    let task_ids: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
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
