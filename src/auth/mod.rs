//! Credentials: password hashing and access tokens.
//!
//! Both are stateless by design. A token carries everything needed to authenticate a
//! request (no session table, no in-process cache of logins), so any instance serves any
//! request; what a user may *do* is not in the token but read from the database on each
//! request, so that removing a member takes effect on their very next request.
//!
//! Pagination cursors are signed here too ([`CursorKey`]), with a key derived from the
//! same server secret.

mod cursor;
mod jwt;
mod password;

pub use cursor::CursorKey;
#[cfg(test)]
pub(crate) use cursor::fixtures as cursor_fixtures;
pub use jwt::{IssuedToken, Keyring, TokenError};
pub use password::{HashError, PasswordHasher};
