//! The shapes that go into the store and come out of it.
//!
//! The store keeps events opaque: a type name, JSON text and metadata. It never looks inside the
//! data, so it knows nothing of bookings; decoding into domain types happens in the caller through
//! [`RecordedEvent::decode`], which names the event when it fails.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{DecodeError, StoreError};

/// A position in the global log. Positions are dense: the first event is at 1, and every committed
/// event takes the next number (a rolled-back append takes none). `Position(0)` is "before the
/// first event", the place a new reader starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Position(pub u64);

impl Position {
    pub const START: Position = Position(0);
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Metadata every event carries besides its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    /// The id shared by every event of one business flow (e.g. the booking's first event).
    pub correlation_id: Option<Uuid>,
    /// The event (or command) that caused this one.
    pub causation_id: Option<Uuid>,
    /// The Kafka key the relay publishes the event under (the show id), so that all events of a
    /// show share a partition.
    pub partition_key: Option<String>,
    /// W3C `traceparent` of the request that caused the event, carried to Kafka headers.
    pub trace_context: Option<String>,
    /// When the event happened, by the application's clock.
    pub occurred_at: DateTime<Utc>,
}

impl Default for EventMetadata {
    fn default() -> Self {
        EventMetadata {
            correlation_id: None,
            causation_id: None,
            partition_key: None,
            trace_context: None,
            occurred_at: Utc::now(),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique across the store. Appending the same ids again is recognised as a repeat
    /// (see [`crate::EventStore::append_many`]), which is what makes redelivered work harmless.
    pub event_id: Uuid,
    /// Stable, versioned type name, e.g. `booking.requested.v1`.
    pub event_type: String,
    /// The event's data as JSON text.
    data: String,
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// An event whose data is `data` serialized to JSON.
    pub fn new(
        event_id: Uuid,
        event_type: impl Into<String>,
        data: &impl Serialize,
        metadata: EventMetadata,
    ) -> Result<NewEvent, StoreError> {
        let event_type = event_type.into();
        let data = serde_json::to_string(data).map_err(|source| StoreError::InvalidEvent {
            event_id,
            reason: format!("data does not serialize to JSON: {source}"),
        })?;
        Ok(NewEvent {
            event_id,
            event_type,
            data,
            metadata,
        })
    }

    /// An event whose data is already JSON text; it is checked to be valid JSON.
    pub fn from_json_text(
        event_id: Uuid,
        event_type: impl Into<String>,
        data: impl Into<String>,
        metadata: EventMetadata,
    ) -> Result<NewEvent, StoreError> {
        let data = data.into();
        if let Err(source) = serde_json::from_str::<serde::de::IgnoredAny>(&data) {
            return Err(StoreError::InvalidEvent {
                event_id,
                reason: format!("data is not valid JSON: {source}"),
            });
        }
        Ok(NewEvent {
            event_id,
            event_type: event_type.into(),
            data,
            metadata,
        })
    }

    /// The event's data as JSON text.
    pub fn data(&self) -> &str {
        &self.data
    }
}

/// The version a stream must be at for an append to go through: the optimistic-concurrency check
/// (and, on a show stream, the fencing token that keeps a seat from being sold twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream's last event must have exactly this version (0 = no stream).
    Exact(u64),
}

impl ExpectedVersion {
    pub(crate) fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(expected) => expected == actual,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(version) => version.fmt(f),
        }
    }
}

/// Events to append to one stream, with the version the stream must be at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    pub fn new(
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StreamAppend {
        StreamAppend {
            stream_id: stream_id.into(),
            expected,
            events,
        }
    }
}

/// Where the events of one stream of an append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedStream {
    pub stream_id: String,
    /// The stream's version after the append (the version of its last appended event).
    pub version: u64,
    /// The global position of each event, in the order they were given.
    pub positions: Vec<Position>,
}

/// The result of an append: one entry per stream, in the order they were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    pub streams: Vec<AppendedStream>,
    /// True when every event was stored already: nothing was written and the positions are the
    /// original ones.
    pub was_repeat: bool,
}

impl AppendResult {
    /// The highest position of the append: a reader that has passed it sees all of it.
    pub fn last_position(&self) -> Position {
        self.streams
            .iter()
            .flat_map(|stream| stream.positions.iter().copied())
            .max()
            .unwrap_or(Position::START)
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: Position,
    pub event_id: Uuid,
    pub stream_id: String,
    /// 1 for the first event of a stream.
    pub stream_version: u64,
    pub event_type: String,
    /// JSON text, exactly as appended.
    pub data: String,
    pub metadata: EventMetadata,
    /// When the store committed it, by the database's clock; non-decreasing in position order
    /// as long as the database clock does not step back.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// Decode the event with `decoder` (usually the domain's `decode(type, data)`); a failure is
    /// wrapped in a [`DecodeError`] that names the event id, position and type.
    pub fn decode<T, E>(
        &self,
        decoder: impl FnOnce(&str, &str) -> Result<T, E>,
    ) -> Result<T, DecodeError<E>>
    where
        E: std::error::Error + 'static,
    {
        decoder(&self.event_type, &self.data).map_err(|source| DecodeError {
            event_id: self.event_id,
            position: self.position,
            event_type: self.event_type.clone(),
            source,
        })
    }
}
