//! The workshop's fault switches: an added latency and a share of failing calls on one
//! dependency's calls, switched at run time through the admin API (`PUT
//! /admin/faults/{dependency}`), so that a workshop can make Postgres, Redis, RabbitMQ or
//! SMTP slow or flaky without touching the network, and watch what each fix does about it.
//!
//! # Where a fault acts
//!
//! Each dependency's client calls [`Faults::inject`] once per call to the dependency,
//! inside the permit of its circuit breaker and before the call itself: the latency is
//! slept, then the call fails with probability `error_rate`. So an injected error counts
//! against the breaker and takes the dependency's fallback exactly like a real failure
//! (Redis → served from Postgres, or rate-limited in process; RabbitMQ → jobs wait in the
//! outbox; SMTP → the job is retried later; Postgres → 503), and an injected latency is a
//! slow call to the breaker's slow-call rule. Which call is "a call" is each client's
//! business and is written where it injects: a statement or a transaction's `BEGIN` on
//! the pool (`db::executor`), a script call to Redis (the cache, the rate limiter), a
//! batch of publishes (the outbox relay), a send (the mailer).
//!
//! The latency is slept before the call, outside the call's own timeout: the switch says
//! "this dependency's calls take N ms longer", and a Redis command timeout of 50 ms would
//! otherwise turn every latency above it into an error, which is what `error_rate` is for.
//! A request's deadline still bounds it (the deadline layer drops the request's future).
//!
//! # What it costs when off
//!
//! A [`Faults`] is an `Arc` of two atomics per dependency (the latency in ms, the error
//! rate's `f64` bits). With no fault set, [`Faults::inject`] is two relaxed loads and
//! returns: no allocation, no clock, no random number, no sleep. The two loads are not one
//! snapshot: a call racing a change may see the new latency with the old rate, once.
//!
//! # How a change travels
//!
//! Like the fix flags (`crate::flags`, which owns the refresher): the switches live in
//! Postgres (`fault_injections`), every instance reloads them on `NOTIFY` and on a poll,
//! and applies them here. This module knows no store; [`Faults::apply`] takes the values.
//!
//! `keel_fault_injections_total{dependency, effect}` counts the calls a fault slowed
//! (`latency`) or failed (`error`).

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::telemetry::metrics::names::FAULT_INJECTIONS;

/// A dependency that a fault can be injected on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    Postgres,
    Redis,
    Rabbitmq,
    Smtp,
}

impl Dependency {
    /// Every dependency, in the order the admin API lists them.
    pub const ALL: [Dependency; 4] = [
        Dependency::Postgres,
        Dependency::Redis,
        Dependency::Rabbitmq,
        Dependency::Smtp,
    ];

    /// The name in the admin API, the store and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres",
            Dependency::Redis => "redis",
            Dependency::Rabbitmq => "rabbitmq",
            Dependency::Smtp => "smtp",
        }
    }

    pub fn from_name(name: &str) -> Option<Dependency> {
        Dependency::ALL.into_iter().find(|d| d.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dependency's fault: `{0, 0}` is none.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fault {
    /// Added to each call, in milliseconds, at most [`Fault::MAX_LATENCY_MS`].
    pub latency_ms: u32,
    /// The share of calls that fail, in `[0, 1]`.
    pub error_rate: f64,
}

impl Fault {
    /// No fault.
    pub const NONE: Fault = Fault {
        latency_ms: 0,
        error_rate: 0.0,
    };

    /// The largest latency a switch accepts (the store's check says the same): ten
    /// seconds is past every deadline and timeout of the service, so a larger one would
    /// show nothing more.
    pub const MAX_LATENCY_MS: u32 = 10_000;

    /// Whether this fault does nothing.
    pub fn is_none(self) -> bool {
        self.latency_ms == 0 && self.error_rate <= 0.0
    }

    /// Within range: the store and the admin API check the range, so this only keeps a
    /// value that slipped past them (a NaN, say) from doing something odd.
    fn clamped(self) -> Self {
        Self {
            latency_ms: self.latency_ms.min(Self::MAX_LATENCY_MS),
            error_rate: if self.error_rate.is_nan() {
                0.0
            } else {
                self.error_rate.clamp(0.0, 1.0)
            },
        }
    }
}

/// One dependency's fault as this instance currently applies it.
#[derive(Debug, Clone)]
pub struct FaultState {
    pub dependency: Dependency,
    pub fault: Fault,
    /// When the switch last changed in the store; `None` until the first successful read.
    pub updated_at: Option<DateTime<Utc>>,
}

/// What a call fails with when its fault's error rate says so. The clients turn it into
/// their own failure (an I/O error for sqlx, a Redis failure, a transient mail error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected fault on {dependency}")]
pub struct InjectedFault {
    pub dependency: Dependency,
}

/// This instance's fault switches. Cloning shares them: every client of a dependency holds
/// a clone of the same snapshot. The default is no fault anywhere.
#[derive(Clone)]
pub struct Faults(Arc<Inner>);

struct Inner {
    slots: [Slot; Dependency::ALL.len()],
    /// Read only by the admin API; written on each apply.
    updated_at: RwLock<[Option<DateTime<Utc>>; Dependency::ALL.len()]>,
}

/// One dependency's switch: atomics, so that a call reads it without a lock.
#[derive(Default)]
struct Slot {
    latency_ms: AtomicU32,
    /// The error rate's `f64` bits (`0` is `0.0`).
    error_rate: AtomicU64,
}

const EFFECTS: [&str; 2] = ["latency", "error"];

impl Default for Faults {
    /// No fault anywhere. Also starts `keel_fault_injections_total` at zero for every
    /// dependency and effect: a dashboard sees "none injected" rather than no data.
    fn default() -> Self {
        for dependency in Dependency::ALL {
            for effect in EFFECTS {
                metrics::counter!(
                    FAULT_INJECTIONS,
                    "dependency" => dependency.name(),
                    "effect" => effect
                )
                .increment(0);
            }
        }
        Self(Arc::new(Inner {
            slots: Default::default(),
            updated_at: RwLock::new([None; Dependency::ALL.len()]),
        }))
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for dependency in Dependency::ALL {
            map.entry(&dependency.name(), &self.get(dependency));
        }
        map.finish()
    }
}

impl Faults {
    /// The fault on `dependency`: two relaxed loads.
    pub fn get(&self, dependency: Dependency) -> Fault {
        let slot = &self.0.slots[dependency.index()];
        Fault {
            latency_ms: slot.latency_ms.load(Ordering::Relaxed),
            error_rate: f64::from_bits(slot.error_rate.load(Ordering::Relaxed)),
        }
    }

    /// Sets the fault on `dependency` in this instance only, until the next refresh.
    /// [`Faults::apply`] sets through it; tests call it to drive a client without a store.
    /// Operators switch faults in the store (the admin API), which every instance follows.
    pub fn set(&self, dependency: Dependency, fault: Fault) {
        let fault = fault.clamped();
        let slot = &self.0.slots[dependency.index()];
        slot.latency_ms.store(fault.latency_ms, Ordering::Relaxed);
        slot.error_rate
            .store(fault.error_rate.to_bits(), Ordering::Relaxed);
    }

    /// Applies a value read from the store, changed at `updated_at`.
    ///
    /// A value older than the one held is ignored: a refresh whose read began before a
    /// change this instance has already applied (the admin API applies its own write at
    /// once) must not put the old value back.
    pub fn apply(&self, dependency: Dependency, fault: Fault, updated_at: DateTime<Utc>) {
        let mut stamps = self.0.updated_at.write().unwrap_or_else(|e| e.into_inner());
        if stamps[dependency.index()].is_some_and(|held| updated_at < held) {
            return;
        }
        self.set(dependency, fault);
        stamps[dependency.index()] = Some(updated_at);
    }

    /// Every dependency's fault, in [`Dependency::ALL`] order.
    pub fn snapshot(&self) -> Vec<FaultState> {
        let stamps = *self.0.updated_at.read().unwrap_or_else(|e| e.into_inner());
        Dependency::ALL
            .into_iter()
            .map(|dependency| FaultState {
                dependency,
                fault: self.get(dependency),
                updated_at: stamps[dependency.index()],
            })
            .collect()
    }

    /// One call to `dependency`: sleeps the fault's latency, then fails with probability
    /// its error rate. With no fault, returns at once (module doc). Call it inside the
    /// breaker's permit, just before the call.
    pub async fn inject(&self, dependency: Dependency) -> Result<(), InjectedFault> {
        self.inject_with(dependency, rand::random::<f64>).await
    }

    /// [`Faults::inject`] with the draw in `[0, 1)` given (a seeded one in tests).
    async fn inject_with(
        &self,
        dependency: Dependency,
        draw: impl FnOnce() -> f64,
    ) -> Result<(), InjectedFault> {
        let fault = self.get(dependency);
        if fault.latency_ms > 0 {
            count(dependency, "latency");
            tokio::time::sleep(Duration::from_millis(u64::from(fault.latency_ms))).await;
        }
        // `draw() < 1.0` always: a rate of 1 fails every call, and 0 never draws.
        if fault.error_rate > 0.0 && draw() < fault.error_rate {
            count(dependency, "error");
            return Err(InjectedFault { dependency });
        }
        Ok(())
    }
}

fn count(dependency: Dependency, effect: &'static str) {
    metrics::counter!(FAULT_INJECTIONS, "dependency" => dependency.name(), "effect" => effect)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt as _, SeedableRng as _};
    use tokio::time::Instant;

    use super::*;

    #[test]
    fn every_dependency_round_trips_through_its_name_in_the_api_order() {
        let names: Vec<&str> = Dependency::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names, ["postgres", "redis", "rabbitmq", "smtp"]);
        for (i, dependency) in Dependency::ALL.into_iter().enumerate() {
            assert_eq!(Dependency::from_name(dependency.name()), Some(dependency));
            assert_eq!(dependency.index(), i);
        }
        assert_eq!(Dependency::from_name("mysql"), None);
    }

    #[test]
    fn faults_start_off_and_a_set_stays_on_its_dependency_within_range() {
        let faults = Faults::default();
        assert!(Dependency::ALL.iter().all(|&d| faults.get(d).is_none()));

        faults.set(
            Dependency::Redis,
            Fault {
                latency_ms: 300,
                error_rate: 0.25,
            },
        );
        faults.set(
            Dependency::Smtp,
            Fault {
                latency_ms: 99_999,
                error_rate: f64::NAN,
            },
        );

        let redis = faults.get(Dependency::Redis);
        assert_eq!((redis.latency_ms, redis.error_rate), (300, 0.25));
        assert_eq!(
            faults.get(Dependency::Smtp),
            Fault {
                latency_ms: Fault::MAX_LATENCY_MS,
                error_rate: 0.0
            }
        );
        assert!(faults.get(Dependency::Postgres).is_none());
        assert!(faults.snapshot().iter().all(|s| s.updated_at.is_none()));
        let now = Utc::now();
        faults.apply(Dependency::Redis, Fault::NONE, now);
        assert!(faults.get(Dependency::Redis).is_none());
        assert_eq!(faults.snapshot()[1].updated_at, Some(now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_latency_fault_sleeps_its_latency_on_its_dependency_only() {
        let faults = Faults::default();
        faults.set(
            Dependency::Postgres,
            Fault {
                latency_ms: 300,
                error_rate: 0.0,
            },
        );

        let started = Instant::now();
        faults.inject(Dependency::Postgres).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));

        let started = Instant::now();
        faults.inject(Dependency::Redis).await.unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no other dependency waits"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_fault_fails_about_its_share_of_calls() {
        let faults = Faults::default();
        let mut rng = StdRng::seed_from_u64(14);
        let calls = 10_000;
        let mut share = async |error_rate: f64| {
            faults.set(
                Dependency::Rabbitmq,
                Fault {
                    latency_ms: 0,
                    error_rate,
                },
            );
            let mut failed = 0;
            for _ in 0..calls {
                let result = faults
                    .inject_with(Dependency::Rabbitmq, || rng.random::<f64>())
                    .await;
                if let Err(e) = result {
                    assert_eq!(e.to_string(), "injected fault on rabbitmq");
                    failed += 1;
                }
            }
            f64::from(failed) / f64::from(calls)
        };

        let third = share(0.3).await;
        assert!((third - 0.3).abs() <= 0.03, "{third}");
        assert_eq!(share(0.0).await, 0.0);
        assert_eq!(share(1.0).await, 1.0);
    }

    #[tokio::test]
    async fn with_the_thread_rng_a_rate_of_one_always_fails_and_zero_never() {
        let faults = Faults::default();
        for (rate, fails) in [(1.0, true), (0.0, false)] {
            faults.set(
                Dependency::Smtp,
                Fault {
                    latency_ms: 0,
                    error_rate: rate,
                },
            );
            for _ in 0..1_000 {
                assert_eq!(faults.inject(Dependency::Smtp).await.is_err(), fails);
            }
        }
    }
}
