//! `POST /shows` (admin) and `GET /shows/{show_id}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use domain::show::{self, ScheduleShow, Section};
use domain::{Currency, DomainEvent, EventEnvelope, ShowCommand, ShowId, ShowState};
use event_store::{ExpectedVersion, NewEvent, StreamAppend};
use infra::stored_events::{decode, to_new_event};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::error::ApiError;
use crate::json::Json;
use crate::router::ApiState;

#[derive(Debug, Deserialize)]
pub struct CreateShow {
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub currency: String,
    pub sections: Vec<SectionBody>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SectionBody {
    pub name: String,
    pub rows: u32,
    pub seats_per_row: u32,
    pub price_cents: i64,
}

#[derive(Debug, Serialize)]
pub struct ShowCreated {
    pub show_id: ShowId,
    pub seat_count: u64,
}

#[derive(Debug, Serialize)]
pub struct ShowView {
    pub show_id: ShowId,
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub currency: String,
    pub seat_count: u64,
    pub sections: Vec<SectionBody>,
}

pub async fn create_show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(body): Json<CreateShow>,
) -> Result<impl IntoResponse, ApiError> {
    state.admin.require(&headers)?;
    let currency: Currency = body.currency.parse()?;
    let show_id = ShowId::new();
    let command = ShowCommand::Schedule(ScheduleShow {
        show_id,
        name: body.name,
        starts_at: body.starts_at,
        currency,
        sections: body
            .sections
            .into_iter()
            .map(|section| Section {
                name: section.name,
                rows: section.rows,
                seats_per_row: section.seats_per_row,
                price_cents: section.price_cents,
            })
            .collect(),
    });
    let events = show::decide(&None, command)?;
    let seat_count = events
        .iter()
        .fold(None, show::evolve)
        .map_or(0, |s| s.seat_count());
    let now = Utc::now();
    let new_events = EventEnvelope::fresh(events)
        .iter()
        .map(|envelope| to_new_event(envelope, now))
        .collect::<Result<Vec<NewEvent>, _>>()?;
    state
        .store
        .append(StreamAppend::new(
            show_id.stream_id(),
            ExpectedVersion::NoStream,
            new_events,
        ))
        .await?;
    info!(%show_id, seat_count, "show scheduled");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/shows/{show_id}"))],
        axum::Json(ShowCreated {
            show_id,
            seat_count,
        }),
    ))
}

pub async fn get_show(
    State(state): State<ApiState>,
    Path(show_id): Path<String>,
) -> Result<axum::Json<ShowView>, ApiError> {
    let show_id = parse_show_id(&show_id)?;
    let show = load_show(&state, show_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no show {show_id}")))?;
    Ok(axum::Json(ShowView {
        show_id,
        name: show.name().to_string(),
        starts_at: show.starts_at(),
        currency: show.currency().to_string(),
        seat_count: show.seat_count(),
        sections: show
            .sections()
            .iter()
            .map(|section| SectionBody {
                name: section.name.clone(),
                rows: section.rows,
                seats_per_row: section.seats_per_row,
                price_cents: section.price_cents,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize)]
pub struct SeatMap {
    pub show_id: ShowId,
    pub seats: Vec<SeatView>,
}

#[derive(Debug, Serialize)]
pub struct SeatView {
    pub seat: String,
    /// `free` or `sold` (held seats live in seat-lock's hold store, not yet built).
    pub state: &'static str,
    /// Only for the admin (API.md: the public seat map carries no booking ids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<domain::BookingId>,
}

/// `GET /shows/{show_id}/seats`: every seat in order, with its state; the admin also sees which
/// booking owns a sold seat. A request with a token that is not the admin's is refused rather
/// than silently served the public map.
pub async fn get_seats(
    State(state): State<ApiState>,
    Path(show_id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<SeatMap>, ApiError> {
    let is_admin = match crate::auth::bearer(&headers) {
        Some(_) => {
            state.admin.require(&headers)?;
            true
        }
        None => false,
    };
    let show_id = parse_show_id(&show_id)?;
    let show = load_show(&state, show_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no show {show_id}")))?;
    let seats = show
        .seats()
        .map(|seat| {
            let owner = show.owner_of(&seat);
            SeatView {
                seat: seat.to_string(),
                state: if owner.is_some() { "sold" } else { "free" },
                booking_id: owner.filter(|_| is_admin),
            }
        })
        .collect();
    Ok(axum::Json(SeatMap { show_id, seats }))
}

fn parse_show_id(text: &str) -> Result<ShowId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not a show id")))
}

/// A show's state, folded from its stream (the read models of a later issue replace this).
pub async fn load_show(state: &ApiState, show_id: ShowId) -> Result<ShowState, ApiError> {
    let recorded = state.store.read_stream(&show_id.stream_id(), 0).await?;
    let mut show = None;
    for event in &recorded {
        match decode(event) {
            Ok(DomainEvent::Show(event)) => show = show::evolve(show, &event),
            Ok(other) => {
                return Err(ApiError::Internal(format!(
                    "show stream {show_id} holds {}",
                    other.event_type()
                )));
            }
            Err(error) if error.source.is_unknown_type() => {}
            Err(error) => return Err(ApiError::Internal(error.to_string())),
        }
    }
    Ok(show)
}
