//! A circuit breaker: after enough of a dependency's recent calls have failed, refuse calls to
//! it for a while, then let one trial call decide whether it is back.
//!
//! # How it decides
//!
//! - **Closed** (normal): every call goes through, and the breaker keeps the outcomes of the
//!   last `window` calls. It opens when those hold at least `window / 2` calls (at least one)
//!   and the failed share is at least `failure_rate`. The minimum is there so that the first
//!   failure after a start does not open it: a rate over two calls says nothing.
//! - **Open**: every call is refused at once, for `cooldown`.
//! - **Half-open**: after the cooldown, exactly one trial call goes through and the rest are
//!   still refused. The trial's success closes the breaker with an empty window; its failure
//!   opens it for another full cooldown. One trial rather than a trickle: a dependency that is
//!   just coming back gets one request, not everyone who queued up while it was away.
//!
//! The window counts calls, not seconds, so it needs no clock while closed and judges on the
//! same number of calls at any traffic. The cost is that at low traffic an old failure
//! stays in the window until `window` newer calls push it out.
//!
//! # A permit, not a wrapped call
//!
//! [`Breaker::try_acquire`] hands out a [`Permit`]; the caller settles it with
//! [`Permit::success`] or [`Permit::failure`]. The caller decides what a failure is (a Redis
//! timeout is; a cache miss is not), and the guarded call can be anything: a future, a
//! pipeline, a connection checkout. A permit dropped unsettled counts as neither, since a
//! call cancelled by a departed client or a deadline says nothing about the dependency; a
//! dropped trial permit frees the trial for the next caller.
//!
//! # Why hand-written
//!
//! tower has no circuit-breaker layer, and the calls guarded here are not tower `Service`s.
//! The `failsafe` crate lets every call through while half-open, and reads std's clock, which
//! tokio's paused time in tests does not move. What is needed fits in this file.
//!
//! # Observability
//!
//! `keel_breaker_state{breaker}` (0 closed, 1 half-open, 2 open) and
//! `keel_breaker_transitions_total{breaker, to}`; each transition is logged once (warn when it
//! opens, info otherwise).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::telemetry::metrics::names::{
    BREAKER_STATE as STATE_GAUGE, BREAKER_TRANSITIONS as TRANSITIONS,
};

/// When a breaker opens and how long it stays open. One per dependency, from its config section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// The failed share of the window, in `(0, 1]`, at which the breaker opens.
    pub failure_rate: f64,
    /// How many of the most recent calls the breaker judges on. It also sets the fewest calls
    /// it will judge on at all: `window / 2` (at least one), so a handful of calls after a
    /// start or a close cannot open it alone.
    pub window: usize,
    /// How long an open breaker refuses calls before it lets a trial through. Long enough for
    /// a restarting dependency to come up; short enough that a recovered one is not
    /// bypassed for long.
    pub cooldown: Duration,
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// A circuit breaker around one dependency. Cloning shares it: every caller of the dependency
/// holds a clone of the same breaker.
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

/// In `closed`, no closed spell: the breaker is open or half-open.
const NOT_CLOSED: u64 = u64::MAX;

struct Inner {
    name: &'static str,
    settings: BreakerSettings,
    /// The number of the current closed spell, or [`NOT_CLOSED`]; written only under the lock,
    /// at each transition. Read without the lock by [`Breaker::try_acquire`], so that the
    /// common case (closed) takes no lock to hand out a permit; only settling one does.
    closed: AtomicU64,
    state: Mutex<State>,
}

struct State {
    phase: Phase,
    /// The number of the current (or last) closed spell; see [`Permit`]'s `kind`.
    spell: u64,
    window: Window,
}

enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// `trial_out`: a trial permit is out, so every other caller is refused.
    HalfOpen {
        trial_out: bool,
    },
}

impl Phase {
    fn state(&self) -> BreakerState {
        match self {
            Self::Closed => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// The outcomes of the last calls, oldest first (`true`: failed), and how many failed.
#[derive(Default)]
struct Window {
    failed: VecDeque<bool>,
    failures: usize,
}

impl Window {
    fn push(&mut self, failed: bool, size: usize) {
        if self.failed.len() == size && self.failed.pop_front() == Some(true) {
            self.failures -= 1;
        }
        self.failed.push_back(failed);
        self.failures += usize::from(failed);
    }

    fn trips(&self, settings: &BreakerSettings) -> bool {
        let calls = self.failed.len();
        calls >= (settings.window / 2).max(1)
            && self.failures as f64 >= settings.failure_rate * calls as f64
    }

    fn clear(&mut self) {
        self.failed.clear();
        self.failures = 0;
    }
}

impl Breaker {
    /// A closed breaker. `name` labels its metrics and log lines (`redis`, `rabbitmq`).
    ///
    /// # Panics
    ///
    /// When `settings.window` is 0 or `settings.failure_rate` is outside `(0, 1]`: settings
    /// are checked where they are read, so this is a programming error.
    pub fn new(name: &'static str, settings: BreakerSettings) -> Self {
        assert!(
            settings.window > 0,
            "breaker {name}: the window holds no calls"
        );
        assert!(
            settings.failure_rate > 0.0 && settings.failure_rate <= 1.0,
            "breaker {name}: failure_rate {} is outside (0, 1]",
            settings.failure_rate
        );
        metrics::gauge!(STATE_GAUGE, "breaker" => name).set(BreakerState::Closed.gauge());
        Self {
            inner: Arc::new(Inner {
                name,
                settings,
                closed: AtomicU64::new(0),
                state: Mutex::new(State {
                    phase: Phase::Closed,
                    spell: 0,
                    window: Window {
                        failed: VecDeque::with_capacity(settings.window),
                        failures: 0,
                    },
                }),
            }),
        }
    }

    /// A permit to call the dependency, or `None` if the breaker refuses the call: it is open,
    /// or half-open with its one trial already out. Take the fallback on `None`.
    pub fn try_acquire(&self) -> Option<Permit> {
        // Relaxed: the value publishes no other data, and settling re-checks under the lock.
        let spell = self.inner.closed.load(Ordering::Relaxed);
        if spell != NOT_CLOSED {
            return Some(self.permit(Kind::Closed { spell }));
        }
        let mut state = self.inner.lock();
        match state.phase {
            // Closed between the load and the lock.
            Phase::Closed => {
                let spell = state.spell;
                Some(self.permit(Kind::Closed { spell }))
            }
            Phase::Open { until } if Instant::now() < until => None,
            Phase::Open { .. } => {
                self.inner
                    .enter(&mut state, Phase::HalfOpen { trial_out: true });
                Some(self.permit(Kind::Trial))
            }
            Phase::HalfOpen { ref mut trial_out } => {
                if *trial_out {
                    None
                } else {
                    *trial_out = true;
                    Some(self.permit(Kind::Trial))
                }
            }
        }
    }

    /// The breaker's state as of its last transition. An open breaker whose cooldown has
    /// passed reads `Open` until the next [`Breaker::try_acquire`] turns it half-open.
    pub fn state(&self) -> BreakerState {
        self.inner.lock().phase.state()
    }

    fn permit(&self, kind: Kind) -> Permit {
        Permit {
            inner: self.inner.clone(),
            kind,
            settled: false,
        }
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, kind: Kind, failed: bool) {
        let mut state = self.lock();
        match (kind, &state.phase) {
            (Kind::Closed { spell }, Phase::Closed) if spell == state.spell => {
                state.window.push(failed, self.settings.window);
                if failed && state.window.trips(&self.settings) {
                    self.open(&mut state);
                }
            }
            (Kind::Trial, Phase::HalfOpen { .. }) if failed => self.open(&mut state),
            (Kind::Trial, Phase::HalfOpen { .. }) => self.enter(&mut state, Phase::Closed),
            // A call permitted before the breaker last opened, settled late: it describes the
            // dependency as it was then, so it must not count against the new spell.
            _ => {}
        }
    }

    fn release_trial(&self) {
        if let Phase::HalfOpen { trial_out } = &mut self.lock().phase {
            *trial_out = false;
        }
    }

    fn open(&self, state: &mut State) {
        let until = Instant::now() + self.settings.cooldown;
        self.enter(state, Phase::Open { until });
    }

    /// Moves to `phase`, under the lock, so that the gauge follows the transitions in order.
    fn enter(&self, state: &mut State, phase: Phase) {
        let from = state.phase.state();
        state.phase = phase;
        let to = state.phase.state();
        if to == BreakerState::Closed {
            state.spell += 1;
            state.window.clear();
            self.closed.store(state.spell, Ordering::Relaxed);
        } else {
            self.closed.store(NOT_CLOSED, Ordering::Relaxed);
        }
        let name = self.name;
        metrics::gauge!(STATE_GAUGE, "breaker" => name).set(to.gauge());
        metrics::counter!(TRANSITIONS, "breaker" => name, "to" => to.as_str()).increment(1);
        match (from, to) {
            (BreakerState::Closed, _) => tracing::warn!(
                breaker = name,
                failures = state.window.failures,
                calls = state.window.failed.len(),
                cooldown = ?self.settings.cooldown,
                "circuit breaker opened: refusing calls until the cooldown has passed"
            ),
            (_, BreakerState::Open) => tracing::warn!(
                breaker = name,
                cooldown = ?self.settings.cooldown,
                "circuit breaker trial call failed: open again"
            ),
            (_, BreakerState::HalfOpen) => tracing::info!(
                breaker = name,
                "circuit breaker half-open: letting one trial call through"
            ),
            (_, BreakerState::Closed) => tracing::info!(
                breaker = name,
                "circuit breaker closed: the trial call succeeded"
            ),
        }
    }
}

/// Permission to make one call. Settle it with [`Permit::success`] or [`Permit::failure`]; dropped
/// unsettled, it counts as neither.
#[must_use = "settle the permit with success() or failure(); dropped, it records nothing"]
pub struct Permit {
    inner: Arc<Inner>,
    /// A closed permit carries the number of the closed spell that issued it, so that a slow
    /// call permitted before the breaker opened, and settled after it closed again, cannot
    /// count against a dependency that has since recovered.
    kind: Kind,
    settled: bool,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Closed { spell: u64 },
    Trial,
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.settled = true;
        self.inner.settle(self.kind, false);
    }

    /// The call failed in a way that says the dependency is unwell (an error or a timeout
    /// talking to it, not a "not found").
    pub fn failure(mut self) {
        self.settled = true;
        self.inner.settle(self.kind, true);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled && matches!(self.kind, Kind::Trial) {
            self.inner.release_trial();
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.inner.name)
            .field("kind", &self.kind)
            .finish()
    }
}

#[cfg(test)]
mod tests;
