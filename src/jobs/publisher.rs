//! A connection and a confirm-mode channel: how the relay, the worker (retries, parking)
//! and `keel jobs replay` put messages on the broker.
//!
//! Every message is published with `mandatory` (a message that no queue takes comes back
//! as an error instead of vanishing) and persistent, and counts as sent only once the
//! broker has confirmed it: a quorum queue confirms once a majority of its replicas hold
//! the message.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use uuid::Uuid;

use super::broker::Broker;
use super::topology::Topology;

pub const ATTEMPT: &str = "x-keel-attempt";
pub const WRITER_XID: &str = "x-keel-writer-xid";
pub const LAST_ERROR: &str = "x-keel-last-error";

/// A message to publish.
pub struct Outgoing<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub payload: &'a [u8],
    pub headers: FieldTable,
}

/// What became of a published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Confirmed,
    /// The broker refused it (a quorum queue without a majority, say).
    Nacked,
    /// No queue took it: the topology is missing or wrong.
    Returned(String),
}

/// A connection with one channel in confirm mode.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Connects, declares the topology and turns confirms on.
    pub async fn open(
        broker: &Broker,
        name: &str,
        topology: &Topology,
        confirm_timeout: Duration,
    ) -> Result<Self, String> {
        let connection = broker.connect(name).await?;
        let setup = async {
            let channel = connection.create_channel().await?;
            topology.declare(&channel).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        };
        let channel = match bounded(confirm_timeout, "declaring the topology", setup).await {
            Ok(channel) => channel,
            Err(e) => {
                let close = connection.close(200, "setup failed".into());
                let _ = bounded(confirm_timeout, "close", close).await;
                return Err(e);
            }
        };
        Ok(Self {
            connection,
            channel,
            confirm_timeout,
        })
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The deadline of one exchange with the broker on this connection.
    pub fn timeout(&self) -> Duration {
        self.confirm_timeout
    }

    /// Sends one message; await the returned confirm with [`Publisher::confirmed`].
    pub async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Outgoing<'_>,
    ) -> Result<PublisherConfirm, String> {
        let properties = BasicProperties::default()
            .with_message_id(message.id.to_string().as_str().into())
            .with_type(message.kind.into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(unix_seconds())
            .with_headers(message.headers);
        let publish = self.channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            message.payload,
            properties,
        );
        bounded(self.confirm_timeout, "publish", publish).await
    }

    /// Waits for the broker's answer to one message, within the confirm timeout.
    pub async fn confirmed(&self, confirm: PublisherConfirm) -> Result<Sent, String> {
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| format!("rabbitmq: no confirm within {:?}", self.confirm_timeout))?
            .map_err(|e| format!("rabbitmq confirm: {e}"))?;
        if confirmation.is_nack() {
            return Ok(Sent::Nacked);
        }
        Ok(match confirmation.take_message() {
            Some(returned) => Sent::Returned(returned.reply_text.to_string()),
            None => Sent::Confirmed,
        })
    }

    /// Sends one message and waits for its confirm; anything but a confirm is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Outgoing<'_>,
    ) -> Result<(), String> {
        let confirm = self.send(exchange, routing_key, message).await?;
        match self.confirmed(confirm).await? {
            Sent::Confirmed => Ok(()),
            other => Err(format!("rabbitmq did not take the message: {other:?}")),
        }
    }

    /// Closes the connection, within the deadline: closing a connection that died under
    /// lapin can wait forever for the broker's answer.
    pub async fn close(&self) {
        let close = self.connection.close(200, "bye".into());
        let _ = bounded(self.confirm_timeout, "close", close).await;
    }
}

/// Runs one exchange with the broker within `limit`. A connection that dies under lapin
/// mid-exchange can leave its future pending; the deadline turns that into an error, which
/// the caller's reconnect loop handles like any other.
pub async fn bounded<T>(
    limit: Duration,
    what: &str,
    exchange: impl Future<Output = lapin::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("rabbitmq {what}: {e}")),
        Err(_) => Err(format!("rabbitmq {what}: no answer within {limit:?}")),
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Headers carrying a trace context (`traceparent`, `tracestate`) and Keel's own.
pub fn headers(
    trace: &HashMap<String, String>,
    attempt: u32,
    writer_xid: Option<i64>,
) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in trace {
        table.insert(key.as_str().into(), text(value));
    }
    table.insert(ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(attempt)));
    if let Some(xid) = writer_xid {
        table.insert(WRITER_XID.into(), AMQPValue::LongLongInt(xid));
    }
    table
}

pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// A header's value as text, if it is a string.
pub fn header_text(table: Option<&FieldTable>, key: &str) -> Option<String> {
    match table?.inner().get(&ShortString::from(key))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A header's value as an integer, whatever integer type the sender chose.
pub fn header_int(table: Option<&FieldTable>, key: &str) -> Option<i64> {
    match table?.inner().get(&ShortString::from(key))? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The trace context headers of a message, as a map for the propagator.
pub fn trace_of(table: Option<&FieldTable>) -> HashMap<String, String> {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|key| header_text(table, key).map(|v| (key.to_owned(), v)))
        .collect()
}
