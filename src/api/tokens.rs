//! `POST /v1/auth/token`: exchange an email and password for an access token.
//!
//! Besides the middleware's per-address budget, sign-in spends from a budget per email
//! (`token-email`): credential stuffing comes from many addresses at one account, and only
//! the body names the account. The check runs before the lookup and the hash, so a refused
//! guess costs neither; its decision rides to the middleware in the response's extensions,
//! which reports it in the rate-limit fields (`http::rate_limit`). The price: anyone can
//! spend an account's sign-in budget, holding its owner off for up to a minute at a time
//! (a lock-out, not a breach, and bounded by the per-address budget of whoever does it).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db;
use crate::domain::{Email, Password};
use crate::flags::Flag;
use crate::http::rate_limit::{Spent, refusal};
use crate::http::{ApiError, AppJson};
use crate::limits::{Key, Policy};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(issue_token))
}

/// Credentials.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[schema(example = "demo@keel.dev")]
    email: String,
    /// The example is the demo login that `keel all` creates in dev.
    #[schema(value_type = String, format = Password, example = "keel-demo-password")]
    password: SecretString,
}

/// An access token.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// Send as `Authorization: Bearer <access_token>`.
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the token expires.
    #[schema(example = 3600)]
    expires_in: u64,
}

/// Sign in.
///
/// An unknown email and a wrong password get the same 401, in the same time (a
/// dummy hash is verified for unknown emails).
#[utoipa::path(
    post,
    path = "/v1/auth/token",
    tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "A token", body = TokenResponse,
         headers(("Cache-Control" = String, description = "`no-store`: tokens are not cached"))),
        (status = 401, description = "Unknown email or wrong password (one answer for both)"),
        (status = 429, description = "This client address or this email has spent its sign-in budget"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all)]
async fn issue_token(
    State(state): State<AppState>,
    AppJson(body): AppJson<TokenRequest>,
) -> Response {
    let mut spent = Spent::default();
    let mut response = sign_in(&state, body, &mut spent).await.into_response();
    if !spent.0.is_empty() {
        response.extensions_mut().insert(spent);
    }
    response
}

/// The sign-in itself; `spent` collects the rate-limit decisions it made, refusals too.
async fn sign_in(
    state: &AppState,
    body: TokenRequest,
    spent: &mut Spent,
) -> Result<impl IntoResponse, ApiError> {
    const REFUSED: ApiError = ApiError::Unauthorized {
        invalid_token: false,
    };
    // Inputs that no account can have are refused without a lookup or a hash: their
    // refusal depends on the input alone, so it reveals nothing about accounts.
    let email = Email::parse(body.email).map_err(|_| REFUSED)?;
    let password = Password::parse(body.password).map_err(|_| REFUSED)?;
    if state.flags.enabled(Flag::RateLimit) {
        let decision = state
            .limiter
            .check(Policy::TokenEmail, &Key::email(email.as_str()))
            .await;
        spent.0.push(decision);
        if !decision.allowed {
            return Err(refusal(&decision));
        }
    }
    let credentials = db::users::credentials(&state.db, email.as_str()).await?;
    let (user_id, hash) = match credentials {
        Some(c) => (Some(c.id), Some(c.password_hash)),
        None => (None, None),
    };
    if !state.passwords.verify(password.expose(), hash).await? {
        return Err(REFUSED);
    }
    let user_id = user_id.ok_or(REFUSED)?;
    let issued = state
        .tokens
        .issue(user_id)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("signing a token")))?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        AppJson(TokenResponse {
            access_token: issued.token,
            token_type: "Bearer",
            expires_in: issued.expires_in,
        }),
    ))
}
