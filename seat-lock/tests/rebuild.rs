//! seat-lock's hold step against a real store. It rebuilds the hold store before it holds when the store's epoch is dead (its run id
//! is not the store's any more: a restart that brought the old epoch back) or is the fence
//! marker of a rebuilder that never finished, and adopts the epoch of another process's rebuild
//! in progress instead of rebuilding over it. A hold the booking refuses frees its seats and
//! fails for good (a dead letter, which ends the booking). In-process hold store, SQLite event
//! store.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use domain::booking::{BookingAccess, BookingEvent, BookingRequested};
use domain::show::{SeatsSold, ShowEvent};
use domain::{
    BookingId, BookingStatus, Customer, DomainEvent, EventEnvelope, Money, SeatId, ShowId,
    event_types,
};
use event_store::{EventStore, ExpectedVersion, SqliteEventStore, StreamAppend};
use infra::consumer::{EventRecord, Handler, RawRecord};
use infra::holds::{
    EpochState, GENERATION_COUNTER, HoldStore, MemoryHoldStore, SeatClaim, rebuild_in_progress,
};
use infra::stored_events::to_new_event;
use infra::streams::load_booking;
use seat_lock::{SeatLock, SeatLockConfig, snapshot_from_log};

/// A SQLite event store in a folder of its own, removed when dropped.
struct Store {
    store: Arc<dyn EventStore>,
    dir: PathBuf,
}

impl Store {
    async fn new() -> Store {
        let dir = std::env::temp_dir().join(format!("seat-lock-rebuild-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("events.db").display());
        let store = SqliteEventStore::open(&url).await.expect("open SQLite");
        Store {
            store: Arc::new(store),
            dir,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn seat(id: &str) -> SeatId {
    id.parse().unwrap()
}

/// A sale recorded on the show stream by another process, which never told this store.
async fn sold_elsewhere(store: &dyn EventStore, show_id: ShowId, booking_id: BookingId, id: &str) {
    let sale = ShowEvent::SeatsSold(SeatsSold {
        show_id,
        booking_id,
        seats: BTreeSet::from([seat(id)]),
    });
    let events = EventEnvelope::fresh([sale])
        .iter()
        .map(|envelope| to_new_event(envelope, Utc::now()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    store
        .append(StreamAppend::new(
            show_id.stream_id(),
            ExpectedVersion::Any,
            events,
        ))
        .await
        .unwrap();
}

/// A booking request for `id`, stored, as the consumer would hand it to seat-lock.
async fn requested(store: &dyn EventStore, show_id: ShowId, id: &str) -> (BookingId, EventRecord) {
    requested_at(store, show_id, id, Utc::now()).await
}

/// A booking request for `id` made at `at` by the API's clock.
async fn requested_at(
    store: &dyn EventStore,
    show_id: ShowId,
    id: &str,
    at: chrono::DateTime<Utc>,
) -> (BookingId, EventRecord) {
    let booking_id = BookingId::new();
    let request = BookingRequested {
        booking_id,
        show_id,
        seats: BTreeSet::from([seat(id)]),
        customer: Customer::new("c-1", "ada@example.com", "Ada").unwrap(),
        payment_method: None,
        amount: Money::new(1250, "EUR".parse().unwrap()),
        requested_at: at,
        access: BookingAccess::default(),
    };
    let event = DomainEvent::Booking(BookingEvent::Requested(request));
    let envelope = EventEnvelope::fresh([event.clone()]).remove(0);
    let appended = store
        .append(StreamAppend::new(
            booking_id.stream_id(),
            ExpectedVersion::NoStream,
            vec![to_new_event(&envelope, Utc::now()).unwrap()],
        ))
        .await
        .unwrap();
    let stream = &appended.streams[0];
    let record = EventRecord {
        raw: RawRecord {
            topic: "zq.booking-events".to_string(),
            partition: 0,
            offset: 0,
            key: Some(show_id.to_string().into_bytes()),
            payload: None,
            headers: Vec::new(),
        },
        event_id: envelope.event_id.as_uuid(),
        event_type: event_types::BOOKING_REQUESTED.to_string(),
        position: stream.positions[0],
        stream_id: stream.stream_id.clone(),
        stream_version: stream.version,
        correlation_id: None,
        event,
    };
    (booking_id, record)
}

async fn status(store: &dyn EventStore, booking_id: BookingId) -> BookingStatus {
    load_booking(store, booking_id)
        .await
        .unwrap()
        .expect("the booking")
        .booking
        .status()
}

fn generation(epoch: &str) -> u64 {
    match EpochState::parse(epoch) {
        Some(EpochState::Ready { generation, .. }) => generation,
        other => panic!("not a ready epoch: {epoch:?} ({other:?})"),
    }
}

fn sold(booking_id: BookingId) -> Option<SeatClaim> {
    Some(SeatClaim {
        booking_id,
        sold: true,
    })
}

fn seat_lock(store: &Store, holds: &Arc<MemoryHoldStore>, rebuild_wait: Duration) -> SeatLock {
    SeatLock::new(
        store.store.clone(),
        holds.clone(),
        SeatLockConfig {
            rebuild_wait,
            ..SeatLockConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restarted_with_its_old_epoch_is_rebuilt_before_holding() {
    let store = Store::new().await;
    let holds = Arc::new(MemoryHoldStore::default());
    let seat_lock = seat_lock(&store, &holds, Duration::from_secs(10));
    let show_id = ShowId::new();

    // The first sweep finds a fresh store and rebuilds it.
    seat_lock.sweep_expired().await.unwrap();
    let before = holds.epoch().await.unwrap().expect("an epoch");

    // A sale the store never heard of (lost with the restart), then the restart: same
    // contents, same epoch, another run.
    let buyer = BookingId::new();
    sold_elsewhere(&*store.store, show_id, buyer, "A-1-1").await;
    holds.restart();
    assert_eq!(holds.epoch().await.unwrap(), Some(before.clone()));

    let (newcomer, record) = requested(&*store.store, show_id, "A-1-1").await;
    seat_lock.handle(&record).await.unwrap();

    // Rebuilt from the log first, so the newcomer was refused the sold seat.
    assert_eq!(
        status(&*store.store, newcomer).await,
        BookingStatus::Rejected
    );
    assert_eq!(
        holds.seat(show_id, &seat("A-1-1")).await.unwrap(),
        sold(buyer)
    );
    let after = holds.epoch().await.unwrap().expect("an epoch");
    assert!(
        generation(&after) > generation(&before),
        "{after:?} after {before:?}"
    );
    assert_eq!(holds.check_epoch(&after).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_of_a_crashed_rebuilder_is_taken_over_before_holding() {
    let store = Store::new().await;
    let holds = Arc::new(MemoryHoldStore::default());
    let wait = Duration::from_millis(500);
    let seat_lock = seat_lock(&store, &holds, wait);
    let show_id = ShowId::new();
    seat_lock.sweep_expired().await.unwrap();

    // Another process fenced the store, then died before its rebuild; meanwhile a sale was
    // recorded that the store never heard of.
    let crashed = store
        .store
        .next_generation(GENERATION_COUNTER)
        .await
        .unwrap();
    holds.fence(crashed).await.unwrap();
    let buyer = BookingId::new();
    sold_elsewhere(&*store.store, show_id, buyer, "A-1-1").await;

    let (newcomer, record) = requested(&*store.store, show_id, "A-1-1").await;
    let started = Instant::now();
    seat_lock.handle(&record).await.unwrap();

    // It waited for the other rebuild first, then rebuilt under a newer generation.
    assert!(
        started.elapsed() >= wait,
        "took over after {:?}",
        started.elapsed()
    );
    assert_eq!(
        status(&*store.store, newcomer).await,
        BookingStatus::Rejected
    );
    assert_eq!(
        holds.seat(show_id, &seat("A-1-1")).await.unwrap(),
        sold(buyer)
    );
    let epoch = holds.epoch().await.unwrap().expect("an epoch");
    assert!(generation(&epoch) > crashed, "{epoch:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_in_progress_elsewhere_is_waited_for_and_adopted() {
    let store = Store::new().await;
    let holds = Arc::new(MemoryHoldStore::default());
    let seat_lock = seat_lock(&store, &holds, Duration::from_secs(30));
    let show_id = ShowId::new();

    // Another process is rebuilding (fenced, reading the log) when this one starts.
    let other = store
        .store
        .next_generation(GENERATION_COUNTER)
        .await
        .unwrap();
    holds.fence(other).await.unwrap();
    let buyer = BookingId::new();
    sold_elsewhere(&*store.store, show_id, buyer, "A-1-1").await;
    let rebuilder = {
        let (store, holds) = (store.store.clone(), holds.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let snapshot = snapshot_from_log(&*store).await.unwrap();
            holds.rebuild(other, &snapshot, Utc::now()).await.unwrap()
        })
    };

    let (newcomer, record) = requested(&*store.store, show_id, "A-1-1").await;
    seat_lock.handle(&record).await.unwrap();
    let theirs = rebuilder.await.unwrap();

    // Held under the other process's epoch: nothing was rebuilt over it.
    assert_eq!(holds.epoch().await.unwrap(), Some(theirs.clone()));
    assert_eq!(generation(&theirs), other);
    assert_eq!(
        status(&*store.store, newcomer).await,
        BookingStatus::Rejected
    );
    assert_eq!(
        holds
            .epoch()
            .await
            .unwrap()
            .as_deref()
            .and_then(rebuild_in_progress),
        None
    );
}

/// Clock skew: the API's clock is a day ahead of seat-lock's, so the hold would end before the
/// request was made and the booking refuses it. The seats are freed and the record fails for
/// good (the runtime then dead-letters it and ends the booking: `infra/tests/consumer.rs`),
/// rather than succeeding and leaving the booking `requested` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_the_booking_refuses_frees_the_seats_and_fails_for_good() {
    let store = Store::new().await;
    let holds = Arc::new(MemoryHoldStore::default());
    let seat_lock = seat_lock(&store, &holds, Duration::from_secs(10));
    let show_id = ShowId::new();
    let ahead = Utc::now() + chrono::Duration::days(1);
    let (booking_id, record) = requested_at(&*store.store, show_id, "A-1-1", ahead).await;
    let outcome = seat_lock.handle(&record).await;
    assert!(
        matches!(outcome, Err(infra::consumer::HandlerError::Permanent(_))),
        "{outcome:?}"
    );
    assert_eq!(
        status(&*store.store, booking_id).await,
        BookingStatus::Requested
    );
    assert_eq!(holds.seat(show_id, &seat("A-1-1")).await.unwrap(), None);
}
