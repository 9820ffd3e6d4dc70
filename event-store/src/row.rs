//! The stored form of an event, as both backends read it, and the number conversions at the
//! database boundary.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{EventMetadata, Position, RecordedEvent};

/// The columns both backends select (see each backend's `SELECT_EVENTS`).
#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    position: i64,
    event_id: Uuid,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    data: String,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    partition_key: Option<String>,
    trace_context: Option<String>,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
}

impl TryFrom<EventRow> for RecordedEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<RecordedEvent, StoreError> {
        Ok(RecordedEvent {
            position: Position(from_i64(row.position, row.position)?),
            event_id: row.event_id,
            stream_id: row.stream_id,
            stream_version: from_i64(row.stream_version, row.position)?,
            event_type: row.event_type,
            data: row.data,
            metadata: EventMetadata {
                correlation_id: row.correlation_id,
                causation_id: row.causation_id,
                partition_key: row.partition_key,
                trace_context: row.trace_context,
                occurred_at: row.occurred_at,
            },
            recorded_at: row.recorded_at,
        })
    }
}

/// Map fetched rows to events.
pub(crate) fn recorded_events(rows: Vec<EventRow>) -> Result<Vec<RecordedEvent>, StoreError> {
    rows.into_iter().map(RecordedEvent::try_from).collect()
}

/// Positions and versions are `bigint`/`INTEGER` in the database and never negative.
pub(crate) fn from_i64(value: i64, position: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        position,
        reason: format!("negative number {value}"),
    })
}

/// Positions, versions and limits stay far below `i64::MAX`; saturate rather than wrap if a
/// caller passes something absurd.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
