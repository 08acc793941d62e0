//! Keyset pagination at the HTTP edge: `?limit=&cursor=`, opaque cursors, the page body.
//!
//! A cursor is the position after the last row of a page (`created_at`, `id`), signed
//! with an HMAC over the position *and the list it belongs to* (its scope: whose projects,
//! which project's tasks with which filters). Clients cannot forge a position, and a
//! cursor replayed on another list — another user's, another project's, another filter —
//! fails verification and gets 422 rather than a page of something else. The cursor is
//! not encrypted: the position is no secret, only its integrity matters.
//!
//! The key is derived from the JWT secret, so rotating that secret also retires
//! outstanding cursors (clients restart from the first page; cursors are short-lived).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use crate::db::Keyset;

/// The contract's page sizes.
pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

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

/// `?limit=&cursor=`, as sent.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size: 1-100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page, as received; omit (or leave empty) for
    /// the first page. Opaque: only cursors this server issued for this list verify.
    #[param(value_type = Option<String>)]
    pub cursor: Option<String>,
}

/// Which page to read, validated.
pub struct PageRequest {
    pub after: Keyset,
    pub limit: i64,
    key: CursorKey,
    scope: String,
}

impl PageParams {
    /// Validates the parameters for the list `scope`, starting at `start` when there is no
    /// cursor (`Keyset::NEWEST` or `Keyset::OLDEST`).
    pub fn parse(
        self,
        key: &CursorKey,
        scope: String,
        start: Keyset,
    ) -> Result<PageRequest, ApiError> {
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    ));
                }
            },
        };
        // An empty cursor is no cursor: templates that render a null `next_cursor` as ""
        // should get the first page, not an error.
        let after = match self.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => start,
            Some(cursor) => key.decode(cursor, &scope).ok_or_else(|| {
                ApiError::invalid(
                    "cursor",
                    "is not a cursor of this list; start again without one",
                )
            })?,
        };
        Ok(PageRequest {
            after,
            limit,
            key: key.clone(),
            scope,
        })
    }
}

impl PageRequest {
    /// How many rows to fetch: one more than the page, to learn whether a next page exists
    /// without a second query.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }

    /// Turns the fetched rows into a page, with a cursor when more rows follow.
    pub fn page<R, T>(
        &self,
        mut rows: Vec<R>,
        keyset: impl Fn(&R) -> Keyset,
        item: impl FnMut(R) -> T,
    ) -> Page<T> {
        let more = rows.len() as i64 > self.limit;
        rows.truncate(self.limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if more => Some(self.key.encode(keyset(last), &self.scope)),
            _ => None,
        };
        Page {
            items: rows.into_iter().map(item).collect(),
            next_cursor,
        }
    }
}

/// A page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn key() -> CursorKey {
        CursorKey::derive(b"test secret")
    }

    fn position() -> Keyset {
        let now = Utc::now();
        Keyset {
            created_at: DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap(),
            id: Uuid::now_v7(),
        }
    }

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

    #[test]
    fn limits_outside_the_contract_are_refused() {
        for bad in ["0", "101", "-1", "ten", "1.5"] {
            let params = PageParams {
                limit: Some(bad.into()),
                cursor: None,
            };
            assert!(
                params.parse(&key(), "s".into(), Keyset::NEWEST).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_full_page_carries_a_cursor_and_a_short_one_does_not() {
        let request = PageParams {
            limit: Some("2".into()),
            cursor: None,
        }
        .parse(&key(), "s".into(), Keyset::NEWEST)
        .unwrap();
        let rows = vec![position(), position(), position()];
        let page = request.page(rows.clone(), |k| *k, |k| k.id);
        assert_eq!(page.items.len(), 2);
        let next = page.next_cursor.expect("a third row exists");
        assert_eq!(key().decode(&next, "s"), Some(rows[1]));
        let last = request.page(rows[..2].to_vec(), |k| *k, |k| k.id);
        assert!(last.next_cursor.is_none());
    }
}
