//! The worker: a consumer per job kind, manual acks, a prefetch, a bound on handlers in
//! flight, retries through the retry queues, parking after the last attempt, and its own
//! reconnect loop.
//!
//! Each delivery is settled only after its outcome is safe on the broker: a retry or a
//! parking is published (and confirmed) before the original is acked, so a crash in
//! between leaves two copies, never none. A worker that dies mid-job leaves its message
//! unacked and the broker redelivers it to the next consumer.
//!
//! Stopping: the consumers are cancelled (no new deliveries), the handlers in flight get
//! until the shutdown deadline to finish and settle, and then the connection closes, which
//! returns anything still unacked to its queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use lapin::types::FieldTable;
use metrics::{counter, gauge, histogram};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use super::broker::Broker;
use super::kinds::{self, JobError, Outcome, Runner};
use super::publisher::{self, Outgoing, Publisher};
use super::relay::topology;
use super::topology::Topology;
use super::{Job, Kind};
use crate::config::{Config, JobsConfig};
use crate::telemetry::metrics::names;
use crate::telemetry::propagation;

/// How a delivery was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The handler succeeded (done, duplicate or moot).
    Finished(Outcome),
    /// It failed and went to a retry queue for attempt `next`.
    Retried { next: u32 },
    /// It failed for the last time, or can never succeed: parked.
    Parked,
}

impl Settled {
    fn label(&self) -> &'static str {
        match self {
            Settled::Finished(outcome) => outcome.as_str(),
            Settled::Retried { .. } => "retried",
            Settled::Parked => "parked",
        }
    }
}

#[derive(Clone)]
pub struct Worker(Arc<Inner>);

struct Inner {
    runner: Runner,
    broker: Broker,
    topology: Topology,
    jobs: JobsConfig,
    /// How long in-flight handlers get to finish once the worker is told to stop.
    drain: Duration,
}

impl Worker {
    pub fn new(config: &Config, runner: Runner, broker: Broker) -> Self {
        Self(Arc::new(Inner {
            runner,
            broker,
            topology: topology(config),
            jobs: config.jobs.clone(),
            drain: config.http.shutdown_timeout,
        }))
    }

    /// Consumes until `stop` fires, reconnecting with backoff whenever the connection or a
    /// channel is lost.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = self.0.broker.backoff();
        while !stop.is_cancelled() {
            match self.consume(&stop, &mut backoff).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "the worker lost the broker; reconnecting"),
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One connection's life: a consumer per kind until `stop` (Ok) or a failure (Err).
    async fn consume(
        &self,
        stop: &CancellationToken,
        backoff: &mut super::broker::Backoff,
    ) -> Result<(), String> {
        let publisher = Arc::new(self.publisher().await?);
        backoff.reset();
        let in_flight = TaskTracker::new();
        let lost = CancellationToken::new();
        let mut consumers = Vec::new();
        for kind in Kind::QUEUED {
            let consumer = match self.open_consumer(&publisher, kind).await {
                Ok(consumer) => consumer,
                Err(e) => {
                    lost.cancel();
                    for consumer in consumers {
                        let _ = consumer.await;
                    }
                    publisher.close().await;
                    return Err(e);
                }
            };
            let (worker, publisher, in_flight, lost, stop) = (
                self.clone(),
                publisher.clone(),
                in_flight.clone(),
                lost.clone(),
                stop.clone(),
            );
            consumers.push(tokio::spawn(async move {
                let semaphore = Arc::new(Semaphore::new(worker.0.jobs.concurrency));
                let mut consumer = consumer;
                loop {
                    let delivery = tokio::select! {
                        () = stop.cancelled() => return,
                        () = lost.cancelled() => return,
                        next = consumer.next() => next,
                    };
                    let Some(Ok(delivery)) = delivery else {
                        lost.cancel();
                        return;
                    };
                    // Every handler busy: wait for one, but not past a stop.
                    let permit = tokio::select! {
                        () = stop.cancelled() => return,
                        () = lost.cancelled() => return,
                        permit = semaphore.clone().acquire_owned() => permit,
                    };
                    let Ok(permit) = permit else {
                        return;
                    };
                    let (worker, publisher, lost) = (worker.clone(), publisher.clone(), lost.clone());
                    in_flight.spawn(async move {
                        if let Err(e) = worker.handle(&publisher, kind, &delivery).await {
                            tracing::warn!(error = %e, "could not settle a job; the broker will redeliver it");
                            lost.cancel();
                        }
                        drop(permit);
                    });
                }
            }));
        }
        let gauges = tokio::spawn(record_depths(
            publisher.clone(),
            self.0.topology.clone(),
            lost.clone(),
        ));
        tokio::select! {
            () = stop.cancelled() => {}
            () = lost.cancelled() => {}
        }
        gauges.abort();
        for consumer in consumers {
            let _ = consumer.await;
        }
        in_flight.close();
        if tokio::time::timeout(self.0.drain, in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(drain = ?self.0.drain, "jobs outlived the drain; the broker will redeliver them");
        }
        publisher.close().await;
        if lost.is_cancelled() && !stop.is_cancelled() {
            return Err("a consumer's channel closed".into());
        }
        Ok(())
    }

    async fn publisher(&self) -> Result<Publisher, String> {
        Publisher::open(
            &self.0.broker,
            "keel worker",
            &self.0.topology,
            self.0.jobs.publish_timeout,
        )
        .await
    }

    async fn open_consumer(
        &self,
        publisher: &Publisher,
        kind: Kind,
    ) -> Result<lapin::Consumer, String> {
        let setup = async {
            let channel = publisher.connection().create_channel().await?;
            channel
                .basic_qos(self.0.jobs.prefetch, BasicQosOptions::default())
                .await?;
            channel
                .basic_consume(
                    self.0.topology.queue(kind).as_str().into(),
                    format!("keel-{}", kind.name()).as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        publisher::bounded(publisher.timeout(), "consume", setup).await
    }

    /// Tests: takes one message of `kind` off its queue, runs it and settles it, on a
    /// connection of its own. `None` when the queue is empty.
    pub async fn step(&self, kind: Kind) -> Result<Option<Settled>, String> {
        let publisher = self.publisher().await?;
        let result = async {
            // The channel lives until the message is settled: dropping it closes it, and
            // the ack would fail.
            let limit = publisher.timeout();
            let channel =
                publisher::bounded(limit, "channel", publisher.connection().create_channel())
                    .await?;
            let get = channel.basic_get(
                self.0.topology.queue(kind).as_str().into(),
                BasicGetOptions::default(),
            );
            let message = publisher::bounded(limit, "get", get).await?;
            match message {
                Some(message) => self
                    .handle(&publisher, kind, &message.delivery)
                    .await
                    .map(Some),
                None => Ok(None),
            }
        }
        .await;
        publisher.close().await;
        result
    }

    /// Runs one delivery and settles it (module doc). An error means the broker could not
    /// be told: the delivery stays unacked and comes back.
    async fn handle(
        &self,
        publisher: &Publisher,
        kind: Kind,
        delivery: &Delivery,
    ) -> Result<Settled, String> {
        counter!(names::JOBS_CONSUMED, "kind" => kind.name()).increment(1);
        let headers = delivery.properties.headers().as_ref();
        let attempt = publisher::header_int(headers, publisher::ATTEMPT)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
            .max(1);
        let writer_xid = publisher::header_int(headers, publisher::WRITER_XID);
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| id.as_str().parse::<Uuid>().ok());
        let span = tracing::info_span!(
            "process",
            otel.name = format!("process {}", kind.name()),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.message.id = tracing::field::Empty,
            job.attempt = attempt,
        );
        let _ = span.set_parent(propagation::from_map(&publisher::trace_of(headers)));
        let started = Instant::now();
        let result = match (id, Job::parse(kind.name(), &delivery.data)) {
            (Some(id), Ok(job)) => {
                span.record("messaging.message.id", id.to_string());
                kinds::within(
                    self.0.jobs.job_timeout,
                    self.0.runner.run(id, &job, writer_xid),
                )
                .instrument(span.clone())
                .await
            }
            (None, _) => Err(JobError::Permanent("the message has no job id".into())),
            (_, Err(e)) => Err(JobError::Permanent(e)),
        };
        let settled = match result {
            Ok(outcome) => Settled::Finished(outcome),
            Err(error) => {
                span.record("otel.status_code", "ERROR");
                tracing::warn!(parent: &span, %error, kind = kind.name(), attempt, "job failed");
                self.after_failure(publisher, kind, id, delivery, attempt, &error)
                    .instrument(span.clone())
                    .await?
            }
        };
        publisher::bounded(
            publisher.timeout(),
            "ack",
            delivery.acker.ack(BasicAckOptions::default()),
        )
        .await?;
        let label = settled.label();
        counter!(names::JOBS_FINISHED, "kind" => kind.name(), "outcome" => label).increment(1);
        histogram!(names::JOB_DURATION, "kind" => kind.name(), "outcome" => label)
            .record(started.elapsed());
        Ok(settled)
    }

    /// Sends a failed job to its next retry queue, or parks it; confirmed before the
    /// original is acked.
    async fn after_failure(
        &self,
        publisher: &Publisher,
        kind: Kind,
        id: Option<Uuid>,
        delivery: &Delivery,
        attempt: u32,
        error: &JobError,
    ) -> Result<Settled, String> {
        let retry = matches!(error, JobError::Transient(_)) && attempt < self.0.jobs.max_attempts;
        let next = attempt + 1;
        let headers = delivery.properties.headers().as_ref();
        let mut table = publisher::headers(
            &publisher::trace_of(headers),
            if retry { next } else { attempt },
            publisher::header_int(headers, publisher::WRITER_XID),
        );
        table.insert(
            publisher::LAST_ERROR.into(),
            publisher::text(&error.to_string()),
        );
        // A message without a job id is parked under a new one, so that it can be named.
        let id = id.unwrap_or_else(Uuid::now_v7);
        let message = Outgoing {
            id,
            kind: kind.name(),
            payload: &delivery.data,
            headers: table,
        };
        if retry {
            let (index, _) = self.0.jobs.retry_delay(next);
            publisher
                .publish("", &self.0.topology.retry_queue(kind, index), message)
                .await?;
            Ok(Settled::Retried { next })
        } else {
            publisher
                .publish("", &self.0.topology.parked(), message)
                .await?;
            Ok(Settled::Parked)
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.0.topology
    }
}

/// How often the queue-depth gauges are refreshed.
const DEPTH_INTERVAL: Duration = Duration::from_secs(5);

/// Sets `keel_queue_depth` for every queue of the topology, every few seconds, on the
/// worker's connection (a passive declare answers with the count of ready messages).
async fn record_depths(publisher: Arc<Publisher>, topology: Topology, lost: CancellationToken) {
    let Ok(channel) = publisher.connection().create_channel().await else {
        return;
    };
    loop {
        for queue in topology.queues() {
            match super::topology::ready(&channel, &queue).await {
                Ok(ready) => gauge!(names::QUEUE_DEPTH, "queue" => queue).set(f64::from(ready)),
                // A passive declare of a missing queue closes the channel: stop until the
                // next connection declares the topology again.
                Err(_) => return,
            }
        }
        tokio::select! {
            () = lost.cancelled() => return,
            () = tokio::time::sleep(DEPTH_INTERVAL) => {}
        }
    }
}
