//! Background work that loses nothing: transactional outbox → RabbitMQ → worker.
//!
//! The case study's third symptom, "background tasks block user requests", and its fix: a
//! write that has slow side effects (an email to send, a project's stats to recount)
//! records them and returns; a worker does them.
//!
//! # The flow, and why nothing is lost
//!
//! 1. **Outbox.** The handler inserts its jobs ([`Job`]) into `outbox` in the same
//!    transaction as the write ([`Jobs::enqueue`]): the jobs exist exactly when the write
//!    does. A crash before the commit loses both; after it, neither.
//! 2. **Relay** ([`relay`], in `keel worker` and `keel all`). Woken by `NOTIFY` on commit
//!    (polling is the fallback), it locks a batch of committed rows (`FOR UPDATE SKIP
//!    LOCKED`, so several relays share the backlog), publishes them with publisher
//!    confirms and `mandatory` (an unroutable message comes back as an error), and marks
//!    them published in the same transaction. A crash between the broker's confirm and
//!    the mark publishes the batch again: a duplicate, never a loss.
//! 3. **Worker** ([`worker`]). A consumer per job kind with manual acks, a prefetch and a
//!    bound on handlers in flight. A handler's effect happens once per job id ([`kinds`]),
//!    so the duplicates of step 2 and the redeliveries of a crashed worker are harmless.
//!    A failure is retried through fixed-delay retry queues, and after the last attempt
//!    the job is parked in the dead-letter queue ([`topology`]), where `keel jobs dead`
//!    lists it and `keel jobs replay` sends it back ([`dead`]).
//!
//! Cache invalidations ride the same outbox ([`Job::CacheInvalidate`]): the handler still
//! invalidates at once after its commit, and the relay repeats the invalidation until
//! Redis confirms it, which closes the cache's one hole (an invalidation lost to a Redis
//! timeout, `crate::cache`) instead of leaving it to the TTL.
//!
//! The trace context of the request travels in the outbox row and then in the message's
//! headers, so the publish, the consume and the send are spans of the request's trace.
//!
//! # The `async_jobs` fix flag
//!
//! Off, [`Jobs::enqueue`] hands the email and stats jobs back, and the handler runs them
//! inside the request after its commit ([`Jobs::run_inline`], the naive path): the request
//! waits for the SMTP server and the aggregate query. Even then nothing is lost: a job
//! that fails inline goes to the outbox.

pub mod broker;
pub mod dead;
pub mod kinds;
pub mod mail;
pub mod publisher;
pub mod relay;
pub mod topology;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use crate::cache::Stale;
use crate::db::{self, Tx};
use crate::flags::{Flag, Flags};
use crate::telemetry::propagation;

pub use broker::Broker;
pub use kinds::{JobError, Outcome, Runner};
pub use mail::Mailer;
pub use relay::Relay;
pub use topology::Topology;
pub use worker::Worker;

/// A kind of job: its name on the wire (the outbox's `kind`, the routing key, the queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    TaskAssigned,
    StatsRecompute,
    CacheInvalidate,
}

impl Kind {
    /// The kinds that go through RabbitMQ (a queue each). Cache invalidations are done by
    /// the relay itself.
    pub const QUEUED: [Kind; 2] = [Kind::TaskAssigned, Kind::StatsRecompute];

    pub fn name(self) -> &'static str {
        match self {
            Kind::TaskAssigned => "email.task_assigned",
            Kind::StatsRecompute => "stats.recompute",
            Kind::CacheInvalidate => "cache.invalidate",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        [
            Kind::TaskAssigned,
            Kind::StatsRecompute,
            Kind::CacheInvalidate,
        ]
        .into_iter()
        .find(|kind| kind.name() == name)
    }
}

/// `email.task_assigned`: tell the new assignee of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAssigned {
    pub task_id: Uuid,
    pub assignee_id: Uuid,
}

/// `stats.recompute`: recount a project's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRecompute {
    pub project_id: Uuid,
}

/// `cache.invalidate`: what a write made stale, repeated until Redis confirms it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInvalidate {
    pub stale: Vec<Stale>,
}

/// What a write asks to happen once it has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    TaskAssigned(TaskAssigned),
    StatsRecompute(StatsRecompute),
    CacheInvalidate(CacheInvalidate),
}

impl Job {
    pub fn kind(&self) -> Kind {
        match self {
            Job::TaskAssigned(_) => Kind::TaskAssigned,
            Job::StatsRecompute(_) => Kind::StatsRecompute,
            Job::CacheInvalidate(_) => Kind::CacheInvalidate,
        }
    }

    pub fn payload(&self) -> Value {
        let value = match self {
            Job::TaskAssigned(job) => serde_json::to_value(job),
            Job::StatsRecompute(job) => serde_json::to_value(job),
            Job::CacheInvalidate(job) => serde_json::to_value(job),
        };
        value.expect("a job's payload is plain data")
    }

    /// The job of a kind and payload read back from the outbox or a message.
    pub fn parse(kind: &str, payload: &[u8]) -> Result<Job, String> {
        let kind = Kind::from_name(kind).ok_or_else(|| format!("unknown job kind {kind:?}"))?;
        let bad = |e: serde_json::Error| format!("bad {} payload: {e}", kind.name());
        Ok(match kind {
            Kind::TaskAssigned => Job::TaskAssigned(serde_json::from_slice(payload).map_err(bad)?),
            Kind::StatsRecompute => {
                Job::StatsRecompute(serde_json::from_slice(payload).map_err(bad)?)
            }
            Kind::CacheInvalidate => {
                Job::CacheInvalidate(serde_json::from_slice(payload).map_err(bad)?)
            }
        })
    }
}

/// Jobs that the naive path (`async_jobs` off) runs in the request, after the commit.
#[must_use = "the naive path runs these after the commit (Jobs::run_inline)"]
#[derive(Debug, Default)]
pub struct Inline(Vec<Job>);

/// The handlers' side of the jobs: record them in the writer's transaction, or (naive)
/// run them in the request. Cloning is an `Arc` increment.
#[derive(Clone)]
pub struct Jobs(Arc<JobsInner>);

struct JobsInner {
    flags: Flags,
    runner: Runner,
}

impl Jobs {
    pub fn new(flags: Flags, runner: Runner) -> Self {
        Self(Arc::new(JobsInner { flags, runner }))
    }

    /// Records `jobs` in the outbox inside the writer's transaction `tx`, with the current
    /// trace context, in one statement. With `async_jobs` off, the email and stats jobs are
    /// handed back instead, to run after the commit ([`Jobs::run_inline`]); cache
    /// invalidations are recorded either way (they close the cache's hole, whatever the
    /// flag).
    pub async fn enqueue(&self, tx: &mut Tx, jobs: Vec<Job>) -> Result<Inline, sqlx::Error> {
        let (queued, inline): (Vec<Job>, Vec<Job>) = if self.0.flags.enabled(Flag::AsyncJobs) {
            (jobs, Vec::new())
        } else {
            jobs.into_iter()
                .partition(|job| job.kind() == Kind::CacheInvalidate)
        };
        insert(tx, &queued).await?;
        Ok(Inline(inline))
    }

    /// Finishes a write: records `jobs` and the invalidation of `stale` in `tx`, commits,
    /// invalidates `stale` at once, and (naive, `async_jobs` off) runs the jobs inline.
    /// The invalidation follows the commit (the cache's protocol needs it so); its outbox
    /// row repeats it until Redis confirms.
    pub async fn commit(
        &self,
        mut tx: Tx,
        mut jobs: Vec<Job>,
        stale: &[Stale],
    ) -> Result<(), sqlx::Error> {
        if !stale.is_empty() {
            jobs.push(invalidation(stale));
        }
        let inline = self.enqueue(&mut tx, jobs).await?;
        tx.commit().await?;
        self.0.runner.cache.invalidate(stale).await;
        self.run_inline(inline).await
    }

    /// naive: runs the jobs in the request, so the caller waits for SMTP and the stats
    /// query — the "before" of the workshop. A job that fails here is recorded in the
    /// outbox for the worker, so the naive path is slow but loses nothing.
    pub async fn run_inline(&self, inline: Inline) -> Result<(), sqlx::Error> {
        let mut failed = Vec::new();
        for job in inline.0 {
            if let Err(e) = self.0.runner.run(Uuid::now_v7(), &job, None).await {
                tracing::warn!(error = %e, kind = job.kind().name(), "an inline job failed; queued for the worker");
                failed.push(job);
            }
        }
        if !failed.is_empty() {
            let mut tx = self.0.runner.db.begin().await?;
            insert(&mut tx, &failed).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Inserts the outbox rows of `jobs`, each carrying the request's trace context.
async fn insert(tx: &mut Tx, jobs: &[Job]) -> Result<(), sqlx::Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    insert_rows(tx, jobs).await
}

/// [`insert`], in a span of its own whose context the rows carry.
///
/// Why a span of its own, rather than the caller's: the current span may be one that the
/// OpenTelemetry layer filters out while another layer keeps it — a handler's TRACE-level
/// span when `RUST_LOG=keel=trace` — and such a span has no trace context, so the jobs
/// would start traces of their own. This span is at DEBUG, which the OpenTelemetry filter
/// keeps (`telemetry::otel_filter`), and the layer parents it on the nearest span that it
/// does see (the request's): its context is always in the request's trace.
#[tracing::instrument(level = "debug", name = "jobs.enqueue", skip_all, fields(jobs = jobs.len()))]
async fn insert_rows(tx: &mut Tx, jobs: &[Job]) -> Result<(), sqlx::Error> {
    let context = trace_context();
    let rows: Vec<(Uuid, &'static str, Value)> = jobs
        .iter()
        .map(|job| (Uuid::now_v7(), job.kind().name(), job.payload()))
        .collect();
    let new: Vec<db::outbox::NewJob<'_>> = rows
        .iter()
        .map(|(id, kind, payload)| db::outbox::NewJob {
            id: *id,
            kind,
            payload,
            trace_context: &context,
        })
        .collect();
    db::outbox::insert(tx.exec(), &new).await
}

/// The current span's W3C trace context, as the outbox stores it (empty when traces are
/// off).
fn trace_context() -> Value {
    let map = propagation::to_map(&tracing::Span::current().context());
    serde_json::to_value(map).unwrap_or_default()
}

/// The trace context a stored map carries.
fn context_of(value: &Value) -> opentelemetry::Context {
    let map: HashMap<String, String> = serde_json::from_value(value.clone()).unwrap_or_default();
    propagation::from_map(&map)
}

/// The jobs a task write causes (shared/api.md, "Side effects"): an email to a new
/// assignee, and a recount of the project's stats when the task was created or deleted,
/// or its status or due date changed.
pub fn task_side_effects(
    task_id: Uuid,
    project_id: Uuid,
    new_assignee: Option<Uuid>,
    counts_changed: bool,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    if let Some(assignee_id) = new_assignee {
        jobs.push(Job::TaskAssigned(TaskAssigned {
            task_id,
            assignee_id,
        }));
    }
    if counts_changed {
        jobs.push(Job::StatsRecompute(StatsRecompute { project_id }));
    }
    jobs
}

/// The invalidation job that repeats what a write's handler invalidates after its commit.
pub fn invalidation(stale: &[Stale]) -> Job {
    Job::CacheInvalidate(CacheInvalidate {
        stale: stale.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_round_trips_through_its_kind_and_payload() {
        let jobs = [
            Job::TaskAssigned(TaskAssigned {
                task_id: Uuid::now_v7(),
                assignee_id: Uuid::now_v7(),
            }),
            Job::StatsRecompute(StatsRecompute {
                project_id: Uuid::now_v7(),
            }),
            invalidation(&[
                Stale::Task(Uuid::now_v7()),
                Stale::Membership {
                    project: Uuid::now_v7(),
                    user: Uuid::now_v7(),
                },
            ]),
        ];
        for job in jobs {
            let bytes = serde_json::to_vec(&job.payload()).unwrap();
            assert_eq!(Job::parse(job.kind().name(), &bytes), Ok(job));
        }
    }

    #[test]
    fn an_unknown_kind_or_a_bad_payload_is_refused_with_a_reason() {
        assert!(
            Job::parse("email.spam", b"{}")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(
            Job::parse("stats.recompute", b"{\"project\":1}")
                .unwrap_err()
                .contains("bad stats.recompute payload")
        );
    }

    #[test]
    fn only_a_new_assignee_gets_an_email_and_only_count_changes_recount() {
        let (task, project, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(task_side_effects(task, project, None, false), []);
        let jobs = task_side_effects(task, project, Some(user), true);
        assert_eq!(
            jobs.iter().map(Job::kind).collect::<Vec<_>>(),
            [Kind::TaskAssigned, Kind::StatsRecompute]
        );
    }
}
