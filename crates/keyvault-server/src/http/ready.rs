//! `/readyz`: whether this node can serve, for load balancers and orchestrators. Unauthenticated, so the body
//! says what kind of trouble there is, never its details (a database's address, a file's path, a driver's
//! message): those go to the server's log.

use super::HttpState;
use super::respond::json_response;
use axum::response::Response;
use http::StatusCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// The reason a node is not ready, as `/readyz` names it.
pub const STORAGE_UNAVAILABLE: &str = "storage unavailable";
/// See [`crate::admin::UNCONFIRMED_LIMIT`].
pub const ACCESS_UNCONFIRMED: &str = "access control not confirmed current";

/// Whether the last `/readyz` found the store unhealthy: a probe that fails logs a warning only when the store
/// turns unhealthy, and one line when it recovers (load balancers probe every few seconds, each of them).
#[derive(Debug, Default)]
pub struct StoreHealthLog {
    unhealthy: AtomicBool,
}

impl StoreHealthLog {
    fn failed(&self, error: &dyn std::fmt::Display) {
        if self.unhealthy.swap(true, Ordering::Relaxed) {
            tracing::debug!(error = %error, "/readyz: the store is still not healthy");
        } else {
            tracing::warn!(
                error = %error,
                "/readyz: the store is not healthy (not logged again until it recovers)"
            );
        }
    }

    fn succeeded(&self) {
        if self.unhealthy.swap(false, Ordering::Relaxed) {
            tracing::info!("/readyz: the store is healthy again");
        }
    }
}

/// 200 `{"status":"ready"}`, or 503 `{"status":"unavailable","reason":…}` with one of the reasons above
/// (the store's health first: without a store nothing is served anyway).
pub async fn readyz(state: &HttpState) -> Response {
    let reason = match state.vault.store().health().await {
        Err(e) => {
            state.store_health.failed(&e);
            Some(STORAGE_UNAVAILABLE)
        }
        Ok(()) => {
            state.store_health.succeeded();
            // Logged by the access refresher, which knows why (admin.rs).
            state.admin.unconfirmed().map(|_| ACCESS_UNCONFIRMED)
        }
    };
    match reason {
        None => json_response(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Some(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "unavailable", "reason": reason}),
        ),
    }
}

/// Why the token endpoint refuses to issue tokens now, if it does: while this node's access control is
/// unconfirmed, since the credentials it checks for managed principals come from the access document, and a
/// token it issued would be honoured by every node for its whole lifetime (a client secret removed through
/// another node, after a leak, would still buy one). Except while the node refuses a shared document that does
/// not verify: its last good state issues tokens, so that an administrator can reach the admin API and store
/// a tagged one. Discovery and the signing keys (GETs) are served as ever: they decide nothing about access.
pub fn token_endpoint_refusal(state: &HttpState) -> Option<&'static str> {
    (state.admin.unconfirmed().is_some() && !state.admin.refuses_replaceable_document())
        .then_some("this node cannot confirm that its access control is current")
}
