//! Where a list read goes: the read replica when it may answer, else the primary.
//!
//! # Which reads
//!
//! The list statements: a page of a project's tasks (past the cached first page, or every
//! page with the `cache` fix off), the caller's tasks, projects, members and comments. Not
//! the reads that decide access (a membership, a task the caller asks for: a removed member
//! must lose access at once, not a replica's lag later), and not the reads that fill the
//! cache: a fill from a replica that has not replayed a write yet would put the old value
//! back into the cache *after* the write's invalidation, where it would stay until its TTL.
//! Those stay on the primary, or come from the cache that the writes invalidate.
//!
//! # The route of one read ([`Reads::list`])
//!
//! 1. No replica configured: the primary.
//! 2. The replica is down (its last poll failed, or its breaker is open) or further behind
//!    than `KEEL_DB_READ_MAX_LAG`: the primary (`replica_down`, `replica_lagging`).
//! 3. The reader wrote recently and the replica has not replayed past that write's commit
//!    position yet: the primary (`read_your_writes`, below).
//! 4. Otherwise the replica. If it fails there (a lost connection, or a query cancelled by
//!    a conflict with recovery), the primary answers instead (`replica_error`): a dead
//!    replica costs a reader a retry, never an error.
//!
//! Each read is counted in `keel_db_read_route_total{target, reason}`.
//!
//! # Read-your-writes: by commit position, bounded in time
//!
//! After a write commits, [`Reads::wrote`] reads the primary's current WAL position — at
//! or past the write's commit record — and stores it in Redis under the writer's id for
//! `KEEL_DB_READ_YOUR_WRITES_WINDOW` (Redis, not this process: the writer's next request
//! may land on any instance). A read by that user goes to the replica only once the
//! replica's replay position, as polled (`crate::db::replica`), has passed the marker —
//! typically within a poll, since a healthy replica replays in milliseconds.
//!
//! Why the position and not simply "the primary for N seconds after a write": with the
//! position, a writer is back on the replica as soon as it has the write, so a busy writer
//! does not put most of its reads on the primary; and a replica that falls behind by more
//! than N does not serve the writer stale data. The window only bounds how long markers are
//! kept: it is longer than the lag bound plus a poll (the configuration refuses less), so a
//! marker expires only when any replica still allowed to serve reads has replayed it.
//!
//! The failures all err towards the primary: if the primary's position cannot be read, the
//! marker is "every position" (primary for the whole window); if Redis cannot be asked, the
//! read goes to the primary (`marker_unknown`). The one gap: a write whose marker could not
//! be *stored* (Redis down at that moment), read after Redis returns, sooner than the
//! replica's lag — milliseconds on a healthy replica, at most `KEEL_DB_READ_MAX_LAG`.

use std::time::Duration;

use metrics::counter;
use uuid::Uuid;

use crate::cache::Cache;
use crate::db::replica::{self, Replica, Usable};
use crate::db::{self, Db};
use crate::telemetry::metrics::names;

/// The primary, the replica if there is one, and the cache that holds the markers.
/// Cloning is a few `Arc` increments.
#[derive(Clone)]
pub struct Reads {
    primary: Db,
    replica: Option<Replica>,
    cache: Cache,
    /// `KEEL_DB_READ_YOUR_WRITES_WINDOW`.
    window: Duration,
}

/// Where one read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Replica,
    Primary(&'static str),
}

impl Reads {
    /// Every read on `primary`, until [`Reads::with_replica`].
    pub fn new(primary: Db, cache: Cache) -> Self {
        Self {
            primary,
            replica: None,
            cache,
            window: Duration::ZERO,
        }
    }

    /// List reads may go to `replica`; writers' markers live for `window`.
    pub fn with_replica(self, replica: Replica, window: Duration) -> Self {
        Self {
            replica: Some(replica),
            window,
            ..self
        }
    }

    /// The replica, when one is configured.
    pub fn replica(&self) -> Option<&Replica> {
        self.replica.as_ref()
    }

    /// Runs the list read `read` for `reader` on the replica when it may serve it, else
    /// on the primary (module doc); on the primary again if the replica fails it.
    ///
    /// `read` takes the handle by value (a clone is a few `Arc` increments): an async
    /// closure over `&Db` would be the natural shape, but its future cannot yet be proven
    /// `Send` for every lifetime, which axum's handlers need.
    pub async fn list<T, F, Fut>(&self, reader: Uuid, read: F) -> Result<T, sqlx::Error>
    where
        F: Fn(Db) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let Some(replica) = &self.replica else {
            return read(self.primary.clone()).await;
        };
        match self.route(replica, reader).await {
            Route::Replica => match read(replica.db().clone()).await {
                Err(e) if replica_failed(&e) => {
                    tracing::debug!(error = %e, "replica read failed; reading the primary");
                    count("primary", "replica_error");
                    read(self.primary.clone()).await
                }
                result => {
                    count("replica", "replica");
                    result
                }
            },
            Route::Primary(reason) => {
                count("primary", reason);
                read(self.primary.clone()).await
            }
        }
    }

    async fn route(&self, replica: &Replica, reader: Uuid) -> Route {
        let status = replica.status();
        match replica.usable(&status) {
            Usable::Down => return Route::Primary("replica_down"),
            Usable::Lagging => return Route::Primary("replica_lagging"),
            Usable::Yes => {}
        }
        after_marker(status.replayed, self.cache.last_write(reader).await.ok())
    }

    /// Records that `writer`'s write has committed (module doc). A no-op without a
    /// replica. Never fails the write: it has committed.
    pub async fn wrote(&self, writer: Uuid) {
        if self.replica.is_none() {
            return;
        }
        let at = match replica::position(&self.primary).await {
            Ok(at) => at,
            Err(e) => {
                tracing::debug!(error = %e, "primary position unknown; the writer reads the primary for the window");
                u64::MAX
            }
        };
        if self
            .cache
            .mark_write(writer, at, self.window)
            .await
            .is_err()
        {
            tracing::debug!("read-your-writes marker not stored (Redis unavailable)");
        }
    }
}

/// The route once the replica may serve reads, given the reader's marker (`None`: Redis
/// could not be asked; `Some(None)`: no write within the window).
fn after_marker(replayed: u64, marker: Option<Option<u64>>) -> Route {
    match marker {
        None => Route::Primary("marker_unknown"),
        Some(Some(at)) if replayed < at => Route::Primary("read_your_writes"),
        Some(_) => Route::Replica,
    }
}

/// Whether a replica's error is the replica's, so the primary should answer instead: it
/// could not be reached or refused for load (`db::is_unavailable`, except a cancellation
/// on the request's own deadline, which the primary would hit too), or a hot standby
/// cancelled the query for a conflict with recovery (SQLSTATE 40001 on a standby).
fn replica_failed(e: &sqlx::Error) -> bool {
    if db::is_deadline_cancel(e) {
        return false;
    }
    db::is_unavailable(e)
        || matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("40001"))
}

fn count(target: &'static str, reason: &'static str) {
    counter!(names::DB_READ_ROUTE, "target" => target, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_reads_the_primary_until_the_replica_has_replayed_past_the_write() {
        assert_eq!(
            after_marker(100, Some(None)),
            Route::Replica,
            "no recent write"
        );
        assert_eq!(
            after_marker(100, Some(Some(101))),
            Route::Primary("read_your_writes")
        );
        assert_eq!(
            after_marker(101, Some(Some(101))),
            Route::Replica,
            "replayed"
        );
        assert_eq!(
            after_marker(u64::MAX - 1, Some(Some(u64::MAX))),
            Route::Primary("read_your_writes"),
            "an unknown position holds the writer on the primary"
        );
        assert_eq!(after_marker(100, None), Route::Primary("marker_unknown"));
    }

    #[test]
    fn a_lost_replica_is_retried_on_the_primary_and_a_wrong_query_is_not() {
        assert!(replica_failed(&sqlx::Error::Io(
            std::io::ErrorKind::ConnectionRefused.into()
        )));
        assert!(replica_failed(&sqlx::Error::PoolTimedOut));
        assert!(!replica_failed(&sqlx::Error::RowNotFound));
    }
}
