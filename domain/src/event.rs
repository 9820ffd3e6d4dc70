//! Events as stored and published: the stable type names, the [`DomainEvent`] union of both
//! streams' events, the JSON codec with its upcasters, and the [`EventEnvelope`] that gives
//! events their ids.
//!
//! An event is stored as its type name (`booking.requested.v1`, the version is part of the name)
//! plus its payload as JSON. The payload carries the ids of its streams, so it describes itself
//! without the envelope. Reading goes through [`DomainEvent::decode`], which first runs the
//! [`UPCASTERS`] so that data written under an old type name becomes the current type.

use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::booking::BookingEvent;
use crate::ids::{BookingId, EventId, ShowId};
use crate::show::ShowEvent;

/// The stable type names. Never change one: add a `v2` and an upcaster from the `v1` instead.
pub mod event_types {
    pub const SHOW_SCHEDULED: &str = "show.scheduled.v1";
    pub const SHOW_SEATS_SOLD: &str = "show.seats_sold.v1";
    pub const SHOW_SEATS_RELEASED: &str = "show.seats_released.v1";

    pub const BOOKING_REQUESTED: &str = "booking.requested.v1";
    pub const BOOKING_SEATS_HELD: &str = "booking.seats_held.v1";
    pub const BOOKING_REJECTED: &str = "booking.rejected.v1";
    pub const BOOKING_HOLD_EXPIRED: &str = "booking.hold_expired.v1";
    pub const BOOKING_PAYMENT_SUCCEEDED: &str = "booking.payment_succeeded.v1";
    pub const BOOKING_PAYMENT_FAILED: &str = "booking.payment_failed.v1";
    pub const BOOKING_CONFIRMED: &str = "booking.confirmed.v1";
    pub const BOOKING_FAILED: &str = "booking.failed.v1";
    pub const BOOKING_CANCELLED: &str = "booking.cancelled.v1";
    pub const BOOKING_ABANDONED: &str = "booking.abandoned.v1";
    pub const BOOKING_REFUND_REQUESTED: &str = "booking.refund_requested.v1";
    pub const BOOKING_REFUNDED: &str = "booking.refunded.v1";
    pub const BOOKING_EMAIL_SENT: &str = "booking.email_sent.v2";

    /// Old type names: still read (through [`super::UPCASTERS`]), never written, not in [`ALL`].
    ///
    /// `booking.email_sent.v1`, written before the channel was recorded; upcast to
    /// [`BOOKING_EMAIL_SENT`] with `"channel": "unknown"`.
    pub const BOOKING_EMAIL_SENT_V1: &str = "booking.email_sent.v1";

    /// Every current type name, show events first.
    pub const ALL: &[&str] = &[
        SHOW_SCHEDULED,
        SHOW_SEATS_SOLD,
        SHOW_SEATS_RELEASED,
        BOOKING_REQUESTED,
        BOOKING_SEATS_HELD,
        BOOKING_REJECTED,
        BOOKING_HOLD_EXPIRED,
        BOOKING_PAYMENT_SUCCEEDED,
        BOOKING_PAYMENT_FAILED,
        BOOKING_CONFIRMED,
        BOOKING_FAILED,
        BOOKING_CANCELLED,
        BOOKING_ABANDONED,
        BOOKING_REFUND_REQUESTED,
        BOOKING_REFUNDED,
        BOOKING_EMAIL_SENT,
    ];
}

/// Defines the event enum of one stream from `Variant(Payload) = TYPE_NAME` lines: the type
/// name of each variant, its JSON payload, the decoder of each type name, `From` each payload,
/// and accessors for the id fields every payload of the stream carries. One list, so a variant
/// can never be given two names or none.
macro_rules! event_family {
    (
        $(#[$meta:meta])*
        pub enum $family:ident {
            ids { $($id_field:ident: $id_type:ty),+ $(,)? }
            $( $(#[$variant_meta:meta])* $variant:ident($payload:ty) = $type_name:path, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $family {
            $( $(#[$variant_meta])* $variant($payload), )+
        }

        impl $family {
            /// The type names of this stream's events.
            pub const EVENT_TYPES: &'static [&'static str] = &[$($type_name),+];

            /// The stable, versioned type name, e.g. `booking.requested.v1`.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $type_name, )+
                }
            }

            /// The payload as JSON (without the type name, which travels beside it).
            pub fn to_json(&self) -> serde_json::Value {
                match self {
                    $( Self::$variant(payload) => $crate::event::payload_to_json(payload), )+
                }
            }

            /// The decoder of a current type name of this stream, if it is one.
            #[allow(clippy::type_complexity)]
            pub(crate) fn decoder(
                event_type: &str,
            ) -> Option<fn(serde_json::Value) -> Result<Self, serde_json::Error>> {
                match event_type {
                    $( $type_name => Some(|data| {
                        serde_json::from_value::<$payload>(data).map(Self::$variant)
                    }), )+
                    _ => None,
                }
            }

        }

        $crate::event::event_family!(@ids $family [$($variant)+] $($id_field: $id_type),+);

        $(
            impl From<$payload> for $family {
                fn from(payload: $payload) -> Self {
                    Self::$variant(payload)
                }
            }
        )+
    };
    // One accessor per id field; the variants travel as one token tree so that they can be
    // repeated inside the repetition over the fields.
    (@ids $family:ident $variants:tt $($id_field:ident: $id_type:ty),+) => {
        $( $crate::event::event_family!(@id $family $variants $id_field $id_type); )+
    };
    (@id $family:ident [$($variant:ident)+] $id_field:ident $id_type:ty) => {
        impl $family {
            pub fn $id_field(&self) -> $id_type {
                match self {
                    $( Self::$variant(payload) => payload.$id_field, )+
                }
            }
        }
    };
}
pub(crate) use event_family;

/// Serializes an event payload.
pub(crate) fn payload_to_json<P: Serialize>(payload: &P) -> Value {
    // Payloads are structs of strings, numbers, ids, enums and sequences: serde_json fails only
    // on maps with non-string keys or a Serialize impl that errors, and no payload has either.
    serde_json::to_value(payload).expect("event payloads always serialize to JSON")
}

/// An event of either stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainEvent {
    Show(ShowEvent),
    Booking(BookingEvent),
}

impl From<ShowEvent> for DomainEvent {
    fn from(event: ShowEvent) -> Self {
        Self::Show(event)
    }
}

impl From<BookingEvent> for DomainEvent {
    fn from(event: BookingEvent) -> Self {
        Self::Booking(event)
    }
}

/// Why stored event data could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventDecodeError {
    /// A type name this build does not know (a newer service wrote it): skip it, count it.
    #[error("unknown event type {event_type:?}")]
    UnknownType { event_type: String },
    /// A known type whose data does not decode: poison, to be dead-lettered.
    #[error("invalid data for event type {event_type:?}: {reason}")]
    InvalidData { event_type: String, reason: String },
}

impl EventDecodeError {
    pub fn is_unknown_type(&self) -> bool {
        matches!(self, Self::UnknownType { .. })
    }
}

/// Turns the data of an old type name into the data of a newer one.
#[derive(Clone, Copy, Debug)]
pub struct Upcaster {
    /// The old type name this upcaster reads, e.g. `booking.requested.v1`.
    pub from_type: &'static str,
    /// Returns the next type name and its data; an `Err` is the reason the data is invalid.
    pub upcast: fn(Value) -> Result<(&'static str, Value), String>,
}

/// The upcasters [`DomainEvent::decode`] applies, chained until a current type is reached.
pub const UPCASTERS: &[Upcaster] = &[Upcaster {
    from_type: event_types::BOOKING_EMAIL_SENT_V1,
    upcast: email_sent_v1_to_v2,
}];

/// `booking.email_sent.v1` → `v2`: v1 events were written before the channel was recorded, so
/// their channel is `unknown`.
fn email_sent_v1_to_v2(mut data: Value) -> Result<(&'static str, Value), String> {
    let Some(object) = data.as_object_mut() else {
        return Err("the data is not a JSON object".to_string());
    };
    object.insert("channel".to_string(), Value::from("unknown"));
    Ok((event_types::BOOKING_EMAIL_SENT, data))
}

/// Bounds an upcaster chain, so that a cycle in the table is an error instead of a hang.
const MAX_UPCAST_STEPS: usize = 32;

impl DomainEvent {
    /// The stable, versioned type name, e.g. `booking.requested.v1`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Show(event) => event.event_type(),
            Self::Booking(event) => event.event_type(),
        }
    }

    /// The payload as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Show(event) => event.to_json(),
            Self::Booking(event) => event.to_json(),
        }
    }

    /// The payload as JSON text.
    pub fn to_json_string(&self) -> String {
        self.to_json().to_string()
    }

    /// The stream the event belongs to: `show-<uuid>` or `booking-<uuid>`.
    pub fn stream_id(&self) -> String {
        match self {
            Self::Show(event) => event.show_id().stream_id(),
            Self::Booking(event) => event.booking_id().stream_id(),
        }
    }

    /// The show the event concerns: every event of a booking belongs to its show's partition.
    pub fn show_id(&self) -> ShowId {
        match self {
            Self::Show(event) => event.show_id(),
            Self::Booking(event) => event.show_id(),
        }
    }

    /// The booking the event concerns, if any (`show.scheduled.v1` concerns none).
    pub fn booking_id(&self) -> Option<BookingId> {
        match self {
            Self::Show(event) => event.booking_id(),
            Self::Booking(event) => Some(event.booking_id()),
        }
    }

    /// The Kafka key and the store's partition key: the show id in its hyphenated form.
    pub fn partition_key(&self) -> String {
        self.show_id().to_string()
    }

    /// Whether `event_type` is a current type name or one the upcasters can read.
    pub fn is_known_type(event_type: &str) -> bool {
        is_known_type_with(UPCASTERS, event_type)
    }

    /// Decodes stored JSON text of type `event_type`, upcasting old versions.
    pub fn decode(event_type: &str, data: &str) -> Result<Self, EventDecodeError> {
        Self::decode_with_upcasters(UPCASTERS, event_type, data)
    }

    /// Decodes stored JSON (e.g. a JSONB column) of type `event_type`, upcasting old versions.
    pub fn decode_json(event_type: &str, data: Value) -> Result<Self, EventDecodeError> {
        Self::decode_json_with_upcasters(UPCASTERS, event_type, data)
    }

    /// [`DomainEvent::decode`] with another upcaster table (tests, tools).
    pub fn decode_with_upcasters(
        upcasters: &[Upcaster],
        event_type: &str,
        data: &str,
    ) -> Result<Self, EventDecodeError> {
        // An unknown type is skipped by consumers whatever its data, so it is reported as
        // unknown even when the data is not JSON.
        if !is_known_type_with(upcasters, event_type) {
            return Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
            });
        }
        let data = serde_json::from_str(data).map_err(|error| EventDecodeError::InvalidData {
            event_type: event_type.to_owned(),
            reason: error.to_string(),
        })?;
        Self::decode_json_with_upcasters(upcasters, event_type, data)
    }

    /// [`DomainEvent::decode_json`] with another upcaster table (tests, tools).
    pub fn decode_json_with_upcasters(
        upcasters: &[Upcaster],
        event_type: &str,
        data: Value,
    ) -> Result<Self, EventDecodeError> {
        let invalid = |reason: String| EventDecodeError::InvalidData {
            event_type: event_type.to_owned(),
            reason,
        };
        let mut current_type = event_type;
        let mut data = data;
        let mut steps = 0;
        while let Some(upcaster) = upcasters.iter().find(|u| u.from_type == current_type) {
            if steps == MAX_UPCAST_STEPS {
                return Err(invalid(format!(
                    "upcasting from {event_type} does not reach a current type within {MAX_UPCAST_STEPS} steps"
                )));
            }
            let (next_type, next_data) = (upcaster.upcast)(data)
                .map_err(|reason| invalid(format!("upcasting {current_type}: {reason}")))?;
            current_type = next_type;
            data = next_data;
            steps += 1;
        }
        if let Some(decode) = ShowEvent::decoder(current_type) {
            return decode(data)
                .map(Self::Show)
                .map_err(|error| invalid(error.to_string()));
        }
        if let Some(decode) = BookingEvent::decoder(current_type) {
            return decode(data)
                .map(Self::Booking)
                .map_err(|error| invalid(error.to_string()));
        }
        if steps == 0 {
            Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
            })
        } else {
            // The type was known to an upcaster, so this is a broken upcaster table, not a
            // newer producer: consumers must not skip it silently.
            Err(invalid(format!(
                "upcasting led to the unknown type {current_type}"
            )))
        }
    }
}

fn is_known_type_with(upcasters: &[Upcaster], event_type: &str) -> bool {
    event_types::ALL.contains(&event_type) || upcasters.iter().any(|u| u.from_type == event_type)
}

/// An event with its id and its place in a chain of causes, ready to append.
///
/// Events decided for an outside request (an API call) get fresh UUIDv7 ids; events a handler
/// derives from a consumed event get deterministic ids ([`EventId::derived`]), so a redelivery
/// appends the very same events and the store recognises them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventEnvelope {
    pub event_id: EventId,
    /// The event that caused this one, if a handler derived it.
    pub causation_id: Option<EventId>,
    /// The first event of the chain (for tracing one booking's flow across services).
    pub correlation_id: EventId,
    pub event: DomainEvent,
}

impl EventEnvelope {
    /// Envelopes for events decided on an outside request: fresh ids, the first event's id
    /// correlating the batch.
    pub fn fresh(events: impl IntoIterator<Item = impl Into<DomainEvent>>) -> Vec<Self> {
        let mut correlation_id = None;
        events
            .into_iter()
            .map(|event| {
                let event_id = EventId::new();
                Self {
                    event_id,
                    causation_id: None,
                    correlation_id: *correlation_id.get_or_insert(event_id),
                    event: event.into(),
                }
            })
            .collect()
    }

    /// Envelopes for the events `handler` derives from the event `cause`: ids
    /// `EventId::derived(cause, handler, 0..)`, caused by `cause`, in its correlation.
    pub fn derived(
        cause: EventId,
        cause_correlation: EventId,
        handler: &str,
        events: impl IntoIterator<Item = impl Into<DomainEvent>>,
    ) -> Vec<Self> {
        (0u32..)
            .zip(events)
            .map(|(index, event)| Self {
                event_id: EventId::derived(cause, handler, index),
                causation_id: Some(cause),
                correlation_id: cause_correlation,
                event: event.into(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the table as versions are added: each old type is read by exactly one upcaster,
    /// and no current type is upcast away.
    #[test]
    fn the_upcaster_table_is_sound() {
        for (index, upcaster) in UPCASTERS.iter().enumerate() {
            assert!(
                !event_types::ALL.contains(&upcaster.from_type),
                "{} is a current type",
                upcaster.from_type
            );
            assert!(
                UPCASTERS[..index]
                    .iter()
                    .all(|earlier| earlier.from_type != upcaster.from_type),
                "{} has two upcasters",
                upcaster.from_type
            );
        }
    }
}
