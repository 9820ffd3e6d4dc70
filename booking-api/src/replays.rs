//! Admin routes that run replays of the read models in this process (`zingqueue replay` hands
//! its work to them when a `zingqueue up` runs on the same database, because the live runner
//! to pause is here, and SQLite has one writer): start one, and follow it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use projections::{ReplayError, ReplayRequest, ReplayStatus};
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::json::Json as JsonBody;
use crate::router::ApiState;

impl From<ReplayError> for ApiError {
    fn from(error: ReplayError) -> Self {
        match error {
            ReplayError::UnknownProjection(_) | ReplayError::TwoBounds => {
                ApiError::BadRequest(error.to_string())
            }
            ReplayError::AlreadyRunning(_) => ApiError::Conflict(error.to_string()),
            ReplayError::Projection(projections::ProjectionError::BadSnapshotName(_)) => {
                ApiError::BadRequest(error.to_string())
            }
            ReplayError::Projection(inner) => inner.into(),
        }
    }
}

fn replays(state: &ApiState) -> Result<&projections::Replays, ApiError> {
    state
        .replays
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this process runs no projections to replay".into()))
}

#[utoipa::path(post, path = "/admin/replays", tag = "operations",
    request_body = ReplayRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Started; follow it at the `Location`", body = ReplayStatus),
        (status = 400, description = "Unknown projection or a bad snapshot name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A replay is still running", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "This process runs no projections", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn start_replay(
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ReplayRequest>,
) -> Result<impl IntoResponse, ApiError> {
    state.admin.require(&headers)?;
    let status = replays(&state)?.start(request)?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/admin/replays/{}", status.id))],
        Json(status),
    ))
}

#[utoipa::path(get, path = "/admin/replays/{replay_id}", tag = "operations",
    params(("replay_id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Where the replay stands", body = ReplayStatus),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such replay in this process", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_replay(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(replay_id): Path<String>,
) -> Result<Json<ReplayStatus>, ApiError> {
    state.admin.require(&headers)?;
    let not_found = || ApiError::NotFound(format!("no replay {replay_id} in this process"));
    let id: Uuid = replay_id.parse().map_err(|_| not_found())?;
    replays(&state)?.status(id).map(Json).ok_or_else(not_found)
}
