//! Queries answered from the read models (the `projections` crate), with read-your-writes:
//! `?min_position=N` (a `log_position` a command returned) waits, bounded, until the read models
//! have passed N, or answers `503` with `Retry-After`, never stale data.
//!
//! Routes: `GET /shows/{show_id}/stats` (public: counts and money, no personal data),
//! `GET /customers/{customer_id}/bookings` (admin). The seat map's `held` state also comes from
//! here (see `shows::get_seats`).

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use event_store::Position;
use projections::ReadModelDb;
use projections::view::ShowStats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, Problem};
use crate::router::ApiState;
use crate::shows::parse_show_id;

/// How long `?min_position` waits for the read models before answering 503.
pub const MIN_POSITION_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct ReadYourWrites {
    /// A `log_position` a command returned: the answer reflects every event up to it, or is a
    /// 503 with `Retry-After`.
    pub min_position: Option<u64>,
}

impl From<projections::ProjectionError> for ApiError {
    fn from(error: projections::ProjectionError) -> Self {
        match error {
            projections::ProjectionError::Database(error) => {
                ApiError::Unavailable(error.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The read models, once they have passed `min_position` (if asked).
pub async fn read_models(
    state: &ApiState,
    wanted: &ReadYourWrites,
) -> Result<ReadModelDb, ApiError> {
    let db = state
        .read_models
        .clone()
        .ok_or_else(|| ApiError::Unavailable("the read models are not configured".into()))?;
    let Some(min_position) = wanted.min_position else {
        return Ok(db);
    };
    let deadline = Instant::now() + MIN_POSITION_WAIT;
    loop {
        let reached = db.checkpoint(projections::READ_MODELS).await?;
        if reached >= Position(min_position) {
            return Ok(db);
        }
        if Instant::now() >= deadline {
            return Err(ApiError::Unavailable(format!(
                "the read models are at position {reached}, not yet at {min_position}; retry shortly"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A show's statistics.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShowStatsView {
    #[schema(value_type = String, format = Uuid)]
    pub show_id: domain::ShowId,
    pub requested: u64,
    pub held: u64,
    pub confirmed: u64,
    pub rejected: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub failed: u64,
    /// Money taken, per currency, in minor units.
    pub revenue_cents: BTreeMap<String, i64>,
    /// Money given back, per currency, in minor units.
    pub refunds_cents: BTreeMap<String, i64>,
    /// The read models' position this answer reflects (at least).
    pub log_position: u64,
}

#[utoipa::path(get, path = "/shows/{show_id}/stats", tag = "shows",
    params(("show_id" = String, Path, format = Uuid), ReadYourWrites),
    responses(
        (status = 200, body = ShowStatsView),
        (status = 400, description = "Malformed show id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The read models have not reached min_position", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "query.show_stats", skip_all, fields(show_id = %show_id))]
pub async fn show_stats(
    State(state): State<ApiState>,
    Path(show_id): Path<String>,
    Query(wanted): Query<ReadYourWrites>,
) -> Result<Json<ShowStatsView>, ApiError> {
    let show_id = parse_show_id(&show_id)?;
    let db = read_models(&state, &wanted).await?;
    let position = db.checkpoint(projections::READ_MODELS).await?;
    let stats: ShowStats = db
        .stats(&[show_id])
        .await?
        .remove(&show_id)
        .unwrap_or_default();
    Ok(Json(ShowStatsView {
        show_id,
        requested: stats.requested,
        held: stats.held,
        confirmed: stats.confirmed,
        rejected: stats.rejected,
        expired: stats.expired,
        cancelled: stats.cancelled,
        failed: stats.failed,
        revenue_cents: stats.revenue,
        refunds_cents: stats.refunds,
        log_position: position.0,
    }))
}

/// One of a customer's bookings.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerBooking {
    #[schema(value_type = String, format = Uuid)]
    pub booking_id: domain::BookingId,
    #[schema(value_type = String, format = Uuid)]
    pub show_id: domain::ShowId,
    pub seats: Vec<String>,
    pub status: String,
    pub amount_cents: i64,
    pub currency: String,
    pub refund_status: String,
    pub requested_at: Option<DateTime<Utc>>,
}

#[utoipa::path(get, path = "/customers/{customer_id}/bookings", tag = "bookings",
    params(("customer_id" = String, Path), ReadYourWrites),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<CustomerBooking>),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The read models have not reached min_position", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "query.customer_bookings", skip_all)]
pub async fn customer_bookings(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(customer_id): Path<String>,
    Query(wanted): Query<ReadYourWrites>,
) -> Result<Json<Vec<CustomerBooking>>, ApiError> {
    state.admin.require(&headers)?;
    let db = read_models(&state, &wanted).await?;
    let views = db.customer_bookings(&customer_id).await?;
    Ok(Json(
        views
            .into_iter()
            .map(|view| CustomerBooking {
                booking_id: view.booking_id,
                show_id: view.show_id,
                seats: view.seats.iter().map(ToString::to_string).collect(),
                status: view.status.as_str().to_string(),
                amount_cents: view.amount_cents,
                currency: view.currency,
                refund_status: serde_json::to_value(view.refund_status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                requested_at: view.timeline.first().map(|entry| entry.at),
            })
            .collect(),
    ))
}
