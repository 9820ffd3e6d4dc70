//! Partition workers: the in-order and the concurrent mode, and the one place that turns a
//! record into an outcome (skip, handle with retries, dead-letter).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use event_store::{DeadLetter, EventStore, Position};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, error, info_span, warn};

use super::dead_letters::{CAUSE_HANDLER_FAILED, CAUSE_POISON, DeadLetterSink, raw_record_of};
use super::handler::{Handled, Handler, HandlerError};
use super::lease::Lease;
use super::progress::Watermarks;
use super::record::{EventRecord, Parsed, RawRecord, parse};
use super::{ConsumerStats, GroupContext, Mode, Progress};
use crate::backoff::Backoff;

/// What every worker of a group shares.
pub(crate) struct WorkerShared {
    pub group: String,
    pub topic: String,
    pub handler: Arc<dyn Handler>,
    pub consumer: Arc<StreamConsumer<GroupContext>>,
    pub dead_letters: Arc<DeadLetterSink>,
    /// Where a dead-lettered booking is ended.
    pub store: Arc<dyn EventStore>,
    pub stats: Arc<ConsumerStats>,
    pub retry: Backoff,
    /// Records at or below this log position were finished before a restart.
    pub skip_through: Position,
    /// Set when the group stops (shared with every handler call's lease).
    pub stopping: Arc<AtomicBool>,
    /// Records (or batches) of this member retrying a transient failure now: the group reports
    /// not ready while there is any (see [`Retries`]).
    pub retrying: AtomicUsize,
    pub watermarks: Option<Watermarks>,
    pub progress: Mutex<Progress>,
}

impl WorkerShared {
    /// One handler call's time, into `zq_handler_duration_seconds{group}`.
    fn record_duration(&self, started: std::time::Instant) {
        metrics::histogram!("zq_handler_duration_seconds", "group" => self.group.clone())
            .record(started.elapsed().as_secs_f64());
    }

    pub fn lock_progress(&self) -> MutexGuard<'_, Progress> {
        // A panic while holding this lock leaves plain numbers behind, still usable.
        self.progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records finished up to and including `last_offset` on `partition`, the last at `position`.
    fn finished(
        &self,
        partition: i32,
        last_offset: i64,
        position: Option<Position>,
        revoked: &AtomicBool,
    ) {
        if revoked.load(Ordering::SeqCst) {
            // The partition has a new owner (maybe a newer worker here): its offsets are theirs.
            return;
        }
        if let Err(error) = self
            .consumer
            // librdkafka stores `offset + 1`, the next record to read: pass the last one done.
            .store_offset(&self.topic, partition, last_offset)
        {
            debug!(%error, partition, "storing an offset failed (partition revoked?)");
        }
        if let Some(position) = position {
            let mut progress = self.lock_progress();
            let entry = progress.partitions.entry(partition).or_insert(position);
            if *entry < position {
                *entry = position;
            }
        }
    }

    /// A log position is finished (whatever its outcome): move the group's watermark.
    fn complete_position(&self, position: Option<Position>) {
        let (Some(position), Some(marks)) = (position, &self.watermarks) else {
            return;
        };
        let watermark = self.lock_progress().watermark.complete(position);
        marks.advance(&self.group, watermark);
    }

    /// The lease a handler call of this worker runs under (see [`super::lease`]).
    fn lease(&self, revoked: &Arc<AtomicBool>) -> Lease {
        Lease::new(revoked.clone(), self.stopping.clone())
    }

    fn stopped(&self, revoked: &AtomicBool) -> bool {
        self.stopping.load(Ordering::SeqCst) || revoked.load(Ordering::SeqCst)
    }
}

/// The worker of one partition.
pub(crate) struct PartitionWorker {
    pub queue: mpsc::Sender<RawRecord>,
    revoked: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PartitionWorker {
    pub fn start(shared: Arc<WorkerShared>, partition: i32, mode: Mode, capacity: usize) -> Self {
        let (queue, records) = mpsc::channel(capacity.max(1));
        let revoked = Arc::new(AtomicBool::new(false));
        let task = match mode {
            Mode::InOrder { batch_max } => tokio::spawn(in_order(
                shared,
                partition,
                records,
                revoked.clone(),
                batch_max.max(1),
            )),
            Mode::Concurrent { max_in_flight } => tokio::spawn(concurrent(
                shared,
                partition,
                records,
                revoked.clone(),
                max_in_flight.max(1),
            )),
        };
        PartitionWorker {
            queue,
            revoked,
            task,
        }
    }

    /// Whether the worker's task has ended (only revocation and shutdown end it normally).
    pub fn has_ended(&self) -> bool {
        self.task.is_finished()
    }

    /// The partition moved away: stop after the record in hand, store no more offsets.
    pub fn revoke(self) {
        self.revoked.store(true, Ordering::SeqCst);
    }

    /// Shutdown: finish what is in progress (the group's `stopping` flag is set).
    pub async fn finish(self) {
        drop(self.queue);
        let _ = self.task.await;
    }
}

async fn in_order(
    shared: Arc<WorkerShared>,
    partition: i32,
    mut records: mpsc::Receiver<RawRecord>,
    revoked: Arc<AtomicBool>,
    batch_max: usize,
) {
    while let Some(first) = records.recv().await {
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match records.try_recv() {
                Ok(raw) => batch.push(raw),
                Err(_) => break,
            }
        }
        if shared.stopped(&revoked) {
            return;
        }
        let last_offset = batch.last().map_or(0, |raw| raw.offset);
        let positions: Vec<Option<Position>> = batch.iter().map(RawRecord::log_position).collect();
        let span =
            info_span!("consume_batch", group = %shared.group, partition, records = batch.len());
        if !handle_batch(&shared, batch, &revoked)
            .instrument(span)
            .await
        {
            return;
        }
        let last_position = positions.iter().rev().flatten().next().copied();
        shared.finished(partition, last_offset, last_position, &revoked);
        for position in positions {
            shared.complete_position(position);
        }
    }
}

/// Handle one in-order batch. False when the worker stopped before the batch was durable.
async fn handle_batch(
    shared: &Arc<WorkerShared>,
    batch: Vec<RawRecord>,
    revoked: &Arc<AtomicBool>,
) -> bool {
    let mut events = Vec::with_capacity(batch.len());
    for raw in batch {
        match classify(shared, raw) {
            Classified::Handle(record) => events.push(*record),
            Classified::Finished => {}
            Classified::Poison {
                raw,
                event_type,
                reason,
            } => {
                if !dead_letter(
                    shared,
                    &raw,
                    event_type.as_deref(),
                    CAUSE_POISON,
                    &reason,
                    1,
                    Utc::now(),
                    revoked,
                )
                .await
                {
                    return false;
                }
            }
        }
    }
    if events.is_empty() {
        return true;
    }
    let first_failed_at = Utc::now();
    let mut attempt = 0u32;
    let mut retries = Retries::new(shared);
    let outcomes = loop {
        attempt += 1;
        let call = shared
            .lease(revoked)
            .scope(AssertUnwindSafe(shared.handler.handle_batch(&events)).catch_unwind());
        let started = std::time::Instant::now();
        let called = call.await;
        shared.record_duration(started);
        if !matches!(called, Ok(Ok(_))) {
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        match called {
            Ok(Ok(outcomes)) if outcomes.len() == events.len() => break Some(outcomes),
            Ok(Ok(outcomes)) => {
                warn!(
                    expected = events.len(),
                    got = outcomes.len(),
                    "handle_batch returned the wrong number of outcomes; handling one by one"
                );
                break None;
            }
            Ok(Err(HandlerError::Transient(reason))) => {
                if !retries.wait(&reason, revoked).await {
                    return false;
                }
            }
            Ok(Err(HandlerError::Permanent(reason))) => {
                debug!(%reason, "a batch failed for good; handling its records one by one");
                break None;
            }
            Err(_) => {
                warn!("the handler panicked on a batch; handling its records one by one");
                break None;
            }
        }
    };
    match outcomes {
        Some(outcomes) => {
            for (record, outcome) in events.iter().zip(outcomes) {
                if !settle(
                    shared,
                    record,
                    Ok(outcome),
                    first_failed_at,
                    attempt,
                    revoked,
                )
                .await
                {
                    return false;
                }
            }
        }
        None => {
            for record in &events {
                if !handle_one(shared, record, revoked).await {
                    return false;
                }
            }
        }
    }
    true
}

async fn concurrent(
    shared: Arc<WorkerShared>,
    partition: i32,
    mut records: mpsc::Receiver<RawRecord>,
    revoked: Arc<AtomicBool>,
    max_in_flight: usize,
) {
    // Offsets received and not yet passed by the committed prefix → (log position, done?).
    let mut unsettled: BTreeMap<i64, (Option<Position>, bool)> = BTreeMap::new();
    // Streams with a record in progress → their records waiting behind it.
    let mut busy: HashMap<String, VecDeque<RawRecord>> = HashMap::new();
    let mut tasks: JoinSet<(i64, String, bool)> = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            raw = records.recv(), if open && unsettled.len() < max_in_flight => {
                let Some(raw) = raw else {
                    open = false;
                    continue;
                };
                if shared.stopped(&revoked) {
                    open = false;
                    continue;
                }
                unsettled.insert(raw.offset, (raw.log_position(), false));
                let key = raw.order_key();
                match busy.get_mut(&key) {
                    Some(waiting) => waiting.push_back(raw),
                    None => {
                        busy.insert(key.clone(), VecDeque::new());
                        spawn_one(&mut tasks, &shared, &revoked, raw, key);
                    }
                }
            }
            Some(joined) = tasks.join_next() => {
                let Ok((offset, key, durable)) = joined else {
                    // A task panicked outside the handler (whose panics become dead letters):
                    // its record can never settle, so the prefix could not move again. End the
                    // worker; the dispatcher then rejoins the group and the partition resumes
                    // from its committed offset (`Dispatcher::worker_gone`).
                    warn!(group = %shared.group, partition, "a record's task panicked; ending the worker");
                    return;
                };
                if !durable {
                    // Stopping or revoked: nothing after this may be committed.
                    return;
                }
                if let Some(entry) = unsettled.get_mut(&offset) {
                    entry.1 = true;
                    shared.complete_position(entry.0);
                }
                match busy.get_mut(&key).and_then(VecDeque::pop_front) {
                    Some(next) if !shared.stopped(&revoked) => spawn_one(&mut tasks, &shared, &revoked, next, key),
                    _ => {
                        busy.remove(&key);
                    }
                }
                // Move the committed prefix over every finished record at its front.
                let mut passed = None;
                while let Some(entry) = unsettled.first_entry() {
                    if !entry.get().1 {
                        break;
                    }
                    let (offset, (position, _)) = entry.remove_entry();
                    passed = Some((offset, position));
                }
                if let Some((offset, position)) = passed {
                    shared.finished(partition, offset, position, &revoked);
                }
            }
            else => break,
        }
        if !open && tasks.is_empty() {
            break;
        }
    }
}

fn spawn_one(
    tasks: &mut JoinSet<(i64, String, bool)>,
    shared: &Arc<WorkerShared>,
    revoked: &Arc<AtomicBool>,
    raw: RawRecord,
    key: String,
) {
    let shared = shared.clone();
    let revoked = revoked.clone();
    tasks.spawn(async move {
        let offset = raw.offset;
        let durable = process_one(&shared, raw, &revoked).await;
        (offset, key, durable)
    });
}

/// One record, from classification to a durable outcome. False if the worker stopped first.
async fn process_one(
    shared: &Arc<WorkerShared>,
    raw: RawRecord,
    revoked: &Arc<AtomicBool>,
) -> bool {
    match classify(shared, raw) {
        Classified::Finished => true,
        Classified::Poison {
            raw,
            event_type,
            reason,
        } => {
            dead_letter(
                shared,
                &raw,
                event_type.as_deref(),
                CAUSE_POISON,
                &reason,
                1,
                Utc::now(),
                revoked,
            )
            .await
        }
        Classified::Handle(record) => handle_one(shared, &record, revoked).await,
    }
}

enum Classified {
    Handle(Box<EventRecord>),
    /// Nothing to do: skipped (not subscribed, unknown type) or finished before a restart.
    Finished,
    Poison {
        raw: RawRecord,
        event_type: Option<String>,
        reason: String,
    },
}

fn classify(shared: &WorkerShared, raw: RawRecord) -> Classified {
    if let Some(position) = raw.log_position()
        && position <= shared.skip_through
    {
        shared.stats.already_done.fetch_add(1, Ordering::Relaxed);
        return Classified::Finished;
    }
    match parse(raw) {
        Parsed::Event(record) => {
            if shared.handler.subscribes_to(record.event.event_type()) {
                Classified::Handle(record)
            } else {
                shared.stats.skipped.fetch_add(1, Ordering::Relaxed);
                Classified::Finished
            }
        }
        Parsed::UnknownType(event_type) => {
            debug!(%event_type, "skipping an event type this build does not know");
            shared.stats.unknown_types.fetch_add(1, Ordering::Relaxed);
            Classified::Finished
        }
        Parsed::Poison {
            raw,
            event_type,
            reason,
        } => match event_type {
            // A current type the handler does not act on is not its poison.
            Some(name)
                if domain::event_types::ALL.contains(&name.as_str())
                    && !shared.handler.subscribes_to(&name) =>
            {
                shared.stats.skipped.fetch_add(1, Ordering::Relaxed);
                Classified::Finished
            }
            event_type => Classified::Poison {
                raw: *raw,
                event_type,
                reason,
            },
        },
    }
}

/// Handle one event record with transient retries. False if the worker stopped first.
async fn handle_one(
    shared: &Arc<WorkerShared>,
    record: &EventRecord,
    revoked: &Arc<AtomicBool>,
) -> bool {
    let booking_id = booking_of(record);
    let span = info_span!("consume", group = %shared.group, event_id = %record.event_id,
                          event_type = %record.event_type, show_id = %record.event.show_id(),
                          booking_id = ?booking_id, position = %record.position);
    async {
        let first_failed_at = Utc::now();
        let mut attempt = 0u32;
        let mut retries = Retries::new(shared);
        loop {
            attempt += 1;
            let call = shared
                .lease(revoked)
                .scope(AssertUnwindSafe(shared.handler.handle(record)).catch_unwind());
            let started = std::time::Instant::now();
            let called = call.await;
            shared.record_duration(started);
            if !matches!(called, Ok(Ok(_))) {
                shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            let outcome = match called {
                Ok(Err(HandlerError::Transient(reason))) => {
                    if !retries.wait(&reason, revoked).await {
                        return false;
                    }
                    continue;
                }
                Ok(outcome) => outcome,
                Err(payload) => Err(HandlerError::Permanent(panic_reason(payload.as_ref()))),
            };
            return settle(shared, record, outcome, first_failed_at, attempt, revoked).await;
        }
    }
    .instrument(span)
    .await
}

/// What a panic said, for the dead letter's reason.
fn panic_reason(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|message| (*message).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a payload that is not text".into());
    format!("the handler panicked: {message}")
}

/// The booking a record is about, if any.
fn booking_of(record: &EventRecord) -> Option<domain::BookingId> {
    match &record.event {
        domain::DomainEvent::Booking(event) => Some(event.booking_id()),
        domain::DomainEvent::Show(event) => event.booking_id(),
    }
}

/// Make a handler's outcome durable (a dead letter when it asks for one).
async fn settle(
    shared: &Arc<WorkerShared>,
    record: &EventRecord,
    outcome: Result<Handled, HandlerError>,
    first_failed_at: DateTime<Utc>,
    attempts: u32,
    revoked: &AtomicBool,
) -> bool {
    shared.stats.processed.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Ok(Handled::Done) => true,
        // The handler chose the dead letter and recorded what the domain needed first (a
        // payment failure, lost seats): the booking has its outcome already.
        Ok(Handled::DeadLetter {
            cause,
            reason,
            attempts,
            first_failed_at,
        }) => {
            dead_letter(
                shared,
                &record.raw,
                Some(&record.event_type),
                cause,
                &reason,
                attempts,
                first_failed_at,
                revoked,
            )
            .await
        }
        // The handler failed (or panicked): nobody will finish this record, so its booking is
        // ended here, once the dead letter is kept.
        Err(error) => {
            let reason = error.to_string();
            dead_letter(
                shared,
                &record.raw,
                Some(&record.event_type),
                CAUSE_HANDLER_FAILED,
                &reason,
                attempts,
                first_failed_at,
                revoked,
            )
            .await
                && end_booking(shared, record, CAUSE_HANDLER_FAILED, &reason, revoked).await
        }
    }
}

/// A record of a booking was dead-lettered: end the booking (`booking.abandoned.v1`, refunded
/// if paid), unless it has ended already. Retried while the store is away. False if the
/// worker stopped first (the record is then redone, its dead letter kept once by its id).
async fn end_booking(
    shared: &Arc<WorkerShared>,
    record: &EventRecord,
    cause: &str,
    reason: &str,
    revoked: &AtomicBool,
) -> bool {
    let Some(booking_id) = booking_of(record) else {
        return true;
    };
    let handler = format!("{}/abandon", shared.group);
    let mut retries = Retries::new(shared);
    loop {
        let decided = crate::commands::decide_booking(
            &*shared.store,
            booking_id,
            crate::commands::Cause::of(record),
            &handler,
            |_| domain::BookingCommand::Abandon {
                reason: format!("{cause}: {reason}"),
            },
        )
        .await;
        match decided {
            Ok(crate::commands::Decided::Appended(_)) => {
                warn!(group = %shared.group, %booking_id, cause,
                      "a record of the booking was dead-lettered: the booking is abandoned");
                return true;
            }
            Ok(_) | Err(crate::commands::CommandError::NoSuchBooking(_)) => return true,
            Err(error) => match HandlerError::from(error) {
                HandlerError::Transient(reason) => {
                    let reason = format!("ending a dead-lettered booking: {reason}");
                    if !retries.wait(&reason, revoked).await {
                        return false;
                    }
                }
                HandlerError::Permanent(reason) => {
                    error!(group = %shared.group, %booking_id, %reason,
                           "a dead-lettered booking could not be ended");
                    return true;
                }
            },
        }
    }
}

/// Store a dead letter, retrying while the store is away. False if the worker stopped first.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    shared: &Arc<WorkerShared>,
    raw: &RawRecord,
    event_type: Option<&str>,
    cause: &str,
    reason: &str,
    attempts: u32,
    first_failed_at: DateTime<Utc>,
    revoked: &AtomicBool,
) -> bool {
    let mut retries = Retries::new(shared);
    loop {
        match shared
            .dead_letters
            .record(raw, event_type, cause, reason, attempts, first_failed_at)
            .await
        {
            Ok(_) => {
                shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(error) => {
                let reason = format!("storing a dead letter: {error}");
                if !retries.wait(&reason, revoked).await {
                    return false;
                }
            }
        }
    }
}

/// The retries of one record (or batch): backoff, counters, and the group's readiness, which
/// is "not ready" while any record of the member is retrying and ready again when the last one
/// is over, however it ended (done, dead-lettered, revoked, stopped).
struct Retries<'a> {
    shared: &'a WorkerShared,
    attempts: u32,
    counted: bool,
}

impl<'a> Retries<'a> {
    fn new(shared: &'a WorkerShared) -> Retries<'a> {
        Retries {
            shared,
            attempts: 0,
            counted: false,
        }
    }

    /// Back off before another attempt. False when the worker is stopping or lost its
    /// partition (checked first: a revoked worker does not wait out a backoff to learn it).
    async fn wait(&mut self, reason: &str, revoked: &AtomicBool) -> bool {
        let shared = self.shared;
        if shared.stopped(revoked) {
            return false;
        }
        self.attempts += 1;
        shared.stats.retried.fetch_add(1, Ordering::Relaxed);
        if !self.counted {
            self.counted = true;
            shared.retrying.fetch_add(1, Ordering::SeqCst);
        }
        crate::resilience::Readiness::global().set_not_ready(&shared.group, reason);
        let delay = shared.retry.delay(self.attempts);
        warn!(group = %shared.group, attempt = self.attempts, ?delay, %reason, "transient failure; retrying");
        tokio::time::sleep(delay).await;
        !shared.stopped(revoked)
    }
}

impl Drop for Retries<'_> {
    fn drop(&mut self) {
        if self.counted && self.shared.retrying.fetch_sub(1, Ordering::SeqCst) == 1 {
            crate::resilience::Readiness::global().set_ready(&self.shared.group);
        }
    }
}

/// Run a dead letter an operator asked to redrive through the handler again, and record the
/// outcome on the letter. Any side effect is keyed as on first delivery, so a redrive of work
/// that was done after all changes nothing.
pub(crate) async fn redrive(
    shared: &Arc<WorkerShared>,
    store: &dyn EventStore,
    letter: &DeadLetter,
) {
    // One member of the group runs it, once per request.
    match store.claim_redrive(letter.id).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            warn!(%error, dead_letter = letter.id, "claiming a redrive failed; retrying later");
            return;
        }
    }
    let raw = raw_record_of(letter);
    let failure = match parse(raw) {
        Parsed::Event(record) if shared.handler.subscribes_to(record.event.event_type()) => {
            let handle = || async {
                AssertUnwindSafe(shared.handler.handle(&record))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|payload| {
                        Err(HandlerError::Permanent(panic_reason(payload.as_ref())))
                    })
            };
            let mut outcome = handle().await;
            for attempt in 1..3 {
                match &outcome {
                    Err(HandlerError::Transient(_)) => {
                        tokio::time::sleep(shared.retry.delay(attempt)).await;
                        outcome = handle().await;
                    }
                    _ => break,
                }
            }
            match outcome {
                Ok(Handled::Done) => None,
                Ok(Handled::DeadLetter { reason, .. }) => Some(reason),
                Err(HandlerError::Transient(reason)) => {
                    // Dead again with the reason; an operator may ask once more.
                    Some(format!("redrive failed transiently: {reason}"))
                }
                Err(HandlerError::Permanent(reason)) => Some(reason),
            }
        }
        Parsed::Event(_) | Parsed::UnknownType(_) => None,
        Parsed::Poison { reason, .. } => Some(reason),
    };
    shared.stats.redriven.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = store.finish_redrive(letter.id, failure.as_deref()).await {
        warn!(%error, dead_letter = letter.id, "recording a redrive's outcome failed; it runs again");
    }
}
