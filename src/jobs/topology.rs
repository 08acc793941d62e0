//! The RabbitMQ names and their declaration, idempotent, at every (re)connection.
//!
//! Under `KEEL_AMQP_PREFIX` (`keel.` here):
//!
//! | name | what |
//! |---|---|
//! | `keel.jobs` | the durable direct exchange the relay publishes to; routing key = job kind |
//! | `keel.{kind}` | a quorum queue per kind (`keel.email.task_assigned`, `keel.stats.recompute`); `x-delivery-limit` parks a message that keeps crashing its consumer |
//! | `keel.{kind}.retry.{delay}` | a quorum queue per kind and retry delay: messages wait out its fixed TTL, then dead-letter back to `keel.jobs` under their kind |
//! | `keel.parked` | the dead-letter (parking) queue: jobs past their last attempt, until `keel jobs replay` |
//!
//! Quorum queues (replicated, and the only kind with a delivery limit) throughout. Retries
//! wait in fixed-delay queues, one per delay, rather than with per-message TTLs: RabbitMQ
//! expires messages only at a queue's head, so a long TTL in front would hold back every
//! shorter one behind it. Dead-lettering is `at-least-once` (which needs `x-overflow:
//! reject-publish`): a message moving between queues is never dropped on the way.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::Kind;

/// The names under one prefix, and the settings declared with them.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    retry_delays: Vec<Duration>,
    delivery_limit: u32,
}

impl Topology {
    pub fn new(prefix: &str, retry_delays: &[Duration], delivery_limit: u32) -> Self {
        Self {
            prefix: prefix.to_owned(),
            retry_delays: retry_delays.to_vec(),
            delivery_limit,
        }
    }

    pub fn exchange(&self) -> String {
        format!("{}jobs", self.prefix)
    }

    pub fn queue(&self, kind: Kind) -> String {
        format!("{}{}", self.prefix, kind.name())
    }

    /// The retry queue of `kind` for the delay at `index` of `KEEL_JOBS_RETRY_DELAYS`,
    /// named by the delay (so that changing the delays declares new queues rather than
    /// conflicting with the old ones' arguments).
    pub fn retry_queue(&self, kind: Kind, index: usize) -> String {
        let delay = self.retry_delays[index.min(self.retry_delays.len() - 1)];
        format!(
            "{}{}.retry.{}ms",
            self.prefix,
            kind.name(),
            delay.as_millis()
        )
    }

    pub fn parked(&self) -> String {
        format!("{}parked", self.prefix)
    }

    /// Every name this topology declares (tests delete them afterwards).
    pub fn queues(&self) -> Vec<String> {
        let mut names = vec![self.parked()];
        for kind in Kind::QUEUED {
            names.push(self.queue(kind));
            for index in 0..self.retry_delays.len() {
                names.push(self.retry_queue(kind, index));
            }
        }
        names
    }

    /// Declares everything; idempotent while the settings stay the same.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange().as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(self.parked().as_str().into(), durable, quorum())
            .await?;
        for kind in Kind::QUEUED {
            let mut work = dead_letter_to("", &self.parked());
            work.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(limit(self.delivery_limit)),
            );
            channel
                .queue_declare(self.queue(kind).as_str().into(), durable, work)
                .await?;
            channel
                .queue_bind(
                    self.queue(kind).as_str().into(),
                    self.exchange().as_str().into(),
                    kind.name().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            for (index, delay) in self.retry_delays.iter().enumerate() {
                let mut wait = dead_letter_to(&self.exchange(), kind.name());
                let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                wait.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
                channel
                    .queue_declare(self.retry_queue(kind, index).as_str().into(), durable, wait)
                    .await?;
            }
        }
        Ok(())
    }
}

impl Topology {
    /// Deletes every queue and the exchange, messages included: tearing down an
    /// environment, or what a test or a benchmark declared under its own prefix.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in self.queues() {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        channel
            .exchange_delete(
                self.exchange().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
    }
}

/// The messages ready in `queue`, from a passive declare (which creates nothing). For a
/// queue that does not exist the broker answers with an error and closes the channel.
pub async fn ready(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(declared.message_count())
}

fn limit(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args
}

/// A quorum queue whose dead letters go to `exchange` under `routing_key`, at least once.
fn dead_letter_to(exchange: &str, routing_key: &str) -> FieldTable {
    let mut args = quorum();
    args.insert("x-dead-letter-exchange".into(), text(exchange));
    args.insert("x-dead-letter-routing-key".into(), text(routing_key));
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_under_the_prefix_and_retry_queues_carry_their_delay() {
        let topology = Topology::new(
            "t1.",
            &[Duration::from_secs(1), Duration::from_secs(60)],
            10,
        );
        assert_eq!(topology.exchange(), "t1.jobs");
        assert_eq!(topology.queue(Kind::TaskAssigned), "t1.email.task_assigned");
        assert_eq!(
            topology.retry_queue(Kind::StatsRecompute, 1),
            "t1.stats.recompute.retry.60000ms"
        );
        assert!(topology.queues().iter().all(|q| q.starts_with("t1.")));
        assert_eq!(topology.queues().len(), 1 + 2 * 3);
    }
}
