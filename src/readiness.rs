//! The readiness registry: each dependency registers a name, whether the service can
//! serve without it, and a probe with a timeout; `/readyz` asks the registry.
//!
//! The answer follows the contract (shared/api.md): `ready` when every dependency is up;
//! `degraded` when only optional ones are down (the service still serves — Redis down
//! means reads go to Postgres — so a load balancer keeps routing here); `unready` when a
//! required one is down (Postgres: nothing works without it); `draining` once shutdown
//! has begun, whatever the probes say. Probes run concurrently, each cut by its own
//! timeout, so one hanging dependency cannot hold the probe past the orchestrator's own
//! deadline.
//!
//! Adding a dependency is one [`Readiness::register`] call where its client is built.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt as _, join_all};
use serde::Serialize;

/// Whether the service can serve without a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Down → `unready` (503): take the instance out of rotation.
    Required,
    /// Down → `degraded` (200): the service serves, with less.
    Optional,
}

/// A dependency's state, as `/readyz` reports it.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DependencyState {
    Up,
    Down,
}

/// The instance's readiness.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ready,
    Degraded,
    Unready,
    Draining,
}

impl Status {
    /// Whether a load balancer should route requests here (`ready`, `degraded`).
    pub fn is_serving(self) -> bool {
        matches!(self, Status::Ready | Status::Degraded)
    }
}

/// The answer of one check: the status and every dependency's state.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Report {
    pub status: Status,
    pub dependencies: BTreeMap<&'static str, DependencyState>,
}

type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

struct Dependency {
    name: &'static str,
    need: Need,
    timeout: Duration,
    probe: Probe,
}

/// The registered dependencies. Built once, before serving; cloning shares them.
#[derive(Clone, Default)]
pub struct Readiness {
    dependencies: Arc<Vec<Dependency>>,
}

impl Readiness {
    /// Registers a dependency. `probe` answers `Ok` while the dependency can serve; it is
    /// cut after `timeout` and then counts as down.
    ///
    /// # Panics
    ///
    /// When called after the registry has been cloned (registration is a start-up step).
    pub fn register<F, Fut, E>(
        &mut self,
        name: &'static str,
        need: Need,
        timeout: Duration,
        probe: F,
    ) where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let probe: Probe = Arc::new(move || {
            probe()
                .map(|result| result.map_err(|e| e.to_string()))
                .boxed()
        });
        Arc::get_mut(&mut self.dependencies)
            .expect("dependencies are registered before the registry is shared")
            .push(Dependency {
                name,
                need,
                timeout,
                probe,
            });
    }

    /// Probes every dependency at once and says whether the instance is ready.
    pub async fn check(&self, draining: bool) -> Report {
        let states = join_all(self.dependencies.iter().map(|dependency| async move {
            let outcome = tokio::time::timeout(dependency.timeout, (dependency.probe)()).await;
            let state = match outcome {
                Ok(Ok(())) => DependencyState::Up,
                Ok(Err(error)) => {
                    tracing::warn!(dependency = dependency.name, %error, "readiness probe failed");
                    DependencyState::Down
                }
                Err(_) => {
                    tracing::warn!(
                        dependency = dependency.name,
                        timeout = ?dependency.timeout,
                        "readiness probe timed out"
                    );
                    DependencyState::Down
                }
            };
            (dependency, state)
        }))
        .await;
        let down = |need| {
            states
                .iter()
                .any(|(d, state)| d.need == need && *state == DependencyState::Down)
        };
        let status = if draining {
            Status::Draining
        } else if down(Need::Required) {
            Status::Unready
        } else if down(Need::Optional) {
            Status::Degraded
        } else {
            Status::Ready
        };
        Report {
            status,
            dependencies: states.into_iter().map(|(d, s)| (d.name, s)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> impl Future<Output = Result<(), String>> {
        std::future::ready(Ok(()))
    }

    fn down() -> impl Future<Output = Result<(), String>> {
        std::future::ready(Err("connection refused".to_owned()))
    }

    fn registry(redis_up: bool, postgres_up: bool) -> Readiness {
        let second = Duration::from_secs(1);
        let mut readiness = Readiness::default();
        readiness.register("postgres", Need::Required, second, move || async move {
            if postgres_up {
                up().await
            } else {
                down().await
            }
        });
        readiness.register("redis", Need::Optional, second, move || async move {
            if redis_up { up().await } else { down().await }
        });
        readiness
    }

    #[tokio::test]
    async fn all_up_is_ready() {
        let report = registry(true, true).check(false).await;
        assert_eq!(report.status, Status::Ready);
        assert!(report.status.is_serving());
        assert_eq!(report.dependencies["postgres"], DependencyState::Up);
        assert_eq!(report.dependencies["redis"], DependencyState::Up);
    }

    #[tokio::test]
    async fn an_optional_dependency_down_is_degraded_and_still_serving_naming_it() {
        let report = registry(false, true).check(false).await;
        assert_eq!(report.status, Status::Degraded);
        assert!(report.status.is_serving());
        assert_eq!(report.dependencies["redis"], DependencyState::Down);
        assert_eq!(report.dependencies["postgres"], DependencyState::Up);
    }

    #[tokio::test]
    async fn a_required_dependency_down_is_unready() {
        let report = registry(true, false).check(false).await;
        assert_eq!(report.status, Status::Unready);
        assert!(!report.status.is_serving());
        let both = registry(false, false).check(false).await;
        assert_eq!(both.status, Status::Unready);
    }

    #[tokio::test]
    async fn draining_wins_over_every_probe() {
        let report = registry(true, true).check(true).await;
        assert_eq!(report.status, Status::Draining);
        assert!(!report.status.is_serving());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_is_cut_by_its_timeout_and_counts_as_down() {
        let mut readiness = Readiness::default();
        readiness.register(
            "postgres",
            Need::Required,
            Duration::from_millis(300),
            || async { up().await },
        );
        readiness.register(
            "rabbitmq",
            Need::Optional,
            Duration::from_millis(500),
            std::future::pending::<Result<(), String>>,
        );
        let started = tokio::time::Instant::now();

        let report = readiness.check(false).await;

        assert_eq!(report.status, Status::Degraded);
        assert_eq!(report.dependencies["rabbitmq"], DependencyState::Down);
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    #[test]
    fn the_report_serializes_as_the_contract_says() {
        let report = Report {
            status: Status::Degraded,
            dependencies: BTreeMap::from([
                ("postgres", DependencyState::Up),
                ("redis", DependencyState::Down),
            ]),
        };
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({"status": "degraded", "dependencies": {"postgres": "up", "redis": "down"}})
        );
    }
}
