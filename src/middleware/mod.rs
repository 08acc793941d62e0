//! The pieces of the tower middleware around both listeners: request ids
//! ([`request_id`]), the request span and W3C trace context ([`trace`]), the RED metrics
//! ([`metrics`]), and error responses ([`errors`]). They are put in order, in one stack
//! that reads top to bottom, by the assembly (`crate::server`); the order, and why, is
//! documented there.
//!
//! The guardrails are separate modules here, each checking its fix flag per request:
//! [`deadline`] (request deadlines) and [`shed`] (adaptive load shedding with
//! criticality).

pub mod deadline;
pub mod errors;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
pub mod shed;
pub mod trace;
