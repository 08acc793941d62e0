//! Rate limits shared by the fleet: a budget per client and policy, kept in Redis so that
//! every instance spends from the same one, and kept in process while Redis is away.
//!
//! # The algorithm: GCRA
//!
//! The generic cell rate algorithm (the ATM networks' leaky bucket as a virtual scheduler;
//! what redis-cell and `governor` implement) stores one number per client: the time at
//! which its budget would be full again. A request moves it one *emission interval*
//! (`period / count`) later, and is refused if that puts it more than a *window*
//! (`interval × burst`) ahead of now. So it allows `burst` requests at once and then a
//! steady `count` per `period`, with no counters to reset and no fixed windows whose edges
//! let a client double its rate; remaining budget, reset time and retry-after fall out of
//! the same number. `fleet.rs` runs it in Redis (one Lua script, one round trip, Redis's
//! clock); `local.rs` runs it in process with `governor` as the fallback.
//!
//! # When Redis is unavailable
//!
//! The check goes through the breaker around Redis that the cache owns (`Cache::redis`),
//! on the cache's pool, with `KEEL_REDIS_COMMAND_TIMEOUT` cut to what is left of the
//! request's deadline. An error, a timeout or an open breaker sends the check to the
//! in-process limiter with the same budgets: per instance instead of per fleet, never off.
//! Each such check counts in `keel_rate_limit_fallback_total{policy, reason}`.
//!
//! # Keys
//!
//! `{KEEL_REDIS_PREFIX}rl:{policy}:{key}`, where the key is a client address (an IPv6 client
//! counts by its /64: one host or one home network, which gets a /64 to itself, so that
//! rotating addresses inside it buys no extra budget), a user id, or a SHA-256 of an
//! email in lower case (the address itself stays out of Redis's key space).
//!
//! Which request spends which budget is the middleware's and the sign-in handler's
//! business (`middleware::rate_limit`, `api::tokens`); this module knows no HTTP.

mod decision;
mod fleet;
mod local;

use std::sync::Arc;

use metrics::counter;

use crate::cache::Cache;
use crate::config::{RateLimitConfig, RedisConfig};
use crate::telemetry::metrics::names;

pub use crate::config::{Budget, RateLimitPolicy as Policy};
pub use decision::{Decision, Key, Source};

/// The limiter. Cloning is an `Arc` increment: every route, and the sign-in handler,
/// spend from the same budgets.
#[derive(Clone)]
pub struct Limiter(Arc<Inner>);

struct Inner {
    config: RateLimitConfig,
    fleet: fleet::Fleet,
    local: local::Local,
}

impl Limiter {
    /// Builds the limiter on the cache's Redis pool and breaker, and starts its counters at
    /// zero for every policy (and fallback reason): a dashboard sees "nothing refused"
    /// rather than no data, and `rate()` counts the first refusal.
    pub fn new(config: &RateLimitConfig, redis: &RedisConfig, cache: &Cache) -> Self {
        for policy in Policy::ALL {
            counter!(names::RATE_LIMITED, "policy" => policy.as_str()).increment(0);
            for reason in fleet::Unavailable::ALL {
                counter!(
                    names::RATE_LIMIT_FALLBACK,
                    "policy" => policy.as_str(),
                    "reason" => reason.as_str()
                )
                .increment(0);
            }
        }
        Self(Arc::new(Inner {
            config: config.clone(),
            fleet: fleet::Fleet::new(cache.redis(), &redis.prefix, redis.command_timeout),
            local: local::Local::new(config),
        }))
    }

    pub fn budget(&self, policy: Policy) -> Budget {
        self.0.config.budget(policy)
    }

    /// Spends one request of `key`'s budget under `policy`: in Redis, or in process when
    /// Redis is unavailable.
    pub async fn check(&self, policy: Policy, key: &Key) -> Decision {
        let budget = self.budget(policy);
        let decision = match self.0.fleet.check(policy, budget, key).await {
            Ok(decision) => decision,
            Err(reason) => {
                counter!(
                    names::RATE_LIMIT_FALLBACK,
                    "policy" => policy.as_str(),
                    "reason" => reason.as_str()
                )
                .increment(1);
                self.0.local.check(policy, key)
            }
        };
        if !decision.allowed {
            counter!(names::RATE_LIMITED, "policy" => policy.as_str()).increment(1);
        }
        decision
    }

    /// The Redis key of a budget, for tests and operators looking at Redis.
    pub fn redis_key(&self, policy: Policy, key: &Key) -> String {
        self.0.fleet.key(policy, key)
    }
}
