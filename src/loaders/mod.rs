//! The loading layer: every read of the hot path, composed from the repositories' single
//! statements and the cache — "a task with what it embeds", "the caller's role",
//! "the first page of a project's tasks".
//!
//! Handlers ask for the result and never choose how it is loaded: the strategy, and the
//! fix flags that select it, live here. Two flags meet in this layer:
//!
//! * `cache` — on, the by-id reads (a task, a membership, a project, a user, a comment
//!   count) and the first page of a project's tasks go through the Redis cache
//!   (`crate::cache`), which fills from Postgres on a miss; off, every read goes to
//!   Postgres. Invalidation does not depend on the flag: writes invalidate either way, so
//!   switching the cache back on serves nothing that went stale while it was off.
//! * `batch_loading` — on, a page's assignees and comment counts are loaded in a fixed
//!   number of round trips; off, one by one (the N+1; it stays uncached, so that the
//!   workshop sees it in Postgres whatever the cache does).

pub mod access;
pub mod reads;
pub mod tasks;

pub use reads::Reads;
pub use tasks::TaskDetails;

use crate::cache::Cache;
use crate::db::Db;
use crate::flags::{Flag, Flags};

/// What the loaders read through: the database, the cache, the fix flags that pick a
/// strategy, and the route of list reads (the primary, or the read replica: [`reads`]).
/// Cloning is a few `Arc` increments.
#[derive(Clone)]
pub struct Loaders {
    db: Db,
    cache: Cache,
    flags: Flags,
    reads: Reads,
}

impl Loaders {
    /// `reads` routes the list reads (`Reads::new(db, cache)` for "always the primary").
    pub fn new(db: Db, cache: Cache, flags: Flags, reads: Reads) -> Self {
        Self {
            db,
            cache,
            flags,
            reads,
        }
    }

    /// Where list reads go.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// The cache, when the `cache` fix is on.
    fn cache(&self) -> Option<&Cache> {
        self.flags.enabled(Flag::Cache).then_some(&self.cache)
    }
}
