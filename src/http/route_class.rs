//! Sorting requests into route classes and criticality, for the deadlines, load shedding
//! and the metrics that report on both.
//!
//! The class follows from the method and the route's template, by rule rather than by a
//! table to keep in step with the routes: sign-in and sign-up are `auth`; any other
//! method but `GET`/`HEAD` is a `write`; a `GET` of a template that ends in an id, of
//! `/v1/me` or of a `/stats` document is a `read`; every other `GET` (a collection, the
//! OpenAPI document, the docs UI, a path no route matches) is a `list`.
//!
//! Criticality defaults by class: `list` is sheddable (a page that fails can be fetched
//! again, and a busy client will scroll less), every other class critical (a write, a
//! sign-in, the resource a user just opened). `KEEL_CRITICALITY` overrides it per route.

use axum::extract::MatchedPath;
use axum::http::{Method, Request};

use crate::config::{Criticality, CriticalityOverride, RouteClass};

/// A request's class and criticality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    pub class: RouteClass,
    pub criticality: Criticality,
}

/// Sorts requests; built once from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    overrides: Vec<CriticalityOverride>,
}

impl Classifier {
    pub fn new(overrides: Vec<CriticalityOverride>) -> Self {
        Self { overrides }
    }

    /// The class and criticality of a request, by its matched route (inside the router).
    pub fn of<B>(&self, request: &Request<B>) -> RouteInfo {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        self.classify(request.method(), route)
    }

    pub fn classify(&self, method: &Method, route: Option<&str>) -> RouteInfo {
        let class = class_of(method, route);
        let criticality = route
            .and_then(|route| {
                self.overrides
                    .iter()
                    .find(|o| o.route == route && o.method == method.as_str())
            })
            .map_or_else(
                || match class {
                    RouteClass::List => Criticality::Sheddable,
                    _ => Criticality::Critical,
                },
                |o| o.criticality,
            );
        RouteInfo { class, criticality }
    }
}

/// The class of a request by its method and matched route template (`None`: no route
/// matched), by the rule in the module docs. Public because the metrics label every
/// request with it, so that a dashboard or the workshop console aggregates per class
/// without a copy of the rule.
pub fn class_of(method: &Method, route: Option<&str>) -> RouteClass {
    let route = route.unwrap_or("");
    if *method == Method::POST && matches!(route, "/v1/auth/token" | "/v1/users") {
        return RouteClass::Auth;
    }
    if *method != Method::GET && *method != Method::HEAD {
        return RouteClass::Write;
    }
    if route.ends_with('}') || route == "/v1/me" || route.ends_with("/stats") {
        RouteClass::Read
    } else {
        RouteClass::List
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(classifier: &Classifier, method: Method, route: &str) -> (RouteClass, Criticality) {
        let i = classifier.classify(&method, Some(route));
        (i.class, i.criticality)
    }

    #[test]
    fn routes_sort_by_method_and_template() {
        use Criticality::*;
        use RouteClass::*;
        let c = Classifier::default();
        assert_eq!(info(&c, Method::POST, "/v1/auth/token"), (Auth, Critical));
        assert_eq!(info(&c, Method::POST, "/v1/users"), (Auth, Critical));
        assert_eq!(info(&c, Method::POST, "/v1/projects"), (Write, Critical));
        assert_eq!(info(&c, Method::PATCH, "/v1/tasks/{id}"), (Write, Critical));
        assert_eq!(info(&c, Method::GET, "/v1/tasks/{id}"), (Read, Critical));
        assert_eq!(info(&c, Method::GET, "/v1/me"), (Read, Critical));
        assert_eq!(
            info(&c, Method::GET, "/v1/projects/{id}/stats"),
            (Read, Critical)
        );
        assert_eq!(
            info(&c, Method::GET, "/v1/projects/{id}/tasks"),
            (List, Sheddable)
        );
        assert_eq!(info(&c, Method::GET, "/v1/me/tasks"), (List, Sheddable));
        assert_eq!(
            c.classify(&Method::GET, None),
            RouteInfo {
                class: List,
                criticality: Sheddable
            }
        );
    }

    #[test]
    fn an_override_changes_only_its_route_and_method() {
        let c = Classifier::new(vec![CriticalityOverride {
            method: "GET".into(),
            route: "/v1/projects/{id}/tasks".into(),
            criticality: Criticality::Critical,
        }]);
        assert_eq!(
            info(&c, Method::GET, "/v1/projects/{id}/tasks"),
            (RouteClass::List, Criticality::Critical)
        );
        assert_eq!(
            info(&c, Method::GET, "/v1/projects"),
            (RouteClass::List, Criticality::Sheddable)
        );
    }
}
