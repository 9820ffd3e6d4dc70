//! Deciding a command on a booking stream on behalf of a consumed event, and appending the
//! result: the step every service repeats (payment records a charge, the notifier an email,
//! seat-lock a hold or an expiry).
//!
//! Events get deterministic ids derived from the causing event, the handler and their index, so
//! a redelivered record appends the very same events (the store answers with the original
//! positions). A conflicting append (someone else wrote to the booking meanwhile) is decided
//! again on the new state.

use chrono::Utc;
use domain::booking::{self, BookingCommand};
use domain::{BookingId, DomainError, EventEnvelope, EventId};
use event_store::{AppendResult, EventStore, ExpectedVersion, StoreError, StreamAppend};
use tracing::debug;

use crate::consumer::{EventRecord, HandlerError};
use crate::stored_events::to_new_event;
use crate::streams::{LoadedBooking, StreamError, load_booking};

/// How many times a conflicting append is decided again before giving up (transiently).
const MAX_CONFLICT_RETRIES: u32 = 20;

/// What deciding a command came to.
#[derive(Debug)]
pub enum Decided {
    /// Events were appended (or had been, by an earlier delivery: `was_repeat`).
    Appended(AppendResult),
    /// The command changed nothing (already applied).
    Nothing,
    /// The domain refused the command in the booking's current state.
    Refused(DomainError),
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("booking {0} does not exist")]
    NoSuchBooking(BookingId),
    #[error("booking {0} kept changing; giving up for now")]
    Contended(BookingId),
}

impl From<StoreError> for CommandError {
    fn from(error: StoreError) -> Self {
        CommandError::Stream(StreamError::Store(error))
    }
}

impl From<CommandError> for HandlerError {
    fn from(error: CommandError) -> Self {
        match &error {
            CommandError::Stream(stream) if stream.is_transient() => {
                HandlerError::Transient(error.to_string())
            }
            CommandError::Contended(_) => HandlerError::Transient(error.to_string()),
            CommandError::Stream(StreamError::Store(StoreError::Closed)) => {
                HandlerError::Transient(error.to_string())
            }
            _ => HandlerError::Permanent(error.to_string()),
        }
    }
}

/// Where derived events come from.
#[derive(Debug, Clone, Copy)]
pub struct Cause {
    pub event_id: EventId,
    pub correlation_id: EventId,
}

impl Cause {
    pub fn of(record: &EventRecord) -> Cause {
        let event_id = EventId::from_uuid(record.event_id);
        Cause {
            event_id,
            correlation_id: record.correlation_id.map_or(event_id, EventId::from_uuid),
        }
    }
}

/// Decide `command` on the booking and append the events, deciding again on conflicts.
/// `handler` names the step (`payment/charge`): with the cause it makes the event ids.
pub async fn decide_booking(
    store: &dyn EventStore,
    booking_id: BookingId,
    cause: Cause,
    handler: &str,
    command: impl Fn(&LoadedBooking) -> BookingCommand,
) -> Result<Decided, CommandError> {
    for _ in 0..MAX_CONFLICT_RETRIES {
        let loaded = load_booking(store, booking_id)
            .await?
            .ok_or(CommandError::NoSuchBooking(booking_id))?;
        let events = match booking::decide(&Some(loaded.booking.clone()), command(&loaded)) {
            Ok(events) => events,
            Err(refusal) => return Ok(Decided::Refused(refusal)),
        };
        if events.is_empty() {
            return Ok(Decided::Nothing);
        }
        let now = Utc::now();
        let envelopes =
            EventEnvelope::derived(cause.event_id, cause.correlation_id, handler, events);
        let new_events = envelopes
            .iter()
            .map(|envelope| to_new_event(envelope, now))
            .collect::<Result<Vec<_>, _>>()?;
        let append = StreamAppend::new(
            booking_id.stream_id(),
            ExpectedVersion::Exact(loaded.version),
            new_events,
        );
        match store.append(append).await {
            Ok(result) => return Ok(Decided::Appended(result)),
            Err(StoreError::Conflict { .. }) => {
                debug!(%booking_id, handler, "booking changed meanwhile; deciding again");
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(CommandError::Contended(booking_id))
}
