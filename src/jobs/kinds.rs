//! What each job does, once per job id however often it is delivered.
//!
//! * `email.task_assigned` reads the task, its project and the recipient as they are
//!   when the job runs, claims the job's delivery record, sends the email, and marks the
//!   record sent. A redelivery finds it sent and sends nothing; a redelivery that races a
//!   send still in flight (the broker redelivers as soon as the first consumer's
//!   connection drops, while its handler may still be talking to SMTP) finds the claim
//!   and retries later, by when the record says sent. **The window that remains**: a
//!   crash (or a lost Postgres) after the SMTP server accepted the message and before the
//!   record is marked sends the email again, once the claim has gone stale
//!   (`KEEL_JOBS_TIMEOUT`). It spans one local update after the SMTP `DATA` reply — about
//!   a millisecond per email — and the message keeps its `Message-ID` (`<{job id}@keel>`)
//!   on the second send, so a mail system that de-duplicates by id drops it.
//! * `stats.recompute` skips a job whose write the last computation already counted
//!   (its transaction ended before that computation's snapshot: the coalescing that turns
//!   a burst of writes into a handful of recomputes), else recounts the project in one
//!   statement, recording the job in `processed_jobs` in the same transaction, and then
//!   invalidates the cached stats.

use std::fmt;
use std::time::Duration;

use crate::cache::{Cache, Stale};
use crate::db::{self, Db};
use uuid::Uuid;

use super::mail::{MailError, Mailer};
use super::{Job, Kind, StatsRecompute, TaskAssigned};

/// How a job ended when its handler succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It had its effect.
    Done,
    /// A redelivery of a job that had already had its effect: nothing done.
    Duplicate,
    /// Nothing left to do: the task or recipient is gone, or the stats already count the
    /// job's write.
    Moot,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Duplicate => "duplicate",
            Outcome::Moot => "moot",
        }
    }
}

/// Why a job's handler failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Worth another attempt later: a dependency was down or slow.
    Transient(String),
    /// No attempt can succeed (a malformed job, an address the server refuses): parked.
    Permanent(String),
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Transient(e) => write!(f, "transient: {e}"),
            JobError::Permanent(e) => write!(f, "permanent: {e}"),
        }
    }
}

impl std::error::Error for JobError {}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Transient(format!("postgres: {e}"))
    }
}

impl From<MailError> for JobError {
    fn from(e: MailError) -> Self {
        match e {
            MailError::Permanent(e) => JobError::Permanent(e),
            MailError::Transient(e) => JobError::Transient(e),
        }
    }
}

/// Runs jobs: what the worker (and, naively, a request) calls. Cloning shares the clients.
#[derive(Clone)]
pub struct Runner {
    pub(super) db: Db,
    pub(super) cache: Cache,
    mailer: Mailer,
    /// How old an email's delivery claim must be before another handler may take it over
    /// (its holder died mid-send): the job timeout, past which no live handler holds it.
    claim_ttl: Duration,
}

impl Runner {
    pub fn new(db: Db, cache: Cache, mailer: Mailer, claim_ttl: Duration) -> Self {
        Self {
            db,
            cache,
            mailer,
            claim_ttl,
        }
    }

    /// Runs job `id`. `writer_xid` is the transaction that wrote it (from the outbox), when
    /// known: the stats handler skips a job whose write is already counted.
    pub async fn run(
        &self,
        id: Uuid,
        job: &Job,
        writer_xid: Option<i64>,
    ) -> Result<Outcome, JobError> {
        match job {
            Job::TaskAssigned(job) => self.task_assigned(id, job).await,
            Job::StatsRecompute(job) => self.stats_recompute(id, job, writer_xid).await,
            Job::CacheInvalidate(job) => self
                .cache
                .try_invalidate(&job.stale)
                .await
                .map(|()| Outcome::Done)
                .map_err(|_| JobError::Transient("redis did not confirm the invalidation".into())),
        }
    }

    #[tracing::instrument(skip_all, fields(job.id = %id))]
    async fn task_assigned(&self, id: Uuid, job: &TaskAssigned) -> Result<Outcome, JobError> {
        if db::jobs::was_sent(&self.db, id).await? {
            return Ok(Outcome::Duplicate);
        }
        let Some(mail) = db::jobs::assignment_mail(&self.db, job.task_id, job.assignee_id).await?
        else {
            return Ok(Outcome::Moot);
        };
        let message_id = Mailer::message_id(id);
        let claimed = db::jobs::claim_delivery(
            &self.db,
            id,
            &mail.recipient_email,
            &message_id,
            self.claim_ttl,
        )
        .await?;
        if !claimed {
            // Sent meanwhile, or being sent by the handler of an earlier delivery that is
            // still running (the broker redelivers as soon as a connection drops).
            return if db::jobs::was_sent(&self.db, id).await? {
                Ok(Outcome::Duplicate)
            } else {
                Err(JobError::Transient(
                    "another worker is sending this email".into(),
                ))
            };
        }
        if let Err(e) = self.mailer.send_assignment(id, &message_id, &mail).await {
            db::jobs::release(&self.db, id).await?;
            return Err(e.into());
        }
        db::jobs::mark_sent(&self.db, id).await?;
        Ok(Outcome::Done)
    }

    #[tracing::instrument(skip_all, fields(job.id = %id, project_id = %job.project_id))]
    async fn stats_recompute(
        &self,
        id: Uuid,
        job: &StatsRecompute,
        writer_xid: Option<i64>,
    ) -> Result<Outcome, JobError> {
        if let Some(xid) = writer_xid
            && db::stats::covers(&self.db, job.project_id, xid).await? == Some(true)
        {
            return Ok(Outcome::Moot);
        }
        let mut tx = self.db.begin().await?;
        if !db::jobs::mark_processed(tx.exec(), id, Kind::StatsRecompute.name()).await? {
            return Ok(Outcome::Duplicate);
        }
        let computed = db::stats::recompute(tx.exec(), &[job.project_id]).await?;
        tx.commit().await?;
        if computed.is_empty() {
            return Ok(Outcome::Moot);
        }
        self.cache
            .invalidate(&[Stale::ProjectStats(job.project_id)])
            .await;
        Ok(Outcome::Done)
    }
}

/// How long a handler may run, as the worker enforces it: see `KEEL_JOBS_TIMEOUT`.
pub(super) async fn within(
    timeout: Duration,
    run: impl Future<Output = Result<Outcome, JobError>>,
) -> Result<Outcome, JobError> {
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| Err(JobError::Transient(format!("timed out after {timeout:?}"))))
}
