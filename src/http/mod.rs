//! The HTTP edge that the public API, the admin listener and the middleware share: the
//! error type and its problem+json rendering, the extractors whose rejections use it, and
//! conditional GET (`ETag`, `If-None-Match`) for single resources.
//!
//! It imports no handler and no state, so `api`, `admin` and `middleware` can all depend
//! on it without depending on each other.

pub mod conditional;
pub mod error;
pub mod extract;
pub mod problem;

pub use conditional::conditional_json;
pub use error::{ApiError, AsDatabaseError, ResultExt};
pub use extract::{AppJson, AppPath, AppQuery};
