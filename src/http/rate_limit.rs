//! The rate limits on the wire, per draft-ietf-httpapi-ratelimit-headers (-10/-11): two
//! Structured Fields lists on every response of a limited route, and the 429.
//!
//! * `RateLimit-Policy: "token-ip";q=10;w=60, "token-email";q=10;w=60` — every policy the
//!   request was counted against: `q` requests (the burst) and `w`, the seconds a spent
//!   budget takes to fill up again. Stable from response to response.
//! * `RateLimit: "token-email";r=3;t=42` — the policy closest to running out
//!   ([`Decision::closest`]): `r` requests left, `t` seconds until the budget is full. One
//!   item, so that a client that reads only the first learns the binding constraint.
//! * A refusal: 429 problem+json (`urn:keel:problem:rate-limited`) with `Retry-After` in
//!   whole seconds, rounded up — a client that waits exactly that long is let in.
//!
//! A request may be counted in two places: the middleware (per client address or user)
//! and a handler that learns more from the body (sign-in, per email). The handler leaves
//! its decisions in the response's extensions ([`Spent`]); the middleware, which runs
//! around it, merges them with its own and writes both fields once.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::ApiError;
use crate::limits::Decision;

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Decisions a handler made, for the middleware to report (module doc).
#[derive(Debug, Clone, Default)]
pub struct Spent(pub Vec<Decision>);

/// Writes `RateLimit-Policy` (every decision's policy) and `RateLimit` (the closest to
/// running out). Nothing when there are no decisions.
pub fn write_headers(headers: &mut HeaderMap, decisions: &[Decision]) {
    let Some(closest) = Decision::closest(decisions) else {
        return;
    };
    let values = [
        (RATELIMIT_POLICY, policy_field(decisions)),
        (RATELIMIT, limit_field(closest)),
    ];
    for (name, value) in values {
        // Policy names are fixed tokens and the rest are integers: always a valid value.
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// The 429 for a refused decision.
pub fn refusal(decision: &Decision) -> ApiError {
    ApiError::RateLimited {
        policy: decision.policy.as_str(),
        retry_after_secs: whole_seconds(decision.retry_after).max(1),
    }
}

/// `RateLimit-Policy`'s value.
pub fn policy_field(decisions: &[Decision]) -> String {
    let mut items: Vec<String> = Vec::with_capacity(decisions.len());
    for d in decisions {
        let item = format!(
            "\"{}\";q={};w={}",
            d.policy.as_str(),
            d.budget.burst,
            whole_seconds(d.budget.window()).max(1)
        );
        if !items.contains(&item) {
            items.push(item);
        }
    }
    items.join(", ")
}

/// `RateLimit`'s value for one decision.
pub fn limit_field(decision: &Decision) -> String {
    format!(
        "\"{}\";r={};t={}",
        decision.policy.as_str(),
        decision.remaining,
        whole_seconds(decision.reset)
    )
}

/// Seconds, rounded up: a client told to wait `n` seconds must not come back early.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::http::header::RETRY_AFTER;
    use axum::response::IntoResponse as _;

    use super::*;
    use crate::limits::{Budget, Policy, Source};

    fn decision(
        policy: Policy,
        budget: (u32, u64, u32),
        remaining: u64,
        reset_ms: u64,
    ) -> Decision {
        let (count, period_secs, burst) = budget;
        Decision {
            policy,
            budget: Budget {
                count,
                period: Duration::from_secs(period_secs),
                burst,
            },
            allowed: true,
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: Duration::ZERO,
            source: Source::Fleet,
        }
    }

    #[test]
    fn the_fields_are_structured_field_lists_naming_the_closest_policy() {
        let ip = decision(Policy::TokenIp, (10, 60, 10), 7, 18_000);
        let email = decision(Policy::TokenEmail, (10, 60, 10), 3, 41_200);
        let mut headers = HeaderMap::new();

        write_headers(&mut headers, &[ip, email]);

        assert_eq!(
            headers[RATELIMIT_POLICY],
            r#""token-ip";q=10;w=60, "token-email";q=10;w=60"#
        );
        assert_eq!(headers[RATELIMIT], r#""token-email";r=3;t=42"#);
    }

    #[test]
    fn a_bursty_budget_advertises_its_burst_over_its_refill_time() {
        let user = decision(Policy::User, (100, 1, 200), 199, 10);
        assert_eq!(policy_field(&[user]), r#""user";q=200;w=2"#);
        assert_eq!(limit_field(&user), r#""user";r=199;t=1"#);
    }

    #[test]
    fn no_decisions_write_no_fields() {
        let mut headers = HeaderMap::new();
        write_headers(&mut headers, &[]);
        assert!(headers.is_empty());
    }

    #[test]
    fn a_refusal_is_a_429_with_retry_after_rounded_up() {
        let mut refused = decision(Policy::SignupIp, (10, 60, 10), 0, 60_000);
        refused.allowed = false;
        refused.retry_after = Duration::from_millis(5_001);

        let response = refusal(&refused).into_response();

        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "6");
        refused.retry_after = Duration::from_micros(10);
        assert_eq!(
            refusal(&refused).into_response().headers()[RETRY_AFTER],
            "1"
        );
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
    }
}
