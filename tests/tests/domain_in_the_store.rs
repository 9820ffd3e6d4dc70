//! The domain's events through the real event store, on Postgres and SQLite: they round-trip,
//! streams fold back into the deciders' state, the show stream's expected version keeps a seat
//! from being sold twice, and a stored event that does not decode is a typed error that names it.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::Utc;
use domain::booking::{self, BookingCommand, RequestBooking};
use domain::show::{self, ScheduleShow, Section};
use domain::{
    BookingId, Customer, DomainError, DomainEvent, EventEnvelope, SeatId, ShowCommand, ShowEvent,
    ShowId, ShowState,
};
use event_store::{
    EventMetadata, EventStore, ExpectedVersion, NewEvent, Position, StoreError, StreamAppend,
};
use infra::stored_events::{decode, to_new_event};
use uuid::Uuid;

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let database = testkit::postgres();
                    let store = event_store::open(&database.url).await.unwrap();
                    super::$test(store).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}/events.db", dir.path().display());
                    let store = event_store::open(&url).await.unwrap();
                    super::$test(store).await;
                }
            )*
        }
    };
}

on_both_backends!(
    domain_events_round_trip_and_fold_back_into_state,
    the_show_version_keeps_a_seat_from_being_sold_twice,
    undecodable_events_are_typed_errors_naming_the_event,
);

fn schedule(show_id: ShowId) -> ShowCommand {
    ShowCommand::Schedule(ScheduleShow {
        show_id,
        name: "Flash Sale Live".into(),
        starts_at: Utc::now() + chrono::Duration::days(30),
        currency: "EUR".parse().unwrap(),
        sections: vec![Section {
            name: "A".into(),
            rows: 2,
            seats_per_row: 5,
            price_cents: 4500,
        }],
    })
}

fn seats(ids: &[&str]) -> BTreeSet<SeatId> {
    ids.iter().map(|id| id.parse().unwrap()).collect()
}

/// Append decided events to a stream at the version the decision was made on.
async fn append(
    store: &Arc<dyn EventStore>,
    stream_id: String,
    expected: u64,
    events: impl IntoIterator<Item = impl Into<DomainEvent>>,
) -> Result<event_store::AppendResult, StoreError> {
    let new: Vec<NewEvent> = EventEnvelope::fresh(events)
        .iter()
        .map(|envelope| to_new_event(envelope, Utc::now()).unwrap())
        .collect();
    store
        .append(StreamAppend::new(
            stream_id,
            ExpectedVersion::Exact(expected),
            new,
        ))
        .await
}

/// The show's state and version, folded from its stream.
async fn load_show(store: &Arc<dyn EventStore>, show_id: ShowId) -> (ShowState, u64) {
    let recorded = store.read_stream(&show_id.stream_id(), 0).await.unwrap();
    let version = recorded.last().map_or(0, |e| e.stream_version);
    let state = recorded
        .iter()
        .fold(None, |state, recorded| match decode(recorded).unwrap() {
            DomainEvent::Show(event) => show::evolve(state, &event),
            other => panic!("a show stream holds {other:?}"),
        });
    (state, version)
}

async fn domain_events_round_trip_and_fold_back_into_state(store: Arc<dyn EventStore>) {
    let show_id = ShowId::new();
    let scheduled = show::decide(&None, schedule(show_id)).unwrap();
    append(&store, show_id.stream_id(), 0, scheduled.clone())
        .await
        .unwrap();

    let (show_state, version) = load_show(&store, show_id).await;
    assert_eq!(version, 1);
    let show = show_state.as_ref().unwrap();
    assert_eq!(show.seat_count(), 10);
    let priced = show
        .price_seats(&["A-1-1".parse().unwrap(), "A-1-2".parse().unwrap()])
        .unwrap();

    let booking_id = BookingId::new();
    let requested = booking::decide(
        &None,
        BookingCommand::Request(RequestBooking {
            booking_id,
            show_id,
            seats: seats(&["A-1-1", "A-1-2"]),
            customer: Customer::new("c-1", "ada@example.com", "Ada Lovelace").unwrap(),
            payment_method: Some("sim_ok".into()),
            amount: priced.amount,
            requested_at: Utc::now(),
            access: Default::default(),
        }),
    )
    .unwrap();
    let written = append(&store, booking_id.stream_id(), 0, requested.clone())
        .await
        .unwrap();

    let recorded = store.read_stream(&booking_id.stream_id(), 0).await.unwrap();
    assert_eq!(recorded.len(), 1);
    let stored = &recorded[0];
    assert_eq!(stored.position, written.last_position());
    assert_eq!(stored.event_type, "booking.requested.v1");
    // Every event of a booking is keyed by its show, so the relay puts it in the show's partition.
    assert_eq!(
        stored.metadata.partition_key.as_deref(),
        Some(show_id.to_string().as_str())
    );
    let decoded = decode(stored).unwrap();
    assert_eq!(decoded, DomainEvent::from(requested[0].clone()));

    let state = recorded
        .iter()
        .fold(None, |state, recorded| match decode(recorded).unwrap() {
            DomainEvent::Booking(event) => booking::evolve(state, &event),
            other => panic!("a booking stream holds {other:?}"),
        });
    let booking = state.unwrap();
    assert_eq!(booking.status(), domain::BookingStatus::Requested);
    assert_eq!(booking.amount().amount_minor, 9000);
}

async fn the_show_version_keeps_a_seat_from_being_sold_twice(store: Arc<dyn EventStore>) {
    let show_id = ShowId::new();
    append(
        &store,
        show_id.stream_id(),
        0,
        show::decide(&None, schedule(show_id)).unwrap(),
    )
    .await
    .unwrap();

    // Two sellers decide on the same state (version 1): both see seat A-2-3 free.
    let (state, version) = load_show(&store, show_id).await;
    let (first, second) = (BookingId::new(), BookingId::new());
    let sell = |booking_id| ShowCommand::SellSeats {
        booking_id,
        seats: seats(&["A-2-3"]),
    };
    let first_sale = show::decide(&state, sell(first)).unwrap();
    let second_sale = show::decide(&state, sell(second)).unwrap();
    let (a, b) = tokio::join!(
        append(&store, show_id.stream_id(), version, first_sale),
        append(&store, show_id.stream_id(), version, second_sale),
    );
    // The store lets exactly one of them through; the other gets a conflict naming the versions.
    let conflicts: Vec<&StoreError> = [&a, &b]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
        .collect();
    assert_eq!(
        conflicts.len(),
        1,
        "exactly one sale must win: {a:?} / {b:?}"
    );
    assert!(matches!(
        conflicts[0],
        StoreError::Conflict {
            expected: ExpectedVersion::Exact(1),
            actual: 2,
            ..
        }
    ));

    // The loser reloads and decides again: now the seat is taken.
    let loser = if a.is_err() { first } else { second };
    let winner = if a.is_err() { second } else { first };
    let (state, _) = load_show(&store, show_id).await;
    match show::decide(&state, sell(loser)) {
        Err(DomainError::SeatsUnavailable { taken }) => {
            assert_eq!(
                taken.into_iter().collect::<Vec<_>>(),
                vec!["A-2-3".parse::<SeatId>().unwrap()]
            );
        }
        other => panic!("expected SeatsUnavailable, got {other:?}"),
    }
    let show = state.unwrap();
    assert_eq!(show.owner_of(&"A-2-3".parse().unwrap()), Some(winner));
    let sold: Vec<_> = store
        .read_stream(&show_id.stream_id(), 0)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(decode(e), Ok(DomainEvent::Show(ShowEvent::SeatsSold(_)))))
        .map(|e| e.position)
        .collect();
    assert_eq!(sold.len(), 1);
}

async fn undecodable_events_are_typed_errors_naming_the_event(store: Arc<dyn EventStore>) {
    let future_event = NewEvent::from_json_text(
        Uuid::now_v7(),
        "booking.teleported.v7",
        r#"{"to": "the moon"}"#,
        EventMetadata::default(),
    )
    .unwrap();
    let broken_event = NewEvent::from_json_text(
        Uuid::now_v7(),
        "booking.requested.v1",
        r#"{"booking_id": "not-a-uuid", "seats": 42}"#,
        EventMetadata::default(),
    )
    .unwrap();
    store
        .append(StreamAppend::new(
            "booking-odd",
            ExpectedVersion::NoStream,
            vec![future_event.clone(), broken_event.clone()],
        ))
        .await
        .unwrap();
    let recorded = store.read_all(Position::START, 10).await.unwrap();

    let unknown = decode(&recorded[0]).unwrap_err();
    assert!(unknown.source.is_unknown_type(), "{unknown}");
    assert_eq!(unknown.event_id, future_event.event_id);
    assert_eq!(unknown.position, Position(1));
    assert!(unknown.to_string().contains("booking.teleported.v7"));

    let poison = decode(&recorded[1]).unwrap_err();
    assert!(!poison.source.is_unknown_type(), "{poison}");
    assert_eq!(poison.event_id, broken_event.event_id);
    assert_eq!(poison.position, Position(2));
    assert!(
        poison
            .to_string()
            .contains(&broken_event.event_id.to_string())
    );
}
