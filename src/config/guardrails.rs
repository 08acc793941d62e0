//! The request guardrails that belong to the HTTP edge: each route's class, the deadline of
//! every class, and which routes are shed first under overload.
//!
//! Rate-limit budgets, breakers and retry budgets have sections of their own; this one is
//! about the request as a whole.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::vars::{ConfigError, Vars, error};

/// What kind of work a route does, for its deadline and its criticality (see
/// `http::route_class`, which sorts the routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// Sign-in and sign-up: a password hash each, the most expensive requests Keel serves.
    Auth,
    /// One resource by id.
    Read,
    /// A page of a collection (and the API's documents).
    List,
    /// Everything that changes state.
    Write,
}

impl RouteClass {
    pub const ALL: [RouteClass; 4] = [
        RouteClass::Auth,
        RouteClass::Read,
        RouteClass::List,
        RouteClass::Write,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Read => "read",
            Self::List => "list",
            Self::Write => "write",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RouteClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a request matters when there is not room for all of them, after Google SRE's
/// criticality classes: under overload, `Sheddable` requests are refused first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Criticality {
    Critical,
    Sheddable,
}

impl Criticality {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Sheddable => "sheddable",
        }
    }
}

impl FromStr for Criticality {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "critical" => Ok(Self::Critical),
            "sheddable" => Ok(Self::Sheddable),
            other => Err(format!("{other:?} is neither critical nor sheddable")),
        }
    }
}

/// One route's criticality, set by `KEEL_CRITICALITY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriticalityOverride {
    /// Upper-case method (`GET`).
    pub method: String,
    /// The route's template as the router writes it (`/v1/projects/{id}/tasks`).
    pub route: String,
    pub criticality: Criticality,
}

#[derive(Debug, Clone)]
pub struct GuardrailsConfig {
    /// `KEEL_DEADLINE_AUTH`, `_READ`, `_LIST`, `_WRITE`: how long a request of each class
    /// may take before it is answered 503 and everything it started is cancelled.
    deadlines: [Duration; RouteClass::ALL.len()],
    /// `KEEL_CRITICALITY`: comma-separated `METHOD /route=critical|sheddable` entries
    /// that override the default (lists are sheddable; reads, writes and auth critical).
    pub criticality: Vec<CriticalityOverride>,
}

impl GuardrailsConfig {
    /// The deadline of a class of routes.
    pub fn deadline(&self, class: RouteClass) -> Duration {
        self.deadlines[class.index()]
    }

    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let deadline = |var, default| {
            vars.duration_range(
                var,
                Duration::from_millis(default),
                Duration::from_millis(10),
                Duration::from_secs(300),
            )
        };
        Ok(Self {
            // Sign-in waits for a hashing slot (KEEL_PASSWORD_HASH_QUEUE_TIMEOUT) and then
            // hashes for ~50 ms; single reads are a cache hit or one indexed statement;
            // pages and writes run a few statements.
            deadlines: [
                deadline("KEEL_DEADLINE_AUTH", 5000)?,
                deadline("KEEL_DEADLINE_READ", 2000)?,
                deadline("KEEL_DEADLINE_LIST", 3000)?,
                deadline("KEEL_DEADLINE_WRITE", 5000)?,
            ],
            criticality: overrides(vars, "KEEL_CRITICALITY")?,
        })
    }
}

fn overrides(vars: &Vars<'_>, var: &'static str) -> Result<Vec<CriticalityOverride>, ConfigError> {
    let Some(raw) = vars.get(var) else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let bad = |why: &str| {
                error(
                    var,
                    format!(
                        "{item:?}: {why}; write e.g. \"GET /v1/projects/{{id}}/tasks=critical\""
                    ),
                )
            };
            let (route, criticality) = item.rsplit_once('=').ok_or_else(|| bad("no '='"))?;
            let (method, route) = route
                .trim()
                .split_once(' ')
                .ok_or_else(|| bad("no method"))?;
            let route = route.trim();
            if !route.starts_with('/') {
                return Err(bad("the route does not start with '/'"));
            }
            Ok(CriticalityOverride {
                method: method.to_ascii_uppercase(),
                route: route.to_owned(),
                criticality: criticality.trim().parse().map_err(|e: String| bad(&e))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{refused_var, with_vars};

    #[test]
    fn defaults_give_every_class_a_deadline() {
        let g = with_vars(&[], GuardrailsConfig::read).unwrap();
        for class in RouteClass::ALL {
            assert!(g.deadline(class) >= Duration::from_secs(1), "{class}");
        }
        assert!(g.criticality.is_empty());
    }

    #[test]
    fn criticality_overrides_name_a_method_a_route_and_a_class() {
        let g = with_vars(
            &[(
                "KEEL_CRITICALITY",
                "get /v1/projects/{id}/tasks=critical, GET /v1/me=sheddable",
            )],
            GuardrailsConfig::read,
        )
        .unwrap();
        assert_eq!(
            g.criticality,
            [
                CriticalityOverride {
                    method: "GET".into(),
                    route: "/v1/projects/{id}/tasks".into(),
                    criticality: Criticality::Critical
                },
                CriticalityOverride {
                    method: "GET".into(),
                    route: "/v1/me".into(),
                    criticality: Criticality::Sheddable
                },
            ]
        );
        for bad in [
            "GET /v1/me",
            "/v1/me=critical",
            "GET v1/me=critical",
            "GET /v1/me=low",
        ] {
            assert_eq!(
                refused_var(&[("KEEL_CRITICALITY", bad)], GuardrailsConfig::read),
                "KEEL_CRITICALITY",
                "{bad}"
            );
        }
        assert_eq!(
            refused_var(&[("KEEL_DEADLINE_READ", "1ms")], GuardrailsConfig::read),
            "KEEL_DEADLINE_READ"
        );
    }
}
