//! argon2id password hashing, off the async runtime and bounded.
//!
//! Hashing is deliberately expensive (OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane,
//! which is also the `argon2` crate's default). Run on a runtime worker, one hash would stall
//! every other request on that thread for tens of milliseconds; run unbounded on the blocking
//! pool, a burst of logins would take every core and hundreds of MiB. So each hash runs under
//! `spawn_blocking`, behind a semaphore of `KEEL_PASSWORD_HASH_CONCURRENCY` permits, and a
//! caller that cannot get a permit within `KEEL_PASSWORD_HASH_QUEUE_TIMEOUT` is shed (503)
//! instead of joining an unbounded queue.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a hash could not be computed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing slot stayed busy for the whole queue timeout.
    #[error("password hashing is saturated")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    /// Bounds the hashes running at once (see the module docs).
    permits: Arc<Semaphore>,
    /// How long a caller waits for a permit before it is shed.
    queue_timeout: Duration,
}

impl PasswordHasher {
    pub fn new(concurrency: usize, queue_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            queue_timeout,
        }
    }

    /// Hashes a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    #[tracing::instrument(name = "password.hash", skip_all)]
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = password.as_bytes().to_vec();
        self.run(move || {
            Argon2::default()
                .hash_password(&password)
                .map(|hash| hash.to_string())
                .map_err(|e| HashError::Failed(e.to_string()))
        })
        .await
    }

    /// Checks a password against a stored hash. With no stored hash (unknown email) it
    /// still spends one full verification on a dummy hash and answers `false`, so that the
    /// response time does not tell an attacker which emails have accounts.
    #[tracing::instrument(name = "password.verify", skip_all)]
    pub async fn verify(&self, password: &str, stored: Option<String>) -> Result<bool, HashError> {
        let password = password.as_bytes().to_vec();
        self.run(move || {
            let known = stored.is_some();
            let stored = stored.unwrap_or_else(|| dummy_hash().to_owned());
            let parsed =
                PasswordHash::new(&stored).map_err(|e| HashError::Failed(e.to_string()))?;
            let matches = Argon2::default()
                .verify_password(&password, &parsed)
                .is_ok();
            Ok(known && matches)
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = self.acquire().await?;
        // The permit moves into the blocking task: if the request is cancelled while the
        // hash runs, the slot stays taken until the CPU work really ends. The task keeps
        // the caller's span, so the hash shows in the request's trace.
        crate::telemetry::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| HashError::Failed(e.to_string()))?
    }

    async fn acquire(&self) -> Result<OwnedSemaphorePermit, HashError> {
        match tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(HashError::Failed("hashing pool closed".into())),
            Err(_elapsed) => Err(HashError::Busy),
        }
    }
}

/// A valid hash of a random password, computed once, with the same parameters as real
/// hashes so that verifying against it costs the same.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(uuid::Uuid::new_v4().as_bytes())
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = PasswordHasher::new(2, Duration::from_secs(5));
        let hash = hasher.hash("correct horse battery").await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            hasher
                .verify("correct horse battery", Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse battery", Some(hash))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        let hasher = PasswordHasher::new(1, Duration::from_secs(5));
        assert!(!hasher.verify("anything at all", None).await.unwrap());
    }

    #[tokio::test]
    async fn a_saturated_hasher_sheds_instead_of_queueing_forever() {
        let hasher = PasswordHasher::new(1, Duration::from_millis(20));
        let _held = hasher.acquire().await.unwrap();
        assert!(matches!(
            hasher.hash("twelve chars!").await,
            Err(HashError::Busy)
        ));
    }
}
