//! The hold stores' contract, run against both stores: the in-process one and Redis (a real
//! `redis-server` from testkit, a fresh database per test, and a key prefix of its own so that a
//! shared server works too).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use domain::{BookingId, SeatId, ShowId};
use futures::StreamExt;
use infra::holds::{
    DEFAULT_GRACE, EpochState, ExpiryDue, HoldError, HoldOutcome, HoldRequest, HoldSnapshot,
    HoldStore, MemoryHoldStore, RedisHoldStore, SeatClaim, rebuild_in_progress,
};
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Redis,
}

macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Redis).await;
                }
            )*
        }
    };
}

on_both!(
    a_request_with_one_taken_seat_holds_none,
    an_earlier_request_in_a_batch_wins_a_seat,
    retaking_an_own_hold_succeeds_and_refreshes_its_ttl,
    an_own_sold_seat_is_free_for_its_booking_only,
    release_frees_only_the_bookings_own_holds,
    mark_sold_overwrites_and_unmark_sold_removes_only_own_markers,
    sold_markers_outlive_the_ttl_while_holds_vanish,
    due_expiries_are_the_due_ones_earliest_first_and_never_moved_later,
    forget_expiry_drops_only_that_entry,
    holding_needs_the_current_epoch,
    rebuild_restores_holds_sold_seats_and_expiries,
    a_flush_is_noticed_by_the_next_hold,
    writes_with_a_stale_epoch_fail_and_change_nothing,
    a_fence_stops_every_write_until_its_rebuild_and_never_goes_back,
    an_overtaken_rebuild_writes_nothing,
    a_restart_that_brings_the_old_epoch_back_is_noticed_by_every_write,
    a_rebuild_keeps_only_what_the_snapshot_holds,
);

/// A store under test, plus what the test needs to flush it, and its generation numbers (the
/// event store's counter in production).
struct Fixture {
    store: Arc<dyn HoldStore>,
    kind: Kind,
    generations: AtomicU64,
}

enum Kind {
    Memory(Arc<MemoryHoldStore>),
    Redis { url: String, prefix: String },
}

impl Fixture {
    async fn new(backend: Backend, grace: Duration) -> Self {
        match backend {
            Backend::Memory => {
                let store = Arc::new(MemoryHoldStore::new(grace));
                Fixture {
                    store: store.clone(),
                    kind: Kind::Memory(store),
                    generations: AtomicU64::new(0),
                }
            }
            Backend::Redis => {
                let url = testkit::redis().url;
                let prefix = format!("zqtest:{}:", Uuid::new_v4());
                let store = RedisHoldStore::connect(&url, grace)
                    .await
                    .expect("connect to Redis")
                    .with_prefix(prefix.clone());
                Fixture {
                    store: Arc::new(store),
                    kind: Kind::Redis { url, prefix },
                    generations: AtomicU64::new(0),
                }
            }
        }
    }

    /// A generation greater than every one handed out before (1 first).
    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Fences and rebuilds under a new generation, as seat-lock does; returns the new epoch.
    async fn rebuild(&self, snapshot: &HoldSnapshot, now: DateTime<Utc>) -> String {
        let generation = self.next_generation();
        self.store.fence(generation).await.unwrap();
        self.store.rebuild(generation, snapshot, now).await.unwrap()
    }

    /// A store with an epoch, ready to hold.
    async fn ready(backend: Backend) -> (Self, String) {
        let fixture = Self::new(backend, DEFAULT_GRACE).await;
        let epoch = fixture.rebuild(&HoldSnapshot::default(), now()).await;
        (fixture, epoch)
    }

    /// As a restart that brings the data back (a Redis restored from the snapshot it has just
    /// saved): everything stays, the epoch included, but the server run is a new one. Returns
    /// the (dead) epoch the store holds now.
    async fn restart_keeping_everything(&self) -> String {
        match &self.kind {
            Kind::Memory(store) => {
                store.restart();
                store.epoch().await.unwrap().expect("an epoch")
            }
            Kind::Redis { url, prefix } => {
                // The server keeps running (its other tests too): the epoch key is rewritten
                // the way a restored snapshot of an earlier run would hold it, the same
                // generation under another run_id. (A real restart: the test below with a
                // server of its own, and tests/binary.)
                let current = self.store.epoch().await.unwrap().expect("an epoch");
                let Some(EpochState::Ready { generation, run_id }) = EpochState::parse(&current)
                else {
                    panic!("not a ready epoch: {current:?}")
                };
                let restored = format!("{generation}@{}", other_run_id(run_id));
                set_raw(url, &format!("{prefix}epoch"), &restored).await;
                restored
            }
        }
    }

    /// Loses everything, as a Redis `FLUSHDB` or a restart without persistence would.
    async fn flush(&self) {
        match &self.kind {
            Kind::Memory(store) => store.clear(),
            Kind::Redis { url, prefix } => {
                let client = ::redis::Client::open(url.as_str()).unwrap();
                let mut connection = client.get_multiplexed_async_connection().await.unwrap();
                if own_database(url) {
                    ::redis::cmd("FLUSHDB")
                        .query_async::<()>(&mut connection)
                        .await
                        .unwrap();
                } else {
                    // A shared server (ZQ_TEST_REDIS_URL, testcontainers): flush only our keys.
                    let keys: Vec<String> = ::redis::cmd("KEYS")
                        .arg(format!("{prefix}*"))
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    if !keys.is_empty() {
                        ::redis::cmd("DEL")
                            .arg(keys)
                            .query_async::<()>(&mut connection)
                            .await
                            .unwrap();
                    }
                }
            }
        }
    }
}

/// A run id that is not `run_id` (40 hex digits, like Redis's).
fn other_run_id(run_id: &str) -> String {
    let other = "0123456789abcdef0123456789abcdef01234567";
    if run_id == other {
        other.replace('0', "f")
    } else {
        other.to_string()
    }
}

/// SET with a connection of its own, past the store.
async fn set_raw(url: &str, key: &str, value: &str) {
    let client = ::redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
}

/// Whether testkit gave this test a database index of its own on a server it started (it then
/// appends `/N` to the URL); on any other server, other tests share the database.
fn own_database(url: &str) -> bool {
    std::env::var_os("ZQ_TEST_REDIS_URL").is_none()
        && url.rsplit_once('/').is_some_and(|(_, index)| {
            !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())
        })
}

/// The wall clock at millisecond precision, the precision the stores keep.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

fn ms(millis: i64) -> TimeDelta {
    TimeDelta::milliseconds(millis)
}

fn seat(id: &str) -> SeatId {
    id.parse().unwrap()
}

fn seats(ids: &[&str]) -> BTreeSet<SeatId> {
    ids.iter().map(|id| seat(id)).collect()
}

fn request(
    show_id: ShowId,
    booking_id: BookingId,
    ids: &[&str],
    expires_at: DateTime<Utc>,
) -> HoldRequest {
    HoldRequest {
        show_id,
        booking_id,
        seats: seats(ids),
        expires_at,
    }
}

fn held(booking_id: BookingId) -> Option<SeatClaim> {
    Some(SeatClaim {
        booking_id,
        sold: false,
    })
}

fn sold(booking_id: BookingId) -> Option<SeatClaim> {
    Some(SeatClaim {
        booking_id,
        sold: true,
    })
}

fn taken(ids: &[&str]) -> HoldOutcome {
    HoldOutcome::Taken(seats(ids))
}

fn due(show_id: ShowId, booking_id: BookingId, expires_at: DateTime<Utc>) -> ExpiryDue {
    ExpiryDue {
        show_id,
        booking_id,
        expires_at,
    }
}

/// The bookings with an expiry entry, in index order (all of them: far in the future).
async fn expiry_bookings(store: &dyn HoldStore) -> Vec<BookingId> {
    store
        .due_expiries(now() + TimeDelta::days(365), 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.booking_id)
        .collect()
}

/// Polls until the seat is free; fails after a few seconds.
async fn wait_until_free(store: &dyn HoldStore, show_id: ShowId, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.seat(show_id, &seat(id)).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "seat {id} was still taken 5 s later"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_request_with_one_taken_seat_holds_none(backend: Backend) {
    let (fixture, epoch) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let (show, a, b) = (ShowId::new(), BookingId::new(), BookingId::new());
    let t = now();

    let first = store
        .hold(
            &epoch,
            &[request(show, a, &["A-1-1", "A-1-2"], t + ms(60_000))],
            t,
        )
        .await
        .unwrap();
    assert_eq!(first, vec![HoldOutcome::Held]);

    let second = store
        .hold(
            &epoch,
            &[request(
                show,
                b,
                &["A-1-2", "A-1-3", "A-1-4"],
                t + ms(60_000),
            )],
            t,
        )
        .await
        .unwrap();
    assert_eq!(second, vec![taken(&["A-1-2"])]);
    // Nothing of the refused request was written: no seat, no expiry entry.
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), held(a));
    assert_eq!(store.seat(show, &seat("A-1-3")).await.unwrap(), None);
    assert_eq!(store.seat(show, &seat("A-1-4")).await.unwrap(), None);
    assert_eq!(expiry_bookings(store).await, vec![a]);

    // The same seat of another show is another seat.
    let other_show = ShowId::new();
    let third = store
        .hold(
            &epoch,
            &[request(other_show, b, &["A-1-2"], t + ms(60_000))],
            t,
        )
        .await
        .unwrap();
    assert_eq!(third, vec![HoldOutcome::Held]);
}

async fn an_earlier_request_in_a_batch_wins_a_seat(backend: Backend) {
    let (fixture, epoch) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let show = ShowId::new();
    let (a, b, c) = (BookingId::new(), BookingId::new(), BookingId::new());
    let t = now();
    let expires = t + ms(60_000);

    let outcomes = store
        .hold(
            &epoch,
            &[
                request(show, a, &["A-1-1", "A-1-2"], expires),
                request(show, b, &["A-1-2", "A-1-3"], expires),
                // Free: the refused request before it took nothing.
                request(show, c, &["A-1-3"], expires),
            ],
            t,
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![HoldOutcome::Held, taken(&["A-1-2"]), HoldOutcome::Held]
    );
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), held(a));
    assert_eq!(store.seat(show, &seat("A-1-3")).await.unwrap(), held(c));

    // The other order gives the other answer: the order of the batch decides.
    let show = ShowId::new();
    let outcomes = store
        .hold(
            &epoch,
            &[
                request(show, b, &["A-1-2", "A-1-3"], expires),
                request(show, a, &["A-1-1", "A-1-2"], expires),
            ],
            t,
        )
        .await
        .unwrap();
    assert_eq!(outcomes, vec![HoldOutcome::Held, taken(&["A-1-2"])]);
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), None);
}

async fn retaking_an_own_hold_succeeds_and_refreshes_its_ttl(backend: Backend) {
    let fixture = Fixture::new(backend, Duration::from_millis(1_000)).await;
    let store = fixture.store.as_ref();
    let epoch = fixture.rebuild(&HoldSnapshot::default(), now()).await;
    let show = ShowId::new();
    let (a, control) = (BookingId::new(), BookingId::new());

    // Both with a TTL of about 300 ms (expires_at + 1 s grace - now), taken in one call.
    let t = now();
    let short = t - ms(700);
    let outcomes = store
        .hold(
            &epoch,
            &[
                request(show, a, &["A-1-1"], short),
                request(show, control, &["B-1-1"], short),
            ],
            t,
        )
        .await
        .unwrap();
    assert_eq!(outcomes, vec![HoldOutcome::Held, HoldOutcome::Held]);

    // A re-take (a redelivered message), even with more seats, succeeds and renews the TTL.
    let t = now();
    let retake = store
        .hold(
            &epoch,
            &[request(show, a, &["A-1-1", "A-1-2"], t + ms(30_000))],
            t,
        )
        .await
        .unwrap();
    assert_eq!(retake, vec![HoldOutcome::Held]);

    // Once the control hold has run out, A's first TTL has too: only the renewal keeps A-1-1.
    wait_until_free(store, show, "B-1-1").await;
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), held(a));
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), held(a));
}

async fn an_own_sold_seat_is_free_for_its_booking_only(backend: Backend) {
    let (fixture, epoch) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let (show, a, b) = (ShowId::new(), BookingId::new(), BookingId::new());
    let t = now();
    let expires = t + ms(60_000);

    store
        .hold(&epoch, &[request(show, a, &["A-1-1", "A-1-2"], expires)], t)
        .await
        .unwrap();
    store
        .mark_sold(&epoch, show, a, &seats(&["A-1-1", "A-1-2"]))
        .await
        .unwrap();
    assert!(expiry_bookings(store).await.is_empty());

    // The sold booking's own request (a redelivery) is fine and changes nothing: still sold,
    // and no expiry entry comes back for a booking that has nothing left to expire.
    let again = store
        .hold(&epoch, &[request(show, a, &["A-1-1", "A-1-2"], expires)], t)
        .await
        .unwrap();
    assert_eq!(again, vec![HoldOutcome::Held]);
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), sold(a));
    assert!(expiry_bookings(store).await.is_empty());

    // Sold plus a free seat: the free one is held, the sold one stays sold.
    let mixed = store
        .hold(&epoch, &[request(show, a, &["A-1-2", "A-1-3"], expires)], t)
        .await
        .unwrap();
    assert_eq!(mixed, vec![HoldOutcome::Held]);
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), sold(a));
    assert_eq!(store.seat(show, &seat("A-1-3")).await.unwrap(), held(a));

    let other = store
        .hold(
            &epoch,
            &[request(show, b, &["A-1-1", "A-1-3", "A-1-4"], expires)],
            t,
        )
        .await
        .unwrap();
    assert_eq!(other, vec![taken(&["A-1-1", "A-1-3"])]);
    assert_eq!(store.seat(show, &seat("A-1-4")).await.unwrap(), None);
}

async fn release_frees_only_the_bookings_own_holds(backend: Backend) {
    let (fixture, epoch) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let (show, a, b) = (ShowId::new(), BookingId::new(), BookingId::new());
    let t = now();
    let expires = t + ms(60_000);
    store
        .hold(
            &epoch,
            &[
                request(show, a, &["A-1-1", "A-1-2"], expires),
                request(show, b, &["A-1-3"], expires),
            ],
            t,
        )
        .await
        .unwrap();
    store
        .mark_sold(&epoch, show, a, &seats(&["A-1-2"]))
        .await
        .unwrap();
    // mark_sold dropped A's entry; give A one again to see release drop it.
    store
        .hold(&epoch, &[request(show, a, &["A-1-1"], expires)], t)
        .await
        .unwrap();
    assert_eq!(expiry_bookings(store).await.len(), 2);

    let everything = seats(&["A-1-1", "A-1-2", "A-1-3"]);
    store.release(&epoch, show, a, &everything).await.unwrap();
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), None);
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), sold(a));
    assert_eq!(store.seat(show, &seat("A-1-3")).await.unwrap(), held(b));
    assert_eq!(expiry_bookings(store).await, vec![b]);

    // Idempotent.
    store.release(&epoch, show, a, &everything).await.unwrap();
    assert_eq!(store.seat(show, &seat("A-1-3")).await.unwrap(), held(b));
    assert_eq!(expiry_bookings(store).await, vec![b]);

    // The freed seat can be held by another booking.
    let outcome = store
        .hold(&epoch, &[request(show, b, &["A-1-1"], expires)], t)
        .await
        .unwrap();
    assert_eq!(outcome, vec![HoldOutcome::Held]);
}

async fn mark_sold_overwrites_and_unmark_sold_removes_only_own_markers(backend: Backend) {
    let (fixture, epoch) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let (show, a, b) = (ShowId::new(), BookingId::new(), BookingId::new());
    let t = now();
    let expires = t + ms(60_000);
    store
        .hold(
            &epoch,
            &[
                request(show, b, &["A-1-1"], expires),
                request(show, a, &["A-1-2"], expires),
            ],
            t,
        )
        .await
        .unwrap();

    // The event store decided: A bought A-1-1 although B's hold is on it in Redis.
    store
        .mark_sold(&epoch, show, a, &seats(&["A-1-1", "A-1-3"]))
        .await
        .unwrap();
    store
        .mark_sold(&epoch, show, a, &seats(&["A-1-1", "A-1-3"]))
        .await
        .unwrap();
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), sold(a));
    assert_eq!(store.seat(show, &seat("A-1-3")).await.unwrap(), sold(a));
    assert_eq!(expiry_bookings(store).await, vec![b]);

    store
        .unmark_sold(&epoch, show, b, &seats(&["A-1-1"]))
        .await
        .unwrap();
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), sold(a));
    // A hold is not a sold marker: unmark_sold leaves it.
    store
        .unmark_sold(&epoch, show, a, &seats(&["A-1-2"]))
        .await
        .unwrap();
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), held(a));

    let sold_seats = seats(&["A-1-1", "A-1-3"]);
    store
        .unmark_sold(&epoch, show, a, &sold_seats)
        .await
        .unwrap();
    store
        .unmark_sold(&epoch, show, a, &sold_seats)
        .await
        .unwrap();
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), None);
    assert_eq!(store.seat(show, &seat("A-1-3")).await.unwrap(), None);
}

async fn sold_markers_outlive_the_ttl_while_holds_vanish(backend: Backend) {
    let fixture = Fixture::new(backend, Duration::from_millis(1_000)).await;
    let store = fixture.store.as_ref();
    let epoch = fixture.rebuild(&HoldSnapshot::default(), now()).await;
    let (show, a, b) = (ShowId::new(), BookingId::new(), BookingId::new());

    // expires_at + grace - now = -700 ms + 1 s: a TTL of about 300 ms.
    let t = now();
    let outcome = store
        .hold(
            &epoch,
            &[request(show, a, &["A-1-1", "A-1-2"], t - ms(700))],
            t,
        )
        .await
        .unwrap();
    assert_eq!(outcome, vec![HoldOutcome::Held]);
    store
        .mark_sold(&epoch, show, a, &seats(&["A-1-2"]))
        .await
        .unwrap();
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), held(a));

    wait_until_free(store, show, "A-1-1").await;
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), sold(a));

    // A run-out hold no longer keeps others away; a sold seat does.
    let t = now();
    let outcome = store
        .hold(
            &epoch,
            &[request(show, b, &["A-1-1", "A-1-2"], t + ms(60_000))],
            t,
        )
        .await
        .unwrap();
    assert_eq!(outcome, vec![taken(&["A-1-2"])]);
    let outcome = store
        .hold(&epoch, &[request(show, b, &["A-1-1"], t + ms(60_000))], t)
        .await
        .unwrap();
    assert_eq!(outcome, vec![HoldOutcome::Held]);
}

async fn due_expiries_are_the_due_ones_earliest_first_and_never_moved_later(backend: Backend) {
    let (fixture, epoch) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let (show, other_show) = (ShowId::new(), ShowId::new());
    let (a, b, c, d) = (
        BookingId::new(),
        BookingId::new(),
        BookingId::new(),
        BookingId::new(),
    );
    let t = now();
    store
        .hold(
            &epoch,
            &[
                request(show, a, &["A-1-1"], t + ms(1_000)),
                request(show, b, &["A-1-2"], t + ms(3_000)),
                request(other_show, c, &["A-1-1"], t + ms(2_000)),
                request(show, d, &["A-1-4"], t + ms(10_000)),
            ],
            t,
        )
        .await
        .unwrap();

    assert_eq!(store.due_expiries(t, 10).await.unwrap(), vec![]);
    assert_eq!(store.due_expiries(t + ms(999), 10).await.unwrap(), vec![]);
    // At `expires_at` exactly, the entry is due.
    assert_eq!(
        store.due_expiries(t + ms(1_000), 10).await.unwrap(),
        vec![due(show, a, t + ms(1_000))]
    );
    let all_due = vec![
        due(show, a, t + ms(1_000)),
        due(other_show, c, t + ms(2_000)),
        due(show, b, t + ms(3_000)),
    ];
    assert_eq!(
        store.due_expiries(t + ms(3_000), 10).await.unwrap(),
        all_due
    );
    assert_eq!(
        store.due_expiries(t + ms(5_000), 2).await.unwrap(),
        all_due[..2].to_vec()
    );
    assert_eq!(store.due_expiries(t + ms(5_000), 0).await.unwrap(), vec![]);

    // A re-take with a later expires_at keeps the entry where it was.
    let retake = store
        .hold(&epoch, &[request(show, a, &["A-1-1"], t + ms(8_000))], t)
        .await
        .unwrap();
    assert_eq!(retake, vec![HoldOutcome::Held]);
    assert_eq!(
        store.due_expiries(t + ms(3_000), 10).await.unwrap(),
        all_due
    );

    // Due entries stay until they are dealt with: polling is not consuming.
    assert_eq!(
        store.due_expiries(t + ms(3_000), 10).await.unwrap(),
        all_due
    );
}

async fn forget_expiry_drops_only_that_entry(backend: Backend) {
    let (fixture, epoch) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let (show, a, b) = (ShowId::new(), BookingId::new(), BookingId::new());
    let t = now();
    store
        .hold(
            &epoch,
            &[
                request(show, a, &["A-1-1"], t + ms(1_000)),
                request(show, b, &["A-1-2"], t + ms(2_000)),
            ],
            t,
        )
        .await
        .unwrap();

    store.forget_expiry(show, a).await.unwrap();
    store.forget_expiry(show, a).await.unwrap();
    // Another show's booking of the same id is another entry: nothing to forget there.
    store.forget_expiry(ShowId::new(), b).await.unwrap();
    assert_eq!(
        store.due_expiries(t + ms(5_000), 10).await.unwrap(),
        vec![due(show, b, t + ms(2_000))]
    );
    // Forgetting the entry does not free the seats.
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), held(a));
}

async fn holding_needs_the_current_epoch(backend: Backend) {
    let fixture = Fixture::new(backend, DEFAULT_GRACE).await;
    let store = fixture.store.as_ref();
    let (show, a) = (ShowId::new(), BookingId::new());
    let t = now();
    let batch = [request(show, a, &["A-1-1"], t + ms(60_000))];

    // A fresh store has no epoch, so every hold fails, whatever epoch it names.
    assert_eq!(store.epoch().await.unwrap(), None);
    assert_eq!(
        store.hold("", &batch, t).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(
        store.hold("made-up", &batch, t).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), None);
    assert!(expiry_bookings(store).await.is_empty());

    // A rebuild without its fence writes nothing and sets no epoch.
    let generation = fixture.next_generation();
    let snapshot = HoldSnapshot {
        sold: vec![(show, seat("A-1-5"), a)],
        held: vec![],
    };
    assert_eq!(
        store.rebuild(generation, &snapshot, t).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(store.epoch().await.unwrap(), None);
    assert_eq!(store.seat(show, &seat("A-1-5")).await.unwrap(), None);

    store.fence(generation).await.unwrap();
    let first = store
        .rebuild(generation, &HoldSnapshot::default(), t)
        .await
        .unwrap();
    // `<generation>@<run id>`.
    assert!(
        matches!(
            EpochState::parse(&first),
            Some(EpochState::Ready { generation: g, run_id }) if g == generation && !run_id.is_empty()
        ),
        "epoch {first:?}"
    );
    assert_eq!(
        store.epoch().await.unwrap().as_deref(),
        Some(first.as_str())
    );
    assert_eq!(
        store.hold("made-up", &batch, t).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(
        store.hold(&first, &batch, t).await,
        Ok(vec![HoldOutcome::Held])
    );

    // Another process rebuilt: the old epoch is refused, and nothing of the batch is held.
    let second = fixture.rebuild(&HoldSnapshot::default(), t).await;
    assert_ne!(first, second);
    let b = BookingId::new();
    assert_eq!(
        store
            .hold(&first, &[request(show, b, &["A-1-9"], t + ms(60_000))], t)
            .await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(store.seat(show, &seat("A-1-9")).await.unwrap(), None);
    // Adopting the new epoch works.
    let adopted = store.epoch().await.unwrap().unwrap();
    assert_eq!(
        store
            .hold(&adopted, &[request(show, b, &["A-1-9"], t + ms(60_000))], t)
            .await,
        Ok(vec![HoldOutcome::Held])
    );
}

async fn rebuild_restores_holds_sold_seats_and_expiries(backend: Backend) {
    let fixture = Fixture::new(backend, DEFAULT_GRACE).await;
    let store = fixture.store.as_ref();
    let show = ShowId::new();
    let (sold_to, holder, run_out, loser, newcomer) = (
        BookingId::new(),
        BookingId::new(),
        BookingId::new(),
        BookingId::new(),
        BookingId::new(),
    );
    let t = now();
    let snapshot = HoldSnapshot {
        sold: vec![(show, seat("A-1-1"), sold_to)],
        held: vec![
            request(show, holder, &["A-1-2", "A-1-3"], t + ms(10_000)),
            // Past expires_at + grace already: no seat, but still an expiry to decide.
            request(show, run_out, &["A-1-4"], t - ms(120_000)),
            // Also named sold (an inconsistent snapshot): the sale wins.
            request(show, loser, &["A-1-1"], t + ms(20_000)),
        ],
    };
    let epoch = fixture.rebuild(&snapshot, t).await;
    assert_eq!(store.epoch().await.unwrap(), Some(epoch.clone()));

    assert_eq!(
        store.seat(show, &seat("A-1-1")).await.unwrap(),
        sold(sold_to)
    );
    assert_eq!(
        store.seat(show, &seat("A-1-2")).await.unwrap(),
        held(holder)
    );
    assert_eq!(
        store.seat(show, &seat("A-1-3")).await.unwrap(),
        held(holder)
    );
    assert_eq!(store.seat(show, &seat("A-1-4")).await.unwrap(), None);
    assert_eq!(
        store.due_expiries(t + ms(30_000), 10).await.unwrap(),
        vec![
            due(show, run_out, t - ms(120_000)),
            due(show, holder, t + ms(10_000)),
            due(show, loser, t + ms(20_000)),
        ]
    );

    let outcomes = store
        .hold(
            &epoch,
            &[
                request(show, newcomer, &["A-1-1"], t + ms(60_000)),
                request(show, newcomer, &["A-1-3"], t + ms(60_000)),
                request(show, holder, &["A-1-2", "A-1-3"], t + ms(10_000)),
                request(show, newcomer, &["A-1-4"], t + ms(60_000)),
            ],
            t,
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            taken(&["A-1-1"]),
            taken(&["A-1-3"]),
            HoldOutcome::Held,
            HoldOutcome::Held,
        ]
    );
}

/// A store restored from an older file holds a sold marker of a sale since cancelled, a hold
/// since released and its expiry entry: the rebuild from the log (which has neither) must drop
/// them, or the cancelled sale's seat stays blocked for good.
async fn a_rebuild_keeps_only_what_the_snapshot_holds(backend: Backend) {
    let (fixture, epoch) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let show = ShowId::new();
    let (cancelled, released) = (BookingId::new(), BookingId::new());
    let t = now();
    store
        .hold(
            &epoch,
            &[
                request(show, cancelled, &["A-1-1"], t + ms(60_000)),
                request(show, released, &["A-1-2"], t + ms(60_000)),
            ],
            t,
        )
        .await
        .unwrap();
    store
        .mark_sold(&epoch, show, cancelled, &seats(&["A-1-1"]))
        .await
        .unwrap();
    // The restart brings all of it back; the log says both seats are free.
    fixture.restart_keeping_everything().await;
    fixture.rebuild(&HoldSnapshot::default(), t).await;
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), None);
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), None);
    assert_eq!(
        store.due_expiries(t + ms(120_000), 10).await.unwrap(),
        vec![]
    );
}

async fn a_flush_is_noticed_by_the_next_hold(backend: Backend) {
    let (fixture, epoch) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let (show, a, b) = (ShowId::new(), BookingId::new(), BookingId::new());
    let t = now();
    let a_request = request(show, a, &["A-1-1"], t + ms(60_000));
    store
        .hold(&epoch, std::slice::from_ref(&a_request), t)
        .await
        .unwrap();
    store
        .mark_sold(&epoch, show, a, &seats(&["A-1-2"]))
        .await
        .unwrap();

    fixture.flush().await;

    // Everything is gone, A's hold and sale included: a hold now would wrongly succeed.
    assert_eq!(store.epoch().await.unwrap(), None);
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), None);
    let b_batch = [request(show, b, &["A-1-1", "A-1-2"], t + ms(60_000))];
    assert_eq!(
        store.hold(&epoch, &b_batch, t).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), None);

    // Rebuilt from the event store's view, the store refuses B again.
    let snapshot = HoldSnapshot {
        sold: vec![(show, seat("A-1-2"), a)],
        held: vec![a_request],
    };
    let rebuilt = fixture.rebuild(&snapshot, now()).await;
    assert_ne!(rebuilt, epoch);
    assert_eq!(
        store.hold(&rebuilt, &b_batch, t).await,
        Ok(vec![taken(&["A-1-1", "A-1-2"])])
    );
}

/// The seats of one show as a store sees them, and its expiry entries: what a refused write must
/// leave as it was.
async fn picture(
    store: &dyn HoldStore,
    show: ShowId,
    ids: &[&str],
) -> (Vec<Option<SeatClaim>>, Vec<BookingId>) {
    let mut claims = Vec::new();
    for id in ids {
        claims.push(store.seat(show, &seat(id)).await.unwrap());
    }
    (claims, expiry_bookings(store).await)
}

/// Every write names `epoch` and is refused with `EpochChanged`, changing nothing.
async fn every_write_is_refused(store: &dyn HoldStore, epoch: &str, show: ShowId) {
    let ids = ["A-1-1", "A-1-2", "A-1-3", "A-1-4"];
    let before = picture(store, show, &ids).await;
    let (a, c) = (
        // The bookings of the tests below hold and own A-1-1 .. A-1-3; `c` is new.
        before.0[0].as_ref().map(|claim| claim.booking_id),
        BookingId::new(),
    );
    let a = a.expect("A-1-1 is held");
    let t = now();
    let everything = seats(&ids);
    assert_eq!(
        store
            .hold(epoch, &[request(show, c, &["A-1-4"], t + ms(60_000))], t)
            .await,
        Err(HoldError::EpochChanged),
        "hold under {epoch:?}"
    );
    assert_eq!(
        store.release(epoch, show, a, &everything).await,
        Err(HoldError::EpochChanged),
        "release under {epoch:?}"
    );
    assert_eq!(
        store.mark_sold(epoch, show, c, &everything).await,
        Err(HoldError::EpochChanged),
        "mark_sold under {epoch:?}"
    );
    assert_eq!(
        store.unmark_sold(epoch, show, a, &everything).await,
        Err(HoldError::EpochChanged),
        "unmark_sold under {epoch:?}"
    );
    assert_eq!(
        store.check_epoch(epoch).await,
        Err(HoldError::EpochChanged),
        "check_epoch of {epoch:?}"
    );
    assert_eq!(picture(store, show, &ids).await, before);
}

/// Under `epoch`: A holds A-1-1 and owns A-1-2, B holds A-1-3. Returns (A, B) and the
/// snapshot the log would give of that (what a rebuild that loses nothing writes back).
async fn seed(
    store: &dyn HoldStore,
    epoch: &str,
    show: ShowId,
) -> (BookingId, BookingId, HoldSnapshot) {
    let (a, b) = (BookingId::new(), BookingId::new());
    let t = now();
    let expires = t + ms(60_000);
    let outcomes = store
        .hold(
            epoch,
            &[
                request(show, a, &["A-1-1", "A-1-2"], expires),
                request(show, b, &["A-1-3"], expires),
            ],
            t,
        )
        .await
        .unwrap();
    assert_eq!(outcomes, vec![HoldOutcome::Held, HoldOutcome::Held]);
    store
        .mark_sold(epoch, show, a, &seats(&["A-1-2"]))
        .await
        .unwrap();
    // mark_sold dropped A's entry; give it one again, for release to have one to drop.
    store
        .hold(epoch, &[request(show, a, &["A-1-1"], expires)], t)
        .await
        .unwrap();
    let snapshot = HoldSnapshot {
        sold: vec![(show, seat("A-1-2"), a)],
        held: vec![
            request(show, a, &["A-1-1"], expires),
            request(show, b, &["A-1-3"], expires),
        ],
    };
    (a, b, snapshot)
}

async fn writes_with_a_stale_epoch_fail_and_change_nothing(backend: Backend) {
    let (fixture, old) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let show = ShowId::new();
    let (a, b, seeded) = seed(store, &old, show).await;
    assert_eq!(store.check_epoch(&old).await, Ok(()));

    // Another process rebuilt (from a log that has what the store had: nothing was lost).
    let current = fixture.rebuild(&seeded, now()).await;
    assert_ne!(current, old);
    every_write_is_refused(store, &old, show).await;
    // Made-up epochs, a fence marker and a ready epoch of the right generation on another run
    // are no better.
    let Some(EpochState::Ready { generation, run_id }) = EpochState::parse(&current) else {
        panic!("not a ready epoch: {current:?}")
    };
    for epoch in [
        String::new(),
        "made-up".to_string(),
        format!("rebuilding:{generation}"),
        format!("{generation}@{}", other_run_id(run_id)),
        format!("{generation}@"),
        format!("@{run_id}"),
    ] {
        every_write_is_refused(store, &epoch, show).await;
    }

    // Under the current epoch every write works again.
    assert_eq!(store.check_epoch(&current).await, Ok(()));
    store
        .release(&current, show, a, &seats(&["A-1-1"]))
        .await
        .unwrap();
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), None);
    store
        .mark_sold(&current, show, b, &seats(&["A-1-3"]))
        .await
        .unwrap();
    assert_eq!(store.seat(show, &seat("A-1-3")).await.unwrap(), sold(b));
    store
        .unmark_sold(&current, show, a, &seats(&["A-1-2"]))
        .await
        .unwrap();
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), None);
    assert!(expiry_bookings(store).await.is_empty());
}

async fn a_fence_stops_every_write_until_its_rebuild_and_never_goes_back(backend: Backend) {
    let (fixture, old) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let show = ShowId::new();
    let (a, _, seeded) = seed(store, &old, show).await;

    let generation = fixture.next_generation();
    store.fence(generation).await.unwrap();
    let marker = store.epoch().await.unwrap().expect("the fence marker");
    assert_eq!(rebuild_in_progress(&marker), Some(generation));
    assert_eq!(rebuild_in_progress(&old), None);
    // Nobody writes into a store being rebuilt, under the old epoch or the marker.
    every_write_is_refused(store, &old, show).await;
    every_write_is_refused(store, &marker, show).await;
    // Fencing again under the same generation changes nothing; an older one is refused.
    store.fence(generation).await.unwrap();
    assert_eq!(
        store.fence(generation - 1).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(store.epoch().await.unwrap(), Some(marker.clone()));

    // The rebuild ends the fence with an epoch of its generation that writes work under.
    let mut snapshot = seeded;
    snapshot.sold.push((show, seat("A-1-9"), a));
    let epoch = store.rebuild(generation, &snapshot, now()).await.unwrap();
    assert!(
        matches!(EpochState::parse(&epoch), Some(EpochState::Ready { generation: g, .. }) if g == generation),
        "epoch {epoch:?}"
    );
    assert_eq!(store.epoch().await.unwrap(), Some(epoch.clone()));
    assert_eq!(store.seat(show, &seat("A-1-9")).await.unwrap(), sold(a));
    let (t, c) = (now(), BookingId::new());
    assert_eq!(
        store
            .hold(&epoch, &[request(show, c, &["A-1-4"], t + ms(60_000))], t)
            .await,
        Ok(vec![HoldOutcome::Held])
    );
    store
        .release(&epoch, show, c, &seats(&["A-1-4"]))
        .await
        .unwrap();

    // Never back: not to an older generation, not to this one again, not a second rebuild.
    for older in [generation - 1, generation] {
        assert_eq!(store.fence(older).await, Err(HoldError::EpochChanged));
    }
    assert_eq!(
        store.rebuild(generation, &snapshot, now()).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(store.epoch().await.unwrap(), Some(epoch.clone()));
    assert_eq!(store.check_epoch(&epoch).await, Ok(()));

    // A newer fence overrides the marker of a rebuild still in progress (a crashed rebuilder).
    let (stuck, next) = (fixture.next_generation(), fixture.next_generation());
    store.fence(stuck).await.unwrap();
    store.fence(next).await.unwrap();
    assert_eq!(
        store
            .epoch()
            .await
            .unwrap()
            .as_deref()
            .and_then(rebuild_in_progress),
        Some(next)
    );
    assert_eq!(store.fence(stuck).await, Err(HoldError::EpochChanged));
    every_write_is_refused(store, &epoch, show).await;
}

async fn an_overtaken_rebuild_writes_nothing(backend: Backend) {
    let fixture = Fixture::new(backend, DEFAULT_GRACE).await;
    let store = fixture.store.as_ref();
    let show = ShowId::new();
    let (a, b) = (BookingId::new(), BookingId::new());
    let t = now();
    // A read the log early: A-1-1 sold to A, A-1-2 held by A. By the time B read it, the sale
    // was undone and B had bought A-1-2.
    let a_snapshot = HoldSnapshot {
        sold: vec![(show, seat("A-1-1"), a)],
        held: vec![request(show, a, &["A-1-2"], t + ms(60_000))],
    };
    let b_snapshot = HoldSnapshot {
        sold: vec![(show, seat("A-1-2"), b)],
        held: vec![],
    };

    let (a_generation, b_generation) = (fixture.next_generation(), fixture.next_generation());
    store.fence(a_generation).await.unwrap();
    store.fence(b_generation).await.unwrap();
    assert_eq!(
        store.rebuild(a_generation, &a_snapshot, t).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), None);
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), None);
    assert!(expiry_bookings(store).await.is_empty());
    assert_eq!(
        store
            .epoch()
            .await
            .unwrap()
            .as_deref()
            .and_then(rebuild_in_progress),
        Some(b_generation)
    );

    let epoch = store.rebuild(b_generation, &b_snapshot, t).await.unwrap();
    // A, late, can neither fence again nor rebuild over B's store.
    assert_eq!(
        store.fence(a_generation).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(
        store.rebuild(a_generation, &a_snapshot, t).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), None);
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), sold(b));
    assert!(expiry_bookings(store).await.is_empty());
    assert_eq!(store.epoch().await.unwrap(), Some(epoch));
}

async fn a_restart_that_brings_the_old_epoch_back_is_noticed_by_every_write(backend: Backend) {
    let (fixture, epoch) = Fixture::ready(backend).await;
    let store = fixture.store.as_ref();
    let show = ShowId::new();
    seed(store, &epoch, show).await;

    let restored = fixture.restart_keeping_everything().await;
    // The store holds this very epoch, and yet it is dead: every write is refused.
    assert_eq!(store.epoch().await.unwrap(), Some(restored.clone()));
    every_write_is_refused(store, &restored, show).await;
    every_write_is_refused(store, &epoch, show).await;

    // A fence takes over the dead epoch, even under the same generation; the rebuild's epoch
    // names the new run.
    let Some(EpochState::Ready { generation, .. }) = EpochState::parse(&restored) else {
        panic!("not a ready epoch: {restored:?}")
    };
    store.fence(generation).await.unwrap();
    let rebuilt = store
        .rebuild(generation, &HoldSnapshot::default(), now())
        .await
        .unwrap();
    assert_ne!(rebuilt, restored);
    assert_eq!(store.check_epoch(&rebuilt).await, Ok(()));
}

/// The fence script's rules about run ids, with epoch values written past the store: a dead
/// epoch (another run) never stops a fence, whatever its generation; a live one of a greater
/// generation does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_fence_ignores_the_generation_of_a_dead_epoch() {
    let (fixture, epoch) = Fixture::ready(Backend::Redis).await;
    let Kind::Redis { url, prefix } = &fixture.kind else {
        unreachable!("a Redis fixture")
    };
    let store = fixture.store.as_ref();
    let Some(EpochState::Ready { generation, run_id }) = EpochState::parse(&epoch) else {
        panic!("not a ready epoch: {epoch:?}")
    };
    let key = format!("{prefix}epoch");

    let live_newer = format!("{}@{run_id}", generation + 100);
    set_raw(url, &key, &live_newer).await;
    assert_eq!(
        store.fence(generation + 1).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(store.epoch().await.unwrap(), Some(live_newer.clone()));
    assert_eq!(store.check_epoch(&live_newer).await, Ok(()));

    let dead_newer = format!("{}@{}", generation + 100, other_run_id(run_id));
    set_raw(url, &key, &dead_newer).await;
    assert_eq!(
        store.check_epoch(&dead_newer).await,
        Err(HoldError::EpochChanged)
    );
    store.fence(generation + 1).await.unwrap();
    let rebuilt = store
        .rebuild(generation + 1, &HoldSnapshot::default(), now())
        .await
        .unwrap();
    assert_eq!(rebuilt, format!("{}@{run_id}", generation + 1));
}

/// A real restart from an RDB snapshot: the epoch key comes back, the holds made after the
/// snapshot do not, and the server's run_id is new. The hold script notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_restart_from_an_older_snapshot_is_noticed_by_the_hold_script() {
    let server = testkit::own_redis(testkit::RedisPersistence::Rdb);
    let store = RedisHoldStore::connect(&server.url, DEFAULT_GRACE)
        .await
        .expect("connect to Redis");
    store.fence(1).await.unwrap();
    let epoch = store
        .rebuild(1, &HoldSnapshot::default(), now())
        .await
        .unwrap();
    let run_id = server.run_id().unwrap();
    assert_eq!(epoch, format!("1@{run_id}"));
    let show = ShowId::new();
    let (a, b, c) = (BookingId::new(), BookingId::new(), BookingId::new());
    let t = now();
    store
        .hold(&epoch, &[request(show, a, &["A-1-1"], t + ms(60_000))], t)
        .await
        .unwrap();
    server.save().unwrap();
    // Lost with the restart: B's hold, made after the snapshot.
    store
        .hold(&epoch, &[request(show, b, &["A-1-2"], t + ms(60_000))], t)
        .await
        .unwrap();

    server.restart_from_snapshot().unwrap();
    assert_ne!(server.run_id().unwrap(), run_id);
    // The connection comes back on its own; a first call may still meet the old one.
    let restored = until_available(|| store.epoch()).await;
    assert_eq!(
        restored,
        Some(epoch.clone()),
        "the snapshot brings the epoch back"
    );
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), None);
    // Without the run_id check, C would now get B's seat.
    let c_batch = [request(show, c, &["A-1-2"], t + ms(60_000))];
    assert_eq!(
        store.hold(&epoch, &c_batch, t).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(
        store.release(&epoch, show, a, &seats(&["A-1-1"])).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(
        store.mark_sold(&epoch, show, c, &seats(&["A-1-2"])).await,
        Err(HoldError::EpochChanged)
    );
    assert_eq!(store.seat(show, &seat("A-1-1")).await.unwrap(), held(a));
    assert_eq!(store.seat(show, &seat("A-1-2")).await.unwrap(), None);

    // Rebuilt (B's hold is in the log), C is refused.
    store.fence(2).await.unwrap();
    let snapshot = HoldSnapshot {
        sold: vec![],
        held: vec![
            request(show, a, &["A-1-1"], t + ms(60_000)),
            request(show, b, &["A-1-2"], t + ms(60_000)),
        ],
    };
    let rebuilt = store.rebuild(2, &snapshot, now()).await.unwrap();
    assert_eq!(rebuilt, format!("2@{}", server.run_id().unwrap()));
    assert_eq!(
        store.hold(&rebuilt, &c_batch, t).await,
        Ok(vec![taken(&["A-1-2"])])
    );
}

/// Retries `call` while the store is unavailable (a connection being re-established), for up to
/// 10 s.
async fn until_available<T, F, Fut>(call: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, HoldError>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(HoldError::Unavailable(reason)) if Instant::now() < deadline => {
                eprintln!("the store is not back yet: {reason}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{error}"),
        }
    }
}

/// A whole partition's batch is one script call, however long: counted on the server with
/// MONITOR, which shows every command a client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_a_batch_of_1000_requests_in_one_call_also_after_a_script_flush() {
    let (fixture, epoch) = Fixture::ready(Backend::Redis).await;
    let Kind::Redis { url, prefix } = &fixture.kind else {
        unreachable!("a Redis fixture")
    };
    let store = fixture.store.as_ref();
    let show = ShowId::new();
    let t = now();
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();

    // An empty script cache (as after a server restart) is no failure: the script is loaded
    // again. (Server-wide; the other tests only reload their scripts, and none counts calls.)
    ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let warm_up = store
        .hold(
            &epoch,
            &[request(show, BookingId::new(), &["W-1-1"], t + ms(60_000))],
            t,
        )
        .await;
    assert_eq!(warm_up, Ok(vec![HoldOutcome::Held]));

    // The script is loaded now, so the batch below should be exactly one EVALSHA.
    let mut monitor = client
        .get_async_monitor()
        .await
        .unwrap()
        .into_on_message::<String>();

    let bookings: Vec<BookingId> = (0..1_000).map(|_| BookingId::new()).collect();
    let mut batch: Vec<HoldRequest> = bookings
        .iter()
        .enumerate()
        .map(|(i, booking)| HoldRequest {
            show_id: show,
            booking_id: *booking,
            seats: [SeatId::new("A", 1, i as u32 + 1).unwrap()].into(),
            expires_at: t + ms(60_000),
        })
        .collect();
    // The last request also wants the first request's seat.
    batch[999].seats.insert(seat("A-1-1"));
    let outcomes = store.hold(&epoch, &batch, t).await.unwrap();
    assert_eq!(outcomes.len(), 1_000);
    assert!(outcomes[..999].iter().all(|o| *o == HoldOutcome::Held));
    assert_eq!(outcomes[999], taken(&["A-1-1"]));
    assert_eq!(
        store.seat(show, &seat("A-1-999")).await.unwrap(),
        held(bookings[998])
    );
    assert_eq!(store.seat(show, &seat("A-1-1000")).await.unwrap(), None);

    // A marker command after the batch: once MONITOR shows it, it has shown the batch too.
    let marker = format!("{prefix}monitor-marker");
    ::redis::cmd("GET")
        .arg(&marker)
        .query_async::<Option<String>>(&mut connection)
        .await
        .unwrap();
    let mut script_calls = 0;
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        while let Some(line) = monitor.next().await {
            // `<time> [<db> <client>] "COMMAND" "arg" ...`; commands a script runs show as
            // `[<db> lua]` and are not calls.
            if line.contains(&marker) {
                break;
            }
            let command = line
                .split("] ")
                .nth(1)
                .unwrap_or_default()
                .to_ascii_uppercase();
            if (command.starts_with("\"EVALSHA\"") || command.starts_with("\"EVAL\""))
                && line.contains(prefix.as_str())
            {
                script_calls += 1;
            }
        }
    })
    .await
    .expect("MONITOR showed the marker command");
    assert_eq!(
        script_calls, 1,
        "the batch took {script_calls} script calls"
    );
}
