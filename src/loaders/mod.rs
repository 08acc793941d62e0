//! The loading layer: reads that take more than one statement, composed from the
//! repositories' single statements — "a page of tasks with what each one embeds".
//!
//! Handlers ask for the result ("these tasks, with details") and never choose how it is
//! loaded: the strategy, and the fix flag that selects it, live here. This is also where
//! the cache goes: in front of the by-id loads (users by id, comment counts by task), so
//! a page of tasks reads its assignees through the cache without the page query changing.

pub mod tasks;

pub use tasks::TaskDetails;

use crate::db::Db;
use crate::flags::Flags;

/// What the loaders read through: the database, and the fix flags that pick a strategy.
/// Cloning is two `Arc` increments.
#[derive(Clone)]
pub struct Loaders {
    db: Db,
    flags: Flags,
}

impl Loaders {
    pub fn new(db: Db, flags: Flags) -> Self {
        Self { db, flags }
    }
}
