//! Live updates over server-sent events, from the read models:
//! - `GET /bookings/{id}/events` (holder or admin): the booking's state whenever it changes;
//! - `GET /shows/{id}/seats/events` (public): seats whose state changes (no booking ids).
//!
//! Each connection has a producer task that follows the read models (woken by the store's
//! head hint, polling as a fallback) and a bounded queue to the client. A client too slow to
//! keep up never costs unbounded memory: once its queue is full the producer drops updates, and
//! when there is room again it sends one `resync` event with the whole current state. When the
//! client goes away, the stream is dropped, the queue closes, and the producer ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use projections::ReadModelDb;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::debug;

use crate::access::authorize_by_hash;
use crate::auth::bearer;
use crate::error::ApiError;
use crate::router::ApiState;
use crate::shows::parse_show_id;

/// Updates queued per client before it counts as slow.
pub const CLIENT_QUEUE: usize = 64;
/// How often a producer looks at the read models when no wake-up comes.
const POLL: Duration = Duration::from_millis(250);

/// The client side of a connection: a bounded queue, drained by the SSE response.
fn event_stream(receiver: mpsc::Receiver<Event>) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok(event), receiver))
    })
}

/// Queue an update; false when the client is gone. A full queue drops the update and marks the
/// client for a resync.
fn offer(sender: &mpsc::Sender<Event>, event: Event, behind: &mut bool) -> bool {
    match sender.try_send(event) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            *behind = true;
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Wait for the next change of the log head (or the poll interval); false when the client is
/// gone.
async fn next_round(
    hint: &mut tokio::sync::watch::Receiver<event_store::Position>,
    sender: &mpsc::Sender<Event>,
) -> bool {
    tokio::select! {
        _ = hint.changed() => true,
        () = tokio::time::sleep(POLL) => true,
        () = sender.closed() => false,
    }
}

fn json_event(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

#[utoipa::path(get, path = "/bookings/{booking_id}/events", tag = "bookings",
    params(("booking_id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream: `booking` events (status, refund status, log position) and `resync` after a slow patch", content_type = "text/event-stream"),
        (status = 401, description = "No bearer token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither the booking's access token nor the admin token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such booking", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn booking_events(
    State(state): State<ApiState>,
    Path(booking_id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    bearer(&headers).ok_or(ApiError::Unauthorized)?;
    let booking_id: domain::BookingId = booking_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{booking_id:?} is not a booking id")))?;
    let db = crate::queries::read_models(&state, &Default::default()).await?;
    let view = db
        .booking(booking_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no booking {booking_id}")))?;
    authorize_by_hash(&headers, &state.admin, view.access_token_sha256.as_deref())?;
    let (sender, receiver) = mpsc::channel(CLIENT_QUEUE);
    let mut hint = state.store.head_hint();
    tokio::spawn(async move {
        let mut last_sent = 0;
        let mut behind = false;
        loop {
            match db.booking(booking_id).await {
                Ok(Some(view)) if view.last_position != last_sent || behind => {
                    let name = if behind { "resync" } else { "booking" };
                    let data = json!({
                        "booking_id": view.booking_id,
                        "status": view.status.as_str(),
                        "refund_status": view.refund_status,
                        "last_event": view.timeline.last().map(|e| e.event_type.clone()),
                        "log_position": view.last_position,
                    });
                    behind = false;
                    last_sent = view.last_position;
                    if !offer(&sender, json_event(name, data), &mut behind) {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => debug!(%error, "reading a booking for a live update failed"),
            }
            if !next_round(&mut hint, &sender).await {
                break;
            }
        }
        debug!(%booking_id, "live booking updates ended");
    });
    Ok(Sse::new(event_stream(receiver)).keep_alive(KeepAlive::default()))
}

#[utoipa::path(get, path = "/shows/{show_id}/seats/events", tag = "shows",
    params(("show_id" = String, Path, format = Uuid)),
    responses(
        (status = 200, description = "text/event-stream: a `snapshot` of every held or sold seat, then `seat` events (`free`, `held`, `sold`), and `resync` after a slow patch", content_type = "text/event-stream"),
        (status = 400, description = "Malformed show id", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn seat_events(
    State(state): State<ApiState>,
    Path(show_id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let show_id = parse_show_id(&show_id)?;
    let db: ReadModelDb = crate::queries::read_models(&state, &Default::default()).await?;
    let (sender, receiver) = mpsc::channel(CLIENT_QUEUE);
    let mut hint = state.store.head_hint();
    tokio::spawn(async move {
        let mut known: Option<HashMap<String, &'static str>> = None;
        let mut behind = false;
        loop {
            let current: HashMap<String, &'static str> = match db.seats(show_id, None).await {
                Ok(claims) => claims
                    .into_iter()
                    .map(|(seat, claim)| {
                        (seat.to_string(), if claim.sold { "sold" } else { "held" })
                    })
                    .collect(),
                Err(error) => {
                    debug!(%error, "reading a seat map for live updates failed");
                    if !next_round(&mut hint, &sender).await {
                        break;
                    }
                    continue;
                }
            };
            let open = match &known {
                Some(known) if !behind => {
                    let mut open = true;
                    let freed = known.keys().filter(|seat| !current.contains_key(*seat));
                    for seat in freed {
                        open &= offer(
                            &sender,
                            json_event("seat", json!({"seat": seat, "state": "free"})),
                            &mut behind,
                        );
                    }
                    for (seat, now) in &current {
                        if known.get(seat) != Some(now) {
                            open &= offer(
                                &sender,
                                json_event("seat", json!({"seat": seat, "state": now})),
                                &mut behind,
                            );
                        }
                    }
                    open
                }
                _ => {
                    let name = if known.is_some() {
                        "resync"
                    } else {
                        "snapshot"
                    };
                    behind = false;
                    offer(
                        &sender,
                        json_event(name, json!({"show_id": show_id, "seats": current})),
                        &mut behind,
                    )
                }
            };
            known = Some(current);
            if !open || !next_round(&mut hint, &sender).await {
                break;
            }
        }
        debug!(%show_id, "live seat updates ended");
    });
    Ok(Sse::new(event_stream(receiver)).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_client_costs_a_bounded_queue_and_is_marked_for_a_resync() {
        let (sender, mut receiver) = mpsc::channel(2);
        let mut behind = false;
        for n in 0..10 {
            assert!(offer(
                &sender,
                Event::default().data(n.to_string()),
                &mut behind
            ));
        }
        assert!(behind, "updates beyond the queue were dropped and noted");
        assert!(receiver.try_recv().is_ok() && receiver.try_recv().is_ok());
        assert!(
            receiver.try_recv().is_err(),
            "only the queue's worth was kept"
        );
        drop(receiver);
        let mut behind = false;
        assert!(
            !offer(&sender, Event::default(), &mut behind),
            "a client that left ends the producer"
        );
    }
}
