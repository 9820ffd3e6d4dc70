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
use projections::{
    ProjectionError, Projector, READ_MODELS, ReadModelDb, ReplayError, ReplayRequest, ReplayState,
    ReplayStatus, Replays, TableSet,
};

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
    queries_answer_throughout_a_rebuild,
    a_killed_rebuild_leaves_the_live_tables_and_a_rerun_completes,
    a_snapshot_holds_the_state_as_of_a_position_or_a_time,
    two_runners_on_the_same_tables_apply_each_event_once,
    a_projector_that_missed_a_switch_writes_nothing_into_the_new_tables,
    two_rebuilds_at_once_never_switch_in_a_partial_set,
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
    let (show_id, _) = saga_log(&store).await;
    let db = ReadModelDb::open(url).await.unwrap();
    // Live: in small steps, as events arrive (batches of 3 cut through every booking's flow).
    let live = Projector::new(store.clone(), db.clone()).with_batch_size(3);
    let head = live.catch_up().await.unwrap();
    let before = db.rows().await.unwrap();
    assert!(before.bookings.len() >= 5 && !before.seats.is_empty());
    assert!(
        before
            .stats
            .iter()
            .any(|(show, _)| *show == show_id.to_string())
    );
    // A wrong live row (what a projection bug leaves behind) that the rebuild must correct.
    plant_a_wrong_row(&db, head).await;
    assert_ne!(db.rows().await.unwrap(), before);
    // Rebuilt into the shadow tables and switched.
    let replays = Replays::new(store.clone(), db.clone()).with_live_runner(&live);
    let status = finish(&replays, ReplayRequest::default()).await;
    assert_eq!(status.state, ReplayState::Done, "{status:?}");
    assert_eq!(status.position, head.0);
    assert_eq!(
        db.rows().await.unwrap(),
        before,
        "rebuilt rows differ from the live ones"
    );
    assert_eq!(db.checkpoint(READ_MODELS).await.unwrap(), head);
    assert!(
        db.with_tables(TableSet::Shadow).rows().await.is_err(),
        "the shadow tables are gone once switched"
    );
    // The switched-in tables keep their indexes' names: a second rebuild works the same.
    let again = finish(&replays, ReplayRequest::default()).await;
    assert_eq!(again.state, ReplayState::Done, "{again:?}");
    assert_eq!(db.rows().await.unwrap(), before);
    // The live runner goes on in the new tables.
    booking(&store, show_id, &["A-2-5"], vec![]).await;
    let moved = live.catch_up().await.unwrap();
    assert!(moved > head);
    assert_eq!(
        db.rows().await.unwrap().bookings.len(),
        before.bookings.len() + 1
    );
}

/// Overwrite one booking's live row with a wrong status, through the checkpointed commit.
async fn plant_a_wrong_row(db: &ReadModelDb, head: event_store::Position) {
    let rows = db.rows().await.unwrap();
    let id: BookingId = rows.bookings[0].0.parse().unwrap();
    let mut view = db.booking(id).await.unwrap().unwrap();
    view.status = if view.status == BookingStatus::Cancelled {
        BookingStatus::Confirmed
    } else {
        BookingStatus::Cancelled
    };
    let changes = projections::db::Changes {
        bookings: [(id, view)].into(),
        ..Default::default()
    };
    let generation = db.generation(READ_MODELS).await.unwrap();
    db.commit(READ_MODELS, head, generation, head, &changes)
        .await
        .unwrap();
}

/// Start a replay and wait (bounded) for it to finish.
async fn finish(replays: &Replays, request: ReplayRequest) -> ReplayStatus {
    let status = replays.start(request).unwrap();
    let mut follow = replays.follow(status.id).unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        follow.wait_for(ReplayStatus::finished),
    )
    .await
    .expect("the replay finishes within 2 minutes")
    .unwrap()
    .clone()
}

/// A rebuild while bookings keep arriving, the live runner keeps going and readers keep
/// asking: no reader sees an error or a checkpoint going back, and the switched-in tables are
/// what a snapshot at the same head holds.
async fn queries_answer_throughout_a_rebuild(url: &str) {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let store = event_store::open(url).await.unwrap();
    for _ in 0..10 {
        saga_log(&store).await;
    }
    let db = ReadModelDb::open(url).await.unwrap();
    let live = Arc::new(Projector::new(store.clone(), db.clone()).with_batch_size(7));
    let replays = Replays::new(store.clone(), db.clone()).with_live_runner(&live);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let runner = tokio::spawn({
        let live = live.clone();
        let stopped = stopped.clone();
        async move { live.run(until_stopped(stopped)).await }
    });
    let done = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let (db, done, queries) = (db.clone(), done.clone(), queries.clone());
        async move {
            let mut seen = event_store::Position::START;
            while !done.load(Ordering::Relaxed) {
                let reached = db.checkpoint(READ_MODELS).await.expect("checkpoint");
                assert!(
                    reached >= seen,
                    "the checkpoint went back: {seen} → {reached}"
                );
                seen = reached;
                let rows = db.rows().await.expect("rows");
                for (id, ..) in rows.bookings.iter().take(3) {
                    db.booking(id.parse().unwrap()).await.expect("booking");
                }
                for (show, _) in rows.stats.iter().take(3) {
                    let show: ShowId = show.parse().unwrap();
                    db.seats(show, None).await.expect("seats");
                    db.stats(&[show]).await.expect("stats");
                }
                db.customer_bookings("c-1").await.expect("customer");
                queries.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let writer = tokio::spawn({
        let (store, done) = (store.clone(), done.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                saga_log(&store).await;
                // A steady load, not a flood the rebuild could never reach the head of.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    });
    let asked_before = queries.load(Ordering::Relaxed);
    let status = finish(
        &replays,
        ReplayRequest {
            batch_size: Some(10),
            ..ReplayRequest::default()
        },
    )
    .await;
    let asked_during = queries.load(Ordering::Relaxed) - asked_before;
    done.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    reader.await.unwrap();
    assert_eq!(status.state, ReplayState::Done, "{status:?}");
    assert!(
        asked_during >= 5,
        "only {asked_during} reads ran during the rebuild"
    );
    // The live runner carries on from the switched checkpoint to the head.
    let head = store.head().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.checkpoint(READ_MODELS).await.unwrap() < head {
        assert!(
            std::time::Instant::now() < deadline,
            "the live runner did not reach the head"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    runner.await.unwrap().unwrap();
    let snapshot = finish(
        &replays,
        ReplayRequest {
            until_position: Some(head.0),
            snapshot: Some("check".into()),
            ..ReplayRequest::default()
        },
    )
    .await;
    assert_eq!(snapshot.state, ReplayState::Done, "{snapshot:?}");
    let expected = db
        .with_tables(TableSet::snapshot("check").unwrap())
        .rows()
        .await
        .unwrap();
    assert_eq!(db.rows().await.unwrap(), expected);
}

/// A rebuild killed halfway (its shadow tables half full) leaves the live tables alone, and
/// the next one starts afresh and completes.
async fn a_killed_rebuild_leaves_the_live_tables_and_a_rerun_completes(url: &str) {
    let store = event_store::open(url).await.unwrap();
    for _ in 0..3 {
        saga_log(&store).await;
    }
    let db = ReadModelDb::open(url).await.unwrap();
    let live = Projector::new(store.clone(), db.clone());
    live.catch_up().await.unwrap();
    let before = db.rows().await.unwrap();
    // What a killed replay leaves behind: shadow tables with part of the log, and their
    // checkpoint.
    let shadow = db.with_tables(TableSet::Shadow);
    shadow.create_tables(false).await.unwrap();
    let half = Projector::new(store.clone(), shadow.clone()).with_batch_size(10);
    half.apply_next_batch(event_store::Position::START)
        .await
        .unwrap();
    assert!(!shadow.rows().await.unwrap().bookings.is_empty());
    assert_eq!(db.rows().await.unwrap(), before);
    let status = finish(
        &Replays::new(store.clone(), db.clone()),
        ReplayRequest::default(),
    )
    .await;
    assert_eq!(status.state, ReplayState::Done, "{status:?}");
    assert_eq!(db.rows().await.unwrap(), before);
}

/// Snapshots by position and by time hold the state as of then, and switch nothing.
async fn a_snapshot_holds_the_state_as_of_a_position_or_a_time(url: &str) {
    let store = event_store::open(url).await.unwrap();
    saga_log(&store).await;
    let db = ReadModelDb::open(url).await.unwrap();
    let live = Projector::new(store.clone(), db.clone());
    let then = live.catch_up().await.unwrap();
    let rows_then = db.rows().await.unwrap();
    let recorded_then = store
        .read_all(event_store::Position(then.0 - 1), 1)
        .await
        .unwrap()[0]
        .recorded_at;
    // Later events are recorded strictly later.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    saga_log(&store).await;
    let now = live.catch_up().await.unwrap();
    let rows_now = db.rows().await.unwrap();
    assert_ne!(rows_then, rows_now);
    let replays = Replays::new(store.clone(), db.clone());
    let by_position = finish(
        &replays,
        ReplayRequest {
            until_position: Some(then.0),
            ..ReplayRequest::default()
        },
    )
    .await;
    assert_eq!(by_position.state, ReplayState::Done, "{by_position:?}");
    let name = by_position.snapshot.clone().unwrap();
    assert_eq!(name, format!("at_{}", then.0));
    let snapshot = db.with_tables(TableSet::snapshot(&name).unwrap());
    assert_eq!(snapshot.rows().await.unwrap(), rows_then);
    let by_time = finish(
        &replays,
        ReplayRequest {
            until_recorded_at: Some(recorded_then),
            snapshot: Some("by_time".into()),
            ..ReplayRequest::default()
        },
    )
    .await;
    assert_eq!(by_time.state, ReplayState::Done, "{by_time:?}");
    let snapshot = db.with_tables(TableSet::snapshot("by_time").unwrap());
    assert_eq!(snapshot.rows().await.unwrap(), rows_then);
    // The live tables are untouched.
    assert_eq!(db.rows().await.unwrap(), rows_now);
    assert_eq!(db.checkpoint(READ_MODELS).await.unwrap(), now);
    // Bad requests are refused before anything runs.
    assert!(matches!(
        replays.start(ReplayRequest {
            projection: Some("nope".into()),
            ..ReplayRequest::default()
        }),
        Err(ReplayError::UnknownProjection(_))
    ));
    assert!(matches!(
        replays.start(ReplayRequest {
            until_position: Some(1),
            snapshot: Some("Robert'); DROP TABLE".into()),
            ..ReplayRequest::default()
        }),
        Err(ReplayError::Projection(ProjectionError::BadSnapshotName(_)))
    ));
}

/// Two rebuilds at once (say `zingqueue replay --here` beside one running in `up`) share the
/// shadow tables: the second drops them under the first, whose next batch then finds its
/// checkpoint gone and goes on from where the set really is. What switches in holds every
/// event.
async fn two_rebuilds_at_once_never_switch_in_a_partial_set(url: &str) {
    let store = event_store::open(url).await.unwrap();
    for _ in 0..6 {
        saga_log(&store).await;
    }
    let db = ReadModelDb::open(url).await.unwrap();
    let live = Projector::new(store.clone(), db.clone());
    let head = live.catch_up().await.unwrap();
    let expected = db.rows().await.unwrap();
    // The first rebuild has written part of the shadow…
    let shadow = db.with_tables(TableSet::Shadow);
    shadow.create_tables(false).await.unwrap();
    let first = Projector::new(store.clone(), shadow.clone()).with_batch_size(3);
    let mut position = event_store::Position::START;
    for _ in 0..3 {
        position = first.apply_next_batch(position).await.unwrap();
    }
    assert_eq!(position, event_store::Position(9));
    // …when a second starts afresh: it drops and creates the shadow tables.
    shadow.drop_tables(READ_MODELS).await.unwrap();
    shadow.create_tables(false).await.unwrap();
    // The first's next batch must not land in the fresh tables as if 1..9 were there.
    let found = first.apply_next_batch(position).await.unwrap();
    assert_eq!(
        found,
        event_store::Position::START,
        "the first went on from {found}"
    );
    assert!(shadow.rows().await.unwrap().bookings.is_empty());
    // Both going on from there fill the shadow with every event once; the switch brings them in.
    let (a, b) = tokio::join!(first.catch_up(), async {
        Projector::new(store.clone(), shadow.clone())
            .with_batch_size(5)
            .catch_up()
            .await
    });
    assert_eq!((a.unwrap(), b.unwrap()), (head, head));
    assert_eq!(db.switch(READ_MODELS).await.unwrap(), head);
    assert_eq!(db.rows().await.unwrap(), expected);
    let first = Replays::new(store.clone(), db.clone());
    // One bound at a time.
    assert!(matches!(
        first.start(ReplayRequest {
            until_position: Some(1),
            until_recorded_at: Some(Utc::now()),
            ..ReplayRequest::default()
        }),
        Err(ReplayError::TwoBounds)
    ));
}

/// Two runners on the same tables (two processes by mistake, or a runner racing a switch):
/// each batch commits only from where the checkpoint was, so nothing is applied twice.
async fn two_runners_on_the_same_tables_apply_each_event_once(url: &str) {
    let store = event_store::open(url).await.unwrap();
    for _ in 0..3 {
        saga_log(&store).await;
    }
    let db = ReadModelDb::open(url).await.unwrap();
    let first = Projector::new(store.clone(), db.clone()).with_batch_size(2);
    let second = Projector::new(store.clone(), db.clone()).with_batch_size(3);
    // Both start from the same checkpoint; the second commits first.
    let start = event_store::Position::START;
    let by_second = second.apply_next_batch(start).await.unwrap();
    assert_eq!(by_second, event_store::Position(3));
    let by_first = first.apply_next_batch(start).await.unwrap();
    assert_eq!(
        by_first, by_second,
        "the stale runner must write nothing and go on from 3"
    );
    let (a, b) = tokio::join!(first.catch_up(), second.catch_up());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    let raced = db.rows().await.unwrap();
    let replays = Replays::new(store.clone(), db.clone());
    let alone = finish(
        &replays,
        ReplayRequest {
            until_position: Some(a.0),
            ..ReplayRequest::default()
        },
    )
    .await;
    let expected = db
        .with_tables(TableSet::snapshot(alone.snapshot.as_deref().unwrap()).unwrap())
        .rows()
        .await
        .unwrap();
    assert_eq!(raced, expected, "a racing runner applied events twice");
}

/// A projector in another process (its own pool, no pause gate the replay could hold) misses a
/// switch that leaves the checkpoint where it was: the tables' generation, checked with the
/// checkpoint in every commit, makes its next batch write nothing; it reloads and goes on in
/// the new tables.
async fn a_projector_that_missed_a_switch_writes_nothing_into_the_new_tables(url: &str) {
    let store = event_store::open(url).await.unwrap();
    let (show_id, _) = saga_log(&store).await;
    let db = ReadModelDb::open(url).await.unwrap();
    let elsewhere = Projector::new(store.clone(), ReadModelDb::open(url).await.unwrap());
    let head = elsewhere.catch_up().await.unwrap();
    // The rebuild ends at the same head: the switch leaves the checkpoint where it was.
    let replays = Replays::new(store.clone(), db.clone());
    let status = finish(&replays, ReplayRequest::default()).await;
    assert_eq!(status.state, ReplayState::Done, "{status:?}");
    assert_eq!(db.checkpoint(READ_MODELS).await.unwrap(), head);
    booking(&store, show_id, &["A-2-5"], vec![]).await;
    let stale = elsewhere.apply_next_batch(head).await.unwrap();
    assert_eq!(
        stale, head,
        "a projector that missed the switch committed into the new tables"
    );
    let resumed = elsewhere.catch_up().await.unwrap();
    assert!(resumed > head);
    let fresh = Replays::new(store.clone(), db.clone());
    let rebuilt = finish(
        &fresh,
        ReplayRequest {
            until_position: Some(resumed.0),
            ..ReplayRequest::default()
        },
    )
    .await;
    let expected = db
        .with_tables(TableSet::snapshot(rebuilt.snapshot.as_deref().unwrap()).unwrap())
        .rows()
        .await
        .unwrap();
    assert_eq!(db.rows().await.unwrap(), expected);
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
    let before = db.rows().await.unwrap();
    assert_eq!(before.bookings.len(), 1);
    assert!(
        before
            .stats
            .iter()
            .any(|(show, _)| *show == show_id.to_string())
    );
    // A replay over the log that holds both versions gives the same rows.
    let status = finish(
        &Replays::new(store.clone(), db.clone()),
        ReplayRequest::default(),
    )
    .await;
    assert_eq!(status.state, ReplayState::Done, "{status:?}");
    assert_eq!(db.rows().await.unwrap(), before);
}
