//! Resilience around the dependencies: Redis, RabbitMQ, SMTP and Postgres. When one of them
//! is down, each call to it should fail at once and take its fallback (Redis down → read
//! from Postgres; RabbitMQ down → jobs wait in the outbox; SMTP down → the job is retried
//! later), rather than wait out a timeout against something that is not there, and the
//! dependency should get room to come back.
//!
//! - [`Breaker`]: a circuit breaker, one per dependency, shared by every caller of it, and
//!   the [`BreakerSwitch`] through which the `circuit_breaker` fix flag reaches it.
//! - [`Retry`]: retries of idempotent calls, with backoff and a budget per dependency.
//! - [`Deadline`]: the request's deadline, which every dependency call cuts its timeout to
//!   ([`deadline::budget`]).
//! - [`AdaptiveLimit`]: the load shedder's concurrency limit, found from observed latency
//!   (Gradient2).
//! - [`Faults`]: the workshop's fault switches, an added latency and a share of failing
//!   calls per [`Dependency`], injected inside each breaker's permit ([`fault`]).
//!
//! The module imports only the metric names and the settings types from the crate: the
//! caller names the breaker, passes its settings (from its own config section) and decides
//! what counts as a failure, so the cache, the jobs and the database layer can all use it
//! without depending on each other.

mod breaker;
pub mod deadline;
pub mod fault;
mod limit;
mod retry;

pub use breaker::{Breaker, BreakerSettings, BreakerState, BreakerSwitch, Permit};
pub use deadline::Deadline;
pub use fault::{Dependency, Fault, FaultState, Faults, InjectedFault};
pub use limit::{AdaptiveLimit, LimitSettings, Token};
pub use retry::{Retry, RetrySettings};
