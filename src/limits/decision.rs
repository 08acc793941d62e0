//! What a check decides ([`Decision`], [`Source`]), and on whose budget ([`Key`]).

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::{Budget, RateLimitPolicy as Policy};

/// The outcome of one check: whether the request may go on, and what the client should
/// know about the budget it spent from (the `RateLimit` header's fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub policy: Policy,
    pub budget: Budget,
    pub allowed: bool,
    /// Requests the client may still make at once.
    pub remaining: u64,
    /// Until the budget is full again.
    pub reset: Duration,
    /// Until this request would have been allowed; zero when it was.
    pub retry_after: Duration,
    pub source: Source,
}

impl Decision {
    /// Of several decisions on one request, the one closest to refusing: a refusal before
    /// anything allowed (the longest wait first), then the fewest requests left (the
    /// longest until full on a tie).
    pub fn closest(decisions: &[Decision]) -> Option<&Decision> {
        decisions.iter().min_by_key(|d| {
            (
                d.allowed,
                d.remaining,
                std::cmp::Reverse(d.retry_after),
                std::cmp::Reverse(d.reset),
            )
        })
    }
}

/// Where a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// In Redis: the fleet's budget.
    Fleet,
    /// In this process, while Redis is unavailable.
    Local,
}

/// Whose budget: a client address, a user, or an email.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// A client address; IPv6 by its /64 (module doc).
    pub fn ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(v4.to_string()),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                let network = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                Self(format!("{network}/64"))
            }
        }
    }

    pub fn user(id: Uuid) -> Self {
        Self(id.simple().to_string())
    }

    /// An email, compared case-insensitively as sign-in does (`users_email_key` is on
    /// `lower(email)`), hashed.
    pub fn email(email: &str) -> Self {
        let digest = Sha256::digest(email.to_ascii_lowercase().as_bytes());
        Self(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(allowed: bool, remaining: u64, retry_ms: u64, reset_ms: u64) -> Decision {
        Decision {
            policy: Policy::User,
            budget: Budget {
                count: 10,
                period: Duration::from_secs(1),
                burst: 10,
            },
            allowed,
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: Duration::from_millis(retry_ms),
            source: Source::Fleet,
        }
    }

    #[test]
    fn the_closest_decision_is_a_refusal_then_the_fewest_left() {
        let many = decision(true, 8, 0, 200);
        let few = decision(true, 2, 0, 800);
        let few_longer = decision(true, 2, 0, 900);
        let refused = decision(false, 0, 500, 1000);
        let refused_longer = decision(false, 0, 700, 1000);

        assert_eq!(Decision::closest(&[many, few]), Some(&few));
        assert_eq!(Decision::closest(&[few, few_longer]), Some(&few_longer));
        assert_eq!(
            Decision::closest(&[many, refused, refused_longer]),
            Some(&refused_longer)
        );
        assert_eq!(Decision::closest(&[]), None);
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_emails_ignore_case() {
        let a = Key::ip("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = Key::ip("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "2001:db8:1:2::/64");
        assert_eq!(
            Key::ip("203.0.113.9".parse().unwrap()).as_str(),
            "203.0.113.9"
        );
        assert_eq!(Key::email("Ada@Example.com"), Key::email("ada@example.com"));
        assert!(!Key::email("ada@example.com").as_str().contains("ada"));
    }
}
