//! Deciding a batch of appends, the part every backend shares.
//!
//! A backend's writer gathers the appends that are waiting (group commit), locks the log head,
//! loads the current versions of the streams involved and whichever of the batch's event ids are
//! stored already, and hands them here. [`plan_batch`] then decides each append on its own, in
//! arrival order, as if it were alone: a conflicting or duplicate append fails by itself and never
//! fails its batch-mates. The backend writes the accepted rows and the new head in one transaction.
//!
//! Keeping this pure means the rules (expected versions, repeats, partial duplicates, positions
//! dense and in arrival order) are written once and tested without a database.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{AppendResult, AppendedStream, NewEvent, Position, StreamAppend};

/// An event the database holds already, as far as the planner needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEventRef {
    pub stream_id: String,
    pub stream_version: u64,
    pub position: Position,
}

/// A row to insert.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlannedRow<'a> {
    pub position: Position,
    pub stream_id: &'a str,
    pub stream_version: u64,
    pub event: &'a NewEvent,
}

pub(crate) struct BatchPlan<'a> {
    /// The rows to insert, in position order.
    pub rows: Vec<PlannedRow<'a>>,
    /// The log head after the batch.
    pub head: Position,
    /// One answer per append, in the order the appends were given.
    pub outcomes: Vec<Result<AppendResult, StoreError>>,
}

/// Checks that need no database: run before an append joins a batch, so that a malformed append
/// is refused at once.
pub(crate) fn validate(streams: &[StreamAppend]) -> Result<(), StoreError> {
    if streams.is_empty() {
        return Err(StoreError::InvalidAppend("no streams to append to".into()));
    }
    let mut stream_ids = HashSet::new();
    let mut event_ids = HashSet::new();
    for stream in streams {
        if stream.stream_id.is_empty() || stream.stream_id.contains('\0') {
            return Err(StoreError::InvalidAppend(format!(
                "stream id {:?} is empty or holds a NUL character",
                stream.stream_id
            )));
        }
        if !stream_ids.insert(stream.stream_id.as_str()) {
            return Err(StoreError::InvalidAppend(format!(
                "stream {} is named twice in one append",
                stream.stream_id
            )));
        }
        if stream.events.is_empty() {
            return Err(StoreError::InvalidAppend(format!(
                "no events for stream {}",
                stream.stream_id
            )));
        }
        for event in &stream.events {
            if !event_ids.insert(event.event_id) {
                return Err(StoreError::InvalidAppend(format!(
                    "event {} is given twice in one append",
                    event.event_id
                )));
            }
            check_storable(event)?;
        }
    }
    Ok(())
}

/// What both databases can store: no NUL characters in text columns (Postgres refuses them) and
/// an occurrence time within years 1 to 9999 (Postgres's range is narrower than chrono's). A bad
/// event is refused here, alone, instead of failing the transaction of its batch-mates.
fn check_storable(event: &NewEvent) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::InvalidEvent {
        event_id: event.event_id,
        reason,
    };
    if event.event_type.is_empty() {
        return Err(invalid("empty event type".into()));
    }
    let metadata = &event.metadata;
    let texts = [
        ("event type", Some(event.event_type.as_str())),
        ("partition key", metadata.partition_key.as_deref()),
        ("trace context", metadata.trace_context.as_deref()),
    ];
    for (what, text) in texts {
        if text.is_some_and(|text| text.contains('\0')) {
            return Err(invalid(format!("the {what} holds a NUL character")));
        }
    }
    let year = chrono::Datelike::year(&metadata.occurred_at);
    if !(1..=9999).contains(&year) {
        return Err(invalid(format!("occurred_at is in year {year}")));
    }
    Ok(())
}

/// Decide every append of a batch. `versions` holds the current version of each stream the batch
/// names (absent = 0, no stream); `stored` holds those of the batch's event ids that the database
/// has already; `head` is the log head, locked by the caller.
pub(crate) fn plan_batch<'a>(
    appends: &[&'a [StreamAppend]],
    mut versions: HashMap<String, u64>,
    mut stored: HashMap<Uuid, StoredEventRef>,
    head: Position,
) -> BatchPlan<'a> {
    let mut rows = Vec::new();
    let mut head = head;
    let mut outcomes = Vec::with_capacity(appends.len());
    for streams in appends {
        let outcome = plan_one(streams, &mut versions, &mut stored, &mut head, &mut rows);
        outcomes.push(outcome);
    }
    BatchPlan {
        rows,
        head,
        outcomes,
    }
}

fn plan_one<'a>(
    streams: &'a [StreamAppend],
    versions: &mut HashMap<String, u64>,
    stored: &mut HashMap<Uuid, StoredEventRef>,
    head: &mut Position,
    rows: &mut Vec<PlannedRow<'a>>,
) -> Result<AppendResult, StoreError> {
    let events = || {
        streams
            .iter()
            .flat_map(|s| s.events.iter().map(move |e| (s, e)))
    };
    let total = events().count();
    let known = events()
        .filter(|(_, e)| stored.contains_key(&e.event_id))
        .count();
    if known == total {
        return repeat_of_stored(streams, stored);
    }
    if known > 0 {
        let (_, first_known) = events()
            .find(|(_, e)| stored.contains_key(&e.event_id))
            .expect("known > 0, so some event is stored");
        return Err(StoreError::DuplicateEvent {
            event_id: first_known.event_id,
            reason: format!(
                "{known} of the append's {total} events are stored already; an append must be \
                 all new or an exact repeat"
            ),
        });
    }

    for stream in streams {
        let actual = versions.get(&stream.stream_id).copied().unwrap_or(0);
        if !stream.expected.admits(actual) {
            return Err(StoreError::Conflict {
                stream_id: stream.stream_id.clone(),
                expected: stream.expected,
                actual,
            });
        }
    }

    let mut appended = Vec::with_capacity(streams.len());
    for stream in streams {
        let version = versions.entry(stream.stream_id.clone()).or_insert(0);
        let mut positions = Vec::with_capacity(stream.events.len());
        for event in &stream.events {
            *version += 1;
            head.0 += 1;
            positions.push(*head);
            rows.push(PlannedRow {
                position: *head,
                stream_id: &stream.stream_id,
                stream_version: *version,
                event,
            });
            // A later append of the same batch that repeats these ids is a repeat, as it would
            // be had it come in the next batch.
            stored.insert(
                event.event_id,
                StoredEventRef {
                    stream_id: stream.stream_id.clone(),
                    stream_version: *version,
                    position: *head,
                },
            );
        }
        appended.push(AppendedStream {
            stream_id: stream.stream_id.clone(),
            version: *version,
            positions,
        });
    }
    Ok(AppendResult {
        streams: appended,
        was_repeat: false,
    })
}

/// Every event of the append is stored: answer with the original positions, provided each was
/// stored in the stream it is given for now.
fn repeat_of_stored(
    streams: &[StreamAppend],
    stored: &HashMap<Uuid, StoredEventRef>,
) -> Result<AppendResult, StoreError> {
    let mut appended = Vec::with_capacity(streams.len());
    for stream in streams {
        let mut positions = Vec::with_capacity(stream.events.len());
        let mut version = 0;
        for event in &stream.events {
            let original = &stored[&event.event_id];
            if original.stream_id != stream.stream_id {
                return Err(StoreError::DuplicateEvent {
                    event_id: event.event_id,
                    reason: format!(
                        "it was stored in stream {}, not {}",
                        original.stream_id, stream.stream_id
                    ),
                });
            }
            positions.push(original.position);
            version = version.max(original.stream_version);
        }
        appended.push(AppendedStream {
            stream_id: stream.stream_id.clone(),
            version,
            positions,
        });
    }
    Ok(AppendResult {
        streams: appended,
        was_repeat: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventMetadata, ExpectedVersion};

    fn event() -> NewEvent {
        NewEvent::from_json_text(Uuid::now_v7(), "test.v1", "{}", EventMetadata::default())
            .expect("valid JSON")
    }

    fn append(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> Vec<StreamAppend> {
        vec![StreamAppend::new(stream, expected, events)]
    }

    #[test]
    fn appends_of_one_batch_get_dense_positions_in_arrival_order() {
        let first = append("a", ExpectedVersion::NoStream, vec![event(), event()]);
        let second = append("a", ExpectedVersion::Exact(2), vec![event()]);
        let plan = plan_batch(
            &[&first, &second],
            HashMap::new(),
            HashMap::new(),
            Position(10),
        );
        let positions: Vec<_> = plan.rows.iter().map(|r| r.position.0).collect();
        assert_eq!(positions, vec![11, 12, 13]);
        let versions: Vec<_> = plan.rows.iter().map(|r| r.stream_version).collect();
        assert_eq!(versions, vec![1, 2, 3]);
        assert_eq!(plan.head, Position(13));
        assert!(plan.outcomes.iter().all(Result::is_ok));
    }

    #[test]
    fn a_conflict_fails_only_its_own_append() {
        let stale = append("a", ExpectedVersion::Exact(0), vec![event()]);
        let fine = append("b", ExpectedVersion::NoStream, vec![event()]);
        let versions = HashMap::from([("a".to_string(), 3)]);
        let plan = plan_batch(&[&stale, &fine], versions, HashMap::new(), Position(5));
        match &plan.outcomes[0] {
            Err(StoreError::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!(*expected, ExpectedVersion::Exact(0));
                assert_eq!(*actual, 3);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        let fine = plan.outcomes[1].as_ref().expect("batch-mate succeeds");
        assert_eq!(fine.streams[0].positions, vec![Position(6)]);
        assert_eq!(plan.rows.len(), 1);
    }

    #[test]
    fn a_repeat_within_the_batch_returns_the_first_positions() {
        let events = vec![event(), event()];
        let first = append("a", ExpectedVersion::Any, events.clone());
        let again = append("a", ExpectedVersion::Exact(0), events);
        let plan = plan_batch(
            &[&first, &again],
            HashMap::new(),
            HashMap::new(),
            Position(0),
        );
        let original = plan.outcomes[0].as_ref().expect("first is written");
        let repeat = plan.outcomes[1].as_ref().expect("second is a repeat");
        assert!(repeat.was_repeat);
        assert_eq!(original.streams, repeat.streams);
        assert_eq!(plan.rows.len(), 2);
    }

    #[test]
    fn a_partial_duplicate_is_refused() {
        let known = event();
        let stored = HashMap::from([(
            known.event_id,
            StoredEventRef {
                stream_id: "a".into(),
                stream_version: 1,
                position: Position(1),
            },
        )]);
        let mixed = append("a", ExpectedVersion::Any, vec![known.clone(), event()]);
        let plan = plan_batch(&[&mixed], HashMap::new(), stored, Position(1));
        assert!(matches!(
            &plan.outcomes[0],
            Err(StoreError::DuplicateEvent { event_id, .. }) if *event_id == known.event_id
        ));
        assert!(plan.rows.is_empty());
    }

    #[test]
    fn a_repeat_into_another_stream_is_refused() {
        let known = event();
        let stored = HashMap::from([(
            known.event_id,
            StoredEventRef {
                stream_id: "a".into(),
                stream_version: 1,
                position: Position(1),
            },
        )]);
        let moved = append("b", ExpectedVersion::Any, vec![known]);
        let plan = plan_batch(&[&moved], HashMap::new(), stored, Position(1));
        assert!(matches!(
            &plan.outcomes[0],
            Err(StoreError::DuplicateEvent { .. })
        ));
    }

    #[test]
    fn validate_refuses_malformed_appends() {
        assert!(validate(&[]).is_err());
        assert!(validate(&append("a", ExpectedVersion::Any, vec![])).is_err());
        let twice = event();
        assert!(
            validate(&append(
                "a",
                ExpectedVersion::Any,
                vec![twice.clone(), twice]
            ))
            .is_err()
        );
        let mut nul_type = event();
        nul_type.event_type = "bad\0type".into();
        assert!(validate(&append("a", ExpectedVersion::Any, vec![nul_type])).is_err());
        let mut ancient = event();
        ancient.metadata.occurred_at = chrono::DateTime::<chrono::Utc>::MIN_UTC;
        assert!(validate(&append("a", ExpectedVersion::Any, vec![ancient])).is_err());
        assert!(validate(&append("a\0", ExpectedVersion::Any, vec![event()])).is_err());
        let mut both = append("a", ExpectedVersion::Any, vec![event()]);
        both.extend(append("a", ExpectedVersion::Any, vec![event()]));
        assert!(validate(&both).is_err());
    }
}
