//! Admin routes over the dead letters the consumer groups keep (`zingqueue dlq` is the same from
//! the command line): list, show one, and ask for a redrive, which the letter's own group runs
//! through its handler. A redrive request is idempotent: asking twice runs it once.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use event_store::{DeadLetter, DeadLetterQuery, DeadLetterStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, Problem};
use crate::router::ApiState;

/// A dead letter: a record a consumer group gave up on, with why.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    pub id: i64,
    /// The consumer group (service) that gave up on it.
    pub group: String,
    /// `poison`, `handler-failed`, `expired-seats`, `payment-exhausted`, `email-failed`.
    pub cause: String,
    pub reason: String,
    /// `dead`, `redrive_requested` or `redriven`.
    pub status: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub log_position: Option<u64>,
    pub attempts: u32,
    pub redrives: u32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Mirrored to its `zq.dlq.<cause>` topic.
    pub mirrored: bool,
    /// The record's value as text (invalid UTF-8 replaced).
    pub payload: Option<String>,
    #[schema(value_type = Vec<Vec<String>>)]
    pub headers: Vec<(String, Option<String>)>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        DeadLetterView {
            id: letter.id,
            group: letter.group,
            cause: letter.cause,
            reason: letter.reason,
            status: letter.status.as_str().to_string(),
            topic: letter.topic,
            partition: letter.partition,
            offset: letter.offset,
            event_id: letter.event_id,
            event_type: letter.event_type,
            log_position: letter.position.map(|p| p.0),
            attempts: letter.attempts,
            redrives: letter.redrives,
            first_failed_at: letter.first_failed_at,
            last_failed_at: letter.last_failed_at,
            recorded_at: letter.recorded_at,
            resolved_at: letter.resolved_at,
            mirrored: letter.mirrored,
            payload: letter
                .payload
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
            headers: letter.headers,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeadLetterFilter {
    pub group: Option<String>,
    pub cause: Option<String>,
    /// `dead`, `redrive_requested` or `redriven`.
    pub status: Option<String>,
    /// At most this many, newest first (default 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveAccepted {
    pub id: i64,
    pub status: String,
}

#[utoipa::path(get, path = "/admin/dead-letters", tag = "operations", params(DeadLetterFilter),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<DeadLetterView>),
        (status = 400, description = "Unknown status", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_dead_letters(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(filter): Query<DeadLetterFilter>,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    state.admin.require(&headers)?;
    let status = filter
        .status
        .as_deref()
        .map(|text| {
            DeadLetterStatus::parse(text).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{text:?} is not a status (dead, redrive_requested, redriven)"
                ))
            })
        })
        .transpose()?;
    let letters = state
        .store
        .dead_letters(&DeadLetterQuery {
            group: filter.group,
            cause: filter.cause,
            status,
            limit: filter.limit.unwrap_or(100).min(1_000),
        })
        .await?;
    Ok(Json(letters.into_iter().map(Into::into).collect()))
}

#[utoipa::path(get, path = "/admin/dead-letters/{id}", tag = "operations",
    params(("id" = i64, Path, description = "The dead letter's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = DeadLetterView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_dead_letter(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    state.admin.require(&headers)?;
    let id = parse_id(&id)?;
    let letter = state
        .store
        .dead_letter(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    Ok(Json(letter.into()))
}

#[utoipa::path(post, path = "/admin/dead-letters/{id}/redrive", tag = "operations",
    params(("id" = i64, Path, description = "The dead letter's id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Its group will run it again (or already has)", body = RedriveAccepted),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn redrive_dead_letter(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    state.admin.require(&headers)?;
    let id = parse_id(&id)?;
    let status = state
        .store
        .request_redrive(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RedriveAccepted {
            id,
            status: status.as_str().to_string(),
        }),
    ))
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not a dead letter id")))
}
