//! The rate-limit guardrail (`rate_limit` fix flag): every request of the public API
//! spends from one budget before it reaches its handler, and is refused with 429 when that
//! budget is spent.
//!
//! Which budget (`crate::limits` keeps them; shared/api.md sets the defaults):
//!
//! | request | policy | per |
//! |---|---|---|
//! | `POST /v1/auth/token` | `token-ip` (and `token-email`, in the handler: only the body names the email) | client address |
//! | `POST /v1/users` | `signup-ip` | client address |
//! | any other, with a valid access token | `user` | the token's user |
//! | any other | `anon` | client address |
//!
//! The client address is `http::client_ip`'s: the socket's peer, or behind
//! `KEEL_TRUSTED_PROXIES` the forwarded one — never an `X-Forwarded-For` a client wrote.
//! The user is the subject of a token *this layer verified* with the keyring: an
//! unverified subject would let anyone spend (or dodge) someone else's budget by writing
//! their id into a token. A missing or invalid token counts as anonymous; the handler's
//! extractor still answers 401.
//!
//! Every response of the public API carries `RateLimit-Policy` and `RateLimit`, merged with
//! what the handler spent (`http::rate_limit` has the format and the merge); with the flag
//! off there are neither limits nor fields.
//!
//! The state is the whole `AppState`, an `Arc`: `Router::layer` clones this layer once per
//! route, and every clone spends from the same limiter.

use std::net::{IpAddr, Ipv4Addr};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use uuid::Uuid;

use crate::flags::Flag;
use crate::http::client_ip::ClientIp;
use crate::http::rate_limit::{Spent, refusal, write_headers};
use crate::limits::{Key, Policy};
use crate::state::AppState;

/// The layer's state: the app's, on the public listener.
#[derive(Clone)]
pub struct RateLimit(AppState);

impl RateLimit {
    pub fn new(state: AppState) -> Self {
        Self(state)
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`). `None` passes every request
/// through: the admin listener has no rate limits.
pub async fn enforce(
    State(limit): State<Option<RateLimit>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(RateLimit(state)) = limit else {
        return next.run(request).await;
    };
    if !state.flags.enabled(Flag::RateLimit) {
        return unlimited(request, next).await;
    }
    let (policy, key) = budget_of(&state, &request);
    let decision = state.limiter.check(policy, &key).await;
    if !decision.allowed {
        let mut response = refusal(&decision).into_response();
        write_headers(response.headers_mut(), &[decision]);
        return response;
    }
    let mut response = next.run(request).await;
    let mut decisions = vec![decision];
    if let Some(Spent(spent)) = response.extensions_mut().remove::<Spent>() {
        decisions.extend(spent);
    }
    write_headers(response.headers_mut(), &decisions);
    response
}

// naive: no rate limiting — any client may send as much as it likes, and one client's
// flood is everyone's outage (the `rate_limit` fix flag off).
async fn unlimited(request: Request, next: Next) -> Response {
    next.run(request).await
}

/// The policy a request spends from, and whose budget (module doc's table).
fn budget_of(state: &AppState, request: &Request) -> (Policy, Key) {
    let client = request
        .extensions()
        .get::<ClientIp>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ip| ip.0);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    match (request.method(), route) {
        (&Method::POST, Some("/v1/auth/token")) => (Policy::TokenIp, Key::ip(client)),
        (&Method::POST, Some("/v1/users")) => (Policy::SignupIp, Key::ip(client)),
        _ => match verified_user(state, request.headers()) {
            Some(user) => (Policy::User, Key::user(user)),
            None => (Policy::Anon, Key::ip(client)),
        },
    }
}

/// The user of a bearer token that verifies (signature, expiry, issuer, audience); `None`
/// for anything else. The same parse as the `AuthUser` extractor, whose verdict this does
/// not replace.
fn verified_user(state: &AppState, headers: &HeaderMap) -> Option<Uuid> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    state.tokens.verify(token.trim()).ok()
}
