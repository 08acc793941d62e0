//! The rate limits: a budget per policy, and the bounds of the in-process fallback.
//!
//! A budget is written `COUNT/PERIOD` (`10/1m`, `100/1s`): `COUNT` requests come back every
//! `PERIOD`, evenly (one every `PERIOD / COUNT`: the GCRA's emission interval), and
//! `…_BURST` of them may be spent at once on a full budget (by default `COUNT`). So `10/1m`
//! lets a client sign in ten times at once and then once every six seconds; `100/1s` with
//! a burst of 200 lets a user's client fire 200 requests at once and then 100 a second.
//! `crate::limits` enforces them; shared/api.md gives the defaults.

use std::fmt;
use std::time::Duration;

use super::vars::{ConfigError, Vars, error};

/// Who a budget is for, and on which requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimitPolicy {
    /// `POST /v1/auth/token`, per client IP: one address guessing passwords.
    TokenIp,
    /// `POST /v1/auth/token`, per email: many addresses guessing one account's password
    /// (credential stuffing from a botnet).
    TokenEmail,
    /// `POST /v1/users`, per client IP: one address creating accounts.
    SignupIp,
    /// Every other request with a valid access token, per user.
    User,
    /// Every other request without a valid access token, per client IP.
    Anon,
}

impl RateLimitPolicy {
    pub const ALL: [RateLimitPolicy; 5] = [
        Self::TokenIp,
        Self::TokenEmail,
        Self::SignupIp,
        Self::User,
        Self::Anon,
    ];

    /// The policy's name: in `RateLimit-Policy` and `RateLimit`, in Redis keys and in
    /// metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenIp => "token-ip",
            Self::TokenEmail => "token-email",
            Self::SignupIp => "signup-ip",
            Self::User => "user",
            Self::Anon => "anon",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RateLimitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One budget: `count` requests per `period`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Budget {
    /// The GCRA's emission interval: one request's worth of budget comes back every
    /// `interval`.
    pub fn interval(&self) -> Duration {
        self.period / self.count
    }

    /// How long a spent budget takes to fill up again: the `w` that goes with `q = burst`
    /// in `RateLimit-Policy`.
    pub fn window(&self) -> Duration {
        self.interval() * self.burst
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// `KEEL_RATE_LIMIT_TOKEN_IP`, `_TOKEN_EMAIL`, `_SIGNUP_IP`, `_USER`, `_ANON` (each
    /// with a `_BURST`): see [`RateLimitPolicy`]. Indexed by [`RateLimitPolicy::index`].
    budgets: [Budget; RateLimitPolicy::ALL.len()],
    /// `KEEL_RATE_LIMIT_FALLBACK_MAX_KEYS`: how many clients the in-process fallback keeps
    /// a budget for, per policy, while Redis is unavailable. Past it, budgets that are full
    /// again are dropped, and if that frees less than a tenth, all of them (a client starts
    /// from a full budget): memory stays bounded under an address-rotating flood. About
    /// 100 bytes a client: the default is ~10 MB per policy at worst.
    pub fallback_max_keys: usize,
    /// `KEEL_RATE_LIMIT_FALLBACK_SWEEP_INTERVAL`: how often the fallback drops the budgets
    /// that have filled up again (a client that has not been seen for a window), so that
    /// its memory follows the clients of the last window rather than of the whole outage.
    pub fallback_sweep_interval: Duration,
}

impl RateLimitConfig {
    pub fn budget(&self, policy: RateLimitPolicy) -> Budget {
        self.budgets[policy.index()]
    }

    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let minute = Duration::from_secs(60);
        let second = Duration::from_secs(1);
        Ok(Self {
            // shared/api.md's defaults. The anonymous budget is not in the contract: it
            // covers what a client does before it has a token (the API's documents, a
            // request whose token has expired), so 20 a second with bursts of 40 is ample
            // for a person behind a shared address and still stops a flood of forged
            // tokens from one address.
            budgets: [
                budget(
                    vars,
                    "KEEL_RATE_LIMIT_TOKEN_IP",
                    "KEEL_RATE_LIMIT_TOKEN_IP_BURST",
                    (10, minute, 10),
                )?,
                budget(
                    vars,
                    "KEEL_RATE_LIMIT_TOKEN_EMAIL",
                    "KEEL_RATE_LIMIT_TOKEN_EMAIL_BURST",
                    (10, minute, 10),
                )?,
                budget(
                    vars,
                    "KEEL_RATE_LIMIT_SIGNUP_IP",
                    "KEEL_RATE_LIMIT_SIGNUP_IP_BURST",
                    (10, minute, 10),
                )?,
                budget(
                    vars,
                    "KEEL_RATE_LIMIT_USER",
                    "KEEL_RATE_LIMIT_USER_BURST",
                    (100, second, 200),
                )?,
                budget(
                    vars,
                    "KEEL_RATE_LIMIT_ANON",
                    "KEEL_RATE_LIMIT_ANON_BURST",
                    (20, second, 40),
                )?,
            ],
            fallback_max_keys: vars.range(
                "KEEL_RATE_LIMIT_FALLBACK_MAX_KEYS",
                100_000,
                100,
                10_000_000,
            )?,
            fallback_sweep_interval: vars.duration_range(
                "KEEL_RATE_LIMIT_FALLBACK_SWEEP_INTERVAL",
                Duration::from_secs(10),
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
        })
    }
}

/// The most a budget may hold or refill per period.
const MAX_COUNT: u32 = 1_000_000;

/// A budget from `rate_var` (`COUNT/PERIOD`) and `burst_var` (default: `COUNT`).
fn budget(
    vars: &Vars<'_>,
    rate_var: &'static str,
    burst_var: &'static str,
    (count, period, burst): (u32, Duration, u32),
) -> Result<Budget, ConfigError> {
    let (count, period, default_burst) = match vars.get(rate_var) {
        None => (count, period, burst),
        Some(raw) => {
            let (count, period) = parse_rate(&raw).map_err(|why| {
                error(
                    rate_var,
                    format!("{raw:?} {why}; write COUNT/PERIOD, e.g. 10/1m or 100/1s"),
                )
            })?;
            (count, period, count)
        }
    };
    let budget = Budget {
        count,
        period,
        burst: vars.range(burst_var, default_burst, 1, MAX_COUNT)?,
    };
    // The limiter counts in microseconds (the Redis script) and nanoseconds (governor).
    if budget.interval() < Duration::from_micros(1) {
        return Err(error(
            rate_var,
            format!("{count} requests in {period:?} is more than one a microsecond"),
        ));
    }
    Ok(budget)
}

/// `COUNT/PERIOD`; a period without a number is one of its unit (`100/s`).
fn parse_rate(raw: &str) -> Result<(u32, Duration), String> {
    let (count, period) = raw.split_once('/').ok_or_else(|| "has no '/'".to_owned())?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| "does not start with a whole number".to_owned())?;
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(format!("counts {count}, outside 1..={MAX_COUNT}"));
    }
    let period = period.trim();
    let period = humantime::parse_duration(period)
        .or_else(|_| humantime::parse_duration(&format!("1{period}")))
        .map_err(|_| "does not end with a duration".to_owned())?;
    if period < Duration::from_millis(1) || period > Duration::from_secs(86_400) {
        return Err("has a period outside 1ms..=1d".to_owned());
    }
    Ok((count, period))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{refused_var, with_vars};

    fn read(pairs: &[(&str, &str)]) -> RateLimitConfig {
        with_vars(pairs, RateLimitConfig::read).expect("configuration should be accepted")
    }

    #[test]
    fn defaults_are_the_contracts_budgets() {
        let c = read(&[]);
        let minute = Duration::from_secs(60);
        for policy in [
            RateLimitPolicy::TokenIp,
            RateLimitPolicy::TokenEmail,
            RateLimitPolicy::SignupIp,
        ] {
            let b = c.budget(policy);
            assert_eq!((b.count, b.period, b.burst), (10, minute, 10), "{policy}");
            assert_eq!(b.interval(), Duration::from_secs(6));
            assert_eq!(b.window(), minute);
        }
        let user = c.budget(RateLimitPolicy::User);
        assert_eq!(
            (user.count, user.period, user.burst),
            (100, Duration::from_secs(1), 200)
        );
        assert_eq!(user.interval(), Duration::from_millis(10));
        assert_eq!(user.window(), Duration::from_secs(2));
        assert_eq!(c.budget(RateLimitPolicy::Anon).burst, 40);
        assert_eq!(c.fallback_max_keys, 100_000);
        assert_eq!(c.fallback_sweep_interval, Duration::from_secs(10));
    }

    #[test]
    fn a_budget_is_a_count_per_period_and_its_burst_follows_the_count() {
        let c = read(&[
            ("KEEL_RATE_LIMIT_TOKEN_IP", "3/1s"),
            ("KEEL_RATE_LIMIT_USER", "50/s"),
            ("KEEL_RATE_LIMIT_USER_BURST", "5"),
            ("KEEL_RATE_LIMIT_ANON", " 7 / 2m "),
        ]);
        let ip = c.budget(RateLimitPolicy::TokenIp);
        assert_eq!(
            (ip.count, ip.period, ip.burst),
            (3, Duration::from_secs(1), 3)
        );
        let user = c.budget(RateLimitPolicy::User);
        assert_eq!(
            (user.count, user.period, user.burst),
            (50, Duration::from_secs(1), 5)
        );
        let anon = c.budget(RateLimitPolicy::Anon);
        assert_eq!((anon.count, anon.burst), (7, 7));
        assert_eq!(anon.period, Duration::from_secs(120));
    }

    #[test]
    fn each_kind_of_bad_value_names_its_variable() {
        for (var, bad) in [
            ("KEEL_RATE_LIMIT_TOKEN_EMAIL", "10"),
            ("KEEL_RATE_LIMIT_TOKEN_EMAIL", "ten/1m"),
            ("KEEL_RATE_LIMIT_TOKEN_EMAIL", "0/1m"),
            ("KEEL_RATE_LIMIT_SIGNUP_IP", "10/fortnight"),
            ("KEEL_RATE_LIMIT_SIGNUP_IP", "10/2d"),
            ("KEEL_RATE_LIMIT_USER", "1000000/1ms"),
            ("KEEL_RATE_LIMIT_ANON_BURST", "0"),
            ("KEEL_RATE_LIMIT_FALLBACK_MAX_KEYS", "10"),
            ("KEEL_RATE_LIMIT_FALLBACK_SWEEP_INTERVAL", "1ms"),
        ] {
            assert_eq!(
                refused_var(&[(var, bad)], RateLimitConfig::read),
                var,
                "{bad}"
            );
        }
    }

    #[test]
    fn policies_have_stable_names_in_registry_order() {
        let names: Vec<&str> = RateLimitPolicy::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            names,
            ["token-ip", "token-email", "signup-ip", "user", "anon"]
        );
        for (i, policy) in RateLimitPolicy::ALL.into_iter().enumerate() {
            assert_eq!(policy.index(), i);
        }
    }
}
