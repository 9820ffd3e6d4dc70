//! Seat hold stores: where seat-lock takes its all-or-nothing holds on seats.
//!
//! # A fast filter, not the truth
//!
//! A hold store answers one question quickly, under the load of a flash sale: "are these seats
//! free for this booking?" It is **not** what prevents a double sale. The truth is the show stream
//! in the event store: seat-lock sells seats with `SeatsSold` appended at the show stream's
//! expected version, so two sales of one seat cannot both commit whatever the hold store says
//! (the expected version is the fencing token). The store only keeps most losers away from the
//! database, and it may lose everything at any time (a Redis flush, restart or failover) without
//! breaking an invariant.
//!
//! # Holds live for the hold plus a grace period
//!
//! `expires_at` is decided once by seat-lock and travels in `SeatsHeld`; whether a booking is
//! paid in time is decided on the booking stream (whichever of `PaymentSucceeded` and
//! `HoldExpired` is appended first wins). Seats must therefore stay held until `HoldExpired` is
//! stored, not merely until `expires_at`: a payment racing the deadline may still win, and its
//! seats must not have been handed to someone else meanwhile. So a held seat lives until
//! `expires_at + grace` (the grace covers the expiry scheduler's lag), and seat-lock frees it
//! explicitly with [`HoldStore::release`] once `HoldExpired` is stored. The TTL is only the
//! safety net that frees seats whose release was lost (a crash, a flush racing a write).
//!
//! # Sold markers and the epoch
//!
//! Sold seats are markers without expiry: after a sale the seats are not free again unless the
//! sale is undone ([`HoldStore::unmark_sold`]). Because the store may be emptied at any moment,
//! it carries an **epoch**, a random id written by [`HoldStore::rebuild`] after seat-lock has
//! written the sold and held seats of the open shows from the event store. [`HoldStore::hold`]
//! names the epoch its caller rebuilt (or adopted) and fails with [`HoldError::EpochChanged`],
//! holding nothing, when the store's epoch differs: after a flush or a restart without
//! persistence the epoch is gone, and a hold on the emptied store would see every sold seat as
//! free. The caller then rebuilds (or, when another process has just rebuilt, adopts the new
//! epoch from [`HoldStore::epoch`]) and retries. The epoch is checked in the same atomic step
//! as the hold, so no hold can slip in between a flush and its detection.
//!
//! # Expiry without keyspace notifications
//!
//! Nothing here relies on Redis keyspace notifications: they are fire-and-forget, lost while a
//! subscriber is disconnected, and fire when Redis gets round to evicting a key, not at its
//! deadline. Instead every hold adds an entry `(show, booking) → expires_at` to one sorted
//! expiry index that seat-lock polls with [`HoldStore::due_expiries`]; the entry is dropped when
//! the booking is released, sold or explicitly forgotten. After a flush the index is rebuilt
//! from `SeatsHeld` events, which carry `expires_at`.
//!
//! Times are kept at millisecond precision (Redis scores and TTLs are milliseconds), so an
//! [`ExpiryDue::expires_at`] comes back truncated to the millisecond.
//!
//! Two implementations share one contract (`infra/tests/holds.rs`): [`redis::RedisHoldStore`]
//! (Lua scripts, one round trip per batch) and [`memory::MemoryHoldStore`] (in-process, for the
//! embedded default and tests).

pub mod memory;
pub mod redis;

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{BookingId, SeatId, ShowId};

pub use memory::MemoryHoldStore;
pub use redis::RedisHoldStore;

/// How long a held seat outlives its `expires_at` unless released first: time for the expiry
/// scheduler to append `HoldExpired` (see the module documentation).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// Hold `seats` of a show for a booking until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    pub show_id: ShowId,
    pub booking_id: BookingId,
    pub seats: BTreeSet<SeatId>,
    pub expires_at: DateTime<Utc>,
}

/// The answer to one [`HoldRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Every requested seat is now held by (or was already sold to) the booking.
    Held,
    /// Nothing was held: these requested seats are held or sold by other bookings.
    Taken(BTreeSet<SeatId>),
}

/// Who has a seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatClaim {
    pub booking_id: BookingId,
    /// Sold (a marker without expiry) rather than held (with a TTL).
    pub sold: bool,
}

/// A booking whose hold has reached its `expires_at`: time to decide `HoldExpired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryDue {
    pub show_id: ShowId,
    pub booking_id: BookingId,
    /// Truncated to the millisecond.
    pub expires_at: DateTime<Utc>,
}

/// What the event store says the hold store should contain, to refill it after a flush.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HoldSnapshot {
    /// Seats sold, and to whom.
    pub sold: Vec<(ShowId, SeatId, BookingId)>,
    /// Holds not yet sold, released or expired (as far as the store knows).
    pub held: Vec<HoldRequest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    /// The store was flushed or restarted, or another process rebuilt it: rebuild (or adopt the
    /// new epoch from [`HoldStore::epoch`]) before holding.
    #[error("the hold store's epoch changed: rebuild or adopt it before holding")]
    EpochChanged,
    /// The store cannot be reached or failed: transient, retry.
    #[error("the hold store is unavailable: {0}")]
    Unavailable(String),
}

/// Seat holds with expiry, sold markers and an expiry index. See the module documentation.
#[async_trait]
pub trait HoldStore: Send + Sync + 'static {
    /// The store's current epoch; `None` when it has none (fresh, flushed, restarted).
    async fn epoch(&self) -> Result<Option<String>, HoldError>;

    /// Writes everything in the snapshot (holds with their TTL, sold markers, expiry entries),
    /// then sets and returns a new epoch (a fresh UUID). Existing entries not in the snapshot
    /// may stay (a rebuild after a flush starts from nothing anyway).
    ///
    /// A hold whose TTL (`expires_at + grace - now`) has already run out gets no seat entry but
    /// keeps its expiry entry, so that its `HoldExpired` is still decided. Where a snapshot names
    /// a seat both held and sold, the sale wins. The epoch is written last: until then every
    /// [`hold`](Self::hold) fails, so nobody holds against a half-written store.
    async fn rebuild(
        &self,
        snapshot: &HoldSnapshot,
        now: DateTime<Utc>,
    ) -> Result<String, HoldError>;

    /// Holds each request's seats all-or-none, in the given order (an earlier request in the
    /// batch wins a seat over a later one), atomically for the whole batch (Redis: one Lua script
    /// call). Fails with [`HoldError::EpochChanged`], holding nothing, unless the store's epoch
    /// equals `epoch`.
    ///
    /// A seat is free for a request when nobody holds it, or it is held by that same booking
    /// (re-taking an own hold succeeds and refreshes its TTL: redelivered messages are
    /// harmless), or it is sold to that same booking (left as it is). Held seats get a TTL of
    /// `expires_at + grace - now` (at least 1 ms), and the booking gets an expiry entry at
    /// `expires_at` that a re-take never moves later (Redis `ZADD ... LT`). A request whose seats
    /// are all sold to its booking holds nothing and so adds no expiry entry.
    async fn hold(
        &self,
        epoch: &str,
        requests: &[HoldRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<HoldOutcome>, HoldError>;

    /// Frees the seats this booking holds (never a sold marker, never another booking's hold)
    /// and drops its expiry entry. Idempotent.
    async fn release(
        &self,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError>;

    /// The seats are sold to this booking: markers without expiry (overwriting its own hold; a
    /// hold or marker of another booking on one of these seats is overwritten too, since the
    /// event store has already decided the sale), and drops its expiry entry. Idempotent.
    async fn mark_sold(
        &self,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError>;

    /// A sale was undone (a confirmed booking was cancelled): removes this booking's sold
    /// markers (only its own). Idempotent.
    async fn unmark_sold(
        &self,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError>;

    /// Expiry entries whose `expires_at` is at or before `now`, earliest first (ties by show,
    /// then booking), at most `limit`.
    async fn due_expiries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ExpiryDue>, HoldError>;

    /// Drops a booking's expiry entry. Idempotent.
    async fn forget_expiry(&self, show_id: ShowId, booking_id: BookingId) -> Result<(), HoldError>;

    /// Who holds or owns a seat now (a hold whose TTL has run out counts as free).
    async fn seat(&self, show_id: ShowId, seat: &SeatId) -> Result<Option<SeatClaim>, HoldError>;
}

/// A duration in whole milliseconds, saturating (a grace beyond `i64::MAX` ms is "forever").
fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The TTL of a hold in milliseconds: `expires_at + grace - now`. May be zero or negative (the
/// hold has run out already); callers decide what that means.
fn hold_ttl_millis(expires_at: DateTime<Utc>, grace_millis: i64, now: DateTime<Utc>) -> i64 {
    expires_at
        .timestamp_millis()
        .saturating_add(grace_millis)
        .saturating_sub(now.timestamp_millis())
}
