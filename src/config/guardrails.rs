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
    pub const ALL: [Criticality; 2] = [Criticality::Critical, Criticality::Sheddable];

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
    pub shedding: SheddingConfig,
}

/// The load shedder: its adaptive concurrency limit, and the share of it that sheddable
/// requests may fill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SheddingConfig {
    pub limit: LimitSettings,
    /// `KEEL_SHED_SHEDDABLE_SHARE`: the share of the limit sheddable requests may fill;
    /// past it they are refused while critical ones are still admitted.
    pub sheddable_share: f64,
}

/// The adaptive concurrency limit's parameters (Gradient2; `resilience::limit` explains
/// each and uses them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSettings {
    /// `KEEL_SHED_INITIAL_LIMIT`: the limit at start-up, before any latency is known.
    pub initial: usize,
    /// `KEEL_SHED_MIN_LIMIT`, `KEEL_SHED_MAX_LIMIT`: the bounds of the limit.
    pub min: usize,
    pub max: usize,
    /// `KEEL_SHED_TOLERANCE`: how much slower than usual requests may get before the
    /// limit shrinks.
    pub tolerance: f64,
    /// `KEEL_SHED_SMOOTHING`: how far one window moves the limit towards its target.
    pub smoothing: f64,
    /// `KEEL_SHED_QUEUE`: headroom added to the limit each window.
    pub queue: usize,
    /// `KEEL_SHED_LONG_WINDOW`: windows remembered by the long-running latency average.
    pub long_window: usize,
    /// `KEEL_SHED_WINDOW`, `KEEL_SHED_WINDOW_SAMPLES`: a window lasts at least this long
    /// and holds at least this many requests.
    pub window: Duration,
    pub window_samples: usize,
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
            shedding: SheddingConfig::read(vars)?,
        })
    }
}

impl SheddingConfig {
    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let min_limit = vars.range("KEEL_SHED_MIN_LIMIT", 8, 1, 100_000)?;
        let max_limit = vars.range("KEEL_SHED_MAX_LIMIT", 512, 1, 100_000)?;
        if min_limit > max_limit {
            return Err(error(
                "KEEL_SHED_MIN_LIMIT",
                format!("{min_limit} is above KEEL_SHED_MAX_LIMIT ({max_limit})"),
            ));
        }
        let initial_limit = vars.range("KEEL_SHED_INITIAL_LIMIT", 32, 1, 100_000)?;
        if !(min_limit..=max_limit).contains(&initial_limit) {
            return Err(error(
                "KEEL_SHED_INITIAL_LIMIT",
                format!(
                    "{initial_limit} is outside {min_limit}..={max_limit} (KEEL_SHED_MIN_LIMIT..=KEEL_SHED_MAX_LIMIT)"
                ),
            ));
        }
        let limit = LimitSettings {
            initial: initial_limit,
            min: min_limit,
            max: max_limit,
            tolerance: vars.range("KEEL_SHED_TOLERANCE", 1.5, 1.0, 10.0)?,
            smoothing: vars.range("KEEL_SHED_SMOOTHING", 0.2, 0.01, 1.0)?,
            queue: vars.range("KEEL_SHED_QUEUE", 4, 0, 1000)?,
            long_window: vars.range("KEEL_SHED_LONG_WINDOW", 6000, 1, 1_000_000)?,
            window: vars.duration_range(
                "KEEL_SHED_WINDOW",
                Duration::from_millis(100),
                Duration::from_millis(1),
                Duration::from_secs(10),
            )?,
            window_samples: vars.range("KEEL_SHED_WINDOW_SAMPLES", 10, 1, 100_000)?,
        };
        Ok(Self {
            limit,
            sheddable_share: vars.range("KEEL_SHED_SHEDDABLE_SHARE", 0.75, 0.05, 1.0)?,
        })
    }
}

fn overrides(vars: &Vars<'_>, var: &'static str) -> Result<Vec<CriticalityOverride>, ConfigError> {
    vars.list(var)
        .iter()
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
        assert_eq!(g.shedding.limit.initial, 32);
    }

    #[test]
    fn shedding_limits_must_nest() {
        for (pairs, var) in [
            (
                &[("KEEL_SHED_MIN_LIMIT", "10"), ("KEEL_SHED_MAX_LIMIT", "5")][..],
                "KEEL_SHED_MIN_LIMIT",
            ),
            (
                &[("KEEL_SHED_INITIAL_LIMIT", "1000")][..],
                "KEEL_SHED_INITIAL_LIMIT",
            ),
            (
                &[("KEEL_SHED_SHEDDABLE_SHARE", "0")][..],
                "KEEL_SHED_SHEDDABLE_SHARE",
            ),
            (&[("KEEL_SHED_TOLERANCE", "0.5")][..], "KEEL_SHED_TOLERANCE"),
        ] {
            assert_eq!(refused_var(pairs, GuardrailsConfig::read), var);
        }
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
