//! `POST /bookings`, `GET /bookings/{booking_id}` and `DELETE /bookings/{booking_id}`.
//!
//! A booking request is validated against the show (the seats exist, are not repeated, at most
//! ten; the amount is fixed from the show's prices), decided by the booking decider and appended
//! as `booking.requested.v1`. The API answers `202 Accepted` as soon as the event is committed;
//! whether the seats can be held is seat-lock's decision, made from the log. See
//! [`crate::idempotency`] for `Idempotency-Key` and [`crate::access`] for the access token.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::booking::{
    self, BookingAccess, BookingCommand, CancelledBy, IdempotencyRecord, RequestBooking,
};
use domain::{BookingId, Customer, EventEnvelope, RefundStatus, SeatId};
use event_store::{ExpectedVersion, NewEvent, StoreError, StreamAppend};
use infra::stored_events::to_new_event;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{Span, debug, field};
use utoipa::ToSchema;

use crate::access::{Caller, authorize, authorize_by_hash, sha256_hex};
use crate::auth::bearer;
use crate::error::{ApiError, Problem};
use crate::idempotency::{self, InFlightGuard};
use crate::json::Json;
use crate::router::ApiState;
use crate::shows::parse_show_id;
use crate::streams::{LoadedBooking, load_booking};

/// Attempts at a cancellation that keeps meeting concurrent appends to the same booking.
const CANCEL_ATTEMPTS: usize = 5;

/// Generations of one idempotency key (a key reused after it expired gets a new booking id).
const MAX_KEY_GENERATIONS: u32 = 10_000;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBooking {
    /// The show, as `POST /shows` returned it.
    #[schema(format = Uuid)]
    pub show_id: String,
    /// 1 to 10 distinct seats, `SECTION-ROW-NUMBER`.
    #[schema(example = json!(["A-1-1", "A-1-2"]))]
    pub seats: Vec<String>,
    pub customer: CustomerBody,
    /// The payment provider's token (the simulator: `sim_ok`, `sim_declined`, `sim_flaky_N`,
    /// `sim_unknown`).
    #[serde(default)]
    pub payment_method: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    pub id: String,
    pub email: String,
    pub name: String,
}

/// The answer to an accepted booking request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BookingAccepted {
    #[schema(value_type = String, format = Uuid)]
    pub booking_id: BookingId,
    /// Always `requested`: what happens next is decided from the log.
    pub status: String,
    /// Where to follow the booking (`GET`, with the access token).
    pub status_url: String,
    /// The bearer token that reads, follows and cancels this booking. Returned only here.
    pub access_token: String,
    /// The log position of the request: queries given `?min_position` wait until they reflect it.
    pub log_position: u64,
}

/// A booking as `GET /bookings/{booking_id}` shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BookingView {
    #[schema(value_type = String, format = Uuid)]
    pub booking_id: BookingId,
    #[schema(value_type = String, format = Uuid)]
    pub show_id: domain::ShowId,
    pub seats: Vec<String>,
    pub customer: CustomerBody,
    /// `requested`, `held`, `paid`, `confirmed`, `rejected`, `expired`, `cancelled`, `failed`.
    pub status: String,
    pub amount_cents: i64,
    pub currency: String,
    /// `none`, `pending`, `refunded`.
    #[schema(value_type = String)]
    pub refund_status: RefundStatus,
    /// While the seats are held: when the hold runs out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// Every event of the booking, in order.
    pub timeline: Vec<TimelineEntry>,
    /// The log position of the booking's latest event.
    pub log_position: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TimelineEntry {
    /// The event type, e.g. `booking.seats_held.v1`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the event store recorded it.
    pub at: DateTime<Utc>,
}

/// The answer to an accepted cancellation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CancellationAccepted {
    #[schema(value_type = String, format = Uuid)]
    pub booking_id: BookingId,
    /// `cancelled`.
    pub status: String,
    /// `pending` when money was taken and is being refunded, else `none`.
    #[schema(value_type = String)]
    pub refund_status: RefundStatus,
    pub log_position: u64,
}

/// Request seats for a customer.
#[utoipa::path(
    post,
    path = "/bookings",
    tag = "bookings",
    request_body = CreateBooking,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Repeat the request safely: same key and body give the same answer. \
                       Scoped to the customer id, kept 24 hours.")),
    responses(
        (status = 202, description = "Accepted: the request is in the log", body = BookingAccepted,
            headers(("Location" = String, description = "The booking's status URL"))),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such show", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown, repeated or too many seats, a bad customer, or an Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Overloaded; retry after Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(
    name = "command.request_booking",
    skip_all,
    fields(show_id = field::Empty, booking_id = field::Empty, event_id = field::Empty)
)]
pub async fn request_booking(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let _admitted = state.admission.admit()?;
    let key = idempotency::key_from(&headers)?;
    // The body is kept as JSON for its fingerprint; the error names the field at fault.
    let request: CreateBooking = serde_path_to_error::deserialize(&body)
        .map_err(|error| ApiError::Unprocessable(format!("invalid booking request: {error}")))?;
    let show_id = parse_show_id(&request.show_id)
        .map_err(|_| ApiError::Unprocessable(format!("{:?} is not a show id", request.show_id)))?;
    Span::current().record("show_id", field::display(show_id));
    let seats = request
        .seats
        .iter()
        .map(|seat| seat.parse::<SeatId>())
        .collect::<Result<Vec<SeatId>, _>>()?;
    let customer = Customer::new(
        &request.customer.id,
        &request.customer.email,
        &request.customer.name,
    )?;
    let show = state
        .catalog
        .show(&*state.store, show_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no show {show_id}")))?;
    let priced = show.price_seats(&seats)?;
    let now = Utc::now();

    // With a key: the booking id the key names, unless that booking answers the request already.
    // Only a keyed request needs the body's fingerprint (canonical JSON + SHA-256).
    let fingerprint = key.as_ref().map(|_| idempotency::fingerprint(&body));
    let mut _in_flight: Option<InFlightGuard> = None;
    let (booking_id, idempotency) = match &key {
        None => (BookingId::new(), None),
        Some(key) => {
            _in_flight = Some(state.in_flight.claim(&customer.id, key)?);
            match keyed_booking_id(&state, &customer, key, now).await? {
                KeyedBooking::New(booking_id) => (
                    booking_id,
                    Some(IdempotencyRecord {
                        key: key.clone(),
                        request_sha256: fingerprint.clone().unwrap_or_default(),
                    }),
                ),
                KeyedBooking::Existing(existing) => {
                    return replay(
                        &state,
                        &existing,
                        key,
                        fingerprint.as_deref().unwrap_or_default(),
                    );
                }
            }
        }
    };
    Span::current().record("booking_id", field::display(booking_id));

    let access_token = state.tokens.token_for(booking_id);
    let keyed = idempotency.is_some();
    let events = booking::decide(
        &None,
        BookingCommand::Request(RequestBooking {
            booking_id,
            show_id,
            seats: priced.seats,
            customer,
            payment_method: request.payment_method,
            amount: priced.amount,
            requested_at: now,
            access: BookingAccess {
                access_token_sha256: Some(sha256_hex(access_token.as_bytes())),
                idempotency,
            },
        }),
    )?;
    let mut envelopes = EventEnvelope::fresh(events);
    if keyed {
        // Ids a repeat of this request derives the same way, so that the store recognises it.
        for (index, envelope) in (0u32..).zip(envelopes.iter_mut()) {
            envelope.event_id = idempotency::requested_event_id(booking_id, index);
            envelope.correlation_id = idempotency::requested_event_id(booking_id, 0);
        }
    }
    if let Some(first) = envelopes.first() {
        Span::current().record("event_id", field::display(first.event_id));
    }
    let new_events = envelopes
        .iter()
        .map(|envelope| to_new_event(envelope, now))
        .collect::<Result<Vec<NewEvent>, _>>()?;
    let appended = state
        .store
        .append(StreamAppend::new(
            booking_id.stream_id(),
            ExpectedVersion::NoStream,
            new_events,
        ))
        .await;
    match appended {
        Ok(result) if !result.was_repeat => {
            let log_position = result.last_position().0;
            debug!(%booking_id, %show_id, log_position, "booking requested");
            Ok(accepted(booking_id, access_token, log_position))
        }
        // Another request with the same key (another process, or the same group-commit batch)
        // stored the booking first: answer as it was answered, if the body is the same.
        Ok(_) | Err(StoreError::Conflict { .. }) if keyed => {
            let existing = load_booking(&*state.store, booking_id)
                .await?
                .ok_or_else(|| ApiError::Internal(format!("booking {booking_id} vanished")))?;
            replay(
                &state,
                &existing,
                key.as_deref().unwrap_or_default(),
                fingerprint.as_deref().unwrap_or_default(),
            )
        }
        Ok(_) => Err(ApiError::Internal(format!(
            "fresh booking {booking_id} was stored already"
        ))),
        Err(error) => Err(error.into()),
    }
}

enum KeyedBooking {
    /// No booking answers this key yet: create it under this id.
    New(BookingId),
    /// The key's booking, requested less than 24 hours ago.
    Existing(Box<LoadedBooking>),
}

/// The booking a key names now: the first generation of (customer, key) that is free, or still
/// remembered. Generations older than the key lifetime are skipped: the key was forgotten.
async fn keyed_booking_id(
    state: &ApiState,
    customer: &Customer,
    key: &str,
    now: DateTime<Utc>,
) -> Result<KeyedBooking, ApiError> {
    for generation in 0..MAX_KEY_GENERATIONS {
        let booking_id = idempotency::booking_id_for(&customer.id, key, generation);
        match load_booking(&*state.store, booking_id).await? {
            None => return Ok(KeyedBooking::New(booking_id)),
            Some(existing) if idempotency::is_remembered(existing.booking.requested_at(), now) => {
                return Ok(KeyedBooking::Existing(Box::new(existing)));
            }
            Some(_) => continue,
        }
    }
    Err(ApiError::Unprocessable(format!(
        "Idempotency-Key {key:?} was reused too many times; use a new key"
    )))
}

/// The answer to a repeated keyed request: the first answer if the body is the same, else 422.
fn replay(
    state: &ApiState,
    existing: &LoadedBooking,
    key: &str,
    fingerprint: &str,
) -> Result<Response, ApiError> {
    let booking_id = existing.booking.booking_id();
    match &existing.booking.access().idempotency {
        Some(record) if record.key == key && record.request_sha256 == fingerprint => {
            debug!(%booking_id, "repeated booking request answered as before");
            Ok(accepted(
                booking_id,
                state.tokens.token_for(booking_id),
                existing.requested_position,
            ))
        }
        _ => Err(ApiError::Unprocessable(format!(
            "Idempotency-Key {key:?} was used with another request body; use a new key for a new \
             request"
        ))),
    }
}

fn accepted(booking_id: BookingId, access_token: String, log_position: u64) -> Response {
    let status_url = format!("/bookings/{booking_id}");
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, status_url.clone())],
        axum::Json(BookingAccepted {
            booking_id,
            status: "requested".into(),
            status_url,
            access_token,
            log_position,
        }),
    )
        .into_response()
}

/// A booking: its status, seats, customer, amount, refund and timeline. Holder or admin.
#[utoipa::path(
    get,
    path = "/bookings/{booking_id}",
    tag = "bookings",
    params(("booking_id" = String, Path, format = Uuid), crate::queries::ReadYourWrites),
    security(("bearer" = [])),
    responses(
        (status = 200, body = BookingView),
        (status = 503, description = "The read models have not reached min_position", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Malformed booking id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither the booking's access token nor the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such booking", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(name = "query.get_booking", skip_all, fields(booking_id = %booking_id))]
pub async fn get_booking(
    State(state): State<ApiState>,
    Path(booking_id): Path<String>,
    headers: HeaderMap,
    axum::extract::Query(wanted): axum::extract::Query<crate::queries::ReadYourWrites>,
) -> Result<axum::Json<BookingView>, ApiError> {
    bearer(&headers).ok_or(ApiError::Unauthorized)?;
    let booking_id = parse_booking_id(&booking_id)?;
    if state.read_models.is_some() {
        let db = crate::queries::read_models(&state, &wanted).await?;
        let mut found = db.booking(booking_id).await?;
        if found.is_none() && wanted.min_position.is_none() {
            // Perhaps committed but not projected yet: wait (bounded) for the read models to
            // pass every event committed before this request, so a new booking is never a 404.
            let head = state.store.head().await?;
            let caught_up = crate::queries::ReadYourWrites {
                min_position: Some(head.0),
            };
            found = crate::queries::read_models(&state, &caught_up)
                .await?
                .booking(booking_id)
                .await?;
        }
        let projected =
            found.ok_or_else(|| ApiError::NotFound(format!("no booking {booking_id}")))?;
        authorize_by_hash(
            &headers,
            &state.admin,
            projected.access_token_sha256.as_deref(),
        )?;
        return Ok(axum::Json(projected_view(projected)));
    }
    // No read models (an API run for commands only): fold the stream.
    let loaded = load_booking(&*state.store, booking_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no booking {booking_id}")))?;
    authorize(&headers, &state.admin, &loaded.booking)?;
    Ok(axum::Json(view(&loaded)))
}

/// The answer from the read model.
fn projected_view(projected: projections::view::BookingView) -> BookingView {
    BookingView {
        booking_id: projected.booking_id,
        show_id: projected.show_id,
        seats: projected.seats.iter().map(ToString::to_string).collect(),
        customer: CustomerBody {
            id: projected.customer.id.as_str().to_string(),
            email: projected.customer.email.as_str().to_string(),
            name: projected.customer.name.as_str().to_string(),
        },
        status: projected.status.as_str().to_string(),
        amount_cents: projected.amount_cents,
        currency: projected.currency,
        refund_status: projected.refund_status,
        hold_expires_at: match projected.status {
            domain::BookingStatus::Held => projected.hold_expires_at,
            _ => None,
        },
        timeline: projected
            .timeline
            .iter()
            .map(|entry| TimelineEntry {
                event_type: entry.event_type.clone(),
                at: entry.at,
            })
            .collect(),
        log_position: projected.last_position,
    }
}

/// Cancel a booking (holder or admin). A paid or confirmed booking is refunded and its seats are
/// released.
#[utoipa::path(
    delete,
    path = "/bookings/{booking_id}",
    tag = "bookings",
    params(("booking_id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Cancelled", body = CancellationAccepted),
        (status = 400, description = "Malformed booking id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither the booking's access token nor the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such booking", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already rejected, expired, cancelled or failed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Overloaded; retry after Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(
    name = "command.cancel_booking",
    skip_all,
    fields(booking_id = %booking_id, show_id = field::Empty, event_id = field::Empty)
)]
pub async fn cancel_booking(
    State(state): State<ApiState>,
    Path(booking_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    bearer(&headers).ok_or(ApiError::Unauthorized)?;
    let booking_id = parse_booking_id(&booking_id)?;
    let _admitted = state.admission.admit()?;
    for _ in 0..CANCEL_ATTEMPTS {
        let loaded = load_booking(&*state.store, booking_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no booking {booking_id}")))?;
        Span::current().record("show_id", field::display(loaded.booking.show_id()));
        let by = match authorize(&headers, &state.admin, &loaded.booking)? {
            Caller::Admin => CancelledBy::Admin,
            Caller::Holder => CancelledBy::Holder,
        };
        let state_now = Some(loaded.booking);
        let events = booking::decide(&state_now, BookingCommand::Cancel { by })?;
        let after = events.iter().fold(state_now, booking::evolve);
        let refund_status = after
            .as_ref()
            .map_or(RefundStatus::None, |booking| booking.refund_status());
        let envelopes = EventEnvelope::fresh(events);
        if let Some(first) = envelopes.first() {
            Span::current().record("event_id", field::display(first.event_id));
        }
        let now = Utc::now();
        let new_events = envelopes
            .iter()
            .map(|envelope| to_new_event(envelope, now))
            .collect::<Result<Vec<NewEvent>, _>>()?;
        let appended = state
            .store
            .append(StreamAppend::new(
                booking_id.stream_id(),
                ExpectedVersion::Exact(loaded.version),
                new_events,
            ))
            .await;
        match appended {
            Ok(result) => {
                debug!(%booking_id, ?by, "booking cancelled");
                return Ok((
                    StatusCode::ACCEPTED,
                    axum::Json(CancellationAccepted {
                        booking_id,
                        status: "cancelled".into(),
                        refund_status,
                        log_position: result.last_position().0,
                    }),
                )
                    .into_response());
            }
            // The booking moved on meanwhile (seat-lock, payment): decide again on its new state.
            Err(StoreError::Conflict { .. }) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(ApiError::Unavailable(format!(
        "booking {booking_id} kept changing while it was being cancelled"
    )))
}

fn parse_booking_id(text: &str) -> Result<BookingId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not a booking id")))
}

fn view(loaded: &LoadedBooking) -> BookingView {
    let booking = &loaded.booking;
    let customer = booking.customer();
    BookingView {
        booking_id: booking.booking_id(),
        show_id: booking.show_id(),
        seats: booking.seats().iter().map(ToString::to_string).collect(),
        customer: CustomerBody {
            id: customer.id.as_str().to_string(),
            email: customer.email.as_str().to_string(),
            name: customer.name.as_str().to_string(),
        },
        status: booking.status().as_str().to_string(),
        amount_cents: booking.amount().amount_minor,
        currency: booking.amount().currency.to_string(),
        refund_status: booking.refund_status(),
        hold_expires_at: booking.hold_expires_at(),
        timeline: loaded
            .timeline
            .iter()
            .map(|entry| TimelineEntry {
                event_type: entry.event_type.clone(),
                at: entry.recorded_at,
            })
            .collect(),
        log_position: loaded.last_position,
    }
}
