//! Single-flight: concurrent misses of one key inside one instance share one load.
//!
//! The lease already lets only one reader in the fleet load a key; the others would poll
//! Redis until its fill lands. Inside one instance they need not even do that: the first
//! caller for a key leads, the rest wait on a `watch` channel for its result. A leader
//! that fails (or whose request is cancelled mid-way) publishes nothing; its followers
//! then run their own work, so an error is never shared and nobody waits on a dead
//! leader.
//!
//! # Sharing must not break read-after-write
//!
//! A follower that joins a run which began before some write was acknowledged could be
//! handed the value from before the write — although its own request started after the
//! write. So a value travels with the instant it is known to be current from
//! ([`Fresh::as_of`]: when the Redis read or fill that vouched for it, or the Postgres
//! statement that loaded it, was sent), and a follower takes it only if it arrived no
//! later than that instant. Any write acknowledged before the follower arrived had its
//! invalidation done before that instant, so the value already reflects it. A follower
//! that arrived later waits for the next run instead, which starts after it arrived; so
//! one key has at most two runs in an instance at any time, whatever the concurrency.
//!
//! Hand-written rather than `async_singleflight`: that crate wants `'static` futures and a
//! cloneable error, and a load here borrows the request's state and returns `sqlx::Error`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

type Value = Arc<dyn Any + Send + Sync>;

/// A value, and the instant from which it is known to be current (module doc).
#[derive(Debug, Clone)]
pub struct Fresh<T> {
    pub value: T,
    pub as_of: Instant,
}

#[derive(Default)]
pub struct Flights {
    running: Mutex<HashMap<String, watch::Receiver<Option<Value>>>>,
}

impl Flights {
    /// Runs `work` for `key`, or waits for the run already under way and takes its value
    /// when it is fresh enough for this caller.
    pub async fn run<T, E, Fut>(&self, key: String, work: impl FnOnce() -> Fut) -> Result<T, E>
    where
        T: Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Fresh<T>, E>>,
    {
        let arrived = Instant::now();
        // At most twice round: a run that starts after this caller arrived is always
        // fresh enough for it.
        loop {
            let joined = {
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                match running.get(&key) {
                    Some(receiver) => Err(receiver.clone()),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        running.insert(key.clone(), receiver);
                        Ok(sender)
                    }
                }
            };
            let mut receiver = match joined {
                Ok(sender) => {
                    let lead = Lead {
                        flights: self,
                        key,
                        sender,
                    };
                    let result = work().await;
                    if let Ok(fresh) = &result {
                        lead.publish(Arc::new(fresh.clone()));
                    }
                    return result.map(|fresh| fresh.value);
                }
                Err(receiver) => receiver,
            };
            // `Err` from `wait_for`: the leader went away without a value.
            let shared = receiver
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|value| value.clone())
                .and_then(|value| value.downcast_ref::<Fresh<T>>().cloned());
            match shared {
                Some(fresh) if fresh.as_of >= arrived => return Ok(fresh.value),
                // Current only from before this caller arrived: take the next run.
                Some(_) => continue,
                None => return work().await.map(|fresh| fresh.value),
            }
        }
    }
}

/// The leader's hold on its key: gives the key up when the leader is done, whether it
/// published or not, so that a later miss starts a fresh load.
struct Lead<'a> {
    flights: &'a Flights,
    key: String,
    sender: watch::Sender<Option<Value>>,
}

impl Lead<'_> {
    fn publish(self, value: Value) {
        self.sender.send_replace(Some(value));
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut running = self
            .flights
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        running.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn concurrent_runs_of_one_key_share_one_load() {
        let flights = Arc::new(Flights::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let mut runs = Vec::new();
        for _ in 0..50 {
            let (flights, loads) = (flights.clone(), loads.clone());
            runs.push(tokio::spawn(async move {
                flights
                    .run("t:1".into(), || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        // Vouched for when the load ended (a fill), after everyone arrived.
                        Ok::<_, ()>(fresh(42))
                    })
                    .await
            }));
        }
        for run in runs {
            assert_eq!(run.await.expect("joins"), Ok(42));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(flights.running.lock().expect("lock").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_leader_lets_each_follower_load_for_itself() {
        let flights = Arc::new(Flights::default());
        let leader = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .run("k".into(), || async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Err::<Fresh<u8>, &str>("database down")
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        let follower = flights.run("k".into(), || async { Ok::<_, &str>(fresh(7u8)) });
        assert_eq!(follower.await, Ok(7));
        assert_eq!(leader.await.expect("joins"), Err("database down"));
    }

    #[tokio::test]
    async fn different_keys_do_not_wait_for_each_other() {
        let flights = Flights::default();
        let a = flights.run("a".into(), || async { Ok::<_, ()>(fresh(1)) });
        let b = flights.run("b".into(), || async { Ok::<_, ()>(fresh(2)) });
        assert_eq!(tokio::join!(a, b), (Ok(1), Ok(2)));
    }

    fn fresh<T>(value: T) -> Fresh<T> {
        Fresh {
            value,
            as_of: Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_that_arrived_after_the_value_was_vouched_for_takes_the_next_run() {
        let flights = Arc::new(Flights::default());
        let leader = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .run("k".into(), || async {
                        // Read at the start (a hit), then slow to hand it over.
                        let as_of = Instant::now();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok::<_, ()>(Fresh {
                            value: "old",
                            as_of,
                        })
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A write was acknowledged meanwhile; this reader starts after it.
        let follower = flights.run("k".into(), || async { Ok::<_, ()>(fresh("new")) });
        assert_eq!(follower.await, Ok("new"));
        assert_eq!(leader.await.expect("joins"), Ok("old"));
    }
}
