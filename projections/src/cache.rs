//! What a runner last wrote, kept in memory, so that a batch loads from the database only the
//! rows it has not seen yet (during a sale, a booking's later events find its view here).
//!
//! Sound because a runner is the only writer of its tables: a batch commits only over the
//! checkpoint it started from, so rows it did not write cannot have appeared under it without
//! its next commit failing. The cache is emptied whenever that may not hold: a batch that
//! failed or found the checkpoint moved, a pause by a replay (which may switch the tables), or
//! growing past its bounds.

use std::collections::HashMap;

use domain::{BookingId, SeatId, ShowId};

use crate::db::Changes;
use crate::view::{BookingView, SeatClaim, ShowStats};

/// Booking views kept at most (about 1 KiB each); beyond, the cache starts over.
const MAX_BOOKINGS: usize = 50_000;
/// Seat claims kept at most.
const MAX_SEATS: usize = 200_000;

#[derive(Debug, Default)]
pub(crate) struct RowCache {
    pub bookings: HashMap<BookingId, BookingView>,
    pub stats: HashMap<ShowId, ShowStats>,
    /// `None`: known to be free.
    pub seats: HashMap<(ShowId, SeatId), Option<SeatClaim>>,
    /// The runner's pause count when it was filled (see `PauseGate`).
    pub pauses: u64,
}

impl RowCache {
    pub fn empty(pauses: u64) -> RowCache {
        RowCache {
            pauses,
            ..RowCache::default()
        }
    }

    /// Remember a committed batch's rows.
    pub fn keep(&mut self, changes: &Changes) {
        self.bookings.extend(
            changes
                .bookings
                .iter()
                .map(|(id, view)| (*id, view.clone())),
        );
        self.stats
            .extend(changes.stats.iter().map(|(id, stats)| (*id, stats.clone())));
        self.seats.extend(
            changes
                .seats
                .iter()
                .map(|(key, claim)| (key.clone(), claim.clone())),
        );
        if self.bookings.len() > MAX_BOOKINGS || self.seats.len() > MAX_SEATS {
            *self = RowCache::empty(self.pauses);
        }
    }
}
