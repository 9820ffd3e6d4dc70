//! Loading a show or a booking by folding its stream: what every command (the API's and the
//! services') is decided against. Types this build does not know (written by a newer version)
//! are skipped, as everywhere in ZingQueue; older versions arrive upcast.

use domain::booking::{self, BookingEvent};
use domain::show::{self, ShowEvent};
use domain::{Booking, BookingId, DomainEvent, ShowId, ShowState};
use event_store::{EventStore, RecordedEvent, StoreError};

use crate::stored_events::decode;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event that does not decode, or one that belongs to another kind of stream.
    #[error("{0}")]
    Corrupt(String),
}

impl StreamError {
    /// Worth retrying as it is (the database went away), as opposed to a broken stream.
    pub fn is_transient(&self) -> bool {
        matches!(self, StreamError::Store(error) if error.is_transient())
    }
}

/// A stream's events that this version of the code knows, decoded, and the stream's version.
/// The version counts every stored event, unknown types included: appends expect it, and a
/// version that skipped a newer service's event would conflict forever.
async fn read_known_events(
    store: &dyn EventStore,
    stream_id: &str,
) -> Result<(Vec<(RecordedEvent, DomainEvent)>, u64), StreamError> {
    let recorded = store.read_stream(stream_id, 0).await?;
    let version = recorded.last().map_or(0, |event| event.stream_version);
    let mut events = Vec::with_capacity(recorded.len());
    for event in recorded {
        match decode(&event) {
            Ok(decoded) => events.push((event, decoded)),
            Err(error) if error.source.is_unknown_type() => {}
            Err(error) => return Err(StreamError::Corrupt(error.to_string())),
        }
    }
    Ok((events, version))
}

/// A show as its stream made it.
#[derive(Debug, Clone)]
pub struct LoadedShow {
    pub show: ShowState,
    /// The stream's version: the expected version of the next append (the fencing token
    /// against double sales).
    pub version: u64,
}

/// A show's state, folded from its stream (`show: None`: no such show).
pub async fn load_show(store: &dyn EventStore, show_id: ShowId) -> Result<LoadedShow, StreamError> {
    let mut show = None;
    let (events, version) = read_known_events(store, &show_id.stream_id()).await?;
    for (recorded, event) in events {
        show = show::evolve(show, &show_event(&recorded, event)?);
    }
    Ok(LoadedShow { show, version })
}

/// A booking as its stream made it, with what the API answers about it besides its state.
#[derive(Debug, Clone)]
pub struct LoadedBooking {
    pub booking: Booking,
    /// The stream's version: the expected version of the next append.
    pub version: u64,
    /// The position of `booking.requested.v1`, which `POST /bookings` answered with.
    pub requested_position: u64,
    /// The position of the stream's last event.
    pub last_position: u64,
    /// Every event of the booking: its type, id and when the store recorded it.
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Debug, Clone)]
pub struct TimelineEntry {
    pub event_type: String,
    pub event_id: uuid::Uuid,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

/// A booking folded from its stream (`None`: no such booking).
pub async fn load_booking(
    store: &dyn EventStore,
    booking_id: BookingId,
) -> Result<Option<LoadedBooking>, StreamError> {
    let (events, version) = read_known_events(store, &booking_id.stream_id()).await?;
    let Some((first, _)) = events.first() else {
        return Ok(None);
    };
    let requested_position = first.position.0;
    let mut state = None;
    let mut last_position = 0;
    let mut timeline = Vec::with_capacity(events.len());
    for (recorded, event) in events {
        last_position = recorded.position.0;
        timeline.push(TimelineEntry {
            event_type: recorded.event_type.clone(),
            event_id: recorded.event_id,
            recorded_at: recorded.recorded_at,
        });
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

fn show_event(recorded: &RecordedEvent, event: DomainEvent) -> Result<ShowEvent, StreamError> {
    match event {
        DomainEvent::Show(event) => Ok(event),
        other => Err(misplaced(recorded, other.event_type())),
    }
}

fn booking_event(
    recorded: &RecordedEvent,
    event: DomainEvent,
) -> Result<BookingEvent, StreamError> {
    match event {
        DomainEvent::Booking(event) => Ok(event),
        other => Err(misplaced(recorded, other.event_type())),
    }
}

fn misplaced(recorded: &RecordedEvent, event_type: &str) -> StreamError {
    StreamError::Corrupt(format!(
        "stream {} holds {event_type} at position {}",
        recorded.stream_id, recorded.position.0
    ))
}
