//! The seat-lock handler: holds, sales and releases of seats, in store order per show.
//!
//! - **Holds.** A run of consecutive `booking.requested.v1` records of a batch is one call to the
//!   hold store (one Redis Lua script: every request all-or-nothing, earlier requests first),
//!   then one `SeatsHeld {expires_at}` or `BookingRejected {taken}` per booking, appended
//!   concurrently so that the store's group commit writes them in one transaction. The append
//!   expects the version the request was written at; a booking that changed meanwhile
//!   (cancelled) is decided again on its stream, and a hold it no longer needs is released.
//! - **Sales.** On `booking.payment_succeeded.v1` of a paid booking, `SeatsSold` on the show
//!   stream and `BookingConfirmed` on the booking stream in one atomic append with both expected
//!   versions. The show's version is the fencing token: whatever Redis said, a seat sold on the
//!   show stream cannot be sold again. The show state is cached at its version and reloaded on a
//!   conflict. A sale the show refuses (seats lost while Redis was flushed) fails the booking,
//!   refunds it and dead-letters `expired-seats`; so does a payment that arrived after its hold
//!   expired.
//! - **Releases.** A cancelled, failed or expired booking's hold is freed; a cancelled confirmed
//!   booking's seats are released on the show stream first.
//! - **Expiry** ([`SeatLock::sweep_expired`], run by [`run_sweeper`]): due holds from the hold
//!   store's deadline set become `HoldExpired` (only if no payment was recorded first: the
//!   booking decider's rule) and only then are the seats freed.
//! - **Rebuild.** Every write to the hold store names the epoch this process rebuilt or adopted,
//!   and the store refuses it when the epoch is no longer current: a Redis flush, a restart (even
//!   one from an RDB or AOF file that brings the old epoch key back: the epoch carries the
//!   server's `run_id`), or another process's rebuild. seat-lock then adopts the new epoch, waits
//!   for a rebuild in progress, or rebuilds sold and held seats from the log itself, fenced by a
//!   generation number from the event store (`SeatLock::current_epoch`), and writes again
//!   (`SeatLock::under_epoch`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::booking::{self, BookingCommand, BookingEvent, BookingRequested, CancelledBy};
use domain::show::{self, ReleaseReason, ShowCommand, ShowEvent};
use domain::{
    BookingId, BookingStatus, DomainError, DomainEvent, EventEnvelope, EventId, SeatId, ShowId,
    event_types,
};
use event_store::{EventStore, ExpectedVersion, Position, StoreError, StreamAppend};
use infra::commands::{Cause, CommandError, Decided, decide_booking};
use infra::consumer::dead_letters::CAUSE_EXPIRED_SEATS;
use infra::consumer::{EventRecord, Handled, Handler, HandlerError};
use infra::holds::{
    GENERATION_COUNTER, HoldError, HoldOutcome, HoldRequest, HoldSnapshot, HoldStore,
    rebuild_in_progress,
};
use infra::stored_events::{decode, to_new_event};
use infra::streams::{LoadedShow, load_booking, load_show};
use tracing::{info, warn};

/// The consumer group (and service) name.
pub const GROUP: &str = "seat-lock";
/// How many times a contended sale is decided again before the batch is retried.
const MAX_SALE_RETRIES: u32 = 20;
/// How many times a hold-store write is tried, adopting or rebuilding the epoch in between,
/// before the batch is retried.
const MAX_EPOCH_ATTEMPTS: u32 = 5;
/// How many rebuilds one look for the epoch starts (each overtaken by another process's, or by
/// a restart of the store) before the batch is retried.
const MAX_REBUILDS: u32 = 5;
/// How often to look whether another process's rebuild of the hold store is done.
const REBUILD_POLL: Duration = Duration::from_millis(100);
/// The most patience with another process's rebuild, however often ours was overtaken.
const MAX_REBUILD_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct SeatLockConfig {
    /// How long seats are held for payment (`ZQ_HOLD_SECONDS`).
    pub hold: Duration,
    /// How often the sweeper looks for expired holds.
    pub sweep_every: Duration,
    /// How long to wait for another process's rebuild of the hold store (a fence marker that
    /// stays the same) before taking over from it, as from a crashed rebuilder. Doubled each
    /// time this process's own rebuild is overtaken, so that rebuilds slower than this do not
    /// keep overtaking each other.
    pub rebuild_wait: Duration,
}

impl Default for SeatLockConfig {
    fn default() -> Self {
        SeatLockConfig {
            hold: Duration::from_secs(600),
            sweep_every: Duration::from_millis(250),
            rebuild_wait: Duration::from_secs(10),
        }
    }
}

/// What this process knows of the hold store's epoch (behind one async mutex: one process looks
/// for a new epoch at a time).
#[derive(Debug, Default)]
struct KnownEpoch {
    /// The epoch this process rebuilt or adopted.
    epoch: Option<String>,
    /// The generation of this process's last fence: its marker is never waited for.
    fenced: Option<u64>,
}

/// The hold-store writes seat-lock makes besides holds (see [`SeatLock::write_seats`]).
#[derive(Debug, Clone, Copy)]
enum SeatWrite {
    Release,
    MarkSold,
    UnmarkSold,
}

pub struct SeatLock {
    store: Arc<dyn EventStore>,
    holds: Arc<dyn HoldStore>,
    config: SeatLockConfig,
    /// The hold store epoch this process rebuilt into or adopted.
    epoch: tokio::sync::Mutex<KnownEpoch>,
    /// Shows at a known stream version (a show lives in one partition, so one worker uses it).
    shows: Mutex<HashMap<ShowId, LoadedShow>>,
}

fn transient(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::Transient(error.to_string())
}

impl From<HoldError> for Failure {
    fn from(error: HoldError) -> Self {
        Failure(transient(error))
    }
}

/// Events for a booking stream that must be at `version`.
struct BookingChange {
    booking_id: BookingId,
    version: u64,
    events: Vec<BookingEvent>,
}

/// A handler error that `?` can produce from every layer here.
struct Failure(HandlerError);

impl From<CommandError> for Failure {
    fn from(error: CommandError) -> Self {
        Failure(error.into())
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure(CommandError::from(error).into())
    }
}

impl From<infra::streams::StreamError> for Failure {
    fn from(error: infra::streams::StreamError) -> Self {
        Failure(CommandError::from(error).into())
    }
}

impl SeatLock {
    pub fn new(
        store: Arc<dyn EventStore>,
        holds: Arc<dyn HoldStore>,
        config: SeatLockConfig,
    ) -> SeatLock {
        SeatLock {
            store,
            holds,
            config,
            epoch: tokio::sync::Mutex::new(KnownEpoch::default()),
            shows: Mutex::new(HashMap::new()),
        }
    }

    fn hold_duration(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.hold).unwrap_or(chrono::Duration::MAX)
    }

    /// The epoch to write under: the one this process knows unless that is `stale` (a write
    /// under it was refused), else one adopted from the hold store, else a new one rebuilt from
    /// the log. One caller at a time (the epoch mutex is held throughout).
    ///
    /// A ready epoch other than `stale` is adopted as it is (should it be dead, the server having
    /// restarted since, the first write under it is refused and brings us back here with it as
    /// `stale`). A fence marker of another process's rebuild is waited for, polling, until it
    /// turns into a ready epoch; a marker that stays the same for
    /// [`rebuild_wait`](SeatLockConfig::rebuild_wait) was left by a rebuilder that died and is
    /// taken over. With nothing usable (no epoch: a flush, a fresh store; the stale epoch; our
    /// own marker, left over) this process rebuilds: a new generation from the event store,
    /// [`HoldStore::fence`], the log, [`HoldStore::rebuild`]. A fence or rebuild overtaken by a
    /// newer generation goes back to waiting for that one.
    async fn current_epoch(&self, stale: Option<&str>) -> Result<String, Failure> {
        let mut known = self.epoch.lock().await;
        if let Some(epoch) = known.epoch.as_deref()
            && Some(epoch) != stale
        {
            return Ok(epoch.to_string());
        }
        let mut patience = self.config.rebuild_wait;
        // The marker being waited for, and since when it has been seen unchanged.
        let mut waiting: Option<(String, Instant)> = None;
        let mut rebuilds = 0;
        let adopted = loop {
            // Anything not adopted or waited for below is rebuilt: no epoch (a flush, a fresh
            // store), the stale epoch, our own fence left over (a rebuild of ours that failed),
            // a marker that stayed too long.
            if let Some(current) = self.holds.epoch().await? {
                match rebuild_in_progress(&current) {
                    None if Some(current.as_str()) != stale => break current,
                    Some(generation) if Some(generation) != known.fenced => {
                        let since = match &waiting {
                            Some((marker, since)) if *marker == current => *since,
                            _ => {
                                info!(generation, "the hold store is being rebuilt: waiting");
                                waiting.insert((current.clone(), Instant::now())).1
                            }
                        };
                        if since.elapsed() < patience {
                            tokio::time::sleep(REBUILD_POLL).await;
                            continue;
                        }
                        warn!(
                            generation,
                            "a rebuild of the hold store did not finish in time: taking over"
                        );
                    }
                    _ => {}
                }
            }
            if rebuilds == MAX_REBUILDS {
                return Err(Failure(transient(
                    "the hold store kept changing while it was rebuilt",
                )));
            }
            rebuilds += 1;
            let generation = self.store.next_generation(GENERATION_COUNTER).await?;
            match self.holds.fence(generation).await {
                Ok(()) => known.fenced = Some(generation),
                // A newer rebuild got there first: wait for it.
                Err(HoldError::EpochChanged) => continue,
                Err(error) => return Err(error.into()),
            }
            // The log is read only now, after the fence: from the fence on, every hold-store
            // write fails, and seat-lock appends a sale's or release's event before it writes
            // to the hold store, so every write that got in before the fence has its event in
            // what this reads, and every later one is refused and made again under the new
            // epoch. (Read before the fence, the snapshot could miss a write that lands in
            // between, and would then overwrite it with older news: a sold seat turned back
            // into a hold that runs out.) Holds are the exception, written before their
            // `SeatsHeld`: `hold_run` checks the epoch again after appending and takes them
            // again if it changed.
            let snapshot = snapshot_from_log(&*self.store).await?;
            match self.holds.rebuild(generation, &snapshot, Utc::now()).await {
                Ok(epoch) => {
                    info!(
                        generation,
                        held = snapshot.held.len(),
                        sold = snapshot.sold.len(),
                        "hold store rebuilt from the log (it lost its contents, restarted, or is new)"
                    );
                    break epoch;
                }
                Err(HoldError::EpochChanged) => {
                    // Overtaken by a newer rebuild (or the store restarted meanwhile): be more
                    // patient with the next one than the others were with ours.
                    warn!(
                        generation,
                        "our rebuild of the hold store was overtaken: waiting for the newer one"
                    );
                    patience = (patience * 2).min(MAX_REBUILD_WAIT);
                }
                Err(error) => return Err(error.into()),
            }
        };
        known.epoch = Some(adopted.clone());
        Ok(adopted)
    }

    /// Runs a hold-store write under the current epoch; when it is refused with
    /// [`HoldError::EpochChanged`] (flushed, restarted, fenced or rebuilt by another process),
    /// adopts or rebuilds the epoch ([`current_epoch`](Self::current_epoch)) and runs it again,
    /// up to [`MAX_EPOCH_ATTEMPTS`] times in all (then a transient failure: the batch is
    /// retried). A refused write changed nothing, so running it again is safe. Returns the
    /// write's answer and the epoch it succeeded under.
    async fn under_epoch<T, Fut>(
        &self,
        write: impl Fn(String) -> Fut,
    ) -> Result<(T, String), Failure>
    where
        Fut: Future<Output = Result<T, HoldError>>,
    {
        let mut epoch = self.current_epoch(None).await?;
        let mut attempts = 1;
        loop {
            match write(epoch.clone()).await {
                Ok(answer) => return Ok((answer, epoch)),
                Err(HoldError::EpochChanged) if attempts < MAX_EPOCH_ATTEMPTS => {
                    warn!("the hold store's epoch changed: adopting or rebuilding it");
                    attempts += 1;
                    epoch = self.current_epoch(Some(&epoch)).await?;
                }
                Err(HoldError::EpochChanged) => {
                    return Err(Failure(transient(
                        "the hold store's epoch kept changing; retrying the batch",
                    )));
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Release, mark sold or unmark sold a booking's seats, under the current epoch
    /// ([`under_epoch`](Self::under_epoch)).
    async fn write_seats(
        &self,
        write: SeatWrite,
        show_id: ShowId,
        booking_id: BookingId,
        seats: &BTreeSet<SeatId>,
    ) -> Result<(), Failure> {
        let holds = &*self.holds;
        self.under_epoch(|epoch| async move {
            match write {
                SeatWrite::Release => holds.release(&epoch, show_id, booking_id, seats).await,
                SeatWrite::MarkSold => holds.mark_sold(&epoch, show_id, booking_id, seats).await,
                SeatWrite::UnmarkSold => {
                    holds.unmark_sold(&epoch, show_id, booking_id, seats).await
                }
            }
        })
        .await
        .map(|((), _)| ())
    }

    /// Hold the seats of consecutive booking requests and record the outcomes.
    async fn hold_run(
        &self,
        records: &[&EventRecord],
        requests: Vec<&BookingRequested>,
    ) -> Result<(), Failure> {
        let now = Utc::now();
        let expires_at = now + self.hold_duration();
        let hold_requests: Vec<HoldRequest> = requests
            .iter()
            .map(|request| HoldRequest {
                show_id: request.show_id,
                booking_id: request.booking_id,
                seats: request.seats.clone(),
                expires_at,
            })
            .collect();
        let holds = &*self.holds;
        let batch = hold_requests.as_slice();
        let (outcomes, epoch) = self
            .under_epoch(|epoch| async move { holds.hold(&epoch, batch, now).await })
            .await?;
        let held: Vec<HoldRequest> = hold_requests
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| matches!(outcome, HoldOutcome::Held))
            .map(|(request, _)| request.clone())
            .collect();
        let appends =
            records
                .iter()
                .zip(&requests)
                .zip(outcomes)
                .map(|((record, request), outcome)| {
                    self.record_hold_outcome(record, request, outcome, expires_at)
                });
        for outcome in futures::future::join_all(appends).await {
            outcome?;
        }
        // Fenced (flushed, restarted, rebuilt) between our hold and our appends? The rebuild
        // may have read the log before our `SeatsHeld` were in it: take these holds (our own)
        // again, with their expiries. A fence after this check reads a log that has them.
        if !held.is_empty() {
            match holds.check_epoch(&epoch).await {
                Ok(()) => {}
                Err(HoldError::EpochChanged) => {
                    warn!(
                        holds = held.len(),
                        "the hold store changed while holding: taking the holds again"
                    );
                    let again = held.as_slice();
                    let (outcomes, _) = self
                        .under_epoch(|epoch| async move { holds.hold(&epoch, again, now).await })
                        .await?;
                    let lost = outcomes
                        .iter()
                        .filter(|outcome| !matches!(outcome, HoldOutcome::Held))
                        .count();
                    if lost > 0 {
                        // Taken by others meanwhile; the show stream decides at the sale.
                        warn!(lost, "some holds could not be taken again after a rebuild");
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    async fn record_hold_outcome(
        &self,
        record: &EventRecord,
        request: &BookingRequested,
        outcome: HoldOutcome,
        expires_at: DateTime<Utc>,
    ) -> Result<(), Failure> {
        let command = match &outcome {
            HoldOutcome::Held => BookingCommand::HoldSeats { expires_at },
            HoldOutcome::Taken(taken) => BookingCommand::Reject {
                taken: taken.clone(),
            },
        };
        let cause = Cause::of(record);
        // Fast path: the booking as its request made it, at the version the request was written.
        let state = booking::evolve(None, &BookingEvent::Requested(request.clone()));
        if let Ok(events) = booking::decide(&state, command.clone()) {
            let envelopes = EventEnvelope::derived(
                cause.event_id,
                cause.correlation_id,
                "seat-lock/hold",
                events,
            );
            let new_events = envelopes
                .iter()
                .map(|e| to_new_event(e, Utc::now()))
                .collect::<Result<Vec<_>, _>>()?;
            let append = StreamAppend::new(
                request.booking_id.stream_id(),
                ExpectedVersion::Exact(record.stream_version),
                new_events,
            );
            match self.store.append(append).await {
                // A repeat of a hold may repeat another outcome (the ids are the cause's): a
                // rejection or a finished booking must not keep the seats we just held.
                Ok(result) if result.was_repeat && matches!(outcome, HoldOutcome::Held) => {}
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        // The booking changed since it was requested (cancelled, or held by an earlier delivery).
        let decided = decide_booking(
            &*self.store,
            request.booking_id,
            cause,
            "seat-lock/hold",
            |_| command.clone(),
        )
        .await?;
        let Decided::Refused(refusal) = decided else {
            return Ok(());
        };
        if matches!(outcome, HoldOutcome::Held) {
            info!(booking_id = %request.booking_id, %refusal, "the booking refused its hold: releasing");
            self.write_seats(
                SeatWrite::Release,
                request.show_id,
                request.booking_id,
                &request.seats,
            )
            .await?;
        }
        match refusal {
            // Cancelled (or otherwise ended) before its hold: nothing left to do.
            DomainError::AlreadyFinished { .. } => Ok(()),
            // Still waiting, and the decider will not take this outcome (a hold that ends
            // before the request under clock skew, say): a dead letter, which ends the booking
            // (`booking.abandoned.v1`) instead of leaving it `requested` for ever.
            refusal => Err(Failure(HandlerError::Permanent(format!(
                "the booking refused its hold outcome: {refusal}"
            )))),
        }
    }

    fn cached_show(&self, show_id: ShowId) -> Option<LoadedShow> {
        self.shows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&show_id)
            .cloned()
    }

    fn cache_show(&self, show_id: ShowId, show: Option<LoadedShow>) {
        let mut shows = self.shows.lock().unwrap_or_else(|p| p.into_inner());
        match show {
            Some(show) => shows.insert(show_id, show),
            None => shows.remove(&show_id),
        };
    }

    /// The show, from the cache when it has it. The second value says whether it was read from
    /// the store just now: a cached state is good for a "yes" (the append's expected version
    /// catches a stale one) but a "no" must be confirmed against the store before acting on it.
    async fn show(&self, show_id: ShowId) -> Result<(LoadedShow, bool), Failure> {
        if let Some(show) = self.cached_show(show_id) {
            return Ok((show, false));
        }
        let show = load_show(&*self.store, show_id).await?;
        self.cache_show(show_id, Some(show.clone()));
        Ok((show, true))
    }

    /// Append events to the show stream and the booking stream at once, both at their versions.
    async fn append_to_show_and_booking(
        &self,
        cause: Cause,
        step: &str,
        show: &LoadedShow,
        show_events: Vec<ShowEvent>,
        booking: BookingChange,
    ) -> Result<bool, Failure> {
        let BookingChange {
            booking_id,
            version: booking_version,
            events: booking_events,
        } = booking;
        let show_id = show.show.as_ref().map(|s| s.show_id());
        let all: Vec<DomainEvent> = show_events
            .iter()
            .cloned()
            .map(DomainEvent::from)
            .chain(booking_events.into_iter().map(DomainEvent::from))
            .collect();
        let envelopes = EventEnvelope::derived(cause.event_id, cause.correlation_id, step, all);
        let now = Utc::now();
        let mut new_events = envelopes
            .iter()
            .map(|e| to_new_event(e, now))
            .collect::<Result<Vec<_>, _>>()?;
        let booking_new = new_events.split_off(show_events.len());
        let mut streams = Vec::new();
        if let Some(show_id) = show_id
            && !new_events.is_empty()
        {
            streams.push(StreamAppend::new(
                show_id.stream_id(),
                ExpectedVersion::Exact(show.version),
                new_events,
            ));
        }
        if !booking_new.is_empty() {
            streams.push(StreamAppend::new(
                booking_id.stream_id(),
                ExpectedVersion::Exact(booking_version),
                booking_new,
            ));
        }
        if streams.is_empty() {
            return Ok(true);
        }
        match self.store.append_many(streams).await {
            Ok(_) => {
                if let Some(show_id) = show_id {
                    // Our events are now the show's latest: the cache moves with them (a repeat
                    // means someone else did it: reload next time).
                    let mut state = show.show.clone();
                    for event in &show_events {
                        state = show::evolve(state, event);
                    }
                    self.cache_show(
                        show_id,
                        Some(LoadedShow {
                            show: state,
                            version: show.version + show_events.len() as u64,
                        }),
                    );
                }
                Ok(true)
            }
            Err(StoreError::Conflict { .. }) => {
                if let Some(show_id) = show_id {
                    self.cache_show(show_id, None);
                }
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// A payment succeeded: sell the seats and confirm, or fail and refund.
    async fn sell(&self, record: &EventRecord, booking_id: BookingId) -> Result<Handled, Failure> {
        let cause = Cause::of(record);
        for _ in 0..MAX_SALE_RETRIES {
            let Some(loaded) = load_booking(&*self.store, booking_id).await? else {
                return Err(Failure(HandlerError::Permanent(format!(
                    "booking {booking_id} does not exist"
                ))));
            };
            let booking = &loaded.booking;
            let show_id = booking.show_id();
            match booking.status() {
                BookingStatus::Paid => {}
                BookingStatus::Confirmed => {
                    self.write_seats(SeatWrite::MarkSold, show_id, booking_id, booking.seats())
                        .await?;
                    return Ok(Handled::Done);
                }
                BookingStatus::Failed
                    if booking.failure_reason()
                        == Some(domain::booking::FailureReason::SeatsLost) =>
                {
                    self.write_seats(SeatWrite::Release, show_id, booking_id, booking.seats())
                        .await?;
                    return Ok(lost_seats(
                        "the payment arrived after the hold expired; refunded",
                    ));
                }
                // Cancelled or failed otherwise: the decider refunded the payment already.
                _ => return Ok(Handled::Done),
            }
            let (show, fresh) = self.show(show_id).await?;
            let sale = show::decide(
                &show.show,
                ShowCommand::SellSeats {
                    booking_id,
                    seats: booking.seats().clone(),
                },
            );
            let confirm = booking::decide(&Some(booking.clone()), BookingCommand::Confirm);
            match (sale, confirm) {
                (Ok(show_events), Ok(booking_events)) => {
                    if self
                        .append_to_show_and_booking(
                            cause,
                            "seat-lock/sell",
                            &show,
                            show_events,
                            BookingChange {
                                booking_id,
                                version: loaded.version,
                                events: booking_events,
                            },
                        )
                        .await?
                    {
                        self.write_seats(SeatWrite::MarkSold, show_id, booking_id, booking.seats())
                            .await?;
                        info!(%booking_id, %show_id, "seats sold, booking confirmed");
                        return Ok(Handled::Done);
                    }
                }
                (Err(DomainError::SeatsUnavailable { .. }), _) if !fresh => {
                    // Refused by a cached state: ask the store before failing anyone.
                    self.cache_show(show_id, None);
                }
                (Err(DomainError::SeatsUnavailable { taken }), _) => {
                    let lost =
                        booking::decide(&Some(booking.clone()), BookingCommand::RecordSeatsLost)
                            .map_err(|refusal| {
                                Failure(HandlerError::Permanent(refusal.to_string()))
                            })?;
                    let appended = self
                        .append_to_show_and_booking(
                            cause,
                            "seat-lock/lost",
                            &LoadedShow {
                                show: None,
                                version: 0,
                            },
                            vec![],
                            BookingChange {
                                booking_id,
                                version: loaded.version,
                                events: lost,
                            },
                        )
                        .await?;
                    if appended {
                        self.write_seats(SeatWrite::Release, show_id, booking_id, booking.seats())
                            .await?;
                        let taken: Vec<String> = taken.iter().map(ToString::to_string).collect();
                        return Ok(lost_seats(&format!(
                            "seats {} were sold to another booking; refunded",
                            taken.join(", ")
                        )));
                    }
                }
                (Err(refusal), _) | (_, Err(refusal)) => {
                    return Err(Failure(HandlerError::Permanent(format!(
                        "cannot sell the seats of booking {booking_id}: {refusal}"
                    ))));
                }
            }
        }
        Err(Failure(transient(format!(
            "the sale of booking {booking_id} kept conflicting"
        ))))
    }

    /// A booking ended (cancelled, failed, expired): free what it held; give back what it bought.
    async fn release(&self, record: &EventRecord, event: &BookingEvent) -> Result<(), Failure> {
        let (show_id, booking_id) = (event.show_id(), event.booking_id());
        let seats = match event {
            BookingEvent::Cancelled(cancelled) => {
                if cancelled.previous_status == BookingStatus::Confirmed {
                    self.release_sold(record, show_id, booking_id, cancelled.by)
                        .await?;
                    self.write_seats(SeatWrite::UnmarkSold, show_id, booking_id, &cancelled.seats)
                        .await?;
                }
                cancelled.seats.clone()
            }
            BookingEvent::HoldExpired(expired) => expired.seats.clone(),
            _ => match load_booking(&*self.store, booking_id).await? {
                Some(loaded) => loaded.booking.seats().clone(),
                None => BTreeSet::new(),
            },
        };
        self.write_seats(SeatWrite::Release, show_id, booking_id, &seats)
            .await
    }

    async fn release_sold(
        &self,
        record: &EventRecord,
        show_id: ShowId,
        booking_id: BookingId,
        _by: CancelledBy,
    ) -> Result<(), Failure> {
        let cause = Cause::of(record);
        for _ in 0..MAX_SALE_RETRIES {
            let (show, fresh) = self.show(show_id).await?;
            let events = show::decide(
                &show.show,
                ShowCommand::ReleaseSeats {
                    booking_id,
                    reason: ReleaseReason::Cancelled,
                },
            )
            .map_err(|refusal| Failure(HandlerError::Permanent(refusal.to_string())))?;
            if events.is_empty() && !fresh {
                // Nothing to release by a cached state: confirm against the store.
                self.cache_show(show_id, None);
                continue;
            }
            if events.is_empty() {
                return Ok(());
            }
            let envelopes = EventEnvelope::derived(
                cause.event_id,
                cause.correlation_id,
                "seat-lock/release",
                events.clone(),
            );
            let new_events = envelopes
                .iter()
                .map(|e| to_new_event(e, Utc::now()))
                .collect::<Result<Vec<_>, _>>()?;
            match self
                .store
                .append(StreamAppend::new(
                    show_id.stream_id(),
                    ExpectedVersion::Exact(show.version),
                    new_events,
                ))
                .await
            {
                Ok(_) => {
                    let mut state = show.show.clone();
                    for event in &events {
                        state = show::evolve(state, event);
                    }
                    self.cache_show(
                        show_id,
                        Some(LoadedShow {
                            show: state,
                            version: show.version + events.len() as u64,
                        }),
                    );
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => self.cache_show(show_id, None),
                Err(error) => return Err(error.into()),
            }
        }
        Err(Failure(transient("releasing sold seats kept conflicting")))
    }

    /// Expire every hold whose deadline passed: `HoldExpired` first (unless a payment was
    /// recorded first), then free the seats. Returns how many bookings expired.
    pub async fn sweep_expired(&self) -> Result<usize, HoldError> {
        // A flushed or restarted hold store has lost deadlines too (a Redis restarted from a
        // snapshot even shows its old epoch, but with another run id): check that the epoch
        // is live, rebuilding (or adopting) first if not, even when no new request would.
        let holds = &*self.holds;
        self.under_epoch(|epoch| async move { holds.check_epoch(&epoch).await })
            .await
            .map_err(|Failure(error)| HoldError::Unavailable(error.to_string()))?;
        let now = Utc::now();
        let due = self.holds.due_expiries(now, 500).await?;
        let mut expired = 0;
        for entry in due {
            match self.expire(entry.show_id, entry.booking_id, now).await {
                Ok(true) => expired += 1,
                Ok(false) => {}
                Err(Failure(error)) => {
                    warn!(booking_id = %entry.booking_id, %error, "expiring a hold failed; retrying at the next sweep")
                }
            }
        }
        Ok(expired)
    }

    async fn expire(
        &self,
        show_id: ShowId,
        booking_id: BookingId,
        now: DateTime<Utc>,
    ) -> Result<bool, Failure> {
        let Some(loaded) = load_booking(&*self.store, booking_id).await? else {
            self.holds.forget_expiry(show_id, booking_id).await?;
            return Ok(false);
        };
        // Derived from the booking's first event: a booking expires at most once, so these ids
        // are the same whichever process or sweep appends them.
        let first = loaded
            .timeline
            .first()
            .map_or(EventId::from_uuid(booking_id.as_uuid()), |entry| {
                EventId::from_uuid(entry.event_id)
            });
        let cause = Cause {
            event_id: first,
            correlation_id: first,
        };
        let decided = decide_booking(&*self.store, booking_id, cause, "seat-lock/expire", |_| {
            BookingCommand::ExpireHold { now }
        })
        .await?;
        match decided {
            Decided::Refused(DomainError::HoldNotExpired { .. }) => Ok(false),
            Decided::Appended(_) => {
                self.write_seats(
                    SeatWrite::Release,
                    show_id,
                    booking_id,
                    loaded.booking.seats(),
                )
                .await?;
                info!(%booking_id, %show_id, "hold expired, seats free again");
                Ok(true)
            }
            Decided::Nothing | Decided::Refused(_) => {
                // Paid first, or finished otherwise: the expiry is moot.
                self.holds.forget_expiry(show_id, booking_id).await?;
                Ok(false)
            }
        }
    }
}

/// A payment whose seats are gone: the booking failed and the money goes back; an operator
/// hears of it through an `expired-seats` dead letter.
fn lost_seats(reason: &str) -> Handled {
    Handled::DeadLetter {
        cause: CAUSE_EXPIRED_SEATS,
        reason: reason.to_string(),
        attempts: 1,
        first_failed_at: Utc::now(),
    }
}

#[async_trait]
impl Handler for SeatLock {
    fn subscribes_to(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            event_types::BOOKING_REQUESTED
                | event_types::BOOKING_PAYMENT_SUCCEEDED
                | event_types::BOOKING_CANCELLED
                | event_types::BOOKING_FAILED
                | event_types::BOOKING_ABANDONED
                | event_types::BOOKING_HOLD_EXPIRED
        )
    }

    async fn handle(&self, record: &EventRecord) -> Result<Handled, HandlerError> {
        let outcomes = self.handle_batch(std::slice::from_ref(record)).await?;
        Ok(outcomes.into_iter().next().unwrap_or(Handled::Done))
    }

    async fn handle_batch(&self, records: &[EventRecord]) -> Result<Vec<Handled>, HandlerError> {
        let mut outcomes = vec![Handled::Done; records.len()];
        let mut index = 0;
        while index < records.len() {
            // A run of booking requests is one hold call.
            let run_end = records[index..]
                .iter()
                .position(|r| !matches!(r.event, DomainEvent::Booking(BookingEvent::Requested(_))))
                .map_or(records.len(), |offset| index + offset);
            if run_end > index {
                let run: Vec<&EventRecord> = records[index..run_end].iter().collect();
                let requests: Vec<&BookingRequested> = run
                    .iter()
                    .filter_map(|r| match &r.event {
                        DomainEvent::Booking(BookingEvent::Requested(request)) => Some(request),
                        _ => None,
                    })
                    .collect();
                self.hold_run(&run, requests)
                    .await
                    .map_err(|Failure(e)| e)?;
                index = run_end;
                continue;
            }
            let record = &records[index];
            match &record.event {
                DomainEvent::Booking(BookingEvent::PaymentSucceeded(paid)) => {
                    outcomes[index] = self
                        .sell(record, paid.booking_id)
                        .await
                        .map_err(|Failure(e)| e)?;
                }
                DomainEvent::Booking(
                    event @ (BookingEvent::Cancelled(_)
                    | BookingEvent::Failed(_)
                    | BookingEvent::Abandoned(_)
                    | BookingEvent::HoldExpired(_)),
                ) => {
                    self.release(record, event).await.map_err(|Failure(e)| e)?;
                }
                _ => {}
            }
            index += 1;
        }
        Ok(outcomes)
    }
}

/// Sweep expired holds every `sweep_every` until `shutdown`.
pub async fn run_sweeper(
    seat_lock: Arc<SeatLock>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(seat_lock.config.sweep_every);
    // A hold store or database that is away: back off (not ready meanwhile) rather than fail
    // again on every tick.
    let mut retrying = infra::resilience::Retrying::new("seat-lock sweeper");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => match seat_lock.sweep_expired().await {
                Ok(_) => retrying.succeeded(),
                Err(error) => {
                    if !retrying.failed(format!("sweeping expired holds: {error}"), &mut shutdown).await {
                        break;
                    }
                }
            },
        }
    }
    retrying.stopped();
}

/// Sold seats of every show and held seats of every open hold, from the whole log: what the hold
/// store must hold after it lost its contents.
pub async fn snapshot_from_log(store: &dyn EventStore) -> Result<HoldSnapshot, StoreError> {
    let mut sold: BTreeMap<(ShowId, SeatId), BookingId> = BTreeMap::new();
    let mut held: BTreeMap<BookingId, HoldRequest> = BTreeMap::new();
    let mut after = Position::START;
    loop {
        let batch = store.read_all(after, 5_000).await?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        for recorded in &batch {
            let Ok(event) = decode(recorded) else {
                continue;
            };
            match event {
                DomainEvent::Show(ShowEvent::SeatsSold(sale)) => {
                    for seat in sale.seats {
                        sold.insert((sale.show_id, seat), sale.booking_id);
                    }
                }
                DomainEvent::Show(ShowEvent::SeatsReleased(release)) => {
                    for seat in release.seats {
                        if sold.get(&(release.show_id, seat.clone())) == Some(&release.booking_id) {
                            sold.remove(&(release.show_id, seat));
                        }
                    }
                }
                DomainEvent::Booking(BookingEvent::SeatsHeld(hold)) => {
                    held.insert(
                        hold.booking_id,
                        HoldRequest {
                            show_id: hold.show_id,
                            booking_id: hold.booking_id,
                            seats: hold.seats,
                            expires_at: hold.expires_at,
                        },
                    );
                }
                DomainEvent::Booking(
                    BookingEvent::Confirmed(_)
                    | BookingEvent::HoldExpired(_)
                    | BookingEvent::Cancelled(_)
                    | BookingEvent::Failed(_)
                    | BookingEvent::Abandoned(_)
                    | BookingEvent::Rejected(_),
                ) => {
                    if let DomainEvent::Booking(event) = &event {
                        held.remove(&event.booking_id());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(HoldSnapshot {
        sold: sold
            .into_iter()
            .map(|((show, seat), booking)| (show, seat, booking))
            .collect(),
        held: held.into_values().collect(),
    })
}
