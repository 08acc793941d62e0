//! What the load generators among the examples (`cache_mix`, `overload_mix`) share: the
//! request's `accept-encoding`, the skew of keys, the shape of a page, and the rule that load
//! stays on this machine. Included with `#[path = "load/shared.rs"] mod shared;`.

use std::net::IpAddr;

use anyhow::{Context as _, bail};
use rand::RngExt as _;
use rand::rngs::StdRng;
use reqwest::{RequestBuilder, Url};
use serde::Deserialize;
use uuid::Uuid;

/// oha's default `accept-encoding` (browsers send much the same): Keel compresses a body over
/// `KEEL_COMPRESSION_MIN_BYTES` (a page of tasks), and a request of a mix must cost what
/// oha's does. The runs read the bodies and never decode them.
pub const ACCEPT: &str = "gzip, compress, deflate, br";

/// The skew: this share of the draws goes to [`HOT_KEYS`] of the keys.
const HOT_REQUESTS: f64 = 0.8;
const HOT_KEYS: f64 = 0.2;

/// An index into `len` keys (at least one): [`HOT_REQUESTS`] of the draws fall in the first
/// [`HOT_KEYS`] of them, the rest in the others — the head of a Zipf-like popularity without
/// a parameter to tune.
pub fn skewed(rng: &mut StdRng, len: usize) -> usize {
    let hot = ((len as f64 * HOT_KEYS).ceil() as usize).clamp(1, len);
    if hot == len || rng.random_bool(HOT_REQUESTS) {
        rng.random_range(0..hot)
    } else {
        rng.random_range(hot..len)
    }
}

/// A page of the API (projects or tasks): only the ids matter here.
#[derive(Deserialize)]
struct Page {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    id: Uuid,
}

/// The ids of a page: sends `request` (a GET of `url`, headers set) and parses its body.
pub async fn page_ids(request: RequestBuilder, url: &str) -> anyhow::Result<Vec<Uuid>> {
    let page: Page = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not a page"))?;
    Ok(page.items.into_iter().map(|i| i.id).collect())
}

/// `base` (named `name` in the error) is a loopback URL without a path: the load stays on
/// this machine.
pub fn check_loopback(name: &str, base: &str) -> anyhow::Result<()> {
    let url = Url::parse(base).with_context(|| name.to_owned())?;
    let host = url.host_str().unwrap_or("").trim_matches(['[', ']']);
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback || url.path() != "/" {
        bail!("{name}={base}: a loopback URL without a path (load stays on this machine)");
    }
    Ok(())
}
