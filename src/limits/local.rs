//! The fallback while Redis is unavailable: the same budgets, kept in this process by
//! `governor` (the same GCRA, on the process's monotonic clock), so that the limit degrades
//! to per-instance instead of off. With N instances a client gets up to N budgets during an
//! outage — generous, but bounded, where failing open would be unbounded and failing closed
//! would turn a Redis outage into a full one.
//!
//! # Bounded memory
//!
//! A keyed limiter keeps a state per client it has seen, and anonymous clients are
//! addresses: a flood from rotating addresses would grow it for as long as Redis is down.
//! Two bounds:
//!
//! * every `KEEL_RATE_LIMIT_FALLBACK_SWEEP_INTERVAL`, the first check after the interval
//!   drops the states whose budget is full again (`retain_recent`: indistinguishable from
//!   a client never seen) and gives the memory back (`shrink_to_fit`), so the limiter holds
//!   roughly the clients of the last window;
//! * a policy's limiter that reaches `KEEL_RATE_LIMIT_FALLBACK_MAX_KEYS` clients between two
//!   sweeps is swept at once, and if that frees less than a tenth it is replaced by an empty one:
//!   every client starts again from a full budget, which under such a flood is the lesser
//!   harm (the alternative, refusing every new client, locks out everyone).
//!
//! No background task: while Redis answers the limiters are never touched and hold nothing,
//! and while it does not, the checks themselves drive the sweeps. governor is built without
//! `dashmap` (shared/deps.md), so each policy's states sit behind one mutex: contention that
//! only an outage pays.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference as _};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use metrics::gauge;

use super::decision::{Decision, Key, Source};
use crate::config::RateLimitConfig;
use crate::config::{Budget, RateLimitPolicy as Policy};
use crate::telemetry::metrics::names;

type Keyed<C> = RateLimiter<String, HashMapStateStore<String>, C, StateInformationMiddleware>;

/// One limiter per policy, with the bounds of the module doc.
pub(super) struct Local<C: Clock = DefaultClock> {
    clock: C,
    /// Indexed by `Policy::index`; replaced whole when one overflows.
    limiters: Vec<RwLock<Arc<Keyed<C>>>>,
    budgets: Vec<Budget>,
    max_keys: usize,
    sweep_interval: Duration,
    last_sweep: Mutex<C::Instant>,
}

impl Local<DefaultClock> {
    pub(super) fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Local<C> {
    pub(super) fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        let budgets: Vec<Budget> = Policy::ALL.iter().map(|&p| config.budget(p)).collect();
        Self {
            limiters: budgets
                .iter()
                .map(|&b| RwLock::new(Arc::new(new_limiter(b, clock.clone()))))
                .collect(),
            budgets,
            max_keys: config.fallback_max_keys,
            sweep_interval: config.fallback_sweep_interval,
            last_sweep: Mutex::new(clock.now()),
            clock,
        }
    }

    /// Spends one request of `key`'s budget in this process, if there is one left.
    pub(super) fn check(&self, policy: Policy, key: &Key) -> Decision {
        self.sweep_if_due();
        let limiter = self.limiter(policy);
        if limiter.len() >= self.max_keys {
            self.overflow(policy, &limiter);
        }
        let budget = self.budgets[policy.index()];
        let interval = budget.interval();
        let outcome = self.limiter(policy).check_key(&key.as_str().to_owned());
        let (allowed, remaining, reset, retry_after) = match outcome {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // Accurate to one interval: governor does not expose the TAT itself.
                let reset = interval * budget.burst.saturating_sub(remaining);
                (true, u64::from(remaining), reset, Duration::ZERO)
            }
            Err(not_until) => {
                let retry = not_until.wait_time_from(self.clock.now());
                let reset = retry + interval * budget.burst.saturating_sub(1);
                (false, 0, reset, retry)
            }
        };
        Decision {
            policy,
            budget,
            allowed,
            remaining,
            reset,
            retry_after,
            source: Source::Local,
        }
    }

    /// How many clients a policy's limiter holds.
    #[cfg(test)]
    fn len(&self, policy: Policy) -> usize {
        self.limiter(policy).len()
    }

    fn limiter(&self, policy: Policy) -> Arc<Keyed<C>> {
        self.limiters[policy.index()]
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The periodic sweep: one caller per interval runs it, for every policy.
    fn sweep_if_due(&self) {
        let now = self.clock.now();
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if Duration::from(now.duration_since(*last)) < self.sweep_interval {
                return;
            }
            *last = now;
        }
        for policy in Policy::ALL {
            let limiter = self.limiter(policy);
            limiter.retain_recent();
            limiter.shrink_to_fit();
            gauge!(names::RATE_LIMIT_FALLBACK_KEYS, "policy" => policy.as_str())
                .set(limiter.len() as f64);
        }
    }

    /// A limiter at its ceiling between sweeps: sweep it now, and start it afresh if that
    /// does not make room for a tenth more. (A sweep that freed a handful would leave the
    /// next check at the ceiling again: a scan of every client per request.)
    fn overflow(&self, policy: Policy, limiter: &Keyed<C>) {
        limiter.retain_recent();
        if limiter.len() <= self.max_keys - self.max_keys / 10 {
            return;
        }
        tracing::warn!(
            policy = policy.as_str(),
            max_keys = self.max_keys,
            "the in-process rate-limit fallback is full of active clients; starting it afresh"
        );
        let fresh = Arc::new(new_limiter(
            self.budgets[policy.index()],
            self.clock.clone(),
        ));
        *self.limiters[policy.index()]
            .write()
            .unwrap_or_else(|e| e.into_inner()) = fresh;
    }
}

fn new_limiter<C: Clock>(budget: Budget, clock: C) -> Keyed<C> {
    // Both hold by construction: the configuration refuses an interval under a
    // microsecond and a burst of zero.
    let quota = Quota::with_period(budget.interval())
        .expect("a budget's interval is at least a microsecond")
        .allow_burst(NonZeroU32::new(budget.burst).unwrap_or(NonZeroU32::MIN));
    RateLimiter::hashmap_with_clock(quota, clock).with_middleware::<StateInformationMiddleware>()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::config::{Config, Environment};

    fn config(pairs: &[(&str, &str)]) -> RateLimitConfig {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&vars, Environment::Dev)
            .expect("a valid configuration")
            .rate_limit
    }

    fn ip(n: u32) -> Key {
        Key::ip(std::net::IpAddr::from(n.to_be_bytes()))
    }

    #[test]
    fn a_budget_allows_its_burst_then_one_per_interval() {
        let clock = FakeRelativeClock::default();
        let local = Local::with_clock(
            &config(&[("KEEL_RATE_LIMIT_TOKEN_IP", "3/3s")]),
            clock.clone(),
        );
        let key = ip(1);

        let remaining: Vec<u64> = (0..3)
            .map(|_| local.check(Policy::TokenIp, &key))
            .inspect(|d| assert!(d.allowed))
            .map(|d| d.remaining)
            .collect();
        let refused = local.check(Policy::TokenIp, &key);
        clock.advance(Duration::from_secs(1));
        let again = local.check(Policy::TokenIp, &key);

        assert_eq!(remaining, [2, 1, 0]);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(refused.reset, Duration::from_secs(3));
        assert_eq!(refused.source, Source::Local);
        assert!(
            again.allowed,
            "one request's worth came back after an interval"
        );
        assert_eq!(again.remaining, 0);
        assert!(local.check(Policy::TokenIp, &ip(2)).allowed, "per key");
    }

    #[test]
    fn sweeps_drop_clients_whose_budget_is_full_again() {
        let clock = FakeRelativeClock::default();
        let local = Local::with_clock(
            &config(&[
                ("KEEL_RATE_LIMIT_ANON", "10/1s"),
                ("KEEL_RATE_LIMIT_FALLBACK_SWEEP_INTERVAL", "5s"),
            ]),
            clock.clone(),
        );
        for n in 0..50 {
            local.check(Policy::Anon, &ip(n));
        }
        assert_eq!(local.len(Policy::Anon), 50);

        clock.advance(Duration::from_secs(5));
        local.check(Policy::Anon, &ip(1000));

        assert_eq!(
            local.len(Policy::Anon),
            1,
            "only the client seen this window"
        );
    }

    #[test]
    fn a_limiter_at_its_ceiling_starts_afresh_rather_than_grow() {
        let clock = FakeRelativeClock::default();
        let local = Local::with_clock(
            &config(&[
                ("KEEL_RATE_LIMIT_ANON", "1/1h"),
                ("KEEL_RATE_LIMIT_FALLBACK_MAX_KEYS", "100"),
            ]),
            clock,
        );
        for n in 0..99 {
            assert!(local.check(Policy::Anon, &ip(n)).allowed);
        }
        assert!(!local.check(Policy::Anon, &ip(0)).allowed);
        local.check(Policy::Anon, &ip(99));
        assert_eq!(local.len(Policy::Anon), 100);

        local.check(Policy::Anon, &ip(100));

        assert_eq!(local.len(Policy::Anon), 1, "bounded by the ceiling");
        assert!(
            local.check(Policy::Anon, &ip(0)).allowed,
            "a fresh limiter: every client starts from a full budget"
        );
    }
}
