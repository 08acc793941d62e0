//! The background-task registry: every long-running task of the process (the fix-flag
//! refresher, the metrics upkeep, and later the outbox relay, the consumers, the cache
//! upkeep) is started here, with a name and the token that tells it to stop.
//!
//! One place to start them means one place that stops them: [`Background::stop`] fires
//! the token and waits for every task (a `TaskTracker`) up to a deadline; a task still
//! running then is named in the log and aborted, so a stuck task cannot hold the process
//! past its grace period, and the operator learns which one it was.
//!
//! The token is the registry's own, not the process's shutdown token: the tasks keep
//! running while the listeners drain (in-flight requests still read fresh flags), and
//! stop after them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The running tasks, by a registration number: each one's name, and how to abort it.
type Running = Arc<Mutex<BTreeMap<u64, (&'static str, AbortHandle)>>>;

#[derive(Default)]
pub struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
    running: Running,
    next: AtomicU64,
}

impl Background {
    /// Starts `task`, handing it the token that fires when the registry stops. The task
    /// must return soon after the token fires.
    pub fn spawn<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let running = self.running.clone();
        let future = task(self.stop.clone());
        // Hold the lock across the spawn, so that a task that ends at once removes its
        // entry only after it was inserted.
        let mut entries = running.lock().unwrap_or_else(|e| e.into_inner());
        let handle = self.tracker.spawn({
            let running = running.clone();
            async move {
                future.await;
                running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            }
        });
        entries.insert(id, (name, handle.abort_handle()));
    }

    /// The names of the tasks still running.
    pub fn running(&self) -> Vec<&'static str> {
        let entries = self.running.lock().unwrap_or_else(|e| e.into_inner());
        entries.values().map(|(name, _)| *name).collect()
    }

    /// Tells every task to stop and waits for them up to `deadline`. Returns the names of
    /// those that overran it (logged, and aborted).
    pub async fn stop(&self, deadline: Duration) -> Vec<&'static str> {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return Vec::new();
        }
        let overran: Vec<(&'static str, AbortHandle)> = {
            let entries = self.running.lock().unwrap_or_else(|e| e.into_inner());
            entries.values().cloned().collect()
        };
        let names: Vec<&'static str> = overran.iter().map(|(name, _)| *name).collect();
        tracing::warn!(
            tasks = ?names,
            ?deadline,
            "background tasks outlived the shutdown deadline; aborting them"
        );
        for (_, abort) in overran {
            abort.abort();
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tasks_that_stop_when_told_are_all_awaited() {
        let background = Background::default();
        for name in ["refresher", "upkeep"] {
            background.spawn(name, |stop| async move { stop.cancelled().await });
        }
        assert_eq!(background.running(), ["refresher", "upkeep"]);

        let overran = background.stop(Duration::from_secs(5)).await;

        assert!(overran.is_empty());
        assert!(background.running().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_overruns_the_deadline_is_named_and_aborted() {
        let background = Background::default();
        background.spawn("polite", |stop| async move { stop.cancelled().await });
        background.spawn("stuck", |_stop| std::future::pending::<()>());
        let started = tokio::time::Instant::now();

        let overran = background.stop(Duration::from_secs(2)).await;

        assert_eq!(overran, ["stuck"]);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // Aborted: the tracker empties once the abort has been processed.
        tokio::time::timeout(Duration::from_secs(1), background.tracker.wait())
            .await
            .expect("the stuck task was aborted");
    }

    #[tokio::test]
    async fn a_task_that_ends_on_its_own_leaves_the_registry() {
        let background = Background::default();
        background.spawn("one-shot", |_stop| async {});
        tokio::time::timeout(Duration::from_secs(1), async {
            while !background.running().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the finished task is removed");
    }
}
