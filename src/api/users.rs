//! `POST /v1/users`, `GET /v1/me`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::AuthUser;
use super::idempotency::{Caller, Claim, Created, IdempotencyKeyHeader, Idempotent};
use crate::db;
use crate::domain::{Email, Password, UserName, validate};
use crate::http::client_ip::ClientIp;
use crate::http::{ApiError, ResultExt, conditional_json};
use crate::loaders::Loaders;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_user))
        .routes(routes!(me))
}

/// A sign-up.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    email: String,
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f]*$",
        example = "Ada Lovelace"
    )]
    name: String,
    #[schema(value_type = String, format = Password, min_length = 12, max_length = 256)]
    password: SecretString,
}

/// A user. Never carries the password or its hash.
#[derive(Serialize, ToSchema)]
pub struct UserBody {
    id: Uuid,
    #[schema(format = Email)]
    email: String,
    name: String,
    created_at: DateTime<Utc>,
}

impl From<db::users::User> for UserBody {
    fn from(user: db::users::User) -> Self {
        Self {
            id: user.id,
            email: user.email,
            name: user.name,
            created_at: user.created_at,
        }
    }
}

/// Create an account.
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "users",
    params(IdempotencyKeyHeader),
    request_body = CreateUser,
    responses(
        (status = 201, description = "The new user", body = UserBody),
        (status = 409, description = "The email is taken (compared case-insensitively)"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all)]
async fn create_user(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    Idempotent(idempotency, body): Idempotent<CreateUser>,
) -> Result<Response, ApiError> {
    let (email, name, password) = validate((
        ("email", Email::parse(body.email)),
        ("name", UserName::parse(body.name)),
        ("password", Password::parse(body.password)),
    ))?;
    // Hashed before the transaction, so that no pooled connection waits on the hasher
    // (a replay pays for a hash it does not use; sign-ups are rate-limited anyway).
    let hash = state.passwords.hash(password.expose()).await?;
    let mut tx = state.db.begin().await?;
    // Anonymous: the key is the client address's.
    let recorder = match idempotency.claim(&mut tx, Caller::Client(client)).await? {
        Claim::Fresh(recorder) => recorder,
        Claim::Answered(response) => return Ok(response),
    };
    let user = db::users::insert(
        tx.exec(),
        Uuid::now_v7(),
        email.as_str(),
        name.as_str(),
        &hash,
    )
    .await
    .on_constraint(db::users::EMAIL_KEY, || ApiError::Conflict {
        slug: "email-taken",
        detail: "An account with this email already exists.".into(),
    })?;
    let created = Created::json(&UserBody::from(user))?;
    recorder.record(&mut tx, &created).await?;
    tx.commit().await?;
    Ok(created.into_response())
}

/// The caller's own account.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = UserBody,
         headers(("ETag" = String, description = "Changes with every change of the account"))),
        (status = 304, description = "Not modified: `If-None-Match` holds the current tag"),
    ),
)]
#[tracing::instrument(level = "trace", skip_all, fields(user_id = %user.id))]
async fn me(
    State(loaders): State<Loaders>,
    user: AuthUser,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A valid token for a user that no longer exists authenticates no one.
    let user = loaders.user(user.id).await?.ok_or(ApiError::Unauthorized {
        invalid_token: true,
    })?;
    Ok(conditional_json(&headers, &UserBody::from(user)))
}
