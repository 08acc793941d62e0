//! Signed pagination cursors.
//!
//! A cursor is the position after the last row of a page (`created_at`, `id`), signed
//! with an HMAC over the position *and the list it belongs to* (its scope: whose projects,
//! which project's tasks with which filters). Clients cannot forge a position, and a
//! cursor replayed on another list — another user's, another project's, another filter —
//! fails verification rather than reading a page of something else. The cursor is not
//! encrypted: the position is no secret, only its integrity matters.
//!
//! The key is derived from the JWT secret, so rotating that secret also retires
//! outstanding cursors (clients restart from the first page; cursors are short-lived).
//! It lives with the other keys derived from the server secret, not in the HTTP layer,
//! so that the shared state can hold it without importing the handlers.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::db::Keyset;

const CURSOR_VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const CURSOR_LEN: usize = 1 + 8 + 16 + MAC_LEN;

type HmacSha256 = Hmac<Sha256>;

/// The key that signs cursors.
#[derive(Clone)]
pub struct CursorKey([u8; 32]);

impl CursorKey {
    /// Derives the cursor key from a server secret (HMAC as a KDF with a fixed label, so
    /// the cursor key is unrelated to the token-signing key).
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"keel/cursor-key/v1");
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self, position: &[u8], scope: &str) -> [u8; MAC_LEN] {
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(position);
        mac.update(scope.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    pub fn encode(&self, position: Keyset, scope: &str) -> String {
        let mut bytes = Vec::with_capacity(CURSOR_LEN);
        bytes.push(CURSOR_VERSION);
        bytes.extend_from_slice(&position.created_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(position.id.as_bytes());
        let mac = self.mac(&bytes, scope);
        bytes.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(&self, cursor: &str, scope: &str) -> Option<Keyset> {
        let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        if bytes.len() != CURSOR_LEN || bytes[0] != CURSOR_VERSION {
            return None;
        }
        let (position, mac) = bytes.split_at(CURSOR_LEN - MAC_LEN);
        let expected = self.mac(position, scope);
        // Constant-time comparison: the MAC must not be guessable byte by byte.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(mac, &expected[..])) {
            return None;
        }
        let micros = i64::from_be_bytes(position[1..9].try_into().ok()?);
        let id = Uuid::from_slice(&position[9..25]).ok()?;
        Some(Keyset {
            created_at: DateTime::from_timestamp_micros(micros)?,
            id,
        })
    }
}

/// A key and positions for the tests of cursors and of the pages that carry them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn key() -> CursorKey {
        CursorKey::derive(b"test secret")
    }

    /// Now, to the microsecond (what a cursor keeps).
    pub(crate) fn position() -> Keyset {
        let now = chrono::Utc::now();
        Keyset {
            created_at: DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap(),
            id: Uuid::now_v7(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{key, position};
    use super::*;

    #[test]
    fn a_cursor_round_trips_on_its_own_list() {
        let p = position();
        let cursor = key().encode(p, "projects|a");
        assert_eq!(key().decode(&cursor, "projects|a"), Some(p));
    }

    #[test]
    fn a_cursor_is_refused_on_another_list_or_key() {
        let cursor = key().encode(position(), "projects|a");
        assert_eq!(key().decode(&cursor, "projects|b"), None);
        assert_eq!(
            CursorKey::derive(b"other").decode(&cursor, "projects|a"),
            None
        );
    }

    #[test]
    fn a_tampered_or_garbage_cursor_is_refused() {
        let cursor = key().encode(position(), "s");
        let mut bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        bytes[5] ^= 1;
        assert_eq!(key().decode(&URL_SAFE_NO_PAD.encode(&bytes), "s"), None);
        for garbage in ["", "abc", "!!!!", &"A".repeat(55)] {
            assert_eq!(key().decode(garbage, "s"), None, "{garbage}");
        }
    }
}
