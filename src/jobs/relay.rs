//! The outbox relay: committed outbox rows → RabbitMQ, at least once.
//!
//! One pass ([`Relay::publish_batch`]) runs in one transaction: lock a batch of rows
//! (`FOR UPDATE SKIP LOCKED`: relays in other processes take other rows), publish each
//! with `mandatory`, wait for every confirm, mark the confirmed rows published, and
//! commit. A crash or a lost connection before the commit leaves the rows unpublished for
//! the next pass — the broker may then hold a message twice, which the handlers absorb;
//! a row is never marked without its confirm, so none is lost. A row the broker refuses
//! or cannot route is counted and backed off, so that it cannot block the rows behind it.
//!
//! Cache invalidations are not published: the relay repeats them against Redis itself, and
//! drops one once it is older than the cache's TTL (every entry it could have made stale
//! has expired by then).
//!
//! The relay wakes on `NOTIFY keel_outbox` (sent by a trigger on commit) and polls every
//! `KEEL_OUTBOX_POLL_INTERVAL` as the fallback. While the broker is down it reconnects with
//! backoff; jobs wait in the outbox meanwhile, and writes go on succeeding. Each batch is
//! one call through the breaker around the broker (`broker`): while it is open, the relay
//! publishes nothing and the rows wait, untouched, until a pass after the cooldown.
//!
//! The workshop's `rabbitmq` fault switch (`resilience::fault`) acts on that same call:
//! once per batch, inside the breaker's permit, before the first publish. Per batch rather
//! than per message because the batch is the call: its publishes are pipelined and their
//! confirms awaited together, so a slower broker costs a batch about one latency, not one
//! per message. An injected error fails the call before anything is sent: the rows are
//! left as they are, exactly as after a refusal by the breaker (not marked failed, the
//! broker never saw them, so no message is lost or sent twice), and the permit counts a
//! failure. The connection is kept: the fault stands for the broker failing a call, not
//! for a broken connection (the proxy tests cut those).

use std::time::Duration;

use chrono::Utc;
use metrics::{counter, gauge};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use super::broker::Broker;
use super::publisher::{self, Outgoing, Publisher, Sent};
use super::topology::Topology;
use super::{Job, Kind, Runner, context_of};
use crate::config::Config;
use crate::db::outbox::OutboxRow;
use crate::db::{self, Db};
use crate::resilience::Dependency;
use crate::telemetry::metrics::names;
use crate::telemetry::propagation;

/// Why a relay pass failed: the broker (reconnect) or Postgres (wait, keep the connection).
#[derive(Debug)]
pub enum RelayError {
    Broker(String),
    Postgres(sqlx::Error),
}

impl From<String> for RelayError {
    fn from(e: String) -> Self {
        RelayError::Broker(e)
    }
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Broker(e) => f.write_str(e),
            RelayError::Postgres(e) => write!(f, "postgres: {e}"),
        }
    }
}

/// Whether the broker took a batch (see [`Relay::publish`]).
enum Taken {
    All,
    NotAll,
}

/// The channel the outbox trigger notifies (migration 0007).
pub const CHANNEL: &str = "keel_outbox";

/// How often the backlog gauges are refreshed.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

/// Rows the pruner deletes per statement.
const PRUNE_BATCH: i64 = 10_000;

pub struct Relay {
    db: Db,
    runner: Runner,
    broker: Broker,
    topology: Topology,
    batch: i64,
    poll_interval: Duration,
    publish_timeout: Duration,
    /// Past this age an invalidation is moot: see the module doc.
    invalidation_horizon: Duration,
}

impl Relay {
    pub fn new(config: &Config, db: Db, runner: Runner, broker: Broker) -> Self {
        let jobs = &config.jobs;
        Self {
            db,
            runner,
            broker,
            topology: topology(config),
            batch: jobs.outbox_batch,
            poll_interval: jobs.outbox_poll_interval,
            publish_timeout: jobs.publish_timeout,
            invalidation_horizon: config.redis.cache_ttl.mul_f64(1.1),
        }
    }

    /// Connects and relays until `stop` fires, reconnecting with backoff.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = self.broker.backoff();
        while !stop.is_cancelled() {
            match self.open().await {
                Ok(publisher) => {
                    backoff.reset();
                    if let Err(e) = self.relay(&publisher, &stop).await {
                        tracing::warn!(error = %e, "the outbox relay lost the broker; reconnecting");
                    }
                    publisher.close().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the outbox relay cannot reach the broker; jobs wait in the outbox")
                }
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// A publisher on a new connection, the topology declared.
    pub async fn open(&self) -> Result<Publisher, String> {
        Publisher::open(
            &self.broker,
            "keel relay",
            &self.topology,
            self.publish_timeout,
        )
        .await
    }

    async fn relay(&self, publisher: &Publisher, stop: &CancellationToken) -> Result<(), String> {
        let mut listener = listen(self.db.pool()).await;
        loop {
            let published = match self.publish_batch(publisher).await {
                Ok(published) => published,
                Err(RelayError::Broker(e)) => return Err(e),
                // Postgres unavailable: the broker connection is fine; try again after a
                // poll interval (readiness reports Postgres down meanwhile).
                Err(RelayError::Postgres(e)) => {
                    tracing::warn!(error = %e, "the outbox relay cannot read the outbox");
                    0
                }
            };
            if published >= self.batch as usize {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.poll_interval) => {}
                notification = db::next_notification(&mut listener) => {
                    if notification.is_err() {
                        listener = None;
                    }
                }
            }
            if listener.is_none() {
                listener = listen(self.db.pool()).await;
            }
        }
    }

    /// One pass over the outbox (module doc); returns how many rows it handled: the rows it
    /// claimed, less those it left for a later pass because the breaker around the broker
    /// is open.
    pub async fn publish_batch(&self, publisher: &Publisher) -> Result<usize, RelayError> {
        let db_error = RelayError::Postgres;
        let mut tx = self.db.begin().await.map_err(db_error)?;
        let rows = db::outbox::claim(tx.exec(), self.batch)
            .await
            .map_err(db_error)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut done = Vec::with_capacity(rows.len());
        let mut failed: Vec<(Uuid, String)> = Vec::new();
        let (invalidations, queued): (Vec<&OutboxRow>, Vec<&OutboxRow>) = rows
            .iter()
            .partition(|row| row.kind == Kind::CacheInvalidate.name());
        for row in &invalidations {
            match self.repeat_invalidation(row).await {
                Ok(()) => done.push(row.id),
                Err(e) => failed.push((row.id, e)),
            }
        }
        let mut handled = invalidations.len();
        if !queued.is_empty() {
            // One call to the broker, for its breaker: this batch's publishes and confirms.
            // Refused, the rows are left as they are (not failed: the broker never saw
            // them), and the commit below releases them for a pass after the cooldown.
            if let Some(permit) = self.broker.breaker().try_acquire() {
                if let Err(fault) = self.broker.faults().inject(Dependency::Rabbitmq).await {
                    // Like a refusal: the rows wait for a later pass (module doc).
                    tracing::debug!(error = %fault, rows = queued.len(), "publishing a batch failed");
                    permit.failure();
                } else {
                    match self
                        .publish(publisher, &queued, &mut done, &mut failed)
                        .await
                    {
                        Ok(Taken::All) => permit.success(),
                        Ok(Taken::NotAll) => permit.failure(),
                        Err(e) => {
                            permit.failure();
                            return Err(e.into());
                        }
                    }
                    handled += queued.len();
                }
            }
        }
        db::outbox::mark_published(tx.exec(), &done)
            .await
            .map_err(db_error)?;
        for (id, error) in &failed {
            let attempts = rows.iter().find(|r| r.id == *id).map_or(0, |r| r.attempts);
            let retry_at = Utc::now() + retry_after(attempts);
            db::outbox::mark_failed(tx.exec(), &[*id], error, retry_at)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(handled)
    }

    /// Publishes `rows` and waits for every confirm, adding each row to `done` or `failed`.
    /// Whether the broker took every row that it could route: a nack is the broker failing
    /// (a quorum queue without a majority); a returned message is a topology problem, not
    /// the broker's health.
    async fn publish(
        &self,
        publisher: &Publisher,
        rows: &[&OutboxRow],
        done: &mut Vec<Uuid>,
        failed: &mut Vec<(Uuid, String)>,
    ) -> Result<Taken, String> {
        let mut pending = Vec::with_capacity(rows.len());
        let exchange = self.topology.exchange();
        for row in rows {
            let span = publish_span(row);
            let confirm = publisher
                .send(
                    &exchange,
                    &row.kind,
                    Outgoing {
                        id: row.id,
                        kind: &row.kind,
                        payload: row.payload.to_string().as_bytes(),
                        headers: publisher::headers(
                            &propagation::to_map(&span.context()),
                            1,
                            Some(row.writer_xid),
                        ),
                    },
                )
                .instrument(span.clone())
                .await?;
            pending.push((row, confirm, span));
        }
        let mut taken = Taken::All;
        for (row, confirm, span) in pending {
            let sent = publisher
                .confirmed(confirm)
                .instrument(span.clone())
                .await?;
            let result = match &sent {
                Sent::Confirmed => "confirmed",
                Sent::Nacked => "nacked",
                Sent::Returned(_) => "returned",
            };
            counter!(names::OUTBOX_PUBLISHED, "kind" => kind_label(&row.kind), "result" => result)
                .increment(1);
            match sent {
                Sent::Confirmed => done.push(row.id),
                other => {
                    if other == Sent::Nacked {
                        taken = Taken::NotAll;
                    }
                    span.record("otel.status_code", "ERROR");
                    failed.push((row.id, format!("{other:?}")));
                }
            }
        }
        Ok(taken)
    }

    async fn repeat_invalidation(&self, row: &OutboxRow) -> Result<(), String> {
        let age = (Utc::now() - row.created_at).to_std().unwrap_or_default();
        let result = if age > self.invalidation_horizon {
            "expired"
        } else {
            let job = Job::parse(&row.kind, row.payload.to_string().as_bytes())?;
            match self.runner.run(row.id, &job, None).await {
                Ok(_) => "invalidated",
                Err(e) => {
                    counter!(names::OUTBOX_PUBLISHED, "kind" => Kind::CacheInvalidate.name(), "result" => "failed")
                        .increment(1);
                    return Err(e.to_string());
                }
            }
        };
        counter!(names::OUTBOX_PUBLISHED, "kind" => Kind::CacheInvalidate.name(), "result" => result)
            .increment(1);
        Ok(())
    }

    /// Deletes published rows past `KEEL_OUTBOX_RETENTION` and idempotency records past
    /// `KEEL_JOBS_RECORD_RETENTION`, every `KEEL_OUTBOX_PRUNE_INTERVAL`; refreshes the
    /// backlog gauges every few seconds.
    pub async fn run_upkeep(db: Db, config: &Config, stop: CancellationToken) {
        let jobs = &config.jobs;
        let (retention, records, interval) = (
            jobs.outbox_retention,
            jobs.record_retention,
            jobs.prune_interval,
        );
        let mut last_prune: Option<tokio::time::Instant> = None;
        loop {
            record_backlog(&db).await;
            if last_prune.is_none_or(|at| at.elapsed() >= interval) {
                if let Err(e) = prune(&db, retention, records).await {
                    tracing::warn!(error = %e, "could not prune the outbox");
                }
                last_prune = Some(tokio::time::Instant::now());
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(BACKLOG_INTERVAL.min(interval)) => {}
            }
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }
}

/// The topology of a configuration.
pub fn topology(config: &Config) -> Topology {
    let jobs = &config.jobs;
    Topology::new(&jobs.amqp_prefix, &jobs.retry_delays, jobs.delivery_limit)
}

async fn listen(pool: &sqlx::PgPool) -> Option<PgListener> {
    db::listen(pool, CHANNEL).await.ok()
}

/// The publish span: a producer span in the trace of the request that wrote the row.
fn publish_span(row: &OutboxRow) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {}", row.kind),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "publish",
        messaging.message.id = %row.id,
    );
    let _ = span.set_parent(context_of(&row.trace_context));
    span
}

/// The backoff of a row that failed `attempts` times before: 1 s doubling to a minute.
fn retry_after(attempts: i32) -> chrono::Duration {
    let seconds = 1_i64 << attempts.clamp(0, 6);
    chrono::Duration::seconds(seconds.min(60))
}

/// Kinds are few and known; anything else (a row from a newer build) is one label.
fn kind_label(kind: &str) -> &'static str {
    Kind::from_name(kind).map_or("other", Kind::name)
}

async fn record_backlog(db: &Db) {
    match db::outbox::backlog(db).await {
        Ok(backlog) => {
            gauge!(names::OUTBOX_BACKLOG).set(backlog.count as f64);
            let age = backlog
                .oldest
                .map_or(0.0, |at| (Utc::now() - at).as_seconds_f64().max(0.0));
            gauge!(names::OUTBOX_OLDEST_AGE).set(age);
        }
        Err(e) => tracing::debug!(error = %e, "could not read the outbox backlog"),
    }
}

async fn prune(db: &Db, retention: Duration, records: Duration) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let published_before = now - chrono::Duration::from_std(retention).unwrap_or_default();
    let records_before = now - chrono::Duration::from_std(records).unwrap_or_default();
    while db::outbox::prune(db, published_before, PRUNE_BATCH).await? == PRUNE_BATCH as u64 {}
    while db::jobs::prune_processed(db, records_before, PRUNE_BATCH).await? == PRUNE_BATCH as u64 {}
    while db::jobs::prune_deliveries(db, records_before, PRUNE_BATCH).await? == PRUNE_BATCH as u64 {
    }
    Ok(())
}
