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
//! sale is undone ([`HoldStore::unmark_sold`]). Because the store may lose its contents at any
//! moment, it carries an **epoch** that seat-lock checks on every write, and that tells it when
//! to refill the store from the event store.
//!
//! A ready epoch is `<generation>@<run id>`:
//! - the **run id** names the server process the store was rebuilt on: Redis's `run_id` (`INFO
//!   server`, new at every start), or a random id the in-process store makes when it is created.
//!   A Redis restarted with persistence (RDB or AOF) brings its old keys back, the epoch key
//!   included, but not the writes made since its last snapshot: a check of the key alone would
//!   take that half-forgotten store for a good one and hand out seats that are held or sold
//!   (issue 16). The run id in the epoch no longer matches the server's then, so the store is
//!   rebuilt.
//! - the **generation** comes from the event store ([`next_generation`], name `hold-store`): it
//!   only grows, across processes, and no restore of Redis can bring back an older one, since it
//!   is not kept in Redis. It fences rebuilds against each other and against writers.
//!
//! A rebuild takes two steps. [`HoldStore::fence`] sets the epoch to the fence marker
//! `rebuilding:<generation>` (see [`rebuild_in_progress`]), unless a newer generation (one
//! greater than its own, still current: a fence marker, or a ready epoch of this very run) got
//! there first. From then on every write ([`hold`](HoldStore::hold),
//! [`release`](HoldStore::release), [`mark_sold`](HoldStore::mark_sold),
//! [`unmark_sold`](HoldStore::unmark_sold)) fails with [`HoldError::EpochChanged`], so that
//! nothing lands in a store while it is rebuilt (a write made between the rebuilder's read of
//! the log and its write of the snapshot would otherwise be overwritten by older news: a sold
//! seat turned back into a hold that runs out, a released seat sold for ever). The rebuilder then
//! reads the log (after the fence, so that every write that got in before it is in what it
//! reads: seat-lock appends a sale's or release's event before it tells the hold store, and
//! checks the epoch again after appending the outcome of a hold) and calls
//! [`HoldStore::rebuild`], which writes the snapshot only while the marker is still its own and
//! finally swaps the marker for the new ready epoch. A rebuilder that was overtaken by a newer
//! one gets [`HoldError::EpochChanged`] and writes nothing more.
//!
//! Every write names the epoch its caller rebuilt (or adopted from [`HoldStore::epoch`]) and is
//! refused, changing nothing, unless the store's epoch equals it **and** the epoch's run id is
//! the server's current one, both checked in the same atomic step as the write (Redis: inside the
//! write's Lua script), so no write can slip in between a flush, a restart or a fence and its
//! detection. The caller then adopts the new epoch or rebuilds, and retries.
//!
//! [`next_generation`]: event_store::EventStore::next_generation
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
    /// The epoch named is not the store's current one (the store was flushed or restarted,
    /// another process fenced or rebuilt it), or a fence or rebuild was overtaken by a newer
    /// generation: adopt the new epoch from [`HoldStore::epoch`] or rebuild, then retry.
    #[error("the hold store's epoch changed: rebuild or adopt it before writing")]
    EpochChanged,
    /// The store cannot be reached or failed: transient, retry.
    #[error("the hold store is unavailable: {0}")]
    Unavailable(String),
    /// The store can never work as configured (a malformed URL, a server too old for the
    /// scripts): an operator must fix it.
    #[error("the hold store is misconfigured: {0}")]
    Misconfigured(String),
}

/// The name of the hold store's generation counter in the event store
/// ([`next_generation`](event_store::EventStore::next_generation)).
pub const GENERATION_COUNTER: &str = "hold-store";

/// The value prefix of a fence marker: `rebuilding:<generation>`.
const REBUILDING_PREFIX: &str = "rebuilding:";

/// What the value of a store's epoch says (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochState<'a> {
    /// `<generation>@<run id>`: rebuilt under `generation` on the server run `run_id`; writes
    /// may name it (they succeed while the server still runs as `run_id`).
    Ready { generation: u64, run_id: &'a str },
    /// `rebuilding:<generation>`: fenced by the rebuild of that generation; every write fails.
    Rebuilding { generation: u64 },
}

impl<'a> EpochState<'a> {
    /// Reads an epoch value; `None` for anything else (a value of an older version of this
    /// code, which no write accepts either).
    pub fn parse(epoch: &'a str) -> Option<Self> {
        if let Some(generation) = epoch.strip_prefix(REBUILDING_PREFIX) {
            return parse_generation(generation).map(|generation| Self::Rebuilding { generation });
        }
        let (generation, run_id) = epoch.split_once('@')?;
        if run_id.is_empty() {
            return None;
        }
        parse_generation(generation).map(|generation| Self::Ready { generation, run_id })
    }

    /// The generation, ready or in progress.
    pub fn generation(self) -> u64 {
        match self {
            Self::Ready { generation, .. } | Self::Rebuilding { generation } => generation,
        }
    }
}

/// The generation whose rebuild is in progress when `epoch` is a fence marker
/// (`rebuilding:<generation>`); `None` for a ready epoch (or anything else).
pub fn rebuild_in_progress(epoch: &str) -> Option<u64> {
    match EpochState::parse(epoch)? {
        EpochState::Rebuilding { generation } => Some(generation),
        EpochState::Ready { .. } => None,
    }
}

/// The fence marker of a rebuild under `generation`.
pub fn fence_marker(generation: u64) -> String {
    format!("{REBUILDING_PREFIX}{generation}")
}

/// The ready epoch of a rebuild under `generation` on the server run `run_id`.
pub fn ready_epoch(generation: u64, run_id: &str) -> String {
    format!("{generation}@{run_id}")
}

/// A generation number: decimal digits only (no sign, no spaces), as [`fence_marker`] and
/// [`ready_epoch`] write it. The one place generations are read (the Redis scripts' fence check
/// reads them with the same rule).
fn parse_generation(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Seat holds with expiry, sold markers and an expiry index. See the module documentation.
#[async_trait]
pub trait HoldStore: Send + Sync + 'static {
    /// The store's epoch as it stands: a ready epoch (`<generation>@<run id>`), a fence marker
    /// (`rebuilding:<generation>`, see [`rebuild_in_progress`]), or `None` when it has none
    /// (fresh, flushed, restarted without persistence). A ready epoch read here may still be
    /// dead (a Redis restored from a snapshot brings back its old one): the writes that name it
    /// tell.
    async fn epoch(&self) -> Result<Option<String>, HoldError>;

    /// Succeeds when `epoch` is the store's current, live epoch: the check every write makes
    /// ([`HoldError::EpochChanged`] otherwise), on its own. Changes nothing.
    async fn check_epoch(&self, epoch: &str) -> Result<(), HoldError>;

    /// The first step of a rebuild under `generation` (a number from the event store's
    /// [`GENERATION_COUNTER`], greater than any handed out before): atomically sets the epoch to
    /// the fence marker `rebuilding:<generation>`, after which every write fails with
    /// [`HoldError::EpochChanged`] until [`rebuild`](Self::rebuild) is done. Fails with
    /// [`HoldError::EpochChanged`], changing nothing, when the store's epoch names a greater
    /// generation that is still current (a fence marker, or a ready epoch of the server's current
    /// run id), or is the ready epoch of `generation` itself: a fence never goes back to an older
    /// generation. A dead epoch (another run id) or one of an older generation is overwritten.
    /// Fencing again with the generation the marker already names is a no-op.
    async fn fence(&self, generation: u64) -> Result<(), HoldError>;

    /// The second step of a rebuild under `generation`, after [`fence`](Self::fence): writes
    /// everything in the snapshot (holds with their TTL, sold markers, expiry entries), then
    /// replaces the fence marker with the ready epoch `<generation>@<run id>` and returns it.
    /// Every part is written only while the epoch is still `rebuilding:<generation>` (Redis:
    /// each chunk by a script that checks the marker and that the server's run id is still the
    /// one the rebuild started on), so a rebuilder overtaken by a newer fence writes nothing
    /// more; it then fails with [`HoldError::EpochChanged`] (also when the marker is gone:
    /// flushed, restarted, never fenced). Every seat entry and expiry entry not in the
    /// snapshot is deleted first, under the fence: a store restored from an older RDB/AOF file
    /// holds sold markers and holds that the log has since undone (a cancelled sale's marker
    /// would otherwise block its seats for good).
    ///
    /// A hold whose TTL (`expires_at + grace - now`) has already run out gets no seat entry but
    /// keeps its expiry entry, so that its `HoldExpired` is still decided. Where a snapshot names
    /// a seat both held and sold, the sale wins.
    async fn rebuild(
        &self,
        generation: u64,
        snapshot: &HoldSnapshot,
        now: DateTime<Utc>,
    ) -> Result<String, HoldError>;

    /// Holds each request's seats all-or-none, in the given order (an earlier request in the
    /// batch wins a seat over a later one), atomically for the whole batch (Redis: one Lua script
    /// call). Fails with [`HoldError::EpochChanged`], holding nothing, unless `epoch` is the
    /// store's current, live epoch (see [`check_epoch`](Self::check_epoch)).
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
    /// and drops its expiry entry. Idempotent. Fails with [`HoldError::EpochChanged`], changing
    /// nothing, unless `epoch` is the store's current, live epoch.
    async fn release(
        &self,
        epoch: &str,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError>;

    /// The seats are sold to this booking: markers without expiry (overwriting its own hold; a
    /// hold or marker of another booking on one of these seats is overwritten too, since the
    /// event store has already decided the sale), and drops its expiry entry. Idempotent. Fails
    /// with [`HoldError::EpochChanged`], changing nothing, unless `epoch` is the store's
    /// current, live epoch.
    async fn mark_sold(
        &self,
        epoch: &str,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), HoldError>;

    /// A sale was undone (a confirmed booking was cancelled): removes this booking's sold
    /// markers (only its own). Idempotent. Fails with [`HoldError::EpochChanged`], changing
    /// nothing, unless `epoch` is the store's current, live epoch.
    async fn unmark_sold(
        &self,
        epoch: &str,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_and_fence_markers_are_told_apart() {
        assert_eq!(
            EpochState::parse("12@e8e248e0"),
            Some(EpochState::Ready {
                generation: 12,
                run_id: "e8e248e0"
            })
        );
        assert_eq!(
            EpochState::parse("rebuilding:7"),
            Some(EpochState::Rebuilding { generation: 7 })
        );
        assert_eq!(
            EpochState::parse(&ready_epoch(3, "abc")).map(EpochState::generation),
            Some(3)
        );
        assert_eq!(rebuild_in_progress(&fence_marker(9)), Some(9));
        assert_eq!(rebuild_in_progress("9@abc"), None);
        for value in [
            "",
            "made-up",
            "12@",
            "@abc",
            "+12@abc",
            " 12@abc",
            "x@abc",
            "rebuilding:",
            "rebuilding:+1",
            "rebuilding:1@abc",
            "99999999999999999999999@abc",
            // An epoch of the versions before generations: a UUID.
            "0b7e2d4c-3f0a-4c8e-9a57-3d2f0c1e9b1a",
        ] {
            assert_eq!(EpochState::parse(value), None, "{value:?}");
            assert_eq!(rebuild_in_progress(value), None, "{value:?}");
        }
    }
}
