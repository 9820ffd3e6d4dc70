//! Identifiers: UUIDv7 newtypes for shows, bookings and events, stream ids, and the
//! client-provided customer id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;

/// Defines a `Copy` newtype over a UUID with `new()` (UUIDv7: time-ordered, so ids sort roughly by
/// creation and index well), Display/FromStr in the hyphenated form, and transparent serde.
macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh UUIDv7 id.
            // An id has no meaningful default value, so there is deliberately no `Default`.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;

            fn from_str(input: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(input).map(Self).map_err(|_| DomainError::InvalidId {
                    kind: $kind,
                    input: input.to_owned(),
                })
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

uuid_id!(
    /// A show (a concert, a match: the seats for sale). Its events live on stream `show-<uuid>`.
    ShowId,
    "show id"
);
uuid_id!(
    /// A booking request. Its events live on stream `booking-<uuid>`.
    BookingId,
    "booking id"
);
uuid_id!(
    /// A stored event. Events caused by another event get [`EventId::derived`] ids.
    EventId,
    "event id"
);

const SHOW_STREAM_PREFIX: &str = "show-";
const BOOKING_STREAM_PREFIX: &str = "booking-";

impl ShowId {
    /// The event-store stream of this show: `show-<uuid>`.
    pub fn stream_id(&self) -> String {
        format!("{SHOW_STREAM_PREFIX}{self}")
    }

    /// The show of a `show-<uuid>` stream id, if it is one.
    pub fn from_stream_id(stream_id: &str) -> Option<Self> {
        stream_id.strip_prefix(SHOW_STREAM_PREFIX)?.parse().ok()
    }
}

impl BookingId {
    /// The event-store stream of this booking: `booking-<uuid>`.
    pub fn stream_id(&self) -> String {
        format!("{BOOKING_STREAM_PREFIX}{self}")
    }

    /// The booking of a `booking-<uuid>` stream id, if it is one.
    pub fn from_stream_id(stream_id: &str) -> Option<Self> {
        stream_id.strip_prefix(BOOKING_STREAM_PREFIX)?.parse().ok()
    }
}

/// The UUIDv5 namespace of derived event ids. Fixed forever: changing it would give redelivered
/// messages new event ids and so defeat deduplication.
const DERIVED_EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a7e_5b0d_4c39_9e8a_3d21_7b5f_c0a4);

impl EventId {
    /// The id of the `index`-th event that `handler` derives from the event `causing`.
    ///
    /// Deterministic (UUIDv5 of the causing id's 16 bytes, the handler name and the index as 4
    /// big-endian bytes), so a redelivered message produces the same ids and the store recognises
    /// the append as done. The causing id and the index have fixed lengths, so no two different
    /// inputs share a name.
    pub fn derived(causing: EventId, handler: &str, index: u32) -> Self {
        let mut name = Vec::with_capacity(16 + handler.len() + 4);
        name.extend_from_slice(causing.0.as_bytes());
        name.extend_from_slice(handler.as_bytes());
        name.extend_from_slice(&index.to_be_bytes());
        Self(Uuid::new_v5(&DERIVED_EVENT_ID_NAMESPACE, &name))
    }
}

/// The customer's own id, chosen by the client: 1..=128 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

pub const MAX_CUSTOMER_ID_CHARS: usize = 128;

impl CustomerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerId {
    type Error = DomainError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        let invalid = |reason| DomainError::InvalidCustomer {
            field: "id",
            reason,
        };
        let chars = id.chars().count();
        if chars == 0 {
            return Err(invalid("must not be empty"));
        }
        if chars > MAX_CUSTOMER_ID_CHARS {
            return Err(invalid("must be at most 128 characters"));
        }
        if id.chars().any(char::is_control) {
            return Err(invalid("must not contain control characters"));
        }
        Ok(Self(id))
    }
}

impl FromStr for CustomerId {
    type Err = DomainError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Self::try_from(id.to_owned())
    }
}

impl From<CustomerId> for String {
    fn from(id: CustomerId) -> Self {
        id.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_version_7() {
        assert_eq!(ShowId::new().as_uuid().get_version_num(), 7);
        assert_eq!(BookingId::new().as_uuid().get_version_num(), 7);
        assert_eq!(EventId::new().as_uuid().get_version_num(), 7);
    }

    #[test]
    fn ids_display_parse_and_serialize_as_the_plain_uuid() {
        let id: BookingId = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".parse().unwrap();
        assert_eq!(id.to_string(), "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\""
        );
        let back: BookingId =
            serde_json::from_str("\"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\"").unwrap();
        assert_eq!(back, id);
        assert_eq!(
            "not-a-uuid".parse::<ShowId>(),
            Err(DomainError::InvalidId {
                kind: "show id",
                input: "not-a-uuid".into()
            })
        );
    }

    #[test]
    fn stream_ids_name_the_aggregate_and_parse_back() {
        let show = ShowId::new();
        let booking = BookingId::new();
        assert_eq!(show.stream_id(), format!("show-{show}"));
        assert_eq!(booking.stream_id(), format!("booking-{booking}"));
        assert_eq!(ShowId::from_stream_id(&show.stream_id()), Some(show));
        assert_eq!(
            BookingId::from_stream_id(&booking.stream_id()),
            Some(booking)
        );
        assert_eq!(ShowId::from_stream_id(&booking.stream_id()), None);
    }

    #[test]
    fn derived_event_ids_are_deterministic_and_distinct() {
        let causing: EventId = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".parse().unwrap();
        let first = EventId::derived(causing, "seat-lock", 0);
        assert_eq!(first, EventId::derived(causing, "seat-lock", 0));
        assert_eq!(first.as_uuid().get_version_num(), 5);
        assert_ne!(first, EventId::derived(causing, "seat-lock", 1));
        assert_ne!(first, EventId::derived(causing, "payment", 0));
        assert_ne!(first, EventId::derived(EventId::new(), "seat-lock", 0));
        // Pinned: a change here would break deduplication of redelivered messages.
        assert_eq!(first.to_string(), "63ead23c-4abd-5e16-856a-c7be18169da3");
    }

    #[test]
    fn customer_ids_are_bounded_and_printable() {
        assert!("cust-42".parse::<CustomerId>().is_ok());
        assert!("x".repeat(128).parse::<CustomerId>().is_ok());
        assert!("é".repeat(128).parse::<CustomerId>().is_ok());
        for bad in [
            String::new(),
            "x".repeat(129),
            "a\nb".into(),
            "a\u{0}b".into(),
        ] {
            assert!(matches!(
                bad.parse::<CustomerId>(),
                Err(DomainError::InvalidCustomer { field: "id", .. })
            ));
        }
        assert!(serde_json::from_str::<CustomerId>("\"\"").is_err());
    }
}
