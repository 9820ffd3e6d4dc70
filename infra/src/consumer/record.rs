//! A Kafka record as the consumers see it: the raw record (kept whole for dead letters) and, when
//! it holds one, the domain event with the CloudEvents headers the relay wrote (API.md, "Kafka").

use domain::{DomainEvent, EventDecodeError};
use event_store::Position;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};
use uuid::Uuid;

/// The record as it came off the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl RawRecord {
    pub fn from_message(message: &BorrowedMessage<'_>) -> RawRecord {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        RawRecord {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// A header's value as text, if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The event type the `ce_type` header names, without the `zingqueue.` prefix.
    pub fn event_type(&self) -> Option<&str> {
        self.header("ce_type")
            .map(|ce_type| ce_type.strip_prefix("zingqueue.").unwrap_or(ce_type))
    }

    /// The log position the relay published the record from (`ce_position`), whatever the
    /// record holds: a record of an unknown type still counts towards a group's progress.
    pub fn log_position(&self) -> Option<Position> {
        self.header("ce_position")
            .and_then(|position| position.parse().ok())
            .map(Position)
    }

    /// Records with the same order key are handled one after another (the stream: a booking).
    pub fn order_key(&self) -> String {
        match self.header("ce_subject") {
            Some(subject) => subject.to_string(),
            None => format!("offset-{}", self.offset),
        }
    }

    /// The headers with values as (lossy) text, for dead letters and people.
    pub fn headers_as_text(&self) -> Vec<(String, Option<String>)> {
        self.headers
            .iter()
            .map(|(key, value)| {
                (
                    key.clone(),
                    value
                        .as_deref()
                        .map(|value| String::from_utf8_lossy(value).into_owned()),
                )
            })
            .collect()
    }
}

/// A record holding a domain event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub raw: RawRecord,
    pub event_id: Uuid,
    /// The stored type name (before upcasting), e.g. `booking.requested.v1`.
    pub event_type: String,
    pub position: Position,
    pub stream_id: String,
    pub stream_version: u64,
    pub correlation_id: Option<Uuid>,
    pub event: DomainEvent,
}

/// What a record turned out to be.
#[derive(Debug)]
pub enum Parsed {
    Event(Box<EventRecord>),
    /// A type this build does not know: a newer service wrote it. Skipped and counted.
    UnknownType(String),
    /// Not a usable event record: dead-lettered with the reason (unless its type is a current
    /// one the handler does not subscribe to).
    Poison {
        raw: Box<RawRecord>,
        event_type: Option<String>,
        reason: String,
    },
}

/// Read the event out of a record.
pub fn parse(raw: RawRecord) -> Parsed {
    match read_event(&raw) {
        Ok(Some(fields)) => Parsed::Event(Box::new(EventRecord {
            raw,
            event_id: fields.event_id,
            event_type: fields.event_type,
            position: fields.position,
            stream_id: fields.stream_id,
            stream_version: fields.stream_version,
            correlation_id: fields.correlation_id,
            event: fields.event,
        })),
        Ok(None) => Parsed::UnknownType(raw.event_type().unwrap_or_default().to_string()),
        Err((event_type, reason)) => Parsed::Poison {
            raw: Box::new(raw),
            event_type,
            reason,
        },
    }
}

struct EventFields {
    event_id: Uuid,
    event_type: String,
    position: Position,
    stream_id: String,
    stream_version: u64,
    correlation_id: Option<Uuid>,
    event: DomainEvent,
}

/// The event and its headers; `Ok(None)` for an unknown type; `Err((type, reason))` for poison.
fn read_event(raw: &RawRecord) -> Result<Option<EventFields>, (Option<String>, String)> {
    let Some(event_type) = raw.event_type().map(str::to_string) else {
        return Err((None, "the record has no ce_type header".into()));
    };
    let poison = |reason: String| (Some(event_type.clone()), reason);
    let payload = raw
        .payload
        .as_deref()
        .ok_or_else(|| poison("the record has no value".into()))?;
    let data = std::str::from_utf8(payload)
        .map_err(|_| poison("the record's value is not UTF-8".into()))?;
    let event = match DomainEvent::decode(&event_type, data) {
        Ok(event) => event,
        Err(EventDecodeError::UnknownType { .. }) => return Ok(None),
        Err(error) => return Err(poison(error.to_string())),
    };
    let required = |name: &str| {
        raw.header(name)
            .ok_or_else(|| poison(format!("the record has no valid {name} header")))
    };
    let event_id = Uuid::parse_str(required("ce_id")?)
        .map_err(|error| poison(format!("ce_id is not a UUID: {error}")))?;
    let position = required("ce_position")?
        .parse::<u64>()
        .map_err(|error| poison(format!("ce_position is not a number: {error}")))?;
    let stream_version = required("ce_streamversion")?
        .parse::<u64>()
        .map_err(|error| poison(format!("ce_streamversion is not a number: {error}")))?;
    let stream_id = required("ce_subject")?.to_string();
    let correlation_id = raw
        .header("ce_correlationid")
        .and_then(|id| Uuid::parse_str(id).ok());
    Ok(Some(EventFields {
        event_id,
        event_type,
        position: Position(position),
        stream_id,
        stream_version,
        correlation_id,
        event,
    }))
}
