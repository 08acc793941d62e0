//! HS256 access tokens with a key id, ready for secret rotation.
//!
//! The algorithm is pinned: a token whose header names any other algorithm — `none`,
//! `RS256` with our secret as a "public key", anything — is refused before its signature
//! is looked at. Every token carries a `kid`; the keyring holds the current key (signs and
//! verifies) and at most one retired key (verifies only), so a secret is rotated without
//! logging anyone out: deploy the new secret as current with the old one as previous, wait
//! one token lifetime, drop the previous one.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::JwtConfig;

const ISSUER: &str = "keel";
const AUDIENCE: &str = "keel-api";
/// Tolerance for clocks that disagree between the instance that issued a token and the
/// one that checks it.
const CLOCK_SKEW_LEEWAY_SECS: u64 = 30;

/// Why a token was refused. Every variant becomes the same 401; the distinction is for
/// logs and tests.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token names an unknown key id")]
    UnknownKey,
    #[error("token is invalid: {0}")]
    Invalid(jsonwebtoken::errors::Error),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// A freshly signed token and its lifetime in seconds.
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
}

struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Key {
    fn new(kid: &str, secret: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }
}

pub struct Keyring {
    current: Key,
    previous: Option<Key>,
    ttl: Duration,
    validation: Validation,
}

impl Keyring {
    pub fn new(config: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_SKEW_LEEWAY_SECS;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        Self {
            current: Key::new(&config.kid, config.secret.expose_secret()),
            previous: config
                .previous
                .as_ref()
                .map(|(kid, secret)| Key::new(kid, secret.expose_secret())),
            ttl: config.ttl,
            validation,
        }
    }

    /// Signs a token for `user_id` with the current key.
    pub fn issue(&self, user_id: Uuid) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        let now = Utc::now().timestamp();
        let ttl = self.ttl.as_secs();
        let claims = Claims {
            sub: user_id,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + ttl as i64,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.current.encoding)?;
        Ok(IssuedToken {
            token,
            expires_in: ttl,
        })
    }

    /// Verifies a token and returns the user id it was issued to.
    pub fn verify(&self, token: &str) -> Result<Uuid, TokenError> {
        // The header is read unverified only to choose the key; `decode` then checks the
        // algorithm against the pinned list and the signature against that key.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|key| key.kid == kid)
            .ok_or(TokenError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation)
            .map_err(TokenError::Invalid)?;
        Ok(data.claims.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use secrecy::SecretString;

    fn config(kid: &str, secret: &str, previous: Option<(&str, &str)>) -> JwtConfig {
        JwtConfig {
            secret: SecretString::from(secret),
            kid: kid.into(),
            previous: previous.map(|(k, s)| (k.to_owned(), SecretString::from(s))),
            ttl: Duration::from_secs(3600),
        }
    }

    fn sign(claims: &serde_json::Value, kid: &str, secret: &str) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn claims(exp_offset: i64) -> serde_json::Value {
        let now = Utc::now().timestamp();
        serde_json::json!({"sub": Uuid::now_v7(), "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + exp_offset})
    }

    #[test]
    fn an_issued_token_verifies_to_its_user() {
        let ring = Keyring::new(&config("k1", "secret-one", None));
        let user = Uuid::now_v7();
        let issued = ring.issue(user).unwrap();
        assert_eq!(issued.expires_in, 3600);
        assert_eq!(ring.verify(&issued.token).unwrap(), user);
    }

    #[test]
    fn a_retired_key_still_verifies_during_rotation() {
        let old = Keyring::new(&config("k1", "secret-one", None));
        let token = old.issue(Uuid::now_v7()).unwrap().token;
        let rotated = Keyring::new(&config("k2", "secret-two", Some(("k1", "secret-one"))));
        assert!(rotated.verify(&token).is_ok());
        let after = Keyring::new(&config("k2", "secret-two", None));
        assert!(matches!(after.verify(&token), Err(TokenError::UnknownKey)));
    }

    #[test]
    fn expired_forged_and_foreign_tokens_are_refused() {
        let ring = Keyring::new(&config("k1", "secret-one", None));
        let expired = sign(&claims(-3600), "k1", "secret-one");
        assert!(matches!(ring.verify(&expired), Err(TokenError::Invalid(_))));
        let forged = sign(&claims(3600), "k1", "another-secret");
        assert!(matches!(ring.verify(&forged), Err(TokenError::Invalid(_))));
        let mut wrong_aud = claims(3600);
        wrong_aud["aud"] = "someone-else".into();
        assert!(ring.verify(&sign(&wrong_aud, "k1", "secret-one")).is_err());
        assert!(matches!(
            ring.verify("not.a.token"),
            Err(TokenError::Malformed)
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let ring = Keyring::new(&config("k1", "secret-one", None));
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims(3600).to_string());
        let token = format!("{header}.{body}.");
        assert!(ring.verify(&token).is_err());
    }

    #[test]
    fn a_token_without_kid_is_refused() {
        let ring = Keyring::new(&config("k1", "secret-one", None));
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(3600),
            &EncodingKey::from_secret(b"secret-one"),
        )
        .unwrap();
        assert!(matches!(ring.verify(&token), Err(TokenError::UnknownKey)));
    }
}
