//! The pieces of the tower middleware around both listeners: request ids
//! ([`request_id`]), the request span and W3C trace context ([`trace`]), the RED metrics
//! ([`metrics`]), and error responses ([`errors`]). They are put in order, in one stack
//! that reads top to bottom, by the assembly (`crate::server`); the order, and why, is
//! documented there.
//!
//! The guardrails of later chapters (rate limit, deadline, load shedding) are separate
//! modules here, each checking its fix flag per request, and take their place in that
//! one stack.

pub mod errors;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
pub mod trace;
