//! Read-your-writes, the HTTP side: after a successful write, the writer's next list reads
//! wait for the read replica to have it (`crate::loaders::reads`).
//!
//! The layer ([`track`]) wraps the API's routes when a read replica is configured. For a
//! request that may write (any method but GET, HEAD, OPTIONS and TRACE) it hands the
//! request a [`Writer`] slot, which [`AuthUser`](super::extract::AuthUser) fills with the
//! caller's id once the token is verified; when the handler has answered 2xx — its
//! transaction has committed — the layer records the write's position for that caller. A
//! slot rather than a second look at the token: the extractor is the one place that
//! authenticates, and a request that never authenticated (sign-up, a refused token) leaves
//! it empty and costs nothing.

use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

use crate::loaders::Reads;

/// Who wrote, filled by the authentication extractor (module doc).
#[derive(Clone, Default)]
pub struct Writer(Arc<OnceLock<Uuid>>);

impl Writer {
    /// Records the authenticated caller; the first id set stands.
    pub fn set(&self, user: Uuid) {
        let _first = self.0.set(user);
    }
}

/// The layer: see the module doc.
pub async fn track(State(reads): State<Reads>, mut request: Request, next: Next) -> Response {
    if request.method().is_safe() {
        return next.run(request).await;
    }
    let writer = Writer::default();
    request.extensions_mut().insert(writer.clone());
    let response = next.run(request).await;
    if response.status().is_success()
        && let Some(user) = writer.0.get()
    {
        reads.wrote(*user).await;
    }
    response
}
