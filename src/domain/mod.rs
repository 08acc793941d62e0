//! Domain types and rules, free of HTTP and SQL (no axum, no sqlx in here).
//!
//! Input arrives as plain strings; each newtype's `parse` is the one place that decides what a
//! valid value is, so a handler holding an [`Email`] or a [`TaskTitle`] never re-checks it. The
//! OpenAPI schema states the same limits (see `api::openapi`), and the database repeats them as
//! CHECK constraints: three layers, one rule, each there for a different reader.

mod idempotency;
mod project;
mod role;
mod task;
mod text;
mod user;
mod validation;

pub use idempotency::IdempotencyKey;
pub use project::{ProjectDescription, ProjectName};
pub use role::Role;
pub use task::{CommentBody, TaskDescription, TaskStatus, TaskTitle};
pub use text::{MULTI_LINE_PATTERN, SINGLE_LINE_PATTERN};
pub use user::{Email, Password, UserName};
pub use validation::{FieldError, ValidationErrors, validate};
