//! Connections to RabbitMQ: opened with a deadline, re-opened with backoff and jitter, and
//! probed for readiness.
//!
//! The relay and the worker each own a connection and their own reconnect loop (see
//! `relay`, `worker`) rather than lapin's automatic recovery: a reconnect here re-declares
//! the topology and restarts the consumers from a clean slate, and the messages a dead
//! connection held unacknowledged are redelivered by the broker — which the handlers are
//! built for. That path is exercised by a test that cuts the broker mid-stream.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use rand::RngExt as _;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::Mutex;

use crate::config::JobsConfig;

/// Opens connections to the broker. Cloning shares the probe's connection.
#[derive(Clone)]
pub struct Broker(Arc<Inner>);

struct Inner {
    url: SecretString,
    connect_timeout: Duration,
    min_delay: Duration,
    max_delay: Duration,
    /// The connection readiness probes reuse while it stays open.
    probe: Mutex<Option<Connection>>,
}

impl Broker {
    pub fn new(config: &JobsConfig) -> Self {
        Self(Arc::new(Inner {
            url: config.amqp_url.clone(),
            connect_timeout: config.connect_timeout,
            min_delay: config.reconnect_min_delay,
            max_delay: config.reconnect_max_delay,
            probe: Mutex::new(None),
        }))
    }

    /// Opens a connection named `name` (the broker's UI shows it), within the connect
    /// timeout.
    pub async fn connect(&self, name: &str) -> Result<Connection, String> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connect = Connection::connect(self.0.url.expose_secret(), properties);
        match tokio::time::timeout(self.0.connect_timeout, connect).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(format!("rabbitmq: {e}")),
            Err(_) => Err(format!(
                "rabbitmq: no connection within {:?}",
                self.0.connect_timeout
            )),
        }
    }

    /// A fresh backoff for a reconnect loop.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            min: self.0.min_delay,
            max: self.0.max_delay,
            ceiling: self.0.min_delay,
        }
    }

    /// Readiness: up while a connection opens (one is kept open between probes).
    pub async fn probe(&self) -> Result<(), String> {
        let mut held = self.0.probe.lock().await;
        if held.as_ref().is_some_and(|c| c.status().connected()) {
            return Ok(());
        }
        *held = Some(self.connect("keel readiness").await?);
        Ok(())
    }
}

/// Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
/// Jitter"): each wait is uniform in [0, ceiling], the ceiling doubling up to the maximum,
/// so that clients that failed together spread out instead of retrying in step.
pub struct Backoff {
    min: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let wait = self.ceiling.mul_f64(rand::rng().random_range(0.0..=1.0));
        self.ceiling = (self.ceiling * 2).min(self.max);
        wait.max(Duration::from_millis(1))
    }

    /// After a success: the next failure starts from the minimum again.
    pub fn reset(&mut self) {
        self.ceiling = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_ceiling_with_jitter_and_resets() {
        let mut backoff = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(400),
            ceiling: Duration::from_millis(100),
        };
        let ceilings: Vec<Duration> = (0..4)
            .map(|_| {
                let ceiling = backoff.ceiling;
                assert!(backoff.next_delay() <= ceiling);
                ceiling
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 400].map(Duration::from_millis));
        backoff.reset();
        assert_eq!(backoff.ceiling, Duration::from_millis(100));
    }
}
