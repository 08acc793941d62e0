//! Idempotency keys on the creates (draft-ietf-httpapi-idempotency-key-header): a client
//! that sends `Idempotency-Key` with a `POST` may repeat the request — after a timeout, a
//! dropped connection, a crash of its own — and be answered with the first response
//! instead of creating a second project, task or account.
//!
//! # How a keyed create runs
//!
//! 1. [`Idempotent`], the body extractor of the five creates, reads the key (malformed:
//!    422 naming the header, see `domain::IdempotencyKey`), reads the body once,
//!    fingerprints the request (SHA-256 of method, path and body) and parses the body as
//!    `AppJson` would.
//! 2. The handler validates the body, begins its transaction and [`Idempotency::claim`]s
//!    the key for the [`Caller`]. That waits (at most `KEEL_IDEMPOTENCY_WAIT`) for the
//!    key's lock, then reads the key's record:
//!    * none, or expired: [`Claim::Fresh`]. The handler creates, builds its response once
//!      ([`Created`]: the body serialised to bytes), [`Recorder::record`]s exactly those
//!      bytes in the same transaction, commits, and sends them;
//!    * a record of the same request: [`Claim::Answered`] with the stored status,
//!      `Location` and body, byte for byte, plus `Idempotent-Replayed: true` (Stripe's
//!      name for it); nothing is created;
//!    * a record of another request (another body, or another path): 422;
//!    * the lock not had within the wait — the first request is still running: 409, with
//!      `Retry-After`.
//!
//! # Why in the handler's transaction, not in a middleware around it
//!
//! The record commits with the create, or neither does. A middleware that stored the
//! response after the handler had committed would leave a moment in which the row exists
//! and the key does not: a crash or a lost connection there, and the client's retry
//! creates the duplicate that keys exist to prevent. The cost is a line in each create
//! handler (claim, record), and that every statement between them runs in the transaction.
//!
//! # Why an advisory lock, taken in a statement of its own
//!
//! Two duplicates arriving together would both find no record and both create. The
//! transaction-scoped advisory lock on (caller, key) makes the second wait for the first to
//! commit or roll back, after which it finds the record, or creates. The lock is taken
//! before the record is read and by a separate statement: under READ COMMITTED a statement
//! sees what was committed when it *started*, so a read in the statement that waited would
//! miss the record committed during the wait. The wait is bounded by `lock_timeout`, set
//! for that one statement and then put back, so the create's own statements lock as they
//! always do. A lock rather than an "in progress" row: nothing to clean up after a crash —
//! the lock goes with its transaction — and the table holds only finished answers.
//!
//! Between claim and commit the handlers use their transaction's connection only, never a
//! second one from the pool: duplicates waiting for the lock each hold a connection, and a
//! first request that needed another to finish could wait for one of theirs.
//!
//! # What is and is not replayed
//!
//! * Keys are per caller: the user; for the anonymous sign-up, the client's address
//!   (`http::client_ip`, which only trusted proxies can change). Two clients behind one
//!   address that chose the same key for different sign-ups would get a 422; with random
//!   keys (the draft recommends UUIDs) they do not meet.
//! * Only creates that succeed are recorded. A create that fails (422, 404, 409 "email
//!   taken") rolls back with nothing recorded, and a retry with the same key runs again:
//!   nothing was created, so running again is safe, and it answers with what is true now.
//! * Authentication and authorization run on every request, replays too: a caller who has
//!   lost access to the project gets its 404 or 403, not the stored body.
//! * After `KEEL_IDEMPOTENCY_TTL` (24 h) a key counts as absent and its record is
//!   overwritten by the next use; [`run_pruner`] deletes expired records.
//!
//! A request without the header is served exactly as before: no lock, no record.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use axum::extract::{FromRequest, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;
use uuid::Uuid;

mod responses;

pub use responses::Created;
use responses::{FIELD, in_flight, mismatched, replay};

use crate::config::IdempotencyConfig;
use crate::db::idempotency::{LOCK_NOT_AVAILABLE, NewRecord};
use crate::db::{self, Db, Tx};
use crate::domain::IdempotencyKey;
use crate::http::extract::json_body;
use crate::http::{ApiError, AppJson};
use crate::state::AppState;
use crate::telemetry::metrics::names;

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Expired records the pruner deletes per statement.
const PRUNE_BATCH: i64 = 10_000;

/// A create's body, with its idempotency key if it carried one: `Idempotent(key, body)`.
pub struct Idempotent<T>(pub Idempotency, pub T);

/// A request's idempotency key, fingerprint and settings; empty without the header.
pub struct Idempotency(Option<Keyed>);

struct Keyed {
    key: IdempotencyKey,
    fingerprint: [u8; 32],
    /// The route template, for the metrics.
    route: String,
    config: IdempotencyConfig,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Idempotent<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
        let key = key_of(request.headers()).inspect_err(|_| count(&route, "malformed"))?;
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let bytes = json_body(request, state).await?;
        let AppJson(body) = AppJson::from_bytes(&bytes)?;
        let keyed = key.map(|key| Keyed {
            key,
            fingerprint: fingerprint(method.as_str(), &path, &bytes),
            route,
            config: state.config.idempotency,
        });
        Ok(Self(Idempotency(keyed), body))
    }
}

/// The request's key: none without the header; 422 for a malformed one or for several.
fn key_of(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid(FIELD, "must be sent once"));
    }
    IdempotencyKey::parse(value.as_bytes())
        .map(Some)
        .map_err(|message| ApiError::invalid(FIELD, message))
}

/// What identifies "the same request": method, path and the exact body bytes. Method and
/// path contain no NUL, so the separators keep `("POST", "/a", "b")` and `("POST", "/ab",
/// "")` apart. The raw body rather than its parsed value: a client's retry resends the
/// same bytes, and a body re-encoded differently is another request as far as the client
/// can show.
fn fingerprint(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(method.as_bytes());
    hash.update([0]);
    hash.update(path.as_bytes());
    hash.update([0]);
    hash.update(body);
    hash.finalize().into()
}

/// Whose key it is: two callers' keys never meet.
#[derive(Debug, Clone, Copy)]
pub enum Caller {
    /// An authenticated user.
    User(Uuid),
    /// An anonymous client (sign-up), by its address.
    Client(IpAddr),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(id) => write!(f, "user:{id}"),
            Self::Client(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// What [`Idempotency::claim`] found.
pub enum Claim {
    /// Go ahead and create; record the response with the recorder before committing.
    Fresh(Recorder),
    /// Nothing to create: send this (a replay, a 422 or a 409) and roll back.
    Answered(Response),
}

impl Idempotency {
    /// Claims the key for `caller` inside the create's transaction `tx`, before the create
    /// (see the module docs). Without a key: always [`Claim::Fresh`], with a recorder that
    /// records nothing.
    pub async fn claim(self, tx: &mut Tx, caller: Caller) -> Result<Claim, ApiError> {
        let Some(keyed) = self.0 else {
            return Ok(Claim::Fresh(Recorder(None)));
        };
        let caller = caller.to_string();
        let key = keyed.key.as_str();
        let wait = lock_timeout(keyed.config.wait);
        let previous = db::idempotency::set_lock_timeout(tx.exec(), &wait).await?;
        if let Err(e) = db::idempotency::lock(tx.exec(), &caller, key).await {
            if is_lock_timeout(&e) {
                // The transaction is aborted; the handler drops it.
                count(&keyed.route, "in_flight");
                return Ok(Claim::Answered(in_flight()));
            }
            return Err(e.into());
        }
        db::idempotency::set_lock_timeout(tx.exec(), &previous).await?;
        match db::idempotency::find(tx.exec(), &caller, key).await? {
            None => Ok(Claim::Fresh(Recorder(Some(Pending { caller, keyed })))),
            Some(stored) if stored.fingerprint == keyed.fingerprint => {
                count(&keyed.route, "replayed");
                Ok(Claim::Answered(replay(stored)?))
            }
            Some(_) => {
                count(&keyed.route, "mismatched");
                Ok(Claim::Answered(mismatched()))
            }
        }
    }
}

/// `lock_timeout` in Postgres's syntax. Never `0ms`, which would mean "wait forever"
/// (the setting's range starts at 10 ms).
fn lock_timeout(wait: Duration) -> String {
    format!("{}ms", wait.as_millis().max(1))
}

fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == LOCK_NOT_AVAILABLE)
}

/// Records the response of a fresh claim in the create's transaction.
#[must_use = "record the response in the create's transaction, before it commits"]
pub struct Recorder(Option<Pending>);

struct Pending {
    caller: String,
    keyed: Keyed,
}

impl Recorder {
    /// Stores `created` as the key's first response, in `tx` (without a key: nothing).
    /// Call it after the create and before the commit, so that both commit together.
    pub async fn record(self, tx: &mut Tx, created: &Created) -> Result<(), sqlx::Error> {
        let Some(Pending { caller, keyed }) = self.0 else {
            return Ok(());
        };
        db::idempotency::save(
            tx.exec(),
            NewRecord {
                caller: &caller,
                key: keyed.key.as_str(),
                fingerprint: &keyed.fingerprint,
                status: status_code(StatusCode::CREATED),
                location: created.location.as_deref(),
                body: &created.body,
                ttl: keyed.config.ttl,
            },
        )
        .await?;
        count(&keyed.route, "recorded");
        Ok(())
    }
}

fn status_code(status: StatusCode) -> i16 {
    i16::try_from(status.as_u16()).unwrap_or(i16::MAX)
}

fn count(route: &str, outcome: &'static str) {
    metrics::counter!(
        names::IDEMPOTENCY_REQUESTS,
        "http_route" => route.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

/// The `Idempotency-Key` header, for the creates' OpenAPI parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// 1-255 visible ASCII characters (a UUID is a good choice), bare or as a structured
    /// field string (`"…"`), chosen anew for each new request. A repeat of the request
    /// with the same key within 24 hours is answered with the first response (marked
    /// `Idempotent-Replayed: true`) and creates nothing; the same key with another
    /// request is refused with 422; a repeat while the first is still being processed
    /// gets 409 (retry after `Retry-After`). Only successful creates are remembered.
    // The pattern is exactly what `domain::IdempotencyKey::parse` accepts: a bare key not
    // starting with a quote, or a quoted one whose `"` and `\` are escaped (so up to 512
    // characters for 255 escaped ones).
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 512,
        pattern = r#"^(?:[!#-~][!-~]{0,254}|"(?:[!#-\[\]-~]|\\["\\]){1,255}")$"#
    )]
    #[allow(
        dead_code,
        reason = "documents the header; read by the Idempotent extractor"
    )]
    idempotency_key: Option<String>,
}

/// Deletes expired records every `KEEL_IDEMPOTENCY_PRUNE_INTERVAL` until `stop` fires.
/// Expired records are already ignored when read; this bounds the table's size. Safe to
/// run in every instance at once (the batches skip rows others hold).
pub async fn run_pruner(db: Db, config: IdempotencyConfig, stop: CancellationToken) {
    let mut interval = tokio::time::interval(config.prune_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(e) = prune(&db, &stop).await {
            tracing::warn!(error = %e, "could not prune expired idempotency keys");
        }
    }
}

async fn prune(db: &Db, stop: &CancellationToken) -> Result<(), sqlx::Error> {
    while !stop.is_cancelled()
        && db::idempotency::prune(db, PRUNE_BATCH).await? == PRUNE_BATCH as u64
    {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_fingerprint_tells_method_path_and_body_apart() {
        let base = fingerprint("POST", "/v1/projects", b"{}");
        assert_eq!(base, fingerprint("POST", "/v1/projects", b"{}"));
        assert_ne!(base, fingerprint("POST", "/v1/projects", b"{ }"));
        assert_ne!(base, fingerprint("PUT", "/v1/projects", b"{}"));
        assert_ne!(
            fingerprint("POST", "/a", b"b"),
            fingerprint("POST", "/ab", b""),
        );
    }

    #[test]
    fn one_key_is_read_and_a_second_or_a_malformed_one_is_a_422_naming_the_header() {
        let mut headers = HeaderMap::new();
        assert!(key_of(&headers).unwrap().is_none());
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("\"k-1\""));
        assert_eq!(key_of(&headers).unwrap().unwrap().as_str(), "k-1");
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("k-2"));
        let two = key_of(&headers).unwrap_err();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("a b"));
        let spaced = key_of(&headers).unwrap_err();
        for e in [two, spaced] {
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert!(matches!(&e, ApiError::Validation(v) if v.0[0].field == FIELD));
        }
    }

    #[test]
    fn callers_are_scoped_apart() {
        let id = Uuid::nil();
        assert_eq!(Caller::User(id).to_string(), format!("user:{id}"));
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(Caller::Client(ip).to_string(), "ip:2001:db8::1");
    }

    #[test]
    fn the_lock_wait_is_never_zero_which_postgres_reads_as_forever() {
        assert_eq!(lock_timeout(Duration::from_millis(250)), "250ms");
        assert_eq!(lock_timeout(Duration::ZERO), "1ms");
    }
}
