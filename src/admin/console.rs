//! The workshop console: `GET /` on the admin listener, a page that shows the fix flags
//! and the faults with their switches, and the live figures per route class.
//!
//! Why it is built this way:
//!
//! - **In the binary.** The files under `console/` are compiled in (`include_str!`): the
//!   console is there wherever Keel runs, offline too, in the version that matches the
//!   API it drives, with nothing to deploy beside it. They sit next to this file, not in a
//!   top-level `assets/`, so that the console is one directory to read or to delete.
//! - **On the admin listener.** It drives the admin API, and that listener is the one
//!   that is not public. The page itself is open, like `/metrics` that it reads; what it
//!   switches needs `KEEL_ADMIN_TOKEN`, which the page asks for and keeps for the tab only.
//! - **Its own metrics, no Grafana.** The live figures are computed in the browser from
//!   this instance's `/metrics` (see `console/console-live.js`): a workshop needs no
//!   Prometheus to watch a p99 move. They are one instance's figures; the fleet's are
//!   Grafana's job.
//! - **No framework, no build step.** Plain ES modules, read as they are served.
//! - **A strict Content-Security-Policy.** Scripts, styles and fetches from this origin
//!   only, no inline script or style, no framing: a page that holds an admin token must
//!   not run anything it did not ship with.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page's policy: everything from this listener, nothing inline, never in a frame.
/// `data:` images are for the empty favicon, which spares a 404 on every load.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// A file of the console, served from the binary.
#[derive(Clone, Copy)]
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("console/index.html"),
    },
    Asset {
        path: "/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("console/console.css"),
    },
    Asset {
        path: "/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("console/console.js"),
    },
    Asset {
        path: "/console-live.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("console/console-live.js"),
    },
    Asset {
        path: "/console-chart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("console/console-chart.js"),
    },
];

impl IntoResponse for Asset {
    fn into_response(self) -> Response {
        (
            [
                (header::CONTENT_TYPE, self.content_type),
                // Revalidate every time: after an upgrade the page and its scripts must
                // come from the same build.
                (header::CACHE_CONTROL, "no-cache"),
                (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            self.body,
        )
            .into_response()
    }
}

/// The console's routes, one per file.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    ASSETS.iter().fold(Router::new(), |router, &asset| {
        router.route(asset.path, get(move || async move { asset }))
    })
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn every_file_is_served_with_its_type_no_cache_and_the_policy() {
        for asset in ASSETS {
            let response = routes::<()>()
                .oneshot(Request::get(asset.path).body(Body::empty()).unwrap())
                .await
                .unwrap();

            assert_eq!(response.status(), StatusCode::OK, "{}", asset.path);
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], asset.content_type);
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[test]
    fn the_page_runs_no_inline_script_and_loads_nothing_from_elsewhere() {
        let page = ASSETS[0].body;
        for (i, _) in page.match_indices("<script") {
            let tag = &page[i..i + page[i..].find('>').unwrap()];
            assert!(tag.contains(" src=\"/"), "an inline script: {tag}");
        }
        for (i, _) in page.match_indices(" on") {
            let name: String = page[i + 3..]
                .chars()
                .take_while(char::is_ascii_lowercase)
                .collect();
            let after = page[i + 3 + name.len()..].chars().next();
            assert!(
                name.is_empty() || after != Some('='),
                "an inline event handler: on{name}="
            );
        }
        for asset in ASSETS {
            // The SVG namespace is a name, not a place the page fetches from.
            let text = asset.body.replace("http://www.w3.org/2000/svg", "");
            for scheme in ["http://", "https://", "//cdn", "url(http"] {
                assert!(
                    !text.contains(scheme),
                    "{} names {scheme}: the console works offline",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn every_module_the_scripts_import_is_served() {
        for asset in ASSETS {
            for line in asset.body.lines().filter(|l| l.starts_with("import ")) {
                let from = line
                    .rsplit_once("from '.")
                    .map(|(_, rest)| rest.trim_end_matches("';"))
                    .unwrap_or_else(|| panic!("a relative import: {line}"));
                assert!(
                    ASSETS.iter().any(|a| a.path == from),
                    "{} imports {from}, which is not served",
                    asset.path
                );
            }
        }
    }
}
