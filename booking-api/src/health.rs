//! `GET /healthz`: the process is alive. `GET /readyz`: its servers answer (today: the store).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::{ApiError, Problem};
use crate::router::ApiState;

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The process can serve: the event store answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "`{\"status\": \"ready\", \"log_head\": N}`", body = Object),
        (status = 503, description = "The event store does not answer", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let head = state.store.head().await.map_err(|error| {
        ApiError::Unavailable(format!("the event store does not answer: {error}"))
    })?;
    Ok(Json(json!({ "status": "ready", "log_head": head.0 })))
}
