//! `GET /healthz`: the process is alive. `GET /readyz`: its servers answer (today: the store).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::router::ApiState;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let head = state.store.head().await.map_err(|error| {
        ApiError::Unavailable(format!("the event store does not answer: {error}"))
    })?;
    Ok(Json(json!({ "status": "ready", "log_head": head.0 })))
}
