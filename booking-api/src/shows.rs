//! `POST /shows` (admin) and `GET /shows/{show_id}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use domain::show::{self, ScheduleShow, Section};
use domain::{Currency, EventEnvelope, ShowCommand, ShowId};
use event_store::{ExpectedVersion, NewEvent, StreamAppend};
use infra::stored_events::to_new_event;
use serde::{Deserialize, Serialize};
use tracing::{Span, field, info};
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::json::Json;
use crate::router::ApiState;
use crate::streams::load_show;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateShow {
    pub name: String,
    pub starts_at: DateTime<Utc>,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
    pub sections: Vec<SectionBody>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SectionBody {
    /// `[A-Za-z0-9]{1,16}`: the first part of the section's seat ids.
    pub name: String,
    pub rows: u32,
    pub seats_per_row: u32,
    pub price_cents: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShowCreated {
    #[schema(value_type = String, format = Uuid)]
    pub show_id: ShowId,
    pub seat_count: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShowView {
    #[schema(value_type = String, format = Uuid)]
    pub show_id: ShowId,
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub currency: String,
    pub seat_count: u64,
    pub sections: Vec<SectionBody>,
}

/// Schedule a show (admin).
#[utoipa::path(
    post,
    path = "/shows",
    tag = "shows",
    request_body = CreateShow,
    security(("bearer" = [])),
    responses(
        (status = 201, body = ShowCreated,
            headers(("Location" = String, description = "The show's URL"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid show (sections, prices, currency, names)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(name = "command.schedule_show", skip_all, fields(show_id = field::Empty))]
pub async fn create_show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(body): Json<CreateShow>,
) -> Result<impl IntoResponse, ApiError> {
    state.admin.require(&headers)?;
    let _admitted = state.admission.admit()?;
    let currency: Currency = body.currency.parse()?;
    let show_id = ShowId::new();
    Span::current().record("show_id", field::display(show_id));
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

/// A show's details (public).
#[utoipa::path(
    get,
    path = "/shows/{show_id}",
    tag = "shows",
    params(("show_id" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = ShowView),
        (status = 400, description = "Malformed show id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such show", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(name = "query.get_show", skip_all, fields(show_id = %show_id))]
pub async fn get_show(
    State(state): State<ApiState>,
    Path(show_id): Path<String>,
) -> Result<axum::Json<ShowView>, ApiError> {
    let show_id = parse_show_id(&show_id)?;
    let show = load_show(&*state.store, show_id)
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

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SeatMap {
    #[schema(value_type = String, format = Uuid)]
    pub show_id: ShowId,
    pub seats: Vec<SeatView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SeatView {
    pub seat: String,
    /// `free`, `held` or `sold`. Sold comes from the show stream (the truth); held from the read
    /// models, when the API has them.
    pub state: String,
    /// Only for the admin (API.md: the public seat map carries no booking ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub booking_id: Option<domain::BookingId>,
}

/// `GET /shows/{show_id}/seats`: every seat in order, with its state; the admin also sees which
/// booking owns a sold seat. A request with a token that is not the admin's is refused rather
/// than silently served the public map.
#[utoipa::path(
    get,
    path = "/shows/{show_id}/seats",
    tag = "shows",
    params(("show_id" = String, Path, format = Uuid), crate::queries::ReadYourWrites),
    responses(
        (status = 200, body = SeatMap),
        (status = 400, description = "Malformed show id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A bearer token that is not the admin's", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such show", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The read models have not reached min_position", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(name = "query.get_seats", skip_all, fields(show_id = %show_id))]
pub async fn get_seats(
    State(state): State<ApiState>,
    Path(show_id): Path<String>,
    headers: HeaderMap,
    axum::extract::Query(wanted): axum::extract::Query<crate::queries::ReadYourWrites>,
) -> Result<axum::Json<SeatMap>, ApiError> {
    let is_admin = match crate::auth::bearer(&headers) {
        Some(_) => {
            state.admin.require(&headers)?;
            true
        }
        None => false,
    };
    let show_id = parse_show_id(&show_id)?;
    // Held seats from the read models (after `min_position`, if asked), sold ones from the
    // show stream read after them, so a sale is never shown as a hold.
    let claims = match &state.read_models {
        Some(_) => {
            let db = crate::queries::read_models(&state, &wanted).await?;
            db.seats(show_id, None).await?
        }
        None if wanted.min_position.is_some() => {
            return Err(ApiError::Unavailable(
                "the read models are not configured".into(),
            ));
        }
        None => Default::default(),
    };
    let show = load_show(&*state.store, show_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no show {show_id}")))?;
    let seats = show
        .seats()
        .map(|seat| {
            let (state, owner) = match (show.owner_of(&seat), claims.get(&seat)) {
                (Some(owner), _) => ("sold", Some(owner)),
                (None, Some(claim)) if !claim.sold => ("held", Some(claim.booking_id)),
                (None, _) => ("free", None),
            };
            SeatView {
                seat: seat.to_string(),
                state: state.to_string(),
                booking_id: owner.filter(|_| is_admin),
            }
        })
        .collect();
    Ok(axum::Json(SeatMap { show_id, seats }))
}

pub(crate) fn parse_show_id(text: &str) -> Result<ShowId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not a show id")))
}
