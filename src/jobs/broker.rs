//! Connections to RabbitMQ: opened with a deadline, through the circuit breaker around the
//! broker, re-opened with backoff and jitter, and probed for readiness.
//!
//! The breaker (`rabbitmq`) judges every connection Keel opens to the broker (the relay's,
//! the worker's, readiness's) and every batch the relay publishes (`relay`). While it is
//! open no connection is tried and the relay publishes nothing: jobs wait in the outbox,
//! writes go on succeeding, and readiness reports RabbitMQ `down`.
//!
//! The workshop's `rabbitmq` fault switch (`resilience::fault`) rides here too, for the
//! relay, which injects it once per batch inside the breaker's permit ([`Broker::faults`]).
//! Connections, the worker's consumers and the worker's own publishes are left alone: the
//! switch stands for "the broker fails or is slow to take jobs".
//!
//! Connection setup is not retried here with the retry budget (`crate::resilience::Retry`):
//! every caller already loops on it, with exponential backoff and full jitter
//! ([`Backoff`]), and a second retry loop inside the first would only multiply the attempts.
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
use crate::resilience::{Breaker, BreakerState, BreakerSwitch, Faults};

/// What a call refused by the breaker fails with.
pub const BREAKER_OPEN: &str = "rabbitmq: circuit breaker open";

/// Opens connections to the broker. Cloning shares the probe's connection and the breaker.
#[derive(Clone)]
pub struct Broker(Arc<Inner>);

struct Inner {
    url: SecretString,
    connect_timeout: Duration,
    min_delay: Duration,
    max_delay: Duration,
    /// The circuit breaker around the broker, shared by every connection and by the relay.
    breaker: Breaker,
    /// The workshop's fault switches, of which the relay reads `rabbitmq`.
    faults: Faults,
    /// The connection readiness probes reuse while it stays open.
    probe: Mutex<Option<Connection>>,
}

impl Broker {
    /// The broker of `config`, its breaker following `breakers` (the `circuit_breaker` fix
    /// flag, `Flags::breaker_switch`), with the fault switches `faults` (`Flags::faults`).
    pub fn new(config: &JobsConfig, breakers: &BreakerSwitch, faults: &Faults) -> Self {
        Self(Arc::new(Inner {
            url: config.amqp_url.clone(),
            connect_timeout: config.connect_timeout,
            min_delay: config.reconnect_min_delay,
            max_delay: config.reconnect_max_delay,
            breaker: Breaker::new("rabbitmq", config.amqp_breaker).with_switch(breakers),
            faults: faults.clone(),
            probe: Mutex::new(None),
        }))
    }

    /// Opens a connection named `name` (the broker's UI shows it), within the connect
    /// timeout; refused at once while the breaker is open.
    pub async fn connect(&self, name: &str) -> Result<Connection, String> {
        let Some(permit) = self.0.breaker.try_acquire() else {
            return Err(BREAKER_OPEN.to_owned());
        };
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connect = Connection::connect(self.0.url.expose_secret(), properties);
        match tokio::time::timeout(self.0.connect_timeout, connect).await {
            Ok(Ok(connection)) => {
                permit.success();
                Ok(connection)
            }
            Ok(Err(e)) => {
                permit.failure();
                Err(format!("rabbitmq: {e}"))
            }
            Err(_) => {
                permit.failure();
                Err(format!(
                    "rabbitmq: no connection within {:?}",
                    self.0.connect_timeout
                ))
            }
        }
    }

    /// The circuit breaker around the broker: the relay takes a permit per batch.
    pub fn breaker(&self) -> &Breaker {
        &self.0.breaker
    }

    /// The fault switches: the relay injects `rabbitmq`'s per batch.
    pub fn faults(&self) -> &Faults {
        &self.0.faults
    }

    /// A fresh backoff for a reconnect loop.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            min: self.0.min_delay,
            max: self.0.max_delay,
            ceiling: self.0.min_delay,
        }
    }

    /// Readiness: up while a connection opens (one is kept open between probes) and the
    /// breaker is not open (an open breaker counts as down: Keel is not using the broker).
    pub async fn probe(&self) -> Result<(), String> {
        if self.0.breaker.state() == BreakerState::Open {
            return Err(BREAKER_OPEN.to_owned());
        }
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
