//! Keyset pagination at the HTTP edge: `?limit=&cursor=`, and the page body.
//!
//! The cursor is opaque to clients: a signed position (`auth::CursorKey`) bound to the
//! list it came from; a cursor that does not verify for this list is a 422.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::CursorKey;
use crate::db::Keyset;
use crate::http::ApiError;

/// The contract's page sizes.
pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

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
    use crate::auth::cursor_fixtures::{key, position};

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
