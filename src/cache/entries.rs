//! What the cache holds: one typed key per kind of entry, and how each is stored.
//!
//! | entry | name in Redis | value | made stale by |
//! |---|---|---|---|
//! | [`task`] | `t:{task}` | the task row, behind a header (below) | a change or delete of the task, its assignee leaving the project |
//! | [`comment_count`] | `c:{task}` | decimal | a comment on the task, the task's deletion |
//! | [`membership`] | `m:{project}:{user}` | the role, or `-` for "not a member" | adding or removing that member, the project's deletion |
//! | [`user`] | `u:{user}` | the user record | a change of the user's name or email (no endpoint makes one yet; the one that does must invalidate this entry) |
//! | [`project`] | `p:{project}` | the project row | a change or delete of the project |
//! | [`stats`] | `s:{project}` | the project's task counts | their recomputation by the worker, the project's deletion |
//! | `task_page` | `tp:{project}:{generation}:{variant}` | the page's task rows | any task write in the project: it advances the generation instead of finding pages |
//!
//! Values are JSON (serde), readable with `redis-cli` while a workshop watches. A value
//! that no longer decodes (a build that changed a record's shape) reads as a miss; the
//! prefix carries a format version (`c1:`) to change when a shape changes incompatibly.
//!
//! A task entry starts with a 72-byte header, its project id and its assignee id (or
//! [`UNASSIGNED`]), so that the read script can name the caller's membership key and the
//! assignee's key without decoding JSON, and read all four in the same round trip.

use std::marker::PhantomData;

use uuid::Uuid;

use crate::db::projects::Project;
use crate::db::stats::ProjectStats;
use crate::db::tasks::Task;
use crate::db::users::User;
use crate::domain::Role;

/// The header's assignee for an unassigned task: as long as a UUID, never one.
pub const UNASSIGNED: &str = "------------------------------------";

/// A kind of entry: how it is stored, and its name in metrics (a handful of values, so
/// every series stays bounded).
pub trait Entry: Sized + Send + Sync + 'static {
    const NAME: &'static str;
    fn encode(&self) -> Vec<u8>;
    /// `None` when the bytes are not a value of this kind (read as a miss).
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// The name of one entry, relative to the current epoch, typed by what it holds.
pub struct Key<T> {
    pub(super) name: String,
    kind: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    fn new(name: String) -> Self {
        Self {
            name,
            kind: PhantomData,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        Self::new(self.name.clone())
    }
}

pub fn task(id: Uuid) -> Key<Task> {
    Key::new(format!("t:{id}"))
}

pub fn comment_count(task: Uuid) -> Key<CommentCount> {
    Key::new(format!("c:{task}"))
}

pub fn membership(project: Uuid, user: Uuid) -> Key<Membership> {
    Key::new(format!("m:{project}:{user}"))
}

pub fn user(id: Uuid) -> Key<User> {
    Key::new(format!("u:{id}"))
}

pub fn project(id: Uuid) -> Key<Project> {
    Key::new(format!("p:{id}"))
}

pub fn stats(project: Uuid) -> Key<ProjectStats> {
    Key::new(format!("s:{project}"))
}

/// A page key is named by the read script (it holds the project's current generation);
/// this wraps the name the script returned, for the fill.
pub(super) fn task_page(name: String) -> Key<TaskPage> {
    Key::new(name)
}

/// A task's number of comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommentCount(pub i64);

/// The caller's role in a project, or `None`: not a member (or no such project). Cached
/// either way, so that a stranger's probing costs Postgres nothing either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership(pub Option<Role>);

/// The rows of a first page of a project's tasks, in order.
#[derive(Debug, Clone)]
pub struct TaskPage(pub Vec<Task>);

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing these records cannot fail: no maps with non-string keys, no
    // fallible `Serialize` impls.
    serde_json::to_vec(value).unwrap_or_default()
}

impl Entry for Task {
    const NAME: &'static str = "task";

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(384);
        out.extend_from_slice(self.project_id.hyphenated().to_string().as_bytes());
        match self.assignee_id {
            Some(id) => out.extend_from_slice(id.hyphenated().to_string().as_bytes()),
            None => out.extend_from_slice(UNASSIGNED.as_bytes()),
        }
        out.extend_from_slice(&json(self));
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes.get(72..)?).ok()
    }
}

impl Entry for CommentCount {
    const NAME: &'static str = "comment_count";

    fn encode(&self) -> Vec<u8> {
        self.0.to_string().into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        std::str::from_utf8(bytes).ok()?.parse().ok().map(Self)
    }
}

impl Entry for Membership {
    const NAME: &'static str = "membership";

    fn encode(&self) -> Vec<u8> {
        self.0.map_or("-", Role::as_str).as_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes {
            b"-" => Some(Self(None)),
            other => std::str::from_utf8(other)
                .ok()?
                .parse()
                .ok()
                .map(Some)
                .map(Self),
        }
    }
}

impl Entry for User {
    const NAME: &'static str = "user";

    fn encode(&self) -> Vec<u8> {
        json(self)
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

impl Entry for Project {
    const NAME: &'static str = "project";

    fn encode(&self) -> Vec<u8> {
        json(self)
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

impl Entry for ProjectStats {
    const NAME: &'static str = "stats";

    fn encode(&self) -> Vec<u8> {
        json(self)
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

impl Entry for TaskPage {
    const NAME: &'static str = "task_page";

    fn encode(&self) -> Vec<u8> {
        json(&self.0)
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn a_task(assignee_id: Option<Uuid>) -> Task {
        Task {
            id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            title: "Fix the login timeout".into(),
            description: None,
            status: "todo".into(),
            assignee_id,
            due_date: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_task_entry_starts_with_the_ids_the_read_script_derives_keys_from() {
        let assignee = Uuid::now_v7();
        let task = a_task(Some(assignee));
        let bytes = task.encode();
        assert_eq!(&bytes[..36], task.project_id.to_string().as_bytes());
        assert_eq!(&bytes[36..72], assignee.to_string().as_bytes());
        let back = Task::decode(&bytes).expect("decodes");
        assert_eq!(back.id, task.id);
        assert_eq!(back.assignee_id, Some(assignee));

        let unassigned = a_task(None).encode();
        assert_eq!(&unassigned[36..72], UNASSIGNED.as_bytes());
        assert_eq!(UNASSIGNED.len(), 36);
    }

    #[test]
    fn memberships_round_trip_including_not_a_member() {
        for membership in [
            Membership(None),
            Membership(Some(Role::Member)),
            Membership(Some(Role::Admin)),
            Membership(Some(Role::Owner)),
        ] {
            assert_eq!(Membership::decode(&membership.encode()), Some(membership));
        }
    }

    #[test]
    fn a_value_of_another_shape_reads_as_a_miss() {
        assert!(Task::decode(b"short").is_none());
        assert!(CommentCount::decode(b"x").is_none());
        assert!(Membership::decode(b"superuser").is_none());
        assert!(User::decode(b"{}").is_none());
    }
}
