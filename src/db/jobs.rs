//! The records that make the worker's handlers idempotent: `processed_jobs` (a database
//! effect, written in the effect's transaction) and `email_deliveries` (a sent email).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// Records that job `id` has had its effect; `false` if it already had (a redelivery),
/// in which case the caller's transaction must roll its effect back.
pub async fn mark_processed(
    db: impl PgExecutor<'_>,
    id: Uuid,
    kind: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        "insert into processed_jobs (job_id, kind) values ($1, $2) on conflict do nothing",
        id,
        kind
    )
    .execute(db)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Claims the delivery of job `job_id`'s email: `true` when the claim is ours (send, then
/// [`mark_sent`], or [`release`] if the send fails). A claim older than `stale_after`
/// belongs to a worker that died mid-send and is taken over.
pub async fn claim_delivery(
    db: impl PgExecutor<'_>,
    job_id: Uuid,
    recipient: &str,
    message_id: &str,
    stale_after: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query_scalar!(
        r#"insert into email_deliveries as d (job_id, state, recipient, message_id)
           values ($1, 'sending', $2, $3)
           on conflict (job_id) do update set claimed_at = now()
               where d.state = 'sending' and d.claimed_at < now() - make_interval(secs => $4)
           returning 1 as "taken!""#,
        job_id,
        recipient,
        message_id,
        stale_after.as_secs_f64()
    )
    .fetch_optional(db)
    .await?;
    Ok(taken.is_some())
}

/// Whether job `job_id`'s email was sent (else it is being sent, or was never claimed).
pub async fn was_sent(db: impl PgExecutor<'_>, job_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from email_deliveries where job_id = $1 and state = 'sent')
           as "sent!""#,
        job_id
    )
    .fetch_one(db)
    .await
}

pub async fn mark_sent(db: impl PgExecutor<'_>, job_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update email_deliveries set state = 'sent', sent_at = now() where job_id = $1",
        job_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Gives a claim back after a failed send, so that the retry may claim it at once.
pub async fn release(db: impl PgExecutor<'_>, job_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "delete from email_deliveries where job_id = $1 and state = 'sending'",
        job_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes up to `limit` processed-job records older than `before`; returns how many went.
pub async fn prune_processed(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        "delete from processed_jobs where job_id in (
             select job_id from processed_jobs where processed_at < $1 limit $2)",
        before,
        limit
    )
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// Deletes up to `limit` delivery records older than `before`; returns how many went.
pub async fn prune_deliveries(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        "delete from email_deliveries where job_id in (
             select job_id from email_deliveries where claimed_at < $1 limit $2)",
        before,
        limit
    )
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// What an assignment email names, read when the job runs: the task and project as they
/// are then, and the recipient.
#[derive(Debug, Clone)]
pub struct AssignmentMail {
    pub task_title: String,
    pub project_name: String,
    pub recipient_name: String,
    pub recipient_email: String,
}

/// `None` when the task is gone or the recipient is no longer a member of its project: the
/// email has nothing left to say, and a former member must not learn about the project.
pub async fn assignment_mail(
    db: impl PgExecutor<'_>,
    task_id: Uuid,
    assignee_id: Uuid,
) -> Result<Option<AssignmentMail>, sqlx::Error> {
    sqlx::query_as!(
        AssignmentMail,
        "select t.title as task_title, p.name as project_name,
                u.name as recipient_name, u.email as recipient_email
         from tasks t
         join projects p on p.id = t.project_id
         join project_members m on m.project_id = t.project_id and m.user_id = $2
         join users u on u.id = m.user_id
         where t.id = $1",
        task_id,
        assignee_id
    )
    .fetch_optional(db)
    .await
}
