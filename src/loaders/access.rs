//! The by-id reads behind authorization and the single-resource GETs: the caller's role
//! in a project (every project-scoped request asks), a project, a user.

use uuid::Uuid;

use super::Loaders;
use crate::cache::{Entry, Key, Membership, entries};
use crate::db;
use crate::db::projects::Project;
use crate::db::stats::ProjectStats;
use crate::db::users::User;
use crate::domain::Role;

impl Loaders {
    /// The role of `user_id` in `project_id`; `None` when they are not a member (or there
    /// is no such project — the caller cannot tell, and must not).
    pub async fn role(&self, project_id: Uuid, user_id: Uuid) -> Result<Option<Role>, sqlx::Error> {
        let membership = self
            .by_id(&entries::membership(project_id, user_id), || async {
                let role = db::members::role_of(&self.db, project_id, user_id).await?;
                Ok(Some(Membership(role)))
            })
            .await?;
        Ok(membership.and_then(|m| m.0))
    }

    pub async fn project(&self, id: Uuid) -> Result<Option<Project>, sqlx::Error> {
        self.by_id(&entries::project(id), || db::projects::find(&self.db, id))
            .await
    }

    pub async fn user(&self, id: Uuid) -> Result<Option<User>, sqlx::Error> {
        self.by_id(&entries::user(id), || db::users::find(&self.db, id))
            .await
    }

    /// A project's stats as last computed (`None` before the first computation).
    pub async fn stats(&self, project_id: Uuid) -> Result<Option<ProjectStats>, sqlx::Error> {
        self.by_id(&entries::stats(project_id), || {
            db::stats::find(&self.db, project_id)
        })
        .await
    }

    /// One by-id read: through the cache when the `cache` fix is on, else `load` alone.
    async fn by_id<T, F, Fut>(&self, key: &Key<T>, load: F) -> Result<Option<T>, sqlx::Error>
    where
        T: Entry + Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
    {
        match self.cache() {
            Some(cache) => cache.fetch(key, load).await,
            None => load().await,
        }
    }
}
