//! The read-heavy mix of `loadtests/cache-bench.sh`: a closed loop of many users reading
//! their tasks, first pages, projects and profiles, the hot keys far more often than the
//! rest. It exists because oha repeats one request, headers included: it cannot vary the
//! `Authorization` header (the user) per request, and a cache measured on one key by one
//! user says nothing about its hit ratio.
//!
//! * **The mix.** `GET /v1/tasks/{id}` 50 %, the first page of `GET /v1/projects/{id}/tasks`
//!   25 %, `GET /v1/projects/{id}` 15 %, `GET /v1/me` 10 %. Each kind's keys are shuffled
//!   with the seed, and 80 % of the requests go to the first 20 % of them: the head of a
//!   Zipf-like popularity without a parameter to tune. Worker `i` draws from `SEED ^ (i+1)`.
//! * **Every request is authorized.** The users are those whose tokens the seed report
//!   holds (`keel seed --out FILE`: the largest projects' owners, the busiest assignee, the
//!   sample users); nothing logs in, and the tokens last `KEEL_JWT_TTL` from the seed. At
//!   start-up each user lists their projects (`GET /v1/projects`, first page) and reads each
//!   one's first page of tasks; the run reads only those, each with a member's token, so
//!   any status outside 2xx, a 404 included, is an error.
//! * **Bounds.** A worker stops at the deadline (a request in flight then is dropped, not
//!   counted, as oha does) or after [`MAX_REQUESTS_PER_WORKER`], which bounds the latencies
//!   kept (4 bytes each). Every request has [`REQUEST_TIMEOUT`]; start-up sends one request
//!   per user and one per project listed.
//!
//! ```text
//! cache_mix BASE_URL REPORT DURATION CONCURRENCY SEED
//! cache_mix http://127.0.0.1:18680 target/bench/cache-bench/seed.json 10s 16 42
//! ```
//!
//! It prints one JSON line: requests, errors (non-2xx and transport), requests/s (responses
//! over the run's length), p50/p90/p99/max latency in ms, the requests by kind, the keys.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{RngExt as _, SeedableRng as _};
use reqwest::Client;
use reqwest::header::{ACCEPT_ENCODING, AUTHORIZATION};
use serde::Deserialize;
use tokio::time::Instant;
use uuid::Uuid;

#[path = "load/shared.rs"]
mod shared;
use shared::{ACCEPT, check_loopback, page_ids, skewed};

/// How long one request may take, at start-up and during the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most requests one worker sends, whatever the duration.
const MAX_REQUESTS_PER_WORKER: usize = 5_000_000;
/// The most workers: connections to a service on the same machine.
const MAX_CONCURRENCY: usize = 1024;
/// The mix: a task, a first page, a project, the caller (50/25/15/10 %), as cumulative
/// shares; [`Mix::pick`] returns the kind's index.
const THRESHOLDS: [f64; 3] = [0.50, 0.75, 0.90];

#[derive(Deserialize)]
struct Report {
    largest_projects: Vec<ProjectReport>,
    busiest_assignee: Option<UserReport>,
    sample_users: Vec<UserReport>,
}

#[derive(Deserialize)]
struct ProjectReport {
    owner: UserReport,
}

#[derive(Deserialize)]
struct UserReport {
    id: Uuid,
    token: String,
}

/// What the run reads: the users' `authorization` values, and per kind of request (in the
/// order of [`THRESHOLDS`]) the URLs with the index of a user allowed to read them.
struct Mix {
    auth: Vec<String>,
    kinds: [Vec<(usize, String)>; 4],
}

impl Mix {
    /// The next request: its kind, and its user and URL.
    fn pick(&self, rng: &mut StdRng) -> (usize, &(usize, String)) {
        let roll: f64 = rng.random();
        let kind = THRESHOLDS.iter().take_while(|t| roll >= **t).count();
        let keys = &self.kinds[kind];
        (kind, &keys[skewed(rng, keys.len())])
    }
}

async fn get_page(client: &Client, url: String, auth: &str) -> anyhow::Result<Vec<Uuid>> {
    page_ids(client.get(&url).header(AUTHORIZATION, auth), &url).await
}

/// The users of the report, their projects and the tasks of those projects' first pages.
async fn discover(client: &Client, base: &str, report: Report, seed: u64) -> anyhow::Result<Mix> {
    let owners = report.largest_projects.into_iter().map(|p| p.owner);
    let others = report
        .busiest_assignee
        .into_iter()
        .chain(report.sample_users);
    let mut users: Vec<UserReport> = owners.chain(others).collect();
    let mut seen = HashSet::new();
    users.retain(|u| seen.insert(u.id));
    let auth: Vec<String> = users
        .iter()
        .map(|u| format!("Bearer {}", u.token))
        .collect();
    let mut kinds: [Vec<(usize, String)>; 4] = Default::default();
    for (user, token) in auth.iter().enumerate() {
        kinds[3].push((user, format!("{base}/v1/me")));
        for project in get_page(client, format!("{base}/v1/projects"), token).await? {
            let page = format!("{base}/v1/projects/{project}/tasks");
            for task in get_page(client, page.clone(), token).await? {
                kinds[0].push((user, format!("{base}/v1/tasks/{task}")));
            }
            kinds[1].push((user, page));
            kinds[2].push((user, format!("{base}/v1/projects/{project}")));
        }
    }
    if kinds.iter().any(Vec::is_empty) {
        bail!("the report's users see no project or no task: is this the database of that seed?");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    kinds.iter_mut().for_each(|keys| keys.shuffle(&mut rng));
    Ok(Mix { auth, kinds })
}

/// One worker's results.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    non_2xx: u64,
    transport_errors: u64,
    by_kind: [u64; THRESHOLDS.len() + 1],
}

async fn worker(client: Client, mix: Arc<Mix>, seed: u64, end: Instant) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let mut sent = 0;
    while sent < MAX_REQUESTS_PER_WORKER && Instant::now() < end {
        sent += 1;
        let (kind, (user, url)) = mix.pick(&mut rng);
        let request = client
            .get(url)
            .header(AUTHORIZATION, &mix.auth[*user])
            .header(ACCEPT_ENCODING, ACCEPT);
        let started = Instant::now();
        // The whole body read: the latency is the response's, as oha measures it.
        let exchange = async {
            let response = request.send().await?;
            let status = response.status();
            response.bytes().await.map(|_| status)
        };
        match tokio::time::timeout_at(end, exchange).await {
            Err(_) => break,
            Ok(Ok(status)) => {
                let micros = started.elapsed().as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                tally.by_kind[kind] += 1;
                if !status.is_success() {
                    tally.non_2xx += 1;
                }
            }
            Ok(Err(_)) => tally.transport_errors += 1,
        }
    }
    tally
}

/// The arguments, checked: the base URL must be on this machine.
fn arguments() -> anyhow::Result<(String, String, Duration, usize, u64)> {
    let usage = "usage: cache_mix BASE_URL REPORT DURATION CONCURRENCY SEED";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, report, duration, concurrency, seed] = args.as_slice() else {
        bail!("{usage}");
    };
    check_loopback("BASE_URL", base)?;
    let duration = humantime::parse_duration(duration).context("DURATION (10s, 500ms, 2m)")?;
    let concurrency: usize = concurrency.parse().context("CONCURRENCY")?;
    if duration.is_zero() || !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        bail!("DURATION must be positive and CONCURRENCY from 1 to {MAX_CONCURRENCY}");
    }
    let seed = seed.parse().context("SEED")?;
    let base = base.trim_end_matches('/').to_owned();
    Ok((base, report.clone(), duration, concurrency, seed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (base, report, duration, concurrency, seed) = arguments()?;
    let report: Report = serde_json::from_slice(
        &std::fs::read(&report).with_context(|| format!("read the seed report {report}"))?,
    )
    .context("parse the seed report")?;
    let client = Client::builder()
        .http1_only()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let mix = Arc::new(discover(&client, &base, report, seed).await?);

    let started = Instant::now();
    let end = started + duration;
    let workers: Vec<_> = (0..concurrency as u64)
        .map(|i| tokio::spawn(worker(client.clone(), mix.clone(), seed ^ (i + 1), end)))
        .collect();
    let mut all = Tally::default();
    for handle in workers {
        let tally = handle.await.context("a worker panicked")?;
        all.latencies_us.extend(tally.latencies_us);
        all.non_2xx += tally.non_2xx;
        all.transport_errors += tally.transport_errors;
        for (sum, n) in all.by_kind.iter_mut().zip(tally.by_kind) {
            *sum += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();

    let mut latencies = all.latencies_us;
    latencies.sort_unstable();
    // Nearest rank, in milliseconds; null when nothing was answered.
    let percentile = |p: f64| {
        let rank = ((latencies.len() as f64 * p).ceil() as usize).max(1);
        latencies.get(rank - 1).map(|us| f64::from(*us) / 1000.0)
    };
    let [task, page, project, me] = all.by_kind;
    let line = serde_json::json!({
        "requests": latencies.len() as u64 + all.transport_errors,
        "responses": latencies.len(),
        "non_2xx": all.non_2xx,
        "transport_errors": all.transport_errors,
        "errors": all.non_2xx + all.transport_errors,
        "seconds": seconds,
        "requests_per_second": latencies.len() as f64 / seconds,
        "p50_ms": percentile(0.50),
        "p90_ms": percentile(0.90),
        "p99_ms": percentile(0.99),
        "max_ms": percentile(1.0),
        "by_kind": {"task": task, "page": page, "project": project, "me": me},
        "keys": {"users": mix.auth.len(), "projects": mix.kinds[2].len(), "tasks": mix.kinds[0].len()},
    });
    println!("{line}");
    Ok(())
}
