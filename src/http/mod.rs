//! The HTTP edge that the public API, the admin listener and the middleware share: the
//! error type and its problem+json rendering, the extractors whose rejections use it,
//! conditional GET (`ETag`, `If-None-Match`) for single resources, and the rate-limit
//! header fields.
//!
//! It imports no handler and no state, so `api`, `admin` and `middleware` can all depend
//! on it without depending on each other.

pub mod client_ip;
pub mod conditional;
pub mod error;
pub mod extract;
pub mod problem;
pub mod rate_limit;
pub mod route_class;

pub use client_ip::TrustedProxies;
pub use conditional::conditional_json;
pub use error::{ApiError, AsDatabaseError, ResultExt};
pub use extract::{AppJson, AppPath, AppQuery};
