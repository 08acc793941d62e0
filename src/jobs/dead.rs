//! The parked jobs, operable: `keel jobs dead` lists them, `keel jobs replay` sends them
//! back to their work queues with a fresh attempt count.
//!
//! Listing takes every message off the parking queue without acknowledging it and then
//! closes the channel, which returns them all, in order: the queue is unchanged. Replaying
//! publishes a copy to the work exchange, waits for the broker's confirm, and only then
//! acks the parked one — a crash in between leaves the job both parked and queued (done
//! once, thanks to the handlers), never lost.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use uuid::Uuid;

use super::publisher::{self, Outgoing, Publisher};
use super::topology::Topology;
use super::{Broker, Kind};

/// A parked job, as `keel jobs dead` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Parked {
    pub id: String,
    pub kind: String,
    pub attempts: i64,
    pub last_error: String,
}

fn parked(delivery: &Delivery) -> Parked {
    let headers = delivery.properties.headers().as_ref();
    Parked {
        id: delivery
            .properties
            .message_id()
            .as_ref()
            .map_or_else(String::new, ToString::to_string),
        kind: delivery
            .properties
            .kind()
            .as_ref()
            .map_or_else(String::new, ToString::to_string),
        attempts: publisher::header_int(headers, publisher::ATTEMPT).unwrap_or(1),
        // A message parked by the broker's delivery limit has no error of Keel's.
        last_error: publisher::header_text(headers, publisher::LAST_ERROR)
            .or_else(|| publisher::header_text(headers, "x-first-death-reason"))
            .unwrap_or_default(),
    }
}

/// Lists the parked jobs (at most `limit`), leaving them parked.
pub async fn list(
    broker: &Broker,
    topology: &Topology,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Vec<Parked>, String> {
    let connection = broker.connect("keel jobs dead").await?;
    let listing = async {
        let channel = connection.create_channel().await?;
        topology.declare(&channel).await?;
        let mut found = Vec::new();
        while found.len() < limit {
            let Some(message) = channel
                .basic_get(
                    topology.parked().as_str().into(),
                    BasicGetOptions::default(),
                )
                .await?
            else {
                break;
            };
            found.push(parked(&message.delivery));
        }
        // Closing the channel returns every message taken above to the queue.
        channel.close(200, "listed".into()).await?;
        Ok(found)
    };
    let result = publisher::bounded(timeout, "listing the parked jobs", listing).await;
    let close = connection.close(200, "listed".into());
    let _ = publisher::bounded(timeout, "close", close).await;
    result
}

/// Which parked jobs to replay.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kind: Option<Kind>,
    pub id: Option<Uuid>,
}

/// Sends the parked jobs that match `filter` back to their work queues; returns how many.
pub async fn replay(
    broker: &Broker,
    topology: &Topology,
    filter: &Filter,
    confirm_timeout: std::time::Duration,
) -> Result<usize, String> {
    let publisher = Publisher::open(broker, "keel jobs replay", topology, confirm_timeout).await?;
    let result = replay_on(&publisher, topology, filter).await;
    // Closing returns the parked jobs that did not match.
    publisher.close().await;
    result
}

async fn replay_on(
    publisher: &Publisher,
    topology: &Topology,
    filter: &Filter,
) -> Result<usize, String> {
    let limit = publisher.timeout();
    let channel =
        publisher::bounded(limit, "channel", publisher.connection().create_channel()).await?;
    let mut replayed = 0;
    let next = || {
        channel.basic_get(
            topology.parked().as_str().into(),
            BasicGetOptions::default(),
        )
    };
    while let Some(message) = publisher::bounded(limit, "get", next()).await? {
        let delivery = &message.delivery;
        let job = parked(delivery);
        let Some(kind) = Kind::from_name(&job.kind).filter(|k| Kind::QUEUED.contains(k)) else {
            continue;
        };
        let id = job.id.parse::<Uuid>().ok();
        if filter.kind.is_some_and(|k| k != kind) || filter.id.is_some_and(|f| Some(f) != id) {
            continue;
        }
        let headers = delivery.properties.headers().as_ref();
        publisher
            .publish(
                &topology.exchange(),
                kind.name(),
                Outgoing {
                    id: id.unwrap_or_else(Uuid::now_v7),
                    kind: kind.name(),
                    payload: &delivery.data,
                    headers: publisher::headers(
                        &publisher::trace_of(headers),
                        1,
                        publisher::header_int(headers, publisher::WRITER_XID),
                    ),
                },
            )
            .await?;
        publisher::bounded(limit, "ack", delivery.acker.ack(BasicAckOptions::default())).await?;
        replayed += 1;
    }
    Ok(replayed)
}
