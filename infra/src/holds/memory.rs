//! The in-process hold store of the embedded default: the same semantics as the Redis store,
//! behind one mutex.
//!
//! It forgets everything when the process stops, like a Redis without persistence; its epoch is
//! `None` until the first [`rebuild`](HoldStore::rebuild), exactly like an empty Redis, so
//! seat-lock runs the same rebuild path in both modes. Its "run id" (the part after `@` of a
//! ready epoch) is a random id made when the store is created; [`MemoryHoldStore::restart`]
//! makes a new one, as a Redis restarted from a snapshot gets a new `run_id` (for tests). Fences
//! and generations work as in Redis, every check under the one mutex. Held seats carry an absolute deadline
//! (`now + TTL`, in milliseconds) that is checked lazily: against the `now` passed to
//! [`hold`](HoldStore::hold), against the wall clock elsewhere. Run-out holds are swept from the
//! map at most once a second, so that a long-running process does not keep them forever.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{BookingId, SeatId, ShowId};

use super::{
    DEFAULT_GRACE, EpochState, ExpiryDue, HoldError, HoldOutcome, HoldRequest, HoldSnapshot,
    HoldStore, SeatClaim, duration_millis, fence_marker, hold_ttl_millis, ready_epoch,
};

/// How often run-out holds are swept from the map, in milliseconds.
const SWEEP_INTERVAL_MILLIS: i64 = 1_000;

/// The in-process [`HoldStore`].
#[derive(Debug)]
pub struct MemoryHoldStore {
    grace_millis: i64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// This store's "server run": fixed at creation, renewed by [`MemoryHoldStore::restart`].
    run_id: String,
    /// A ready epoch (`<generation>@<run id>`) or a fence marker (`rebuilding:<generation>`).
    epoch: Option<String>,
    seats: HashMap<(ShowId, SeatId), Claim>,
    /// The expiry index, ordered like Redis orders the sorted set: by score (milliseconds), then
    /// by member `<show>|<booking>`. Hyphenated UUIDs compare as strings in the order of their
    /// bytes, so `(millis, show, booking)` is that order.
    expiries: BTreeSet<(i64, ShowId, BookingId)>,
    /// The score of each booking's entry in `expiries`.
    expiry_of: HashMap<(ShowId, BookingId), i64>,
    /// Wall-clock milliseconds of the next sweep of run-out holds.
    next_sweep_millis: i64,
}

impl State {
    /// An empty store (no epoch) with a fresh run id.
    fn empty() -> Self {
        State {
            run_id: uuid::Uuid::new_v4().simple().to_string(),
            epoch: None,
            seats: HashMap::new(),
            expiries: BTreeSet::new(),
            expiry_of: HashMap::new(),
            next_sweep_millis: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Held until `until_millis` (exclusive), like a key with a PX TTL.
    Held {
        booking_id: BookingId,
        until_millis: i64,
    },
    Sold(BookingId),
}

impl Claim {
    /// The claim as it stands at `now_millis`: `None` once a hold has run out.
    fn live_at(self, now_millis: i64) -> Option<Claim> {
        match self {
            Claim::Held { until_millis, .. } if until_millis <= now_millis => None,
            claim => Some(claim),
        }
    }
}

impl MemoryHoldStore {
    /// An empty store (no epoch) whose held seats outlive their `expires_at` by `grace`.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace_millis: duration_millis(grace),
            state: Mutex::new(State::empty()),
        }
    }

    /// Forgets everything, the epoch included, like a Redis `FLUSHDB` (for tests).
    pub fn clear(&self) {
        let mut state = self.lock();
        let run_id = std::mem::take(&mut state.run_id);
        *state = State {
            run_id,
            ..State::empty()
        };
    }

    /// Keeps everything, the epoch included, but takes a new run id, like a Redis restarted from
    /// a snapshot it has just saved (for tests): the old epoch is still there and is dead.
    pub fn restart(&self) {
        self.lock().run_id = uuid::Uuid::new_v4().simple().to_string();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section below only touches maps and cannot panic halfway through an
        // update, so a poisoned lock still guards consistent state: carry on with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryHoldStore {
    fn default() -> Self {
        Self::new(DEFAULT_GRACE)
    }
}

impl State {
    /// The check every write makes: `epoch` is the store's epoch and a ready one of this run.
    fn check_epoch(&self, epoch: &str) -> Result<(), HoldError> {
        let live = self.epoch.as_deref() == Some(epoch)
            && matches!(
                EpochState::parse(epoch),
                Some(EpochState::Ready { run_id, .. }) if run_id == self.run_id
            );
        if live {
            Ok(())
        } else {
            Err(HoldError::EpochChanged)
        }
    }

    fn claim(&self, show_id: ShowId, seat: &SeatId, now_millis: i64) -> Option<Claim> {
        self.seats
            .get(&(show_id, seat.clone()))
            .and_then(|claim| claim.live_at(now_millis))
    }

    fn set_expiry(&mut self, show_id: ShowId, booking_id: BookingId, millis: i64) {
        self.forget_expiry(show_id, booking_id);
        self.expiries.insert((millis, show_id, booking_id));
        self.expiry_of.insert((show_id, booking_id), millis);
    }

    /// Adds the entry, or moves an existing one earlier, never later (`ZADD ... LT`).
    fn lower_expiry(&mut self, show_id: ShowId, booking_id: BookingId, millis: i64) {
        match self.expiry_of.get(&(show_id, booking_id)) {
            Some(&current) if current <= millis => {}
            _ => self.set_expiry(show_id, booking_id, millis),
        }
    }

    fn forget_expiry(&mut self, show_id: ShowId, booking_id: BookingId) {
        if let Some(millis) = self.expiry_of.remove(&(show_id, booking_id)) {
            self.expiries.remove(&(millis, show_id, booking_id));
        }
    }

    /// Drops run-out holds, at most once per [`SWEEP_INTERVAL_MILLIS`] of wall-clock time.
    /// Uses the wall clock (not a caller's `now`) so that it never drops a hold that
    /// [`seat`](HoldStore::seat) would still report, just as Redis expires keys by its clock.
    fn sweep(&mut self) {
        let wall_millis = Utc::now().timestamp_millis();
        if wall_millis < self.next_sweep_millis {
            return;
        }
        self.seats
            .retain(|_, claim| claim.live_at(wall_millis).is_some());
        self.next_sweep_millis = wall_millis.saturating_add(SWEEP_INTERVAL_MILLIS);
    }
}

#[async_trait]
impl HoldStore for MemoryHoldStore {
    async fn epoch(&self) -> Result<Option<String>, HoldError> {
        Ok(self.lock().epoch.clone())
    }

    async fn check_epoch(&self, epoch: &str) -> Result<(), HoldError> {
        self.lock().check_epoch(epoch)
    }

    async fn fence(&self, generation: u64) -> Result<(), HoldError> {
        let mut state = self.lock();
        let marker = fence_marker(generation);
        // The generation still in force, if any: a marker's, or a ready epoch's of this run.
        let current = match state.epoch.as_deref().and_then(EpochState::parse) {
            Some(EpochState::Rebuilding { generation }) => Some((generation, false)),
            Some(EpochState::Ready { generation, run_id }) if run_id == state.run_id => {
                Some((generation, true))
            }
            _ => None,
        };
        match current {
            Some((current, _)) if current > generation => return Err(HoldError::EpochChanged),
            Some((current, true)) if current == generation => return Err(HoldError::EpochChanged),
            _ => {}
        }
        state.epoch = Some(marker);
        Ok(())
    }

    async fn rebuild(
        &self,
        generation: u64,
        snapshot: &HoldSnapshot,
        now: DateTime<Utc>,
    ) -> Result<String, HoldError> {
        let now_millis = now.timestamp_millis();
        let mut state = self.lock();
        // One critical section: the marker cannot change while the snapshot is written.
        if state.epoch.as_deref() != Some(fence_marker(generation).as_str()) {
            return Err(HoldError::EpochChanged);
        }
        // The snapshot is the whole truth: what the store held before goes (see the Redis
        // store's `clear_under_fence`).
        state.seats.clear();
        state.expiries.clear();
        state.expiry_of.clear();
        for hold in &snapshot.held {
            let ttl = hold_ttl_millis(hold.expires_at, self.grace_millis, now);
            if ttl > 0 {
                let claim = Claim::Held {
                    booking_id: hold.booking_id,
                    until_millis: now_millis.saturating_add(ttl),
                };
                for seat in &hold.seats {
                    state.seats.insert((hold.show_id, seat.clone()), claim);
                }
            }
            // Kept even when the TTL has run out: the booking still needs its HoldExpired.
            state.set_expiry(
                hold.show_id,
                hold.booking_id,
                hold.expires_at.timestamp_millis(),
            );
        }
        // After the holds, so that a sale wins over a hold of the same seat.
        for (show_id, seat, booking_id) in &snapshot.sold {
            state
                .seats
                .insert((*show_id, seat.clone()), Claim::Sold(*booking_id));
        }
        let epoch = ready_epoch(generation, &state.run_id);
        state.epoch = Some(epoch.clone());
        Ok(epoch)
    }

    async fn hold(
        &self,
        epoch: &str,
        requests: &[HoldRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<HoldOutcome>, HoldError> {
        let now_millis = now.timestamp_millis();
        let mut state = self.lock();
        state.check_epoch(epoch)?;
        state.sweep();
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            let mut taken = BTreeSet::new();
            let mut to_hold = Vec::new();
            for seat in &request.seats {
                match state.claim(request.show_id, seat, now_millis) {
                    None => to_hold.push(seat),
                    Some(Claim::Held { booking_id, .. }) if booking_id == request.booking_id => {
                        to_hold.push(seat)
                    }
                    // Already sold to this booking: nothing to do for this seat.
                    Some(Claim::Sold(booking_id)) if booking_id == request.booking_id => {}
                    Some(_) => {
                        taken.insert(seat.clone());
                    }
                }
            }
            if !taken.is_empty() {
                outcomes.push(HoldOutcome::Taken(taken));
                continue;
            }
            if !to_hold.is_empty() {
                // At least 1 ms, like the Redis store (PX needs a positive TTL).
                let ttl = hold_ttl_millis(request.expires_at, self.grace_millis, now).max(1);
                let claim = Claim::Held {
                    booking_id: request.booking_id,
                    until_millis: now_millis.saturating_add(ttl),
                };
                for seat in to_hold {
                    state.seats.insert((request.show_id, seat.clone()), claim);
                }
                state.lower_expiry(
                    request.show_id,
                    request.booking_id,
                    request.expires_at.timestamp_millis(),
                );
            }
            outcomes.push(HoldOutcome::Held);
        }
        Ok(outcomes)
    }

    async fn release(
        &self,
        epoch: &str,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        let mut state = self.lock();
        state.check_epoch(epoch)?;
        for seat in seats {
            let key = (show_id, seat.clone());
            if matches!(state.seats.get(&key), Some(Claim::Held { booking_id: owner, .. }) if *owner == booking_id)
            {
                state.seats.remove(&key);
            }
        }
        state.forget_expiry(show_id, booking_id);
        Ok(())
    }

    async fn mark_sold(
        &self,
        epoch: &str,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        let mut state = self.lock();
        state.check_epoch(epoch)?;
        for seat in seats {
            state
                .seats
                .insert((show_id, seat.clone()), Claim::Sold(booking_id));
        }
        state.forget_expiry(show_id, booking_id);
        Ok(())
    }

    async fn unmark_sold(
        &self,
        epoch: &str,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError> {
        let mut state = self.lock();
        state.check_epoch(epoch)?;
        for seat in seats {
            let key = (show_id, seat.clone());
            if state.seats.get(&key) == Some(&Claim::Sold(booking_id)) {
                state.seats.remove(&key);
            }
        }
        Ok(())
    }

    async fn due_expiries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ExpiryDue>, HoldError> {
        let now_millis = now.timestamp_millis();
        let state = self.lock();
        Ok(state
            .expiries
            .iter()
            .take_while(|(millis, _, _)| *millis <= now_millis)
            .take(limit)
            .filter_map(|&(millis, show_id, booking_id)| {
                // Scores come from valid `DateTime`s, so this never skips an entry.
                DateTime::from_timestamp_millis(millis).map(|expires_at| ExpiryDue {
                    show_id,
                    booking_id,
                    expires_at,
                })
            })
            .collect())
    }

    async fn forget_expiry(&self, show_id: ShowId, booking_id: BookingId) -> Result<(), HoldError> {
        self.lock().forget_expiry(show_id, booking_id);
        Ok(())
    }

    async fn seat(&self, show_id: ShowId, seat: &SeatId) -> Result<Option<SeatClaim>, HoldError> {
        let now_millis = Utc::now().timestamp_millis();
        Ok(self
            .lock()
            .claim(show_id, seat, now_millis)
            .map(|claim| match claim {
                Claim::Held { booking_id, .. } => SeatClaim {
                    booking_id,
                    sold: false,
                },
                Claim::Sold(booking_id) => SeatClaim {
                    booking_id,
                    sold: true,
                },
            }))
    }
}
