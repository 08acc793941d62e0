//! The mixed workload of `loadtests/guardrails-bench.sh`: many signed-in users reading,
//! writing and signing in, sent either by a closed loop (to find the capacity) or on a fixed
//! schedule (to offer a multiple of it). It exists because oha repeats one request, headers
//! included: it cannot vary the user, the method and the body per request, and overload is a
//! property of the mix, not of one route.
//!
//! * **The mix** (the playbook's peak hour: 80 % reads, 15 % writes, 5 % sign-ins):
//!   `GET /v1/tasks/{id}` 35 %, a first page of `GET /v1/projects/{id}/tasks` 20 %,
//!   `GET /v1/projects/{id}` 15 %, `GET /v1/me` 10 %; `POST /v1/projects/{id}/tasks`,
//!   `PATCH /v1/tasks/{id}` (status) and `POST /v1/tasks/{id}/comments` 5 % each; and
//!   `POST /v1/auth/token` 5 %, as a seeded user drawn from all of them. Users are drawn
//!   with `shared::skewed`: 80 % of the requests come from the first 20 % of them.
//! * **Clients have addresses.** Keel is meant to run behind a proxy here
//!   (`KEEL_TRUSTED_PROXIES=127.0.0.1`): each user sends from an address of its own in
//!   10.0.0.0/8 (`X-Forwarded-For`), each sign-in from a fresh one, so the per-address
//!   budgets see a crowd, as they would in production, not one machine.
//! * **Start-up.** `USERS` seeded users (`user0000000@seed.keel.dev` …, the seed's naming)
//!   sign in with the report's password, four at a time; each lists its projects and reads
//!   the first page of tasks of up to two of them. Users who see no task are left out.
//! * **Closed loop** (`--closed N`): N workers, each sending its next request when the last
//!   is answered. The latency is the exchange's; the goodput of the run is the capacity.
//! * **Open loop** (`--rate R`): request `i` is due at `start + i / R`, whether or not the
//!   earlier ones were answered, and its latency counts from that moment (no coordinated
//!   omission: a server that stalls is charged for every request it kept waiting). At most
//!   [`MAX_IN_FLIGHT`] are on the wire; a request waiting for a slot is still on the clock.
//!   `--warmup-rate` and `--warmup` send an unmeasured lead-in first (a service is at its
//!   normal load before a spike, and an adaptive limit learns its normal latency then).
//! * **Bounds.** Every request gives up [`REQUEST_TIMEOUT`] after it was due (counted as a
//!   timeout); a run sends at most [`MAX_REQUESTS`]; after the measured window the generator
//!   waits for the requests still in flight, at most the request timeout.
//!
//! ```text
//! overload_mix --base http://127.0.0.1:18690 --report seed.json --users 200 --rate 2000 \
//!     --duration 20s --warmup 5s --warmup-rate 500 --seed 42
//! ```
//!
//! It prints one JSON line: the offered and achieved rates, goodput (the 2xx answered within
//! the measured window, per second), the outcomes (2xx, 429, 503 by problem type, other
//! statuses, timeouts, transport errors),
//! p50/p90/p99/max of the 2xx latencies and of the refusals (429 and 503), counts by kind,
//! and a per-second timeline.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use reqwest::header::{ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use uuid::Uuid;

#[path = "load/shared.rs"]
mod shared;
use shared::{ACCEPT, check_loopback, page_ids, skewed};

/// How long after it was due a request is given up (a client's timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests on the wire at once, at most (open loop): the connections a client fleet opens.
const MAX_IN_FLIGHT: usize = 2048;
/// The most requests one run sends, warm-up included.
const MAX_REQUESTS: u64 = 2_000_000;
/// Start-up sign-ins at once.
const SIGN_IN_CONCURRENCY: usize = 4;
/// Start-up sign-in attempts per user while Keel answers 503.
const SIGN_IN_TRIES: u64 = 10;
/// Projects per user whose first page of tasks start-up reads.
const PROJECTS_PER_USER: usize = 2;

#[derive(Parser)]
#[command(about = "The guardrails benchmark's mixed workload (see the source's docs)")]
struct Args {
    /// Keel's public API, a loopback URL without a path.
    #[arg(long)]
    base: String,
    /// `keel seed --out` report: the password and the number of seeded users.
    #[arg(long)]
    report: String,
    /// Seeded users to sign in and send as.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Closed loop with this many workers.
    #[arg(long, conflicts_with = "rate", required_unless_present = "rate")]
    closed: Option<usize>,
    /// Open loop at this many requests per second.
    #[arg(long)]
    rate: Option<f64>,
    /// The measured window.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured lead-in (open loop only), at --warmup-rate.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    warmup: Duration,
    #[arg(long, default_value_t = 0.0)]
    warmup_rate: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Processes whose CPU time (user + system, all threads) over the measured window the
    /// line reports, beside the generator's own (`/proc/PID/stat`; Linux only).
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
    /// The kernel's clock ticks per second (`getconf CLK_TCK`), the unit of `/proc` times.
    #[arg(long, default_value_t = 100)]
    clock_ticks: u64,
}

#[derive(Deserialize)]
struct Report {
    password: String,
    counts: Counts,
}

#[derive(Deserialize)]
struct Counts {
    users: u64,
}

#[derive(Deserialize)]
struct Token {
    access_token: String,
}

/// A signed-in user and what it may read and write.
struct User {
    auth: String,
    address: String,
    projects: Vec<Uuid>,
    tasks: Vec<Uuid>,
}

/// The kinds of request, in the order of [`SHARES`].
const KINDS: [&str; 8] = [
    "get_task",
    "list_tasks",
    "get_project",
    "me",
    "create_task",
    "update_task",
    "comment",
    "sign_in",
];
/// Each kind's share of the mix, in percent.
const SHARES: [u32; 8] = [35, 20, 15, 10, 5, 5, 5, 5];

struct Mix {
    base: String,
    users: Vec<User>,
    password: String,
    seeded_users: u64,
}

/// One request, ready to send.
struct Planned {
    kind: usize,
    method: Method,
    url: String,
    auth: Option<String>,
    address: String,
    body: Option<serde_json::Value>,
}

impl Mix {
    fn plan(&self, rng: &mut StdRng, serial: u64) -> Planned {
        let roll = rng.random_range(0..100);
        let kind = SHARES
            .iter()
            .scan(0, |sum, share| {
                *sum += share;
                Some(*sum)
            })
            .take_while(|sum| roll >= *sum)
            .count();
        let base = &self.base;
        if KINDS[kind] == "sign_in" {
            let n = rng.random_range(0..self.seeded_users);
            let address = Ipv4Addr::from(rng.random_range(0x0a00_0000..=0x0aff_ffffu32));
            return Planned {
                kind,
                method: Method::POST,
                url: format!("{base}/v1/auth/token"),
                auth: None,
                address: address.to_string(),
                body: Some(json!({"email": seed_email(n), "password": self.password})),
            };
        }
        let user = &self.users[skewed(rng, self.users.len())];
        let project = user.projects[rng.random_range(0..user.projects.len())];
        let task = user.tasks[rng.random_range(0..user.tasks.len())];
        let (method, url, body) = match KINDS[kind] {
            "get_task" => (Method::GET, format!("{base}/v1/tasks/{task}"), None),
            "list_tasks" => (
                Method::GET,
                format!("{base}/v1/projects/{project}/tasks"),
                None,
            ),
            "get_project" => (Method::GET, format!("{base}/v1/projects/{project}"), None),
            "me" => (Method::GET, format!("{base}/v1/me"), None),
            "create_task" => (
                Method::POST,
                format!("{base}/v1/projects/{project}/tasks"),
                Some(json!({"title": format!("overload mix {serial}")})),
            ),
            "update_task" => {
                let status = ["todo", "doing", "done"][rng.random_range(0..3)];
                (
                    Method::PATCH,
                    format!("{base}/v1/tasks/{task}"),
                    Some(json!({ "status": status })),
                )
            }
            _ => (
                Method::POST,
                format!("{base}/v1/tasks/{task}/comments"),
                Some(json!({"body": format!("overload mix comment {serial}")})),
            ),
        };
        Planned {
            kind,
            method,
            url,
            auth: Some(user.auth.clone()),
            address: user.address.clone(),
            body,
        }
    }
}

/// The seed's email of user `n` (`seed::generate`).
fn seed_email(n: u64) -> String {
    format!("user{n:07}@seed.keel.dev")
}

/// User `n`'s own address, 10.0.0.0/8 (distinct for the first 16 million users).
fn user_address(n: usize) -> String {
    Ipv4Addr::from(0x0a00_0000 | (n as u32 & 0x00ff_ffff)).to_string()
}

async fn ids(client: &Client, url: String, auth: &str, address: &str) -> anyhow::Result<Vec<Uuid>> {
    let request = client
        .get(&url)
        .header(AUTHORIZATION, auth)
        .header("x-forwarded-for", address);
    page_ids(request, &url).await
}

/// Signs user `n` in and reads what it may use.
async fn sign_in(client: Client, base: String, password: String, n: usize) -> anyhow::Result<User> {
    let address = user_address(n);
    let email = seed_email(n as u64);
    // A 503 is a busy password hasher (its queue is short): try again a little later.
    let mut tries = 0;
    let response = loop {
        let response = client
            .post(format!("{base}/v1/auth/token"))
            .header("x-forwarded-for", &address)
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .with_context(|| format!("sign in as {email}"))?;
        tries += 1;
        if response.status() != StatusCode::SERVICE_UNAVAILABLE || tries == SIGN_IN_TRIES {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(100 * tries)).await;
    };
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        bail!(
            "sign-in as {email} was rate limited: start Keel with KEEL_TRUSTED_PROXIES=127.0.0.1"
        );
    }
    if !status.is_success() {
        bail!(
            "sign in as {email}: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }
    let token: Token = response.json().await.context("the token response")?;
    let auth = format!("Bearer {}", token.access_token);
    let projects = ids(&client, format!("{base}/v1/projects"), &auth, &address).await?;
    let mut tasks = Vec::new();
    for project in projects.iter().take(PROJECTS_PER_USER) {
        let url = format!("{base}/v1/projects/{project}/tasks");
        tasks.extend(ids(&client, url, &auth, &address).await?);
    }
    Ok(User {
        auth,
        address,
        projects,
        tasks,
    })
}

async fn discover(client: &Client, args: &Args) -> anyhow::Result<Mix> {
    let report: Report = serde_json::from_slice(
        &std::fs::read(&args.report)
            .with_context(|| format!("read the seed report {}", args.report))?,
    )
    .context("parse the seed report")?;
    let wanted = args.users.min(report.counts.users as usize);
    let base = args.base.trim_end_matches('/').to_owned();
    let gate = Arc::new(Semaphore::new(SIGN_IN_CONCURRENCY));
    let mut handles = Vec::with_capacity(wanted);
    for n in 0..wanted {
        let (client, base, password, gate) = (
            client.clone(),
            base.clone(),
            report.password.clone(),
            gate.clone(),
        );
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            sign_in(client, base, password, n).await
        }));
    }
    let mut users = Vec::with_capacity(wanted);
    for handle in handles {
        let user = handle.await.context("a sign-in panicked")??;
        if !user.projects.is_empty() && !user.tasks.is_empty() {
            users.push(user);
        }
    }
    if users.len() < 10 {
        bail!(
            "only {} of {wanted} users see a task: is this the database of that seed?",
            users.len()
        );
    }
    let keys: HashSet<Uuid> = users.iter().flat_map(|u| u.tasks.iter().copied()).collect();
    eprintln!(
        "overload_mix: {} users signed in, {} distinct tasks",
        users.len(),
        keys.len()
    );
    Ok(Mix {
        base,
        users,
        password: report.password,
        seeded_users: report.counts.users,
    })
}

/// User + system CPU of a process, in clock ticks (`None` when it cannot be read).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may itself hold spaces and parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of the watched processes and of the generator, from `start` to `end`.
struct CpuWatch {
    pids: Vec<String>,
    start: Vec<Option<u64>>,
}

impl CpuWatch {
    fn start(watched: &[u32]) -> Self {
        let pids: Vec<String> = watched
            .iter()
            .map(u32::to_string)
            .chain(["self".to_owned()])
            .collect();
        let start = pids.iter().map(|p| cpu_ticks(p)).collect();
        Self { pids, start }
    }

    /// Seconds of CPU per process since `start`, keyed by PID ("self": the generator).
    fn stop(&self, ticks_per_second: u64) -> BTreeMap<String, Option<f64>> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(pid, start)| {
                let spent = start
                    .zip(cpu_ticks(pid))
                    .map(|(a, b)| b.saturating_sub(a) as f64 / ticks_per_second as f64);
                (pid.clone(), spent)
            })
            .collect()
    }
}

/// How a request ended.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Outcome {
    Ok,
    /// 429, or 503 with its problem type's last segment (`overloaded`, …).
    Refused(Refusal),
    /// Any other status.
    Status(u16),
    Timeout,
    Transport,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Refusal {
    RateLimited,
    Overloaded,
    DeadlineExceeded,
    /// A 503 of another type (saturated hashing, a dependency down, …).
    Unavailable,
}

/// One request's result; `due` is its offset from the start of the measured window
/// (negative in the warm-up).
struct Record {
    kind: usize,
    outcome: Outcome,
    due: f64,
    latency_us: u64,
}

async fn send(client: &Client, planned: Planned) -> Outcome {
    let mut request = client
        .request(planned.method, &planned.url)
        .header(ACCEPT_ENCODING, ACCEPT)
        .header("x-forwarded-for", &planned.address);
    if let Some(auth) = planned.auth {
        request = request.header(AUTHORIZATION, auth);
    }
    if let Some(body) = planned.body {
        request = request
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(_) => return Outcome::Transport,
    };
    let status = response.status();
    let Ok(body) = response.bytes().await else {
        return Outcome::Transport;
    };
    match status.as_u16() {
        200..=299 => Outcome::Ok,
        429 => Outcome::Refused(Refusal::RateLimited),
        503 => {
            let kind = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|p| p["type"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Outcome::Refused(match kind.rsplit(':').next() {
                Some("overloaded") => Refusal::Overloaded,
                Some("deadline-exceeded") => Refusal::DeadlineExceeded,
                _ => Refusal::Unavailable,
            })
        }
        other => Outcome::Status(other),
    }
}

/// Sends one request due at `due` (its latency counts from then), giving up
/// [`REQUEST_TIMEOUT`] after it.
async fn timed(
    client: &Client,
    planned: Planned,
    due: Instant,
    slots: Option<&Semaphore>,
) -> (Outcome, u64) {
    let deadline = due + REQUEST_TIMEOUT;
    let exchange = async {
        let _slot = match slots {
            Some(slots) => Some(slots.acquire().await),
            None => None,
        };
        send(client, planned).await
    };
    let outcome = tokio::time::timeout_at(deadline, exchange)
        .await
        .unwrap_or(Outcome::Timeout);
    (outcome, due.elapsed().as_micros() as u64)
}

async fn open_loop(client: Client, mix: Arc<Mix>, args: &Args, rate: f64) -> Run {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut serial = 0u64;
    let start = Instant::now();
    // The warm-up, then the measured window: (offset of its end, its rate).
    let phases = [
        (args.warmup, args.warmup_rate),
        (args.warmup + args.duration, rate),
    ];
    let measured_from = start + args.warmup;
    let mut phase_start = Duration::ZERO;
    let mut watch = None;
    for (phase_end, phase_rate) in phases {
        if phase_start == args.warmup {
            tokio::time::sleep_until(measured_from).await;
            watch = Some(CpuWatch::start(&args.watch_pids));
        }
        if phase_rate > 0.0 {
            let interval = Duration::from_secs_f64(1.0 / phase_rate);
            let mut i = 0u32;
            loop {
                let offset = phase_start + interval * i;
                if offset >= phase_end || serial >= MAX_REQUESTS {
                    break;
                }
                let due = start + offset;
                tokio::time::sleep_until(due).await;
                let planned = mix.plan(&mut rng, serial);
                serial += 1;
                i += 1;
                let (client, tx, slots) = (client.clone(), tx.clone(), slots.clone());
                let kind = planned.kind;
                tokio::spawn(async move {
                    let (outcome, latency_us) = timed(&client, planned, due, Some(&slots)).await;
                    let due = due.duration_since(start).as_secs_f64()
                        - measured_from.duration_since(start).as_secs_f64();
                    let _ = tx.send(Record {
                        kind,
                        outcome,
                        due,
                        latency_us,
                    });
                });
            }
        }
        phase_start = phase_end;
    }
    tokio::time::sleep_until(start + args.warmup + args.duration).await;
    let cpu = watch.map(|w| w.stop(args.clock_ticks)).unwrap_or_default();
    drop(tx);
    let mut records = Vec::new();
    while let Some(record) = rx.recv().await {
        records.push(record);
    }
    Run {
        records,
        seconds: args.duration.as_secs_f64(),
        cpu,
    }
}

/// A run's requests, the length of its measured window, and the CPU spent in it.
struct Run {
    records: Vec<Record>,
    seconds: f64,
    cpu: BTreeMap<String, Option<f64>>,
}

async fn closed_loop(client: Client, mix: Arc<Mix>, args: &Args, workers: usize) -> Run {
    let watch = CpuWatch::start(&args.watch_pids);
    let start = Instant::now();
    let end = start + args.duration;
    let per_worker = MAX_REQUESTS / workers as u64;
    let handles: Vec<_> = (0..workers as u64)
        .map(|w| {
            let (client, mix) = (client.clone(), mix.clone());
            let mut rng = StdRng::seed_from_u64(args.seed ^ (w + 1));
            tokio::spawn(async move {
                let mut records = Vec::new();
                for serial in 0..per_worker {
                    let due = Instant::now();
                    if due >= end {
                        break;
                    }
                    let planned = mix.plan(&mut rng, w << 32 | serial);
                    let kind = planned.kind;
                    // A request still in flight at the end is dropped, not counted, as oha does.
                    let Ok((outcome, latency_us)) =
                        tokio::time::timeout_at(end, timed(&client, planned, due, None)).await
                    else {
                        break;
                    };
                    records.push(Record {
                        kind,
                        outcome,
                        due: due.duration_since(start).as_secs_f64(),
                        latency_us,
                    });
                }
                records
            })
        })
        .collect();
    let mut records = Vec::new();
    for handle in handles {
        records.extend(handle.await.unwrap_or_default());
    }
    let cpu = watch.stop(args.clock_ticks);
    Run {
        records,
        seconds: start.elapsed().as_secs_f64(),
        cpu,
    }
}

/// Nearest-rank percentiles of sorted latencies (µs), in milliseconds.
fn percentiles(sorted: &[u64]) -> serde_json::Value {
    let at = |p: f64| {
        let rank = ((sorted.len() as f64 * p).ceil() as usize).max(1);
        sorted.get(rank - 1).map(|us| *us as f64 / 1000.0)
    };
    json!({"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": at(1.0)})
}

fn summary(records: &[Record], seconds: f64, offered: Option<f64>) -> serde_json::Value {
    let measured: Vec<&Record> = records.iter().filter(|r| r.due >= 0.0).collect();
    let mut ok: Vec<u64> = Vec::new();
    let mut refused: Vec<u64> = Vec::new();
    let mut refused_by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_kind: BTreeMap<&str, [u64; 2]> = BTreeMap::new();
    // Per second of the window: [sent, 2xx, refused, other failures] and the 2xx latencies.
    let slots = seconds.ceil().max(1.0) as usize;
    let mut timeline = vec![([0u64; 4], Vec::new()); slots];
    for r in &measured {
        let name = match r.outcome {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Refused(refusal) => format!("{refusal:?}"),
            Outcome::Status(code) => format!("status_{code}"),
            Outcome::Timeout => "timeout".to_owned(),
            Outcome::Transport => "transport".to_owned(),
        };
        *outcomes.entry(name).or_default() += 1;
        let second = &mut timeline[(r.due as usize).min(slots - 1)];
        second.0[0] += 1;
        let kind = by_kind.entry(KINDS[r.kind]).or_default();
        kind[0] += 1;
        match r.outcome {
            Outcome::Ok => {
                ok.push(r.latency_us);
                second.0[1] += 1;
                second.1.push(r.latency_us);
                kind[1] += 1;
            }
            Outcome::Refused(refusal) => {
                refused.push(r.latency_us);
                refused_by
                    .entry(format!("{refusal:?}"))
                    .or_default()
                    .push(r.latency_us);
                second.0[2] += 1;
            }
            _ => second.0[3] += 1,
        }
    }
    ok.sort_unstable();
    refused.sort_unstable();
    let sent = measured.len() as u64;
    // Goodput counts the 2xx that arrived within the window: a request due in it but
    // answered after it (a queue draining) is served load of a later second, and counting
    // it here would credit a queueing server with work it did after the window.
    let ok_in_window = measured
        .iter()
        .filter(|r| r.outcome == Outcome::Ok && r.due + r.latency_us as f64 / 1e6 <= seconds)
        .count();
    let timeline: Vec<_> = timeline
        .into_iter()
        .enumerate()
        .map(|(second, (counts, mut latencies))| {
            latencies.sort_unstable();
            json!({
                "second": second, "sent": counts[0], "ok": counts[1], "refused": counts[2],
                "failed": counts[3], "ok_p99_ms": percentiles(&latencies)["p99_ms"],
            })
        })
        .collect();
    let failed = sent - ok.len() as u64 - refused.len() as u64;
    json!({
        "offered_per_second": offered,
        "seconds": seconds,
        "sent": sent,
        "sent_per_second": sent as f64 / seconds,
        "ok": ok.len(),
        "ok_in_window": ok_in_window,
        "goodput_per_second": ok_in_window as f64 / seconds,
        "refused": refused.len(),
        "refused_share": if sent == 0 { 0.0 } else { refused.len() as f64 / sent as f64 },
        "failed": failed,
        "failed_share": if sent == 0 { 0.0 } else { failed as f64 / sent as f64 },
        "outcomes": outcomes,
        "ok_latency": percentiles(&ok),
        "refused_latency": percentiles(&refused),
        "refused_latency_by_kind": refused_by
            .into_iter()
            .map(|(kind, mut latencies)| {
                latencies.sort_unstable();
                (kind, percentiles(&latencies))
            })
            .collect::<BTreeMap<_, _>>(),
        "by_kind": by_kind.into_iter().map(|(k, [sent, ok])| (k, json!({"sent": sent, "ok": ok}))).collect::<BTreeMap<_, _>>(),
        "timeline": timeline,
    })
}

fn check(args: &Args) -> anyhow::Result<()> {
    check_loopback("--base", &args.base)?;
    if args.duration.is_zero() || args.duration > Duration::from_secs(600) {
        bail!("--duration: more than zero, at most 10m");
    }
    if args.warmup > Duration::from_secs(600) {
        bail!("--warmup: at most 10m");
    }
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate <= 100_000.0)
    {
        bail!("--rate: more than 0, at most 100000");
    }
    if !(0.0..=100_000.0).contains(&args.warmup_rate) {
        bail!("--warmup-rate: 0 to 100000");
    }
    if let Some(n) = args.closed
        && !(1..=MAX_IN_FLIGHT).contains(&n)
    {
        bail!("--closed: 1 to {MAX_IN_FLIGHT}");
    }
    if !(10..=10_000).contains(&args.users) {
        bail!("--users: 10 to 10000");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check(&args)?;
    let client = Client::builder()
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build()?;
    let mix = Arc::new(discover(&client, &args).await?);
    let (run, offered) = match (args.closed, args.rate) {
        (Some(workers), _) => (closed_loop(client, mix, &args, workers).await, None),
        (None, Some(rate)) => (open_loop(client, mix, &args, rate).await, Some(rate)),
        (None, None) => bail!("--closed N or --rate R"),
    };
    let mut line = summary(&run.records, run.seconds, offered);
    line["closed_workers"] = json!(args.closed);
    line["cpu_seconds"] = json!(run.cpu);
    println!("{line}");
    Ok(())
}
