//! The API's state and router.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use event_store::EventStore;

use crate::auth::AdminToken;
use crate::error::ApiError;
use crate::{health, shows};

/// Bodies over this many bytes are refused with 413 (API.md: 1 MiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn EventStore>,
    pub admin: AdminToken,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/shows", post(shows::create_show))
        .route("/shows/{show_id}", get(shows::get_show))
        .route("/shows/{show_id}/seats", get(shows::get_seats))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serve the API on `listener` until `shutdown` resolves; then stop accepting connections and let
/// the requests in flight finish (nothing is half-written: each command is one append).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
