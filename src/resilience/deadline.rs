//! A request's deadline, visible to every call the request makes.
//!
//! The deadline middleware runs each request inside [`Deadline::scope`]; below it, any
//! code on the request's task asks [`budget`] how long its next call to a dependency may
//! take: the dependency's own timeout, or what is left of the request's deadline if that is
//! sooner. So a request that has 80 ms left does not start a Redis call allowed 500 ms or a
//! statement allowed 5 s, and when the deadline passes, the calls still running are the
//! ones already cut to end with it: nothing keeps working for a request that has been
//! answered.
//!
//! A task-local rather than an argument: the budget is needed at the bottom of every call
//! path (the statement executor, the cache client, the mailer), and threading a parameter
//! through every repository and loader for it would touch every signature in the tree.
//! The cost is that work spawned onto another task does not inherit the deadline, which is
//! the point: a spawned task (the outbox relay, a refill shared by single-flight) outlives
//! the request by design and carries its own timeouts.

use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The instant by which a request must be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// A deadline `after` from now.
    pub fn after(after: Duration) -> Self {
        Self(Instant::now() + after)
    }

    /// Runs `work` with this deadline visible to [`remaining`] and [`budget`].
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        DEADLINE.scope(self.0, work).await
    }
}

/// What is left of the current request's deadline: `None` outside a request (background
/// work) or when deadlines are off; `Some(ZERO)` once it has passed.
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// How long the next call may take: `timeout`, cut to what is left of the request's
/// deadline when there is one.
pub fn budget(timeout: Duration) -> Duration {
    remaining().map_or(timeout, |left| left.min(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_the_timeout_or_what_is_left_whichever_is_sooner() {
        assert_eq!(remaining(), None);
        assert_eq!(budget(Duration::from_secs(5)), Duration::from_secs(5));
        Deadline::after(Duration::from_secs(2))
            .scope(async {
                assert_eq!(budget(Duration::from_secs(5)), Duration::from_secs(2));
                assert_eq!(budget(Duration::from_secs(1)), Duration::from_secs(1));
                tokio::time::sleep(Duration::from_millis(1500)).await;
                assert_eq!(remaining(), Some(Duration::from_millis(500)));
                tokio::time::sleep(Duration::from_secs(1)).await;
                assert_eq!(budget(Duration::from_secs(5)), Duration::ZERO);
            })
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_spawned_task_does_not_inherit_the_deadline() {
        Deadline::after(Duration::from_secs(1))
            .scope(async {
                let inner = tokio::spawn(async { remaining() }).await.unwrap();
                assert_eq!(inner, None);
            })
            .await;
    }
}
