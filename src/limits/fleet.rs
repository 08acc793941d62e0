//! The fleet's budgets, in Redis: one Lua script that runs the GCRA on a key, atomically and
//! on the server's clock, in one round trip.
//!
//! # The script
//!
//! The key holds one number, the budget's *theoretical arrival time* (TAT, in microseconds
//! of Redis's clock): when the budget would be full again if nobody asked any more. A request
//! at `now` moves it to `max(TAT, now) + interval`, and is allowed if that lies at most a
//! `window` (`interval × burst`) ahead of `now`. A refused request moves nothing, so a client
//! that keeps knocking while refused does not push its own retry further away. The key
//! expires when the TAT passes: a full budget and a missing key are the same thing, so
//! Redis holds keys only for clients seen within their last window.
//!
//! Why the server's clock (`TIME`) rather than each instance's: the instances' clocks
//! disagree by milliseconds to seconds, and a TAT written by a fast clock would look far in
//! the future to a slow one; one clock makes the budget one budget. The script writes with
//! `SET … PX`, and Redis 7 replicates a script's effects rather than the script, so reading
//! the clock inside it is safe with replicas.
//!
//! Lua numbers are doubles: microseconds since 1970 (~1.8e15) are exact below 2^53 (~9e15),
//! but `tostring` would print them as `1.8e+15`, so the script formats them itself.
//!
//! The workshop's `redis` fault switch (`resilience::fault`) acts once per check, inside the
//! breaker's permit and before the script: an injected error is a Redis failure (the check
//! falls back to the in-process limiter), an injected latency a slow call.
//!
//! One declared key per call, so the script also runs on Redis Cluster. `EVALSHA` through
//! redis-rs's `Script`, which loads the script and retries when the server answers
//! `NOSCRIPT` (a restarted or flushed Redis).

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::Script;
use tracing::Instrument as _;

use super::decision::{Decision, Key, Source};
use crate::cache::pool::{Conn, Pool};
use crate::config::{Budget, RateLimitPolicy as Policy};
use crate::resilience::{Breaker, Dependency, Faults, deadline};

/// `KEYS[1]`: the budget's key. `ARGV[1]`: the emission interval in µs; `ARGV[2]`: the
/// burst. Returns `{allowed (0|1), remaining, reset µs, retry-after µs}`.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local window = interval * tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next_tat = tat + interval
local allowed = next_tat - now <= window
local retry = 0
if allowed then
  tat = next_tat
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
else
  retry = next_tat - window - now
end
return {allowed and 1 or 0, math.floor((now + window - tat) / interval), tat - now, retry}
"#;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

/// Why Redis gave no decision; the metric's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unavailable {
    /// The breaker around Redis is open: Redis was not asked.
    BreakerOpen,
    /// Every pooled connection was busy for `KEEL_REDIS_POOL_WAIT_TIMEOUT`.
    PoolBusy,
    /// No answer within the command timeout, or what was left of the request's deadline.
    Timeout,
    /// An error: connecting, a dropped connection, an error reply.
    Redis,
}

impl Unavailable {
    pub(super) const ALL: [Unavailable; 4] = [
        Self::BreakerOpen,
        Self::PoolBusy,
        Self::Timeout,
        Self::Redis,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::BreakerOpen => "breaker_open",
            Self::PoolBusy => "pool_busy",
            Self::Timeout => "timeout",
            Self::Redis => "redis",
        }
    }
}

/// The Redis side: the cache's pool, breaker and fault switches (`Cache::redis`), and the
/// key prefix.
pub(super) struct Fleet {
    pool: Pool,
    breaker: Breaker,
    faults: Faults,
    /// `KEEL_REDIS_PREFIX` + `rl:`.
    prefix: String,
    /// `KEEL_REDIS_COMMAND_TIMEOUT`.
    timeout: Duration,
}

impl Fleet {
    pub(super) fn new(
        (pool, breaker, faults): (Pool, Breaker, Faults),
        prefix: &str,
        timeout: Duration,
    ) -> Self {
        Self {
            pool,
            breaker,
            faults,
            prefix: format!("{prefix}rl:"),
            timeout,
        }
    }

    /// The Redis key of a client's budget under a policy.
    pub(super) fn key(&self, policy: Policy, key: &Key) -> String {
        format!("{}{}:{}", self.prefix, policy.as_str(), key.as_str())
    }

    /// Spends one request of `key`'s budget, if there is one left.
    pub(super) async fn check(
        &self,
        policy: Policy,
        budget: Budget,
        key: &Key,
    ) -> Result<Decision, Unavailable> {
        let Some(permit) = self.breaker.try_acquire() else {
            return Err(Unavailable::BreakerOpen);
        };
        let name = self.key(policy, key);
        let span = tracing::debug_span!(
            "redis.command",
            otel.name = "rate_limit.check",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "redis",
            db.operation.name = "EVALSHA",
        );
        // Outside the command's timeout, like the cache's (`resilience::fault`).
        let injected = self
            .faults
            .inject(Dependency::Redis)
            .instrument(span.clone())
            .await;
        if let Err(fault) = injected {
            tracing::debug!(error = %fault, "rate-limit script failed");
            span.record("otel.status_code", "ERROR");
            permit.failure();
            return Err(Unavailable::Redis);
        }
        // Cut to what is left of the request's deadline: a limit is not worth a request
        // that has already run out of time.
        let timeout = deadline::budget(self.timeout);
        let call = self.eval(&name, budget).instrument(span.clone());
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) if timeout < self.timeout => {
                // The request's deadline, not Redis, ran out: that says nothing about
                // Redis, so the permit is dropped unsettled.
                span.record("otel.status_code", "ERROR");
                return Err(Unavailable::Timeout);
            }
            Err(_) => Err(Unavailable::Timeout),
        };
        match result.and_then(|reply| decision(policy, budget, &reply).ok_or(Unavailable::Redis)) {
            Ok(decision) => {
                permit.success();
                Ok(decision)
            }
            // Every connection busy: this instance's congestion, not Redis failing.
            Err(Unavailable::PoolBusy) => {
                span.record("otel.status_code", "ERROR");
                Err(Unavailable::PoolBusy)
            }
            Err(reason) => {
                span.record("otel.status_code", "ERROR");
                permit.failure();
                Err(reason)
            }
        }
    }

    /// One run of the script on a pooled connection.
    async fn eval(&self, name: &str, budget: Budget) -> Result<Vec<i64>, Unavailable> {
        let mut conn = Conn::get(&self.pool).await.map_err(|e| match e {
            deadpool::managed::PoolError::Timeout(deadpool::managed::TimeoutType::Wait) => {
                Unavailable::PoolBusy
            }
            _ => Unavailable::Redis,
        })?;
        let mut invocation = SCRIPT.key(name);
        invocation.arg(micros(budget.interval())).arg(budget.burst);
        invocation
            .invoke_async::<Vec<i64>>(&mut *conn)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "rate-limit script failed");
                let reason = if e.is_timeout() {
                    Unavailable::Timeout
                } else {
                    Unavailable::Redis
                };
                conn.failed(&e);
                reason
            })
    }
}

/// The script's reply as a decision; `None` for a reply of another shape.
fn decision(policy: Policy, budget: Budget, reply: &[i64]) -> Option<Decision> {
    let &[allowed, remaining, reset, retry] = reply else {
        return None;
    };
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    Some(Decision {
        policy,
        budget,
        allowed: allowed == 1,
        remaining: u64::try_from(remaining).unwrap_or(0),
        reset: us(reset),
        retry_after: us(retry),
        source: Source::Fleet,
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_of_another_shape_is_no_decision() {
        let budget = Budget {
            count: 10,
            period: Duration::from_secs(60),
            burst: 10,
        };
        assert!(decision(Policy::User, budget, &[1, 2, 3]).is_none());
        let d = decision(Policy::User, budget, &[0, 0, 60_000_000, 5_500_000]).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reset, Duration::from_secs(60));
        assert_eq!(d.retry_after, Duration::from_millis(5500));
        assert_eq!(d.source, Source::Fleet);
    }
}
