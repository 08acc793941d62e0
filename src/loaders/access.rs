//! The by-id reads behind authorization and the single-resource GETs: the caller's role
//! in a project (every project-scoped request asks), a project, a user.

use uuid::Uuid;

use super::Loaders;
use crate::cache::{Membership, entries};
use crate::db;
use crate::db::projects::Project;
use crate::db::users::User;
use crate::domain::Role;

impl Loaders {
    /// The role of `user_id` in `project_id`; `None` when they are not a member (or there
    /// is no such project — the caller cannot tell, and must not).
    pub async fn role(&self, project_id: Uuid, user_id: Uuid) -> Result<Option<Role>, sqlx::Error> {
        let load = || async {
            let role = db::members::role_of(&self.db, project_id, user_id).await?;
            Ok::<_, sqlx::Error>(Some(Membership(role)))
        };
        let membership = match self.cache() {
            Some(cache) => {
                cache
                    .fetch(&entries::membership(project_id, user_id), load)
                    .await?
            }
            None => load().await?,
        };
        Ok(membership.and_then(|m| m.0))
    }

    pub async fn project(&self, id: Uuid) -> Result<Option<Project>, sqlx::Error> {
        let load = || db::projects::find(&self.db, id);
        match self.cache() {
            Some(cache) => cache.fetch(&entries::project(id), load).await,
            None => load().await,
        }
    }

    pub async fn user(&self, id: Uuid) -> Result<Option<User>, sqlx::Error> {
        let load = || db::users::find(&self.db, id);
        match self.cache() {
            Some(cache) => cache.fetch(&entries::user(id), load).await,
            None => load().await,
        }
    }
}
