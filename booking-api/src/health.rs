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

/// The process can serve: the event store answers and every component of this process is
/// working (none is retrying a server that went away; `infra::resilience`).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "`{\"status\": \"ready\", \"log_head\": N}`", body = Object),
        (status = 503, description = "The event store does not answer, or a component of this process is waiting for a server", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let head = state.store.head().await.map_err(|error| {
        ApiError::Unavailable(format!("the event store does not answer: {error}"))
    })?;
    components_ready()?;
    Ok(Json(json!({ "status": "ready", "log_head": head.0 })))
}

/// `/readyz` of a component run on its own (no API, no store handle of the API's): ready when
/// every component of the process is.
pub async fn components_readyz() -> Result<Json<Value>, ApiError> {
    components_ready()?;
    Ok(Json(json!({ "status": "ready" })))
}

fn components_ready() -> Result<(), ApiError> {
    let waiting = infra::resilience::Readiness::global().not_ready();
    if waiting.is_empty() {
        return Ok(());
    }
    let detail = waiting
        .iter()
        .map(|(component, reason, since)| {
            format!("{component} waiting {} s: {reason}", since.as_secs())
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(ApiError::Unavailable(detail))
}
