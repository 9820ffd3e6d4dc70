//! The API's state and router.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use event_store::EventStore;

use crate::access::BookingTokens;
use crate::admission::CommandAdmission;
use crate::auth::AdminToken;
use crate::catalog::ShowCatalog;
use crate::error::ApiError;
use crate::idempotency::InFlightKeys;
use crate::{
    bookings, dashboard, dead_letters, health, live, observability, openapi, queries, replays,
    shows,
};

/// Bodies over this many bytes are refused with 413 (API.md: 1 MiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler shares. Cloning is cheap (handles only).
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn EventStore>,
    pub admin: AdminToken,
    pub tokens: BookingTokens,
    pub admission: CommandAdmission,
    pub in_flight: InFlightKeys,
    pub catalog: ShowCatalog,
    /// The read models queries answer from (`None`: those routes answer 503).
    pub read_models: Option<projections::ReadModelDb>,
    /// Replays of the read models run by this process (`None`: those routes answer 503).
    pub replays: Option<projections::Replays>,
    /// The monitor's looks, for the dashboard (`None`: its stream answers 503).
    pub dashboard: Option<tokio::sync::watch::Receiver<Option<crate::monitor::Snapshot>>>,
}

impl ApiState {
    /// The state for a store and an admin token, with the default command capacity.
    pub fn new(store: Arc<dyn EventStore>, admin: AdminToken) -> ApiState {
        ApiState {
            store,
            tokens: BookingTokens::derived_from(&admin),
            admin,
            admission: CommandAdmission::default(),
            in_flight: InFlightKeys::default(),
            catalog: ShowCatalog::default(),
            read_models: None,
            replays: None,
            dashboard: None,
        }
    }

    /// The same, admitting at most `capacity` commands at once.
    /// Answer queries from these read models.
    pub fn with_read_models(mut self, read_models: projections::ReadModelDb) -> ApiState {
        self.read_models = Some(read_models);
        self
    }

    /// Run replays of the read models here (the admin routes `/admin/replays…`).
    pub fn with_replays(mut self, replays: projections::Replays) -> ApiState {
        self.replays = Some(replays);
        self
    }

    /// Serve the dashboard from the monitor publishing to `looks`.
    pub fn with_dashboard(
        mut self,
        looks: tokio::sync::watch::Receiver<Option<crate::monitor::Snapshot>>,
    ) -> ApiState {
        self.dashboard = Some(looks);
        self
    }

    pub fn with_command_capacity(mut self, capacity: usize) -> ApiState {
        self.admission = CommandAdmission::new(capacity);
        self
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/shows", post(shows::create_show))
        .route("/shows/{show_id}", get(shows::get_show))
        .route("/shows/{show_id}/seats", get(shows::get_seats))
        .route("/shows/{show_id}/stats", get(queries::show_stats))
        .route("/shows/{show_id}/seats/events", get(live::seat_events))
        .route("/bookings/{booking_id}/events", get(live::booking_events))
        .route(
            "/customers/{customer_id}/bookings",
            get(queries::customer_bookings),
        )
        .route("/bookings", post(bookings::request_booking))
        .route(
            "/bookings/{booking_id}",
            get(bookings::get_booking).delete(bookings::cancel_booking),
        )
        .route("/admin/dead-letters", get(dead_letters::list_dead_letters))
        .route(
            "/admin/dead-letters/{id}",
            get(dead_letters::get_dead_letter),
        )
        .route(
            "/admin/dead-letters/{id}/redrive",
            post(dead_letters::redrive_dead_letter),
        )
        .route("/admin/replays", post(replays::start_replay))
        .route("/admin/replays/{replay_id}", get(replays::get_replay))
        .route("/metrics", get(observability::metrics))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/events", get(dashboard::events))
        .route("/dashboard/uplot.js", get(dashboard::uplot_js))
        .route("/dashboard/uplot.css", get(dashboard::uplot_css))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        // Only matched routes are counted (their template is the label).
        .route_layer(axum::middleware::from_fn(observability::record_http))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
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
