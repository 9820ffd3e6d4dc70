//! Domain events in the event store: the one place that turns a domain [`EventEnvelope`] into
//! the store's opaque [`NewEvent`] and a [`RecordedEvent`] back into a [`DomainEvent`].
//!
//! The store knows nothing of bookings and the domain nothing of storage; this adapter knows
//! both. Metadata follows DESIGN.md: the partition key is the show id (all events of a show, its
//! bookings' included, share a Kafka partition), correlation and causation ids come from the
//! envelope.

use chrono::{DateTime, Utc};
use domain::{DomainEvent, EventDecodeError, EventEnvelope};
use event_store::{DecodeError, EventMetadata, NewEvent, RecordedEvent, StoreError};

/// The store's form of a domain event, occurring at `occurred_at`.
pub fn to_new_event(
    envelope: &EventEnvelope,
    occurred_at: DateTime<Utc>,
) -> Result<NewEvent, StoreError> {
    let event = &envelope.event;
    NewEvent::from_json_text(
        envelope.event_id.as_uuid(),
        event.event_type(),
        event.to_json_string(),
        EventMetadata {
            correlation_id: Some(envelope.correlation_id.as_uuid()),
            causation_id: envelope.causation_id.map(|id| id.as_uuid()),
            partition_key: Some(event.partition_key()),
            trace_context: None,
            occurred_at,
        },
    )
}

/// The domain event a stored event holds. An unknown type (`source.is_unknown_type()`) is for
/// consumers to skip and count; data that does not decode is poison. Either way the error names
/// the event id and position.
pub fn decode(recorded: &RecordedEvent) -> Result<DomainEvent, DecodeError<EventDecodeError>> {
    recorded.decode(DomainEvent::decode)
}
