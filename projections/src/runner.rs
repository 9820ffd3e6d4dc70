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
use infra::resilience::{Retrying, Transience};
use infra::stored_events::decode;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::cache::RowCache;
use crate::db::{Changes, ProjectionError, ReadModelDb};
use crate::view::{BookingView, SeatClaim, ShowStats, TimelineEntry};

/// After a partial batch, how long the runner lets events gather before the next one.
const GATHER: Duration = Duration::from_millis(5);

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
    /// Batches committed, and the time spent on them: reading the log, loading the rows,
    /// applying, and (a part of it) committing.
    pub batches: AtomicU64,
    pub busy_micros: AtomicU64,
    pub commit_micros: AtomicU64,
}

/// Where a runner stops: at a log position, or at the last event recorded by a time (the
/// database's clock, `recorded_at`). A bounded runner builds a snapshot, never the live set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Position(Position),
    RecordedAt(DateTime<Utc>),
}

/// Pauses a runner between batches: a batch runs while holding the gate, so whoever holds
/// it (a replay about to switch tables) knows no batch is in flight. Each pause is counted: the
/// runner forgets the rows it cached when it was paused (the tables may have been switched).
#[derive(Debug, Clone, Default)]
pub struct PauseGate {
    lock: Arc<tokio::sync::Mutex<()>>,
    pauses: Arc<AtomicU64>,
}

impl PauseGate {
    /// Wait for the batch in flight, then keep the runner paused until the guard is dropped.
    pub async fn pause(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let guard = self.lock.lock().await;
        self.pauses.fetch_add(1, Ordering::SeqCst);
        guard
    }

    /// The runner's own turn for one batch; returns the pauses so far.
    async fn turn(&self) -> (tokio::sync::MutexGuard<'_, ()>, u64) {
        let guard = self.lock.lock().await;
        (guard, self.pauses.load(Ordering::SeqCst))
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
    /// The position the last batch committed, and when (this process's clock).
    committed: watch::Sender<(Position, DateTime<Utc>)>,
    /// The rows this runner last wrote (taken out for a batch, put back after its commit).
    cache: std::sync::Mutex<RowCache>,
    /// Another head hint to wake on (another store handle's on the same database).
    also_woken_by: Option<watch::Receiver<Position>>,
    /// The generation of the tables this runner last read its checkpoint from; every commit
    /// expects it, so a switch in any process makes this runner reload (see `db.rs`).
    generation: AtomicU64,
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
            committed: watch::channel((Position::START, Utc::now())).0,
            cache: std::sync::Mutex::default(),
            also_woken_by: None,
            generation: AtomicU64::new(0),
        }
    }

    /// Events per batch (one transaction each).
    pub fn with_batch_size(mut self, batch_size: usize) -> Projector {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Also wake when this head hint moves: appends made through another store handle on the
    /// same database (SQLite has no notifications between handles).
    pub fn also_woken_by(mut self, hint: watch::Receiver<Position>) -> Projector {
        self.also_woken_by = Some(hint);
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

    /// Each batch this runner commits: the position the read models reached, and the moment
    /// right after the commit (how a benchmark measures when events become visible).
    pub fn committed(&self) -> watch::Receiver<(Position, DateTime<Utc>)> {
        self.committed.subscribe()
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

    /// The position the read models reflect (and the generation of their tables, which the
    /// next commit expects).
    pub async fn position(&self) -> Result<Position, ProjectionError> {
        let name = self.checkpoint_name();
        // The generation first: a switch between the two reads then fails the next commit
        // (a newer generation) rather than letting it pass with a stale one.
        let generation = self.db.generation(&name).await?;
        self.generation.store(generation, Ordering::SeqCst);
        self.db.checkpoint(&name).await
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
    ///
    /// Rides out the database going away: a transient error is retried with backoff (the
    /// projector is not ready meanwhile, see [`infra::resilience`]) from the checkpoint, which
    /// only a committed batch moves. Returns an error only for what an operator must fix.
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProjectionError> {
        tokio::pin!(shutdown);
        let mut retrying = Retrying::new(&format!("projector {}", self.checkpoint_name()));
        let outcome = loop {
            match self.follow(&mut shutdown, &mut retrying).await {
                Ok(()) => break Ok(()),
                Err(error) if error.is_transient() => {
                    // A failed batch left the row cache empty (it is taken out per batch).
                    if !retrying.failed(error.to_string(), &mut shutdown).await {
                        break Ok(());
                    }
                }
                Err(error) => break Err(error),
            }
        };
        retrying.stopped();
        outcome
    }

    /// Follow the log from the checkpoint until `shutdown` resolves or an error.
    async fn follow(
        &self,
        mut shutdown: impl std::future::Future<Output = ()> + Unpin,
        retrying: &mut Retrying,
    ) -> Result<(), ProjectionError> {
        let mut hint = self.store.head_hint();
        // Without a second source, one that never fires.
        let (_never, unused) = watch::channel(Position::START);
        let mut also = self.also_woken_by.clone().unwrap_or(unused);
        let mut position = self.position().await?;
        retrying.succeeded();
        loop {
            let next = self.apply_next_batch(position).await?;
            if next.0 >= position.0 + self.batch_size as u64 {
                // A full batch: more is waiting.
                position = next;
                continue;
            }
            if next != position {
                position = next;
                // A partial batch: gather what arrives over the next few milliseconds into
                // the next one, rather than committing every few events (each commit takes
                // the database's one write lock on SQLite, and CPU the API needs in a burst).
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(GATHER) => {}
                }
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                _ = hint.changed() => {}
                Ok(()) = also.changed() => {}
                // Notifications can be lost with a dropped connection: poll now and then.
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Apply one batch after `after`; returns the position reached: `after` when there is
    /// nothing to do, the checkpoint as found when someone else moved it (a replay switched
    /// the tables under this runner; the batch was not written).
    pub async fn apply_next_batch(&self, after: Position) -> Result<Position, ProjectionError> {
        let (_running, pauses) = self.gate.turn().await;
        let started = std::time::Instant::now();
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
        // Taken out: a batch that fails leaves the cache empty.
        let mut cache = std::mem::take(
            &mut *self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if cache.pauses != pauses {
            cache = RowCache::empty(pauses);
        }
        let changes = self
            .changes_of(&events, &cache)
            .instrument(span.clone())
            .await?;
        let committing = std::time::Instant::now();
        let committed = self
            .db
            .commit(
                &checkpoint,
                after,
                self.generation.load(Ordering::SeqCst),
                last,
                &changes,
            )
            .instrument(span)
            .await;
        let micros = |since: std::time::Instant| since.elapsed().as_micros() as u64;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .busy_micros
            .fetch_add(micros(started), Ordering::Relaxed);
        self.stats
            .commit_micros
            .fetch_add(micros(committing), Ordering::Relaxed);
        match committed {
            Ok(()) => {
                self.committed.send_replace((last, Utc::now()));
                cache.keep(&changes);
                *self
                    .cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = cache;
                Ok(last)
            }
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
    async fn changes_of(
        &self,
        events: &[RecordedEvent],
        cache: &RowCache,
    ) -> Result<Changes, ProjectionError> {
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
        let mut bookings = cached_or_loaded(&booking_ids, &cache.bookings, |missing| async move {
            self.db.bookings(&missing).await
        })
        .await?;
        let mut stats = cached_or_loaded(&show_ids, &cache.stats, |missing| async move {
            self.db.stats(&missing).await
        })
        .await?;

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
            let mut missing = Vec::new();
            for seat in seats {
                let key = (*show_id, seat.clone());
                match cache.seats.get(&key) {
                    Some(claim) => {
                        claims.insert(key, claim.clone());
                    }
                    None => missing.push(seat.clone()),
                }
            }
            if missing.is_empty() {
                continue;
            }
            let current = self.db.seats(*show_id, Some(&missing)).await?;
            for seat in missing {
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

/// The rows for `keys`: from the cache where it has them, the rest loaded in one go.
async fn cached_or_loaded<K, V, Load, Loading>(
    keys: &[K],
    cache: &HashMap<K, V>,
    load: Load,
) -> Result<HashMap<K, V>, ProjectionError>
where
    K: Eq + std::hash::Hash + Clone,
    V: Clone,
    Load: FnOnce(Vec<K>) -> Loading,
    Loading: std::future::Future<Output = Result<HashMap<K, V>, ProjectionError>>,
{
    let mut found = HashMap::with_capacity(keys.len());
    let mut missing = Vec::new();
    for key in keys {
        match cache.get(key) {
            Some(row) => {
                found.insert(key.clone(), row.clone());
            }
            None => missing.push(key.clone()),
        }
    }
    if !missing.is_empty() {
        found.extend(load(missing).await?);
    }
    Ok(found)
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
            | BookingEvent::Abandoned(_)
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
