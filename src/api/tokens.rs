//! `POST /v1/auth/token`: exchange an email and password for an access token.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db;
use crate::domain::{Email, Password};
use crate::http::{ApiError, AppJson};
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
    ),
)]
#[tracing::instrument(level = "trace", skip_all)]
async fn issue_token(
    State(state): State<AppState>,
    AppJson(body): AppJson<TokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    const REFUSED: ApiError = ApiError::Unauthorized {
        invalid_token: false,
    };
    // Inputs that no account can have are refused without a lookup or a hash: their
    // refusal depends on the input alone, so it reveals nothing about accounts.
    let email = Email::parse(body.email).map_err(|_| REFUSED)?;
    let password = Password::parse(body.password).map_err(|_| REFUSED)?;
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
