//! Connections to Redis: a deadpool pool of redis-rs multiplexed connections, with the
//! timeouts of `RedisConfig` and without the per-checkout `PING`.
//!
//! # Why a wrapper around `deadpool_redis::Manager`
//!
//! deadpool-redis recycles a connection on every `pool.get()` by sending `UNWATCH` and
//! `PING` in a pipeline: one full round trip before the command the caller came for. On a
//! cache hit, which is one round trip, that doubles the Redis cost (measured by the
//! ceiling example: `/redis` vs `/redis-ping`, docs/benchmarks.md). [`Manager`] creates
//! connections through deadpool-redis' own manager (same URL handling, same connection
//! config) but recycles for free. What the ping would catch — a connection that died
//! while idle — shows up instead as an error on the command that uses it; [`Conn::failed`]
//! then takes that connection out of the pool, so the next checkout opens a fresh one.
//! Keel never uses `WATCH` (its atomic steps are Lua scripts), so the `UNWATCH` is moot.
//!
//! # Two layers of timeouts
//!
//! The connection's: `KEEL_REDIS_CONNECT_TIMEOUT` to open one, `KEEL_REDIS_COMMAND_TIMEOUT`
//! for each response (redis-rs' own defaults are 1 s and 500 ms, far too long for a
//! cache that is meant to be faster than the database behind it). The pool's:
//! `KEEL_REDIS_POOL_WAIT_TIMEOUT` for a free connection, and the connect timeout again for
//! creating one; deadpool enforces them only with a runtime set, hence `Runtime::Tokio1`.

use std::ops::{Deref, DerefMut};

use deadpool::Runtime;
use deadpool::managed::{self, Metrics, Object, PoolConfig, RecycleResult, Timeouts};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{AsyncConnectionConfig, RedisError};
use secrecy::ExposeSecret as _;

use crate::config::RedisConfig;

/// deadpool-redis' manager, minus the recycle round trip.
pub struct Manager(deadpool_redis::Manager);

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        managed::Manager::create(&self.0).await
    }

    async fn recycle(
        &self,
        _: &mut MultiplexedConnection,
        _: &Metrics,
    ) -> RecycleResult<RedisError> {
        // No PING: see the module doc. A broken connection is removed by `Conn::failed`.
        Ok(())
    }
}

pub type Pool = managed::Pool<Manager>;

/// Builds the pool. Nothing connects yet: connections open on first use, so the service
/// starts (degraded) while Redis is down.
pub fn pool(config: &RedisConfig) -> anyhow::Result<Pool> {
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout));
    let manager = deadpool_redis::Manager::new_with_config(config.url.expose_secret(), connection)?;
    let pool = managed::Pool::builder(Manager(manager))
        .config(PoolConfig {
            max_size: config.pool_size,
            timeouts: Timeouts {
                wait: Some(config.pool_wait_timeout),
                create: Some(config.connect_timeout),
                recycle: None,
            },
            ..PoolConfig::default()
        })
        .runtime(Runtime::Tokio1)
        .build()?;
    Ok(pool)
}

/// A pooled connection.
pub struct Conn(Object<Manager>);

impl Conn {
    pub async fn get(pool: &Pool) -> Result<Self, managed::PoolError<RedisError>> {
        pool.get().await.map(Conn)
    }

    /// After a command failed: a connection that can no longer be trusted (dropped,
    /// I/O error, a reply out of step) leaves the pool instead of going back to it.
    pub fn failed(self, error: &RedisError) {
        // A timeout is not a reason: redis-rs matches late replies to their requests,
        // so a slow connection stays usable, and replacing it would add a reconnect to
        // every slow call.
        if error.is_unrecoverable_error() {
            drop(Object::take(self.0));
        }
    }
}

impl Deref for Conn {
    type Target = MultiplexedConnection;
    fn deref(&self) -> &MultiplexedConnection {
        &self.0
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.0
    }
}
