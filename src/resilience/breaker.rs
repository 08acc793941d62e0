//! A circuit breaker: when too many of a dependency's recent calls fail or crawl, refuse
//! calls to it for a while, then let a few probes decide whether it is back.
//!
//! # How it decides (Resilience4j's semantics, count-based window)
//!
//! - **Closed** (normal): every call goes through, and the breaker keeps the outcomes of the
//!   last `window` calls. Once the window holds at least `min_calls`, it opens when the
//!   failed share reaches `failure_rate` **or** the slow share reaches `slow_call_rate`. A
//!   call is slow when it took longer than `slow_call_duration` from its permit to its
//!   outcome, whether it then succeeded or failed. The minimum is there so that the first
//!   failure after a start does not open it: a rate over two calls says nothing.
//! - **Open**: every call is refused at once, for `cooldown`.
//! - **Half-open**: after the cooldown, `half_open_calls` probes go through and the rest are
//!   still refused. Once every probe has completed, the breaker judges them alone: both
//!   shares under their thresholds close it with an empty window; either at or over its
//!   threshold opens it for another full cooldown. A handful of probes rather than a flood:
//!   a dependency that is just coming back gets a few calls, not everyone who queued up
//!   while it was away; and more than one, so that one lucky call does not close it.
//!
//! The window counts calls, not seconds, so it judges on the same number of calls at any
//! traffic. The cost is that at low traffic an old failure stays in the window until
//! `window` newer calls push it out.
//!
//! # A permit, not a wrapped call
//!
//! [`Breaker::try_acquire`] hands out a [`Permit`]; the caller settles it with
//! [`Permit::success`] or [`Permit::failure`]. The caller decides what a failure is (a Redis
//! timeout is; a cache miss is not, nor an SMTP server refusing an address), and the
//! guarded call can be anything: a future, a pipeline, a connection checkout, a batch of
//! publishes. The call is timed from the permit to its settlement, on tokio's clock (so
//! tests can pause and advance it). A permit dropped unsettled counts as neither, since a
//! call cancelled by a departed client or a deadline says nothing about the dependency; a
//! dropped probe frees its place for the next caller. A probe that never settles would hold
//! its place for good (Resilience4j has the same property): every call guarded here has a
//! timeout of its own.
//!
//! # The `circuit_breaker` fix flag
//!
//! This module sits below the flags (`crate::flags`), so it cannot read them; instead every
//! breaker built [`with_switch`](Breaker::with_switch) follows a shared [`BreakerSwitch`],
//! which the flags layer sets from the flag (`Flags::breaker_switch`). While the switch is
//! off, a breaker closes, hands every caller a permit and records nothing: a dead dependency
//! is called anyway, each call waiting for its timeout (the workshop's "before"). Calls are
//! still counted by outcome, so the dashboard shows what the breaker would have seen.
//!
//! # Why hand-written
//!
//! tower has no circuit-breaker layer, and the calls guarded here are not tower `Service`s.
//! The `failsafe` crate lets every call through while half-open, has no slow-call rule, and
//! reads std's clock, which tokio's paused time in tests does not move. What is needed fits
//! in this file.
//!
//! # Observability
//!
//! `keel_breaker_state{breaker}` (0 closed, 1 half-open, 2 open),
//! `keel_breaker_transitions_total{breaker, to}` and `keel_breaker_calls_total{breaker,
//! outcome}` (`success`, `failure`, `slow`: succeeded, but slowly; `rejected`: refused by the
//! breaker; a slow failure counts as `failure`). Each transition is logged once (warn when
//! it opens, info otherwise).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

pub use crate::config::BreakerSettings;
use crate::telemetry::metrics::names::{
    BREAKER_CALLS as CALLS, BREAKER_STATE as STATE_GAUGE, BREAKER_TRANSITIONS as TRANSITIONS,
};

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

/// Whether the breakers that share it act on what they see: the `circuit_breaker` fix flag,
/// handed down to the layers below the flags. On by default. Cloning shares it.
#[derive(Debug, Clone)]
pub struct BreakerSwitch(Arc<AtomicBool>);

impl Default for BreakerSwitch {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl BreakerSwitch {
    /// On: breakers open and refuse calls. Off: they let every call through (module doc).
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A circuit breaker around one dependency. Cloning shares it: every caller of the dependency
/// holds a clone of the same breaker.
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
    switch: BreakerSwitch,
}

/// In `closed`: not closed, the breaker is open or half-open.
const NOT_CLOSED: u64 = u64::MAX;

struct Inner {
    name: &'static str,
    settings: BreakerSettings,
    /// The current epoch while closed, else [`NOT_CLOSED`]; written only under the lock, at
    /// each transition. Read without the lock by [`Breaker::try_acquire`], so that the
    /// common case (closed) takes no lock to hand out a permit; only settling one does.
    closed: AtomicU64,
    state: Mutex<State>,
}

struct State {
    phase: Phase,
    /// Advanced at every transition; a permit carries the epoch that issued it, so that a
    /// call permitted before a transition and settled after it does not count in a phase
    /// that it says nothing about.
    epoch: u64,
    /// The outcomes the breaker judges: the last `window` calls while closed, the probes
    /// while half-open. Empty while open.
    window: Window,
}

enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// `out`: probes handed out and not yet settled (or dropped).
    HalfOpen {
        out: usize,
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

/// One settled call.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    failed: bool,
    slow: bool,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self { failed: true, .. } => "failure",
            Self { slow: true, .. } => "slow",
            _ => "success",
        }
    }
}

/// The outcomes of the last calls, oldest first, and how many failed and how many were slow.
#[derive(Default)]
struct Window {
    calls: VecDeque<Outcome>,
    failures: usize,
    slow: usize,
}

impl Window {
    fn push(&mut self, outcome: Outcome, size: usize) {
        if self.calls.len() == size
            && let Some(old) = self.calls.pop_front()
        {
            self.failures -= usize::from(old.failed);
            self.slow -= usize::from(old.slow);
        }
        self.calls.push_back(outcome);
        self.failures += usize::from(outcome.failed);
        self.slow += usize::from(outcome.slow);
    }

    fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether either share is at or over its threshold.
    fn over(&self, settings: &BreakerSettings) -> bool {
        let calls = self.calls.len() as f64;
        self.failures as f64 >= settings.failure_rate * calls
            || self.slow as f64 >= settings.slow_call_rate * calls
    }

    fn clear(&mut self) {
        self.calls.clear();
        self.failures = 0;
        self.slow = 0;
    }
}

impl Breaker {
    /// A closed breaker that always acts (no switch: see [`Breaker::with_switch`]). `name`
    /// labels its metrics and log lines (`redis`, `rabbitmq`, `smtp`, `postgres`).
    ///
    /// # Panics
    ///
    /// When a setting is out of its range (a rate outside `(0, 1]`, an empty window, a
    /// minimum above the window, no half-open calls): settings are checked where they are
    /// read, so this is a programming error.
    pub fn new(name: &'static str, settings: BreakerSettings) -> Self {
        let share = |rate: f64| rate > 0.0 && rate <= 1.0;
        assert!(
            share(settings.failure_rate) && share(settings.slow_call_rate),
            "breaker {name}: a rate is outside (0, 1]: {settings:?}"
        );
        assert!(
            settings.min_calls >= 1 && settings.min_calls <= settings.window,
            "breaker {name}: min_calls must be in 1..=window: {settings:?}"
        );
        assert!(
            settings.half_open_calls >= 1,
            "breaker {name}: half-open lets no call through"
        );
        metrics::gauge!(STATE_GAUGE, "breaker" => name).set(BreakerState::Closed.gauge());
        Self {
            inner: Arc::new(Inner {
                name,
                settings,
                closed: AtomicU64::new(0),
                state: Mutex::new(State {
                    phase: Phase::Closed,
                    epoch: 0,
                    window: Window {
                        calls: VecDeque::with_capacity(settings.window),
                        ..Window::default()
                    },
                }),
            }),
            switch: BreakerSwitch::default(),
        }
    }

    /// This breaker, following `switch` (the `circuit_breaker` flag) instead of always acting.
    #[must_use]
    pub fn with_switch(mut self, switch: &BreakerSwitch) -> Self {
        self.switch = switch.clone();
        self
    }

    /// A permit to call the dependency, or `None` if the breaker refuses the call: it is open,
    /// or half-open with all its probes out. Take the fallback on `None`.
    pub fn try_acquire(&self) -> Option<Permit> {
        if !self.switch.is_on() {
            self.stand_down();
            return Some(self.permit(None));
        }
        // Relaxed: the value publishes no other data, and settling re-checks under the lock.
        let epoch = self.inner.closed.load(Ordering::Relaxed);
        if epoch != NOT_CLOSED {
            return Some(self.permit(Some(epoch)));
        }
        let mut guard = self.inner.lock();
        let state = &mut *guard;
        let permitted = match &mut state.phase {
            // Closed between the load and the lock.
            Phase::Closed => true,
            Phase::Open { until } if Instant::now() < *until => false,
            Phase::Open { .. } => {
                self.inner.enter(state, Phase::HalfOpen { out: 1 });
                tracing::info!(
                    breaker = self.inner.name,
                    probes = self.inner.settings.half_open_calls,
                    "circuit breaker half-open: letting probe calls through"
                );
                true
            }
            Phase::HalfOpen { out } => {
                let free = *out + state.window.len() < self.inner.settings.half_open_calls;
                *out += usize::from(free);
                free
            }
        };
        let epoch = state.epoch;
        drop(guard);
        if permitted {
            Some(self.permit(Some(epoch)))
        } else {
            metrics::counter!(CALLS, "breaker" => self.inner.name, "outcome" => "rejected")
                .increment(1);
            None
        }
    }

    /// The breaker's state as of its last transition. An open breaker whose cooldown has
    /// passed reads `Open` until the next [`Breaker::try_acquire`] turns it half-open. With
    /// its switch off, a breaker is closed.
    pub fn state(&self) -> BreakerState {
        if !self.switch.is_on() {
            self.stand_down();
        }
        self.inner.lock().phase.state()
    }

    /// The settings it judges by.
    pub fn settings(&self) -> &BreakerSettings {
        &self.inner.settings
    }

    /// Switched off: close, so that what the breaker saw before is forgotten and what it
    /// reports ([`Breaker::state`], readiness, the gauge) is what it does.
    fn stand_down(&self) {
        if self.inner.closed.load(Ordering::Relaxed) != NOT_CLOSED {
            return;
        }
        let mut state = self.inner.lock();
        if !matches!(state.phase, Phase::Closed) {
            self.inner.enter(&mut state, Phase::Closed);
            tracing::info!(
                breaker = self.inner.name,
                "circuit breaker closed and bypassed: the circuit_breaker flag is off"
            );
        }
    }

    fn permit(&self, epoch: Option<u64>) -> Permit {
        Permit {
            inner: self.inner.clone(),
            epoch,
            started: Instant::now(),
            settled: false,
        }
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .field("switch", &self.switch.is_on())
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, epoch: Option<u64>, outcome: Outcome) {
        metrics::counter!(CALLS, "breaker" => self.name, "outcome" => outcome.label()).increment(1);
        // A bypassing permit (the switch was off) records nothing.
        let Some(epoch) = epoch else { return };
        let mut guard = self.lock();
        let state = &mut *guard;
        // A call permitted before the last transition, settled late: it describes the
        // dependency as it was then, so it must not count in the new phase.
        if epoch != state.epoch {
            return;
        }
        let settings = &self.settings;
        match &mut state.phase {
            Phase::Closed => {
                state.window.push(outcome, settings.window);
                if state.window.len() >= settings.min_calls && state.window.over(settings) {
                    self.open(state);
                }
            }
            Phase::HalfOpen { out } => {
                *out -= 1;
                state.window.push(outcome, settings.half_open_calls);
                if state.window.len() < settings.half_open_calls {
                    return;
                }
                if state.window.over(settings) {
                    self.open(state);
                } else {
                    self.enter(state, Phase::Closed);
                    tracing::info!(
                        breaker = self.name,
                        probes = settings.half_open_calls,
                        "circuit breaker closed: the probes succeeded in time"
                    );
                }
            }
            // No permit is issued in this epoch while open.
            Phase::Open { .. } => {}
        }
    }

    /// A permit dropped unsettled: a probe's place goes to the next caller.
    fn release(&self, epoch: u64) {
        let mut state = self.lock();
        if epoch != state.epoch {
            return;
        }
        if let Phase::HalfOpen { out } = &mut state.phase {
            *out -= 1;
        }
    }

    /// Opens for a full cooldown, from closed or from half-open.
    fn open(&self, state: &mut State) {
        let (calls, failures, slow) =
            (state.window.len(), state.window.failures, state.window.slow);
        let from = state.phase.state();
        let until = Instant::now() + self.settings.cooldown;
        self.enter(state, Phase::Open { until });
        let what = if from == BreakerState::Closed {
            "circuit breaker opened: refusing calls until the cooldown has passed"
        } else {
            "circuit breaker probes failed or were slow: open again"
        };
        tracing::warn!(
            breaker = self.name,
            calls,
            failures,
            slow,
            cooldown = ?self.settings.cooldown,
            "{what}"
        );
    }

    /// Moves to `phase` with an empty window, under the lock, so that the gauge follows the
    /// transitions in order.
    fn enter(&self, state: &mut State, phase: Phase) {
        state.phase = phase;
        state.epoch += 1;
        state.window.clear();
        let to = state.phase.state();
        let closed = if to == BreakerState::Closed {
            state.epoch
        } else {
            NOT_CLOSED
        };
        self.closed.store(closed, Ordering::Relaxed);
        let name = self.name;
        metrics::gauge!(STATE_GAUGE, "breaker" => name).set(to.gauge());
        metrics::counter!(TRANSITIONS, "breaker" => name, "to" => to.as_str()).increment(1);
    }
}

/// Permission to make one call. Settle it with [`Permit::success`] or [`Permit::failure`];
/// dropped unsettled, it counts as neither.
#[must_use = "settle the permit with success() or failure(); dropped, it records nothing"]
pub struct Permit {
    inner: Arc<Inner>,
    /// The epoch that issued it (see [`State::epoch`]); `None` when the breaker's switch was
    /// off, and the permit records nothing but its outcome's count.
    epoch: Option<u64>,
    /// When the call was permitted: its duration decides whether it was slow.
    started: Instant,
    settled: bool,
}

impl Permit {
    /// The call succeeded (it may still have been slow).
    pub fn success(self) {
        self.settle(false);
    }

    /// The call failed in a way that says the dependency is unwell (an error or a timeout
    /// talking to it, not a "not found").
    pub fn failure(self) {
        self.settle(true);
    }

    fn settle(mut self, failed: bool) {
        self.settled = true;
        let slow = self.started.elapsed() > self.inner.settings.slow_call_duration;
        self.inner.settle(self.epoch, Outcome { failed, slow });
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled
            && let Some(epoch) = self.epoch
        {
            self.inner.release(epoch);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.inner.name)
            .field("epoch", &self.epoch)
            .finish()
    }
}

#[cfg(test)]
mod tests;
