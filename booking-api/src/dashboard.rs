//! `GET /dashboard`: the lag and failure-rate dashboard, a page served by the API that follows
//! `GET /dashboard/events` (server-sent events: the monitor's [`Snapshot`] once a second). The
//! chart library (uPlot, from npm, MIT) is vendored in `booking-api/assets/uplot/` and served
//! from the binary: the page needs no internet.
//!
//! The snapshot comes from the database and the broker (see [`crate::monitor`]): lag and
//! offsets from the broker, heartbeats and each member's counters (the failure rates) from
//! `zq_consumer_progress` and `zq_consumer_members`, dead letters and the funnel from the
//! store. The page shows every component wherever it runs.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use futures::Stream;

use crate::error::ApiError;
use crate::monitor::Snapshot;
use crate::router::ApiState;

const PAGE: &str = include_str!("../assets/dashboard.html");
const UPLOT_JS: &str = include_str!("../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/uplot/uPlot.min.css");

/// The dashboard page.
#[utoipa::path(get, path = "/dashboard", tag = "health",
    responses((status = 200, description = "The dashboard (HTML)", body = String, content_type = "text/html")))]
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// The chart library the page uses (uPlot 1.6.32, vendored).
#[utoipa::path(get, path = "/dashboard/uplot.js", tag = "health",
    responses((status = 200, description = "JavaScript", body = String, content_type = "application/javascript")))]
pub async fn uplot_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/javascript"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        UPLOT_JS,
    )
}

/// The chart library's styles.
#[utoipa::path(get, path = "/dashboard/uplot.css", tag = "health",
    responses((status = 200, description = "CSS", body = String, content_type = "text/css")))]
pub async fn uplot_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        UPLOT_CSS,
    )
}

/// The monitor's looks, as they come (about one a second): `snapshot` events.
#[utoipa::path(get, path = "/dashboard/events", tag = "health",
    responses(
        (status = 200, description = "text/event-stream of `snapshot` events (JSON)", content_type = "text/event-stream"),
        (status = 503, description = "This process runs no monitor", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn events(
    State(state): State<ApiState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let receiver = state
        .dashboard
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this process runs no monitor".into()))?;
    // A watch holds only the newest look: a slow client skips looks, never piles them up.
    let stream = futures::stream::unfold((receiver, true), |(mut receiver, first)| async move {
        if !first && receiver.changed().await.is_err() {
            return None;
        }
        let snapshot: Option<Snapshot> = receiver.borrow_and_update().clone();
        let data = serde_json::to_string(&snapshot).unwrap_or_else(|_| "null".into());
        Some((
            Ok(Event::default().event("snapshot").data(data)),
            (receiver, false),
        ))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
