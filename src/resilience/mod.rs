//! Resilience around the dependencies Keel can serve without: Redis now, RabbitMQ and SMTP
//! next. When one of them is down, each call to it should fail at once and take its
//! fallback (Redis down → read from Postgres), rather than wait out a timeout against
//! something that is not there, and the dependency should get room to come back.
//!
//! - [`Breaker`]: a circuit breaker, one per dependency, shared by every caller of it.
//! - [`Deadline`]: the request's deadline, which every dependency call cuts its timeout to
//!   ([`deadline::budget`]).
//! - [`AdaptiveLimit`]: the load shedder's concurrency limit, found from observed latency
//!   (Gradient2).
//!
//! The module imports only the metric names from the crate: the caller names the
//! breaker, passes its settings (from its own config section) and decides what counts as a
//! failure, so the cache, the jobs and the database layer can all use it without depending
//! on each other. Retry with a budget and timeouts cut from a request's deadline belong here too
//! when they land.

mod breaker;
pub mod deadline;
mod limit;

pub use breaker::{Breaker, BreakerSettings, BreakerState, Permit};
pub use deadline::Deadline;
pub use limit::{AdaptiveLimit, LimitSettings, Token};
