//! Loading a show or a booking by folding its stream: what the commands decide against, and what
//! the queries answer from until the read models of the projections replace them.

use domain::booking::{self, BookingEvent};
use domain::show::{self, ShowEvent};
use domain::{Booking, BookingId, DomainEvent, ShowId, ShowState};
use event_store::{EventStore, RecordedEvent};
use infra::stored_events::decode;

use crate::error::ApiError;

/// A stream's events that this version of the code knows, decoded (older versions upcast). Types
/// it does not know (written by a newer version) are skipped, as everywhere in ZingQueue.
async fn read_known_events(
    store: &dyn EventStore,
    stream_id: &str,
) -> Result<Vec<(RecordedEvent, DomainEvent)>, ApiError> {
    let recorded = store.read_stream(stream_id, 0).await?;
    let mut events = Vec::with_capacity(recorded.len());
    for event in recorded {
        match decode(&event) {
            Ok(decoded) => events.push((event, decoded)),
            Err(error) if error.source.is_unknown_type() => {}
            Err(error) => return Err(ApiError::Internal(error.to_string())),
        }
    }
    Ok(events)
}

/// A show's state, folded from its stream (`None`: no such show).
pub async fn load_show(store: &dyn EventStore, show_id: ShowId) -> Result<ShowState, ApiError> {
    let mut show = None;
    for (recorded, event) in read_known_events(store, &show_id.stream_id()).await? {
        show = show::evolve(show, &show_event(&recorded, event)?);
    }
    Ok(show)
}

/// A booking as its stream made it, with what the API answers about it besides its state.
#[derive(Debug)]
pub struct LoadedBooking {
    pub booking: Booking,
    /// The stream's version: the expected version of the next append.
    pub version: u64,
    /// The position of `booking.requested.v1`, which `POST /bookings` answered with.
    pub requested_position: u64,
    /// The position of the stream's last event.
    pub last_position: u64,
    /// Every event of the booking: its type and when the store recorded it.
    pub timeline: Vec<(String, chrono::DateTime<chrono::Utc>)>,
}

/// A booking folded from its stream (`None`: no such booking).
pub async fn load_booking(
    store: &dyn EventStore,
    booking_id: BookingId,
) -> Result<Option<LoadedBooking>, ApiError> {
    let events = read_known_events(store, &booking_id.stream_id()).await?;
    let Some((first, _)) = events.first() else {
        return Ok(None);
    };
    let requested_position = first.position.0;
    let mut state = None;
    let mut version = 0;
    let mut last_position = 0;
    let mut timeline = Vec::with_capacity(events.len());
    for (recorded, event) in events {
        version = recorded.stream_version;
        last_position = recorded.position.0;
        timeline.push((recorded.event_type.clone(), recorded.recorded_at));
        state = booking::evolve(state, &booking_event(&recorded, event)?);
    }
    Ok(state.map(|booking| LoadedBooking {
        booking,
        version,
        requested_position,
        last_position,
        timeline,
    }))
}

fn show_event(recorded: &RecordedEvent, event: DomainEvent) -> Result<ShowEvent, ApiError> {
    match event {
        DomainEvent::Show(event) => Ok(event),
        other => Err(misplaced(recorded, other.event_type())),
    }
}

fn booking_event(recorded: &RecordedEvent, event: DomainEvent) -> Result<BookingEvent, ApiError> {
    match event {
        DomainEvent::Booking(event) => Ok(event),
        other => Err(misplaced(recorded, other.event_type())),
    }
}

fn misplaced(recorded: &RecordedEvent, event_type: &str) -> ApiError {
    ApiError::Internal(format!(
        "stream {} holds {event_type} at position {}",
        recorded.stream_id, recorded.position.0
    ))
}
