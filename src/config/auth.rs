//! Secrets and the cost of checking them: the JWT signing key (with a retired key during a
//! rotation), the admin API's token, and the bounds on password hashing.
//!
//! Every check here involves only these values, including the one that spans two keys
//! (the admin token must not be the JWT secret), so they all live in this section.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::vars::{ConfigError, Environment, Vars, error};

/// The development JWT secret: accepted only with `KEEL_ENV=dev`.
pub const DEV_JWT_SECRET: &str = "keel-dev-jwt-secret-never-use-in-production-0123456789";
/// The development admin token: accepted only with `KEEL_ENV=dev`.
pub const DEV_ADMIN_TOKEN: &str = "keel-dev-admin-token";

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt: JwtConfig,
    /// `KEEL_ADMIN_TOKEN`: the bearer token of the admin API.
    pub admin_token: SecretString,
    /// `KEEL_PASSWORD_HASH_CONCURRENCY`: argon2 runs at most this many hashes at once. Each
    /// takes ~19 MiB and tens of milliseconds of one core, so a burst of logins queues here
    /// instead of starving the runtime's blocking pool and the machine's memory.
    pub password_hash_concurrency: usize,
    /// `KEEL_PASSWORD_HASH_QUEUE_TIMEOUT`: how long a login or sign-up waits for a hashing
    /// slot before it is shed with 503.
    pub password_hash_queue_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `KEEL_JWT_SECRET`: signs new tokens.
    pub secret: SecretString,
    /// `KEEL_JWT_KID`: the key id written in the header of new tokens.
    pub kid: String,
    /// `KEEL_JWT_PREVIOUS_SECRET` / `KEEL_JWT_PREVIOUS_KID`: a retired key that still
    /// verifies tokens during a rotation (see the README's "rotating the JWT secret").
    pub previous: Option<(String, SecretString)>,
    /// `KEEL_JWT_TTL`: lifetime of an access token.
    pub ttl: Duration,
}

impl AuthConfig {
    /// `env` decides whether the development secrets are accepted.
    pub(super) fn read(vars: &Vars<'_>, env: Environment) -> Result<Self, ConfigError> {
        let jwt = JwtConfig::read(vars, env)?;
        let admin_token = vars.secret("KEEL_ADMIN_TOKEN", env, DEV_ADMIN_TOKEN)?;
        if admin_token.expose_secret() == jwt.secret.expose_secret() {
            return Err(error(
                "KEEL_ADMIN_TOKEN",
                "must differ from KEEL_JWT_SECRET (an admin token is not a signing key)",
            ));
        }
        // Half the cores (at least one): argon2 is pure CPU, and with a permit per core a
        // burst of sign-ins would take the whole machine from every other request (the
        // load shedder then reads their slowness as overload and refuses them).
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hash_permits = (cores / 2).max(1);
        Ok(Self {
            jwt,
            admin_token,
            password_hash_concurrency: vars.range(
                "KEEL_PASSWORD_HASH_CONCURRENCY",
                hash_permits,
                1,
                256,
            )?,
            // About two hashes' time. A sign-in waiting here holds its place under the
            // adaptive concurrency limit (middleware::shed), so a long queue in front of
            // the hasher fills the limit with waiting sign-ins and the reads behind them are
            // shed: with 2 s, goodput at 4x capacity fell to half of it
            // (loadtests/guardrails-bench.sh; docs/benchmarks.md).
            password_hash_queue_timeout: vars.duration_range(
                "KEEL_PASSWORD_HASH_QUEUE_TIMEOUT",
                Duration::from_millis(100),
                Duration::from_millis(1),
                Duration::from_secs(60),
            )?,
        })
    }
}

impl JwtConfig {
    fn read(vars: &Vars<'_>, env: Environment) -> Result<Self, ConfigError> {
        let previous = match vars.get("KEEL_JWT_PREVIOUS_SECRET") {
            None => None,
            Some(_) => {
                let kid = vars.get("KEEL_JWT_PREVIOUS_KID").ok_or_else(|| {
                    error(
                        "KEEL_JWT_PREVIOUS_KID",
                        "must be set when KEEL_JWT_PREVIOUS_SECRET is",
                    )
                })?;
                let kid = key_id("KEEL_JWT_PREVIOUS_KID", kid)?;
                // Same rules as the current secret: a retired key still verifies tokens.
                let secret = vars.secret("KEEL_JWT_PREVIOUS_SECRET", env, "")?;
                Some((kid, secret))
            }
        };
        let jwt = Self {
            secret: vars.secret("KEEL_JWT_SECRET", env, DEV_JWT_SECRET)?,
            kid: key_id(
                "KEEL_JWT_KID",
                vars.get("KEEL_JWT_KID").unwrap_or_else(|| "k1".into()),
            )?,
            previous,
            ttl: vars.duration_range(
                "KEEL_JWT_TTL",
                Duration::from_secs(3600),
                Duration::from_secs(60),
                Duration::from_secs(7 * 24 * 3600),
            )?,
        };
        if let Some((kid, _)) = &jwt.previous
            && *kid == jwt.kid
        {
            return Err(error(
                "KEEL_JWT_PREVIOUS_KID",
                format!("{kid:?} is also KEEL_JWT_KID; a retired key needs its own id"),
            ));
        }
        Ok(jwt)
    }
}

fn key_id(var: &'static str, raw: String) -> Result<String, ConfigError> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(raw)
    } else {
        Err(error(
            var,
            format!("{raw:?} is not a key id (1-64 of A-Z a-z 0-9 . _ -)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{refused_var, with_vars};

    const STRONG: &str = "a-production-secret-that-is-long-enough";

    fn auth(pairs: &[(&str, &str)], env: Environment) -> Result<AuthConfig, ConfigError> {
        with_vars(pairs, |vars| AuthConfig::read(vars, env))
    }

    fn var_of(pairs: &[(&str, &str)]) -> &'static str {
        refused_var(pairs, |vars| AuthConfig::read(vars, Environment::Dev))
    }

    #[test]
    fn dev_uses_the_development_secrets() {
        let auth = auth(&[], Environment::Dev).expect("defaults are valid in dev");
        assert_eq!(auth.jwt.secret.expose_secret(), DEV_JWT_SECRET);
        assert_eq!(auth.admin_token.expose_secret(), DEV_ADMIN_TOKEN);
        assert_eq!(auth.jwt.kid, "k1");
        assert!(auth.jwt.previous.is_none());
        assert_eq!(auth.jwt.ttl, Duration::from_secs(3600));
    }

    #[test]
    fn prod_refuses_missing_and_development_secrets() {
        let err = auth(&[], Environment::Prod).unwrap_err();
        assert_eq!(err.var, "KEEL_JWT_SECRET");

        let err = auth(&[("KEEL_JWT_SECRET", DEV_JWT_SECRET)], Environment::Prod).unwrap_err();
        assert_eq!(err.var, "KEEL_JWT_SECRET");

        let err = auth(&[("KEEL_JWT_SECRET", STRONG)], Environment::Prod).unwrap_err();
        assert_eq!(err.var, "KEEL_ADMIN_TOKEN");

        let err = auth(
            &[
                ("KEEL_JWT_SECRET", STRONG),
                ("KEEL_ADMIN_TOKEN", DEV_ADMIN_TOKEN),
            ],
            Environment::Prod,
        )
        .unwrap_err();
        assert_eq!(err.var, "KEEL_ADMIN_TOKEN");

        let err = auth(&[("KEEL_JWT_SECRET", "short")], Environment::Prod).unwrap_err();
        assert_eq!(err.var, "KEEL_JWT_SECRET");
    }

    #[test]
    fn the_admin_token_must_not_be_the_jwt_secret() {
        let err = auth(
            &[("KEEL_JWT_SECRET", STRONG), ("KEEL_ADMIN_TOKEN", STRONG)],
            Environment::Prod,
        )
        .unwrap_err();
        assert_eq!(err.var, "KEEL_ADMIN_TOKEN");
        assert!(!err.to_string().contains(STRONG));
    }

    #[test]
    fn a_refused_secret_is_never_echoed() {
        let err = auth(&[("KEEL_JWT_SECRET", "tiny-secret")], Environment::Prod).unwrap_err();
        assert!(!err.to_string().contains("tiny-secret"));
    }

    #[test]
    fn a_previous_key_is_kept_for_verification() {
        let auth = auth(
            &[
                ("KEEL_JWT_PREVIOUS_SECRET", "old-secret"),
                ("KEEL_JWT_PREVIOUS_KID", "k0"),
            ],
            Environment::Dev,
        )
        .unwrap();
        let (kid, secret) = auth.jwt.previous.expect("a previous key");
        assert_eq!(kid, "k0");
        assert_eq!(secret.expose_secret(), "old-secret");
    }

    #[test]
    fn debug_output_redacts_the_secrets() {
        let printed = format!("{:?}", auth(&[], Environment::Dev).unwrap());
        assert!(!printed.contains(DEV_JWT_SECRET));
        assert!(!printed.contains(DEV_ADMIN_TOKEN));
    }

    #[test]
    fn each_kind_of_bad_value_names_its_variable() {
        assert_eq!(var_of(&[("KEEL_JWT_TTL", "1s")]), "KEEL_JWT_TTL");
        assert_eq!(var_of(&[("KEEL_JWT_KID", "has space")]), "KEEL_JWT_KID");
        assert_eq!(
            var_of(&[("KEEL_JWT_PREVIOUS_SECRET", "old-secret")]),
            "KEEL_JWT_PREVIOUS_KID"
        );
        assert_eq!(
            var_of(&[
                ("KEEL_JWT_PREVIOUS_SECRET", "old"),
                ("KEEL_JWT_PREVIOUS_KID", "k1")
            ]),
            "KEEL_JWT_PREVIOUS_KID"
        );
        assert_eq!(
            var_of(&[("KEEL_PASSWORD_HASH_CONCURRENCY", "0")]),
            "KEEL_PASSWORD_HASH_CONCURRENCY"
        );
        assert_eq!(
            var_of(&[("KEEL_PASSWORD_HASH_QUEUE_TIMEOUT", "2m")]),
            "KEEL_PASSWORD_HASH_QUEUE_TIMEOUT"
        );
    }
}
