//! The projection runner: follows the store's global log from its checkpoint and applies events
//! in batches, each batch's read-model writes and the checkpoint in one transaction, so a crash
//! or a repeated batch never applies an event twice or skips one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::booking::BookingEvent;
use domain::show::ShowEvent;
use domain::{BookingId, DomainEvent, SeatId, ShowId};
use event_store::{EventStore, Position, RecordedEvent};
use infra::stored_events::decode;
use tracing::{Instrument, info, info_span, warn};

use crate::db::{Changes, ProjectionError, ReadModelDb};
use crate::view::{BookingView, SeatClaim, ShowStats, TimelineEntry};

/// The checkpoint name of the read models this runner keeps.
pub const READ_MODELS: &str = "read-models";

/// What a runner did (the metrics issue exports it).
#[derive(Debug, Default)]
pub struct ProjectorStats {
    pub applied: AtomicU64,
    /// Events of types this build does not know.
    pub unknown_types: AtomicU64,
    /// Stored events of known types that do not decode (logged; the read models skip them).
    pub undecodable: AtomicU64,
}

/// Where a runner stops: at a log position, or at the last event recorded by a time (the
/// database's clock, `recorded_at`). A bounded runner builds a snapshot, never the live set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Position(Position),
    RecordedAt(DateTime<Utc>),
}

/// Pauses a runner between batches: a batch runs while holding the gate, so whoever holds
/// it (a replay about to switch tables) knows no batch is in flight.
#[derive(Debug, Clone, Default)]
pub struct PauseGate(Arc<tokio::sync::Mutex<()>>);

impl PauseGate {
    /// Wait for the batch in flight, then keep the runner paused until the guard is dropped.
    pub async fn pause(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.lock().await
    }
}

pub struct Projector {
    store: Arc<dyn EventStore>,
    /// The database, seen through the set of tables this runner writes.
    db: ReadModelDb,
    projection: String,
    batch_size: usize,
    until: Option<Until>,
    gate: PauseGate,
    stats: Arc<ProjectorStats>,
}

impl Projector {
    /// A runner keeping the read models in the set of tables `db` is seen through (the live
    /// one, unless [`ReadModelDb::with_tables`] chose another).
    pub fn new(store: Arc<dyn EventStore>, db: ReadModelDb) -> Projector {
        Projector {
            store,
            db,
            projection: READ_MODELS.to_string(),
            batch_size: 1_000,
            until: None,
            gate: PauseGate::default(),
            stats: Arc::new(ProjectorStats::default()),
        }
    }

    /// Events per batch (one transaction each).
    pub fn with_batch_size(mut self, batch_size: usize) -> Projector {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Stop at a position or time (for snapshots).
    pub fn until(mut self, until: Until) -> Projector {
        self.until = Some(until);
        self
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn stats(&self) -> Arc<ProjectorStats> {
        self.stats.clone()
    }

    pub fn db(&self) -> &ReadModelDb {
        &self.db
    }

    pub fn projection(&self) -> &str {
        &self.projection
    }

    /// The gate that pauses this runner (what a replay holds while it switches tables).
    pub fn gate(&self) -> PauseGate {
        self.gate.clone()
    }

    fn checkpoint_name(&self) -> String {
        self.db.tables().checkpoint(&self.projection)
    }

    /// The position the read models reflect.
    pub async fn position(&self) -> Result<Position, ProjectionError> {
        self.db.checkpoint(&self.checkpoint_name()).await
    }

    /// Where this runner would stop now: the log's head, or its bound if that comes first.
    pub async fn target(&self) -> Result<Position, ProjectionError> {
        let head = self.store.head().await?;
        Ok(match self.until {
            Some(Until::Position(until)) => head.min(until),
            _ => head,
        })
    }

    /// Apply everything up to the [`Projector::target`] as it is now; returns the position
    /// reached.
    pub async fn catch_up(&self) -> Result<Position, ProjectionError> {
        let target = self.target().await?;
        let mut position = self.position().await?;
        while position < target {
            position = self.apply_next_batch(position).await?;
        }
        Ok(position)
    }

    /// Follow the log until `shutdown` resolves.
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProjectionError> {
        tokio::pin!(shutdown);
        let mut hint = self.store.head_hint();
        let mut position = self.position().await?;
        loop {
            let next = self.apply_next_batch(position).await?;
            if next != position {
                position = next;
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                _ = hint.changed() => {}
                // Notifications can be lost with a dropped connection: poll now and then.
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Apply one batch after `after`; returns the position reached: `after` when there is
    /// nothing to do, the checkpoint as found when someone else moved it (a replay switched
    /// the tables under this runner; the batch was not written).
    pub async fn apply_next_batch(&self, after: Position) -> Result<Position, ProjectionError> {
        let _running = self.gate.pause().await;
        let mut events = self.store.read_all(after, self.batch_size).await?;
        if let Some(Until::Position(until)) = self.until {
            events.retain(|event| event.position <= until);
        }
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(after);
        };
        if let Some(Until::RecordedAt(until)) = self.until {
            // The log's order is by position; a bound in time keeps what was recorded by
            // then, wherever it sits.
            events.retain(|event| event.recorded_at <= until);
        }
        let checkpoint = self.checkpoint_name();
        let span =
            info_span!("project", projection = %checkpoint, after = %after, events = events.len());
        let changes = self.changes_of(&events).instrument(span.clone()).await?;
        match self
            .db
            .commit(&checkpoint, after, last, &changes)
            .instrument(span)
            .await
        {
            Ok(()) => Ok(last),
            Err(ProjectionError::CheckpointMoved { .. }) => {
                let found = self.position().await?;
                info!(projection = %checkpoint, expected = %after, %found,
                    "the checkpoint moved under this runner (a replay switched tables?); going on from there");
                Ok(found)
            }
            Err(error) => Err(error),
        }
    }

    /// The read-model rows a batch of events leaves behind.
    async fn changes_of(&self, events: &[RecordedEvent]) -> Result<Changes, ProjectionError> {
        let mut decoded: Vec<(&RecordedEvent, DomainEvent)> = Vec::with_capacity(events.len());
        for recorded in events {
            match decode(recorded) {
                Ok(event) => decoded.push((recorded, event)),
                Err(error) if error.source.is_unknown_type() => {
                    self.stats.unknown_types.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    warn!(%error, "a stored event does not decode; the read models skip it");
                    self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let booking_ids: Vec<BookingId> = decoded
            .iter()
            .filter_map(|(_, event)| match event {
                DomainEvent::Booking(event) => Some(event.booking_id()),
                DomainEvent::Show(_) => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let show_ids: Vec<ShowId> = decoded
            .iter()
            .filter_map(|(_, event)| match event {
                DomainEvent::Booking(event) => Some(event.show_id()),
                DomainEvent::Show(_) => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut bookings = self.db.bookings(&booking_ids).await?;
        let mut stats = self.db.stats(&show_ids).await?;

        // Pass 1: booking views and show stats.
        for (recorded, event) in &decoded {
            let DomainEvent::Booking(event) = event else {
                continue;
            };
            let entry = TimelineEntry {
                event_type: recorded.event_type.clone(),
                at: recorded.recorded_at,
                position: recorded.position.0,
            };
            match bookings.get_mut(&event.booking_id()) {
                Some(view) => view.apply(event, entry),
                None => {
                    if let Some(view) = BookingView::requested(event, entry) {
                        bookings.insert(view.booking_id, view);
                    }
                }
            }
            stats
                .entry(event.show_id())
                .or_insert_with(ShowStats::default)
                .apply(event, recorded.position.0);
        }

        // Pass 2: seat claims, in log order.
        let seat_events: Vec<(ShowId, SeatChange)> = decoded
            .iter()
            .filter_map(|(_, event)| seat_change(event, &bookings))
            .collect();
        let mut touched: HashMap<ShowId, BTreeSet<SeatId>> = HashMap::new();
        for (show_id, change) in &seat_events {
            touched
                .entry(*show_id)
                .or_default()
                .extend(change.seats().iter().cloned());
        }
        let mut claims: HashMap<(ShowId, SeatId), Option<SeatClaim>> = HashMap::new();
        for (show_id, seats) in &touched {
            let seats: Vec<SeatId> = seats.iter().cloned().collect();
            let current = self.db.seats(*show_id, Some(&seats)).await?;
            for seat in seats {
                let claim = current.get(&seat).cloned();
                claims.insert((*show_id, seat), claim);
            }
        }
        for (show_id, change) in seat_events {
            change.apply(show_id, &mut claims);
        }
        let applied = decoded.len() as u64;
        self.stats.applied.fetch_add(applied, Ordering::Relaxed);
        let touched_bookings: BTreeSet<BookingId> = booking_ids.into_iter().collect();
        Ok(Changes {
            bookings: bookings
                .into_iter()
                .filter(|(id, _)| touched_bookings.contains(id))
                .collect(),
            seats: claims,
            stats,
        })
    }
}

/// What an event does to seat claims.
enum SeatChange {
    Hold {
        booking_id: BookingId,
        seats: Vec<SeatId>,
    },
    Sell {
        booking_id: BookingId,
        seats: Vec<SeatId>,
    },
    /// Free the seats the booking holds or owns (a release of sold seats, or a hold that ended).
    Free {
        booking_id: BookingId,
        seats: Vec<SeatId>,
        sold_too: bool,
    },
}

impl SeatChange {
    fn seats(&self) -> &[SeatId] {
        match self {
            SeatChange::Hold { seats, .. }
            | SeatChange::Sell { seats, .. }
            | SeatChange::Free { seats, .. } => seats,
        }
    }

    fn apply(self, show_id: ShowId, claims: &mut HashMap<(ShowId, SeatId), Option<SeatClaim>>) {
        match self {
            SeatChange::Hold { booking_id, seats } => {
                for seat in seats {
                    let claim = claims.entry((show_id, seat)).or_insert(None);
                    // A sold seat stays sold (the hold of a redelivered request changes nothing).
                    if !claim.as_ref().is_some_and(|c| c.sold) {
                        *claim = Some(SeatClaim {
                            booking_id,
                            sold: false,
                        });
                    }
                }
            }
            SeatChange::Sell { booking_id, seats } => {
                for seat in seats {
                    claims.insert(
                        (show_id, seat),
                        Some(SeatClaim {
                            booking_id,
                            sold: true,
                        }),
                    );
                }
            }
            SeatChange::Free {
                booking_id,
                seats,
                sold_too,
            } => {
                for seat in seats {
                    let claim = claims.entry((show_id, seat)).or_insert(None);
                    if claim
                        .as_ref()
                        .is_some_and(|c| c.booking_id == booking_id && (sold_too || !c.sold))
                    {
                        *claim = None;
                    }
                }
            }
        }
    }
}

fn seat_change(
    event: &DomainEvent,
    bookings: &HashMap<BookingId, BookingView>,
) -> Option<(ShowId, SeatChange)> {
    let seats_of = |booking_id: BookingId| {
        bookings
            .get(&booking_id)
            .map(|view| view.seats.clone())
            .unwrap_or_default()
    };
    Some(match event {
        DomainEvent::Booking(BookingEvent::SeatsHeld(held)) => (
            held.show_id,
            SeatChange::Hold {
                booking_id: held.booking_id,
                seats: held.seats.iter().cloned().collect(),
            },
        ),
        DomainEvent::Show(ShowEvent::SeatsSold(sold)) => (
            sold.show_id,
            SeatChange::Sell {
                booking_id: sold.booking_id,
                seats: sold.seats.iter().cloned().collect(),
            },
        ),
        DomainEvent::Show(ShowEvent::SeatsReleased(released)) => (
            released.show_id,
            SeatChange::Free {
                booking_id: released.booking_id,
                seats: released.seats.iter().cloned().collect(),
                sold_too: true,
            },
        ),
        DomainEvent::Booking(
            event @ (BookingEvent::HoldExpired(_)
            | BookingEvent::Cancelled(_)
            | BookingEvent::Failed(_)
            | BookingEvent::Rejected(_)),
        ) => (
            event.show_id(),
            SeatChange::Free {
                booking_id: event.booking_id(),
                seats: seats_of(event.booking_id()),
                sold_too: false,
            },
        ),
        _ => return None,
    })
}
