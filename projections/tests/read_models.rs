//! The read models on real databases (Postgres from testkit, SQLite in a temporary file), kept
//! from a log that holds every path of the saga, written through the domain's deciders.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{Duration, Utc};
use domain::booking::{self, BookingCommand, CancelledBy, RequestBooking};
use domain::show::{self, ReleaseReason, ScheduleShow, Section, ShowCommand};
use domain::{
    BookingId, BookingStatus, Customer, DomainEvent, EventEnvelope, Money, RefundStatus, SeatId,
    ShowId,
};
use event_store::{EventStore, ExpectedVersion, StreamAppend};
use infra::stored_events::to_new_event;
use projections::{Projector, ReadModelDb};

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let database = testkit::postgres();
                    super::$test(&database.url).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("zq.db").display());
                    super::$test(&url).await;
                }
            )*
        }
    };
}

on_both_backends!(
    every_path_of_the_saga_lands_in_the_read_models,
    a_rebuild_from_position_zero_gives_the_same_rows,
    an_email_sent_v1_in_the_log_is_read_through_its_upcaster,
);

fn seats(ids: &[&str]) -> BTreeSet<SeatId> {
    ids.iter().map(|s| s.parse().unwrap()).collect()
}

/// Append events to a stream (no concurrency here: `Any` is enough).
async fn append(store: &Arc<dyn EventStore>, stream: &str, events: Vec<DomainEvent>) {
    let now = Utc::now();
    let envelopes = EventEnvelope::fresh(events);
    let events = envelopes
        .iter()
        .map(|e| to_new_event(e, now).unwrap())
        .collect();
    store
        .append(StreamAppend::new(stream, ExpectedVersion::Any, events))
        .await
        .unwrap();
}

/// A booking driven through `commands` by the booking decider.
async fn booking(
    store: &Arc<dyn EventStore>,
    show_id: ShowId,
    wanted: &[&str],
    commands: Vec<BookingCommand>,
) -> BookingId {
    let booking_id = BookingId::new();
    let request = RequestBooking {
        booking_id,
        show_id,
        seats: seats(wanted),
        customer: Customer::new("c-1", "ada@example.com", "Ada").unwrap(),
        payment_method: None,
        amount: Money::new(4_500 * wanted.len() as i64, "EUR".parse().unwrap()),
        requested_at: Utc::now(),
        access: Default::default(),
    };
    let mut state = None;
    for command in std::iter::once(BookingCommand::Request(request)).chain(commands) {
        let events = booking::decide(&state, command).unwrap();
        for event in &events {
            state = booking::evolve(state, event);
        }
        append(
            store,
            &booking_id.stream_id(),
            events.into_iter().map(Into::into).collect(),
        )
        .await;
    }
    booking_id
}

async fn sell(
    store: &Arc<dyn EventStore>,
    show: &mut domain::ShowState,
    booking_id: BookingId,
    wanted: &[&str],
) {
    let events = show::decide(
        show,
        ShowCommand::SellSeats {
            booking_id,
            seats: seats(wanted),
        },
    )
    .unwrap();
    for event in &events {
        *show = show::evolve(show.take(), event);
    }
    let show_id = show.as_ref().unwrap().show_id();
    append(
        store,
        &show_id.stream_id(),
        events.into_iter().map(Into::into).collect(),
    )
    .await;
}

/// Every path: confirmed, rejected, expired, declined, cancelled after confirmation (seats
/// released, refunded). Returns the show and the bookings in that order.
async fn saga_log(store: &Arc<dyn EventStore>) -> (ShowId, Vec<BookingId>) {
    let show_id = ShowId::new();
    let schedule = ShowCommand::Schedule(ScheduleShow {
        show_id,
        name: "Read Models Live".into(),
        starts_at: Utc::now() + Duration::days(30),
        currency: "EUR".parse().unwrap(),
        sections: vec![Section {
            name: "A".into(),
            rows: 2,
            seats_per_row: 5,
            price_cents: 4_500,
        }],
    });
    let events = show::decide(&None, schedule).unwrap();
    let mut show = events.iter().fold(None, show::evolve);
    append(
        store,
        &show_id.stream_id(),
        events.into_iter().map(Into::into).collect(),
    )
    .await;
    let hold = || BookingCommand::HoldSeats {
        expires_at: Utc::now() + Duration::minutes(10),
    };
    let eur = |cents| Money::new(cents, "EUR".parse().unwrap());

    let confirmed = booking(
        store,
        show_id,
        &["A-1-1", "A-1-2"],
        vec![
            hold(),
            BookingCommand::RecordPayment {
                charge_id: "ch-1".into(),
                amount: eur(9_000),
            },
        ],
    )
    .await;
    sell(store, &mut show, confirmed, &["A-1-1", "A-1-2"]).await;
    let confirm = booking::decide(&load(store, confirmed).await, BookingCommand::Confirm).unwrap();
    append(
        store,
        &confirmed.stream_id(),
        confirm.into_iter().map(Into::into).collect(),
    )
    .await;

    let rejected = booking(
        store,
        show_id,
        &["A-1-1"],
        vec![BookingCommand::Reject {
            taken: seats(&["A-1-1"]),
        }],
    )
    .await;
    let expired = booking(
        store,
        show_id,
        &["A-2-1"],
        vec![
            BookingCommand::HoldSeats {
                expires_at: Utc::now() + Duration::milliseconds(1),
            },
            BookingCommand::ExpireHold {
                now: Utc::now() + Duration::seconds(1),
            },
        ],
    )
    .await;
    let declined = booking(
        store,
        show_id,
        &["A-2-2"],
        vec![
            hold(),
            BookingCommand::RecordPaymentFailure {
                reason: domain::booking::PaymentFailureReason::Declined,
                detail: "no".into(),
            },
        ],
    )
    .await;
    let held = booking(store, show_id, &["A-2-3"], vec![hold()]).await;
    let refunded = booking(
        store,
        show_id,
        &["A-2-4"],
        vec![
            hold(),
            BookingCommand::RecordPayment {
                charge_id: "ch-2".into(),
                amount: eur(4_500),
            },
        ],
    )
    .await;
    sell(store, &mut show, refunded, &["A-2-4"]).await;
    let mut state = load(store, refunded).await;
    for command in [
        BookingCommand::Confirm,
        BookingCommand::Cancel {
            by: CancelledBy::Holder,
        },
        BookingCommand::RecordRefund {
            charge_id: "ch-2".into(),
            refund_id: "re-2".into(),
        },
    ] {
        let events = booking::decide(&state, command).unwrap();
        for event in &events {
            state = booking::evolve(state, event);
        }
        append(
            store,
            &refunded.stream_id(),
            events.into_iter().map(Into::into).collect(),
        )
        .await;
    }
    let release = show::decide(
        &show,
        ShowCommand::ReleaseSeats {
            booking_id: refunded,
            reason: ReleaseReason::Cancelled,
        },
    )
    .unwrap();
    append(
        store,
        &show_id.stream_id(),
        release.into_iter().map(Into::into).collect(),
    )
    .await;
    (
        show_id,
        vec![confirmed, rejected, expired, declined, held, refunded],
    )
}

async fn load(store: &Arc<dyn EventStore>, booking_id: BookingId) -> domain::BookingState {
    infra::streams::load_booking(&**store, booking_id)
        .await
        .unwrap()
        .map(|loaded| loaded.booking)
}

async fn every_path_of_the_saga_lands_in_the_read_models(url: &str) {
    let store = event_store::open(url).await.unwrap();
    let (show_id, bookings) = saga_log(&store).await;
    let projector = Projector::new(store.clone(), ReadModelDb::open(url).await.unwrap());
    let reached = projector.catch_up().await.unwrap();
    assert_eq!(reached, store.head().await.unwrap());
    let db = projector.db();
    let statuses: Vec<(BookingStatus, RefundStatus)> = {
        let views = db.bookings(&bookings).await.unwrap();
        bookings
            .iter()
            .map(|id| (views[id].status, views[id].refund_status))
            .collect()
    };
    use BookingStatus::*;
    assert_eq!(
        statuses,
        [
            (Confirmed, RefundStatus::None),
            (Rejected, RefundStatus::None),
            (Expired, RefundStatus::None),
            (Failed, RefundStatus::None),
            (Held, RefundStatus::None),
            (Cancelled, RefundStatus::Refunded),
        ]
    );
    let confirmed = db.booking(bookings[0]).await.unwrap().unwrap();
    let types: Vec<&str> = confirmed
        .timeline
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "booking.requested.v1",
            "booking.seats_held.v1",
            "booking.payment_succeeded.v1",
            "booking.confirmed.v1"
        ]
    );

    // Seats: sold to the confirmed booking, held by the held one; every other seat is free.
    let claims = db.seats(show_id, None).await.unwrap();
    let mut claimed: Vec<(String, bool, BookingId)> = claims
        .iter()
        .map(|(s, c)| (s.to_string(), c.sold, c.booking_id))
        .collect();
    claimed.sort();
    assert_eq!(
        claimed,
        [
            ("A-1-1".to_string(), true, bookings[0]),
            ("A-1-2".to_string(), true, bookings[0]),
            ("A-2-3".to_string(), false, bookings[4]),
        ]
    );
    assert_eq!(db.customer_bookings("c-1").await.unwrap().len(), 6);

    let stats = db
        .stats(&[show_id])
        .await
        .unwrap()
        .remove(&show_id)
        .unwrap();
    assert_eq!(
        (
            stats.requested,
            stats.held,
            stats.confirmed,
            stats.rejected,
            stats.expired,
            stats.cancelled,
            stats.failed
        ),
        (6, 5, 2, 1, 1, 1, 1)
    );
    assert_eq!(stats.revenue["EUR"], 13_500);
    assert_eq!(stats.refunds["EUR"], 4_500);

    // Caught up already: nothing changes on another round.
    assert_eq!(projector.catch_up().await.unwrap(), reached);
}

async fn a_rebuild_from_position_zero_gives_the_same_rows(url: &str) {
    let store = event_store::open(url).await.unwrap();
    let (show_id, bookings) = saga_log(&store).await;
    let db = ReadModelDb::open(url).await.unwrap();
    // Live: in small steps, as events arrive (batches of 3 cut through every booking's flow).
    let live = Projector::new(store.clone(), db.clone()).with_batch_size(3);
    live.catch_up().await.unwrap();
    let before = (
        db.bookings(&bookings).await.unwrap(),
        db.seats(show_id, None).await.unwrap(),
        db.stats(&[show_id]).await.unwrap(),
    );
    // Rebuilt from an empty set of tables.
    let rebuilt_db = emptied_read_models(url).await;
    Projector::new(store.clone(), rebuilt_db.clone())
        .catch_up()
        .await
        .unwrap();
    let after = (
        rebuilt_db.bookings(&bookings).await.unwrap(),
        rebuilt_db.seats(show_id, None).await.unwrap(),
        rebuilt_db.stats(&[show_id]).await.unwrap(),
    );
    assert_eq!(before, after);
}

/// The read models at `url` with every table emptied, for a rebuild from position zero.
async fn emptied_read_models(url: &str) -> ReadModelDb {
    let db = ReadModelDb::open(url).await.unwrap();
    match &db {
        ReadModelDb::Postgres(pool) => {
            for table in ["rm_bookings", "rm_seats", "rm_show_stats", "rm_checkpoints"] {
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
        ReadModelDb::Sqlite(pool) => {
            for table in ["rm_bookings", "rm_seats", "rm_show_stats", "rm_checkpoints"] {
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    }
    db
}

/// A log written across the `booking.email_sent` schema change: a v1 email (as stored before
/// the channel was recorded) and a v2 one on the same booking.
async fn an_email_sent_v1_in_the_log_is_read_through_its_upcaster(url: &str) {
    let store = event_store::open(url).await.unwrap();
    let show_id = ShowId::new();
    let booking_id = booking(
        &store,
        show_id,
        &["A-1-1"],
        vec![BookingCommand::HoldSeats {
            expires_at: Utc::now() + Duration::minutes(10),
        }],
    )
    .await;
    // Written by a notifier of before v2: raw JSON under the old type name.
    let v1 = serde_json::json!({
        "booking_id": booking_id.to_string(),
        "show_id": show_id.to_string(),
        "about_event_id": domain::EventId::new().to_string(),
        "message_id": "<v1@zingqueue>",
    });
    let raw = event_store::NewEvent::from_json_text(
        uuid::Uuid::now_v7(),
        "booking.email_sent.v1",
        v1.to_string(),
        event_store::EventMetadata {
            partition_key: Some(show_id.to_string()),
            ..Default::default()
        },
    )
    .unwrap();
    store
        .append(StreamAppend::new(
            booking_id.stream_id(),
            ExpectedVersion::Any,
            vec![raw],
        ))
        .await
        .unwrap();
    // Written now, decided against the state loaded through the upcaster.
    let sent = booking::decide(
        &load(&store, booking_id).await,
        BookingCommand::RecordEmailSent {
            about_event_id: domain::EventId::new(),
            message_id: "<v2@zingqueue>".into(),
            channel: booking::EmailChannel::MailFolder,
        },
    )
    .unwrap();
    assert_eq!(sent.len(), 1);
    append(
        &store,
        &booking_id.stream_id(),
        sent.into_iter().map(Into::into).collect(),
    )
    .await;

    let db = ReadModelDb::open(url).await.unwrap();
    let projector = Projector::new(store.clone(), db.clone());
    assert_eq!(
        projector.catch_up().await.unwrap(),
        store.head().await.unwrap()
    );
    let stats = projector.stats();
    assert_eq!(stats.undecodable.load(Ordering::Relaxed), 0);
    assert_eq!(stats.unknown_types.load(Ordering::Relaxed), 0);
    let view = db.booking(booking_id).await.unwrap().unwrap();
    assert_eq!(view.status, BookingStatus::Held);
    let types: Vec<&str> = view
        .timeline
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "booking.requested.v1",
            "booking.seats_held.v1",
            "booking.email_sent.v1",
            "booking.email_sent.v2",
        ]
    );
    let before = (
        db.bookings(&[booking_id]).await.unwrap(),
        db.stats(&[show_id]).await.unwrap(),
    );

    let rebuilt_db = emptied_read_models(url).await;
    let rebuilt = Projector::new(store.clone(), rebuilt_db.clone());
    rebuilt.catch_up().await.unwrap();
    assert_eq!(rebuilt.stats().undecodable.load(Ordering::Relaxed), 0);
    let after = (
        rebuilt_db.bookings(&[booking_id]).await.unwrap(),
        rebuilt_db.stats(&[show_id]).await.unwrap(),
    );
    assert_eq!(before, after);
}
