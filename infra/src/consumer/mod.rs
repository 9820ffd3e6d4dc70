//! The consumer runtime: one consumer group on `zq.booking-events`, shared by seat-lock,
//! payment and the notifier, which only plug in a [`Handler`].
//!
//! **Flow.** One dispatcher task polls the group's consumer and hands each record to the worker
//! of its partition over a bounded queue; partitions run in parallel. A full queue pauses the
//! partition at the broker (records already polled wait in order in the dispatcher) and a drained
//! one resumes it: a slow partition holds up neither memory nor the other partitions.
//!
//! **Modes** ([`Mode`]):
//! - *in order* (seat-lock): a worker takes the records queued for its partition as one batch,
//!   hands them to [`Handler::handle_batch`] and retries the whole batch in place on a transient
//!   error. While it retries its queue fills and the partition is paused.
//! - *concurrent* (payment, notifier): up to `max_in_flight` records of a partition at once, one
//!   at a time per stream (a booking's records stay in order), each retried on its own.
//!
//! **Offsets.** `enable.auto.offset.store=false`: a worker stores an offset only past records
//! whose outcome is durable (the handler's appends, or the dead letter), and in concurrent mode
//! only past the completed prefix. librdkafka commits stored offsets every second, on a
//! rebalance and at shutdown, so neither can commit unfinished work. `auto.offset.reset=error`:
//! an offset that vanished alarms instead of silently skipping; a partition with no committed
//! offset at all (a new group, or the embedded broker after a restart) starts at the beginning,
//! which is always safe because every handler is idempotent.
//!
//! **Errors.** Records of types the handler does not subscribe to, and types this build does not
//! know, are skipped and counted. A record that is not a valid event of a subscribed type is
//! poison: a dead letter with the reason ([`dead_letters`]). A record whose handler failed for
//! good or panicked also ends its booking (`booking.abandoned.v1`: failed, refunded if paid), so
//! that no booking waits for ever on a record nobody will finish (DESIGN.md); a booking that has
//! ended already is left as it is. (A dead letter the handler chose, `Handled::DeadLetter`,
//! comes after the handler recorded the booking's outcome itself.) [`HandlerError::Transient`] retries
//! with exponential backoff and jitter ([`crate::backoff`]) until it succeeds or the group stops.
//!
//! **Progress and redrives.** Every second a task saves each partition's progress with a
//! heartbeat ([`progress`]), mirrors unmirrored dead letters, and runs the redrives operators
//! asked for (`zingqueue dlq redrive`) through the same handler.
//!
//! **Leases.** Every handler call runs under its worker's lease ([`lease`]): a handler asks
//! [`ensure_owned`] before a side effect outside the store, so a revoked or stopping worker
//! stops before its next email or charge instead of repeating it beside the new owner.
//!
//! Layout: `record` (what a record holds), `handler` (what services implement), `lease`, `dead_letters`,
//! `progress`, `lag` (consumer lag and group status, for the monitor), `worker` (the partition
//! workers), this file (configuration, the group, the
//! dispatcher and the rebalance hooks).

pub mod dead_letters;
pub mod handler;
pub mod lag;
pub mod lease;
pub mod progress;
pub mod record;
mod worker;

pub use dead_letters::{DLQ_CAUSES, DeadLetterSink, dlq_topic};
pub use handler::{Handled, Handler, HandlerError};
pub use lease::{ensure_owned, still_owned};
pub use progress::{LogPrefix, Watermarks, watermark_checkpoint};
pub use record::{EventRecord, Parsed, RawRecord};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use event_store::{ConsumerProgress, EventStore, Position, StoreError};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::Mutex;

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::kafka::{BOOKING_EVENTS_TOPIC, DEFAULT_PARTITIONS, TopicAdmin};
use crate::resilience::until_available;
use worker::{PartitionWorker, WorkerShared};

/// How a group works through a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One batch after another, each of at most `batch_max` records.
    InOrder { batch_max: usize },
    /// Up to `max_in_flight` records at once, in order per stream.
    Concurrent { max_in_flight: usize },
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The consumer group id, also the service's name (`seat-lock`, `payment`, `notifier`).
    pub group: String,
    pub bootstrap_servers: String,
    pub topic: String,
    pub partitions: i32,
    pub mode: Mode,
    /// Records queued per partition before the partition is paused.
    pub queue_per_partition: usize,
    /// How transient errors are retried (attempts are not limited: the record waits).
    pub retry: Backoff,
    /// Kafka session timeout: how soon a dead member's partitions move to another.
    pub session_timeout: Duration,
    /// How long shutdown waits for records in progress before dropping them (uncommitted).
    pub shutdown_grace: Duration,
    /// Keep the group's log watermark (embedded default, one member holds every partition).
    pub track_watermark: Option<Watermarks>,
    /// Who this member is, for progress rows.
    pub member: String,
}

impl ConsumerConfig {
    pub fn new(group: &str, bootstrap_servers: &str, mode: Mode) -> ConsumerConfig {
        ConsumerConfig {
            group: group.to_string(),
            bootstrap_servers: bootstrap_servers.to_string(),
            topic: BOOKING_EVENTS_TOPIC.to_string(),
            partitions: DEFAULT_PARTITIONS,
            mode,
            queue_per_partition: 1_000,
            // Capped at 2 s: a store or Redis that comes back is used again within about a
            // second (see `crate::resilience::COMPONENT_BACKOFF`).
            retry: Backoff {
                base: Duration::from_millis(50),
                factor: 2.0,
                max_delay: Duration::from_secs(2),
                max_attempts: u32::MAX,
            },
            session_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            track_watermark: None,
            member: format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Topic(#[from] crate::kafka::TopicError),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
}

/// Counters of what a group did (exported by `crate::metrics::export_consumer_stats`).
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Records handled (done or dead-lettered by the handler).
    pub processed: AtomicU64,
    /// Records of types the handler does not subscribe to.
    pub skipped: AtomicU64,
    /// Records of types this build does not know.
    pub unknown_types: AtomicU64,
    /// Records already finished before a restart (embedded default), dropped unhandled.
    pub already_done: AtomicU64,
    /// Handler calls that failed (a transient error, a permanent one or a panic).
    pub failed: AtomicU64,
    /// Transient errors retried (the handler's, and the store's while writing a dead letter).
    pub retried: AtomicU64,
    /// Dead letters written.
    pub dead_lettered: AtomicU64,
    /// Redrives run.
    pub redriven: AtomicU64,
}

impl ConsumerStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A rebalance, as the dispatcher learns of it.
#[derive(Debug)]
enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// librdkafka's callbacks: start partitions without a committed offset at the beginning, and
/// tell the dispatcher about assignments.
pub struct GroupContext {
    group: String,
    topic: String,
    events: mpsc::UnboundedSender<RebalanceEvent>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr;
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            self.start_new_partitions_at_the_beginning(base_consumer, tpl);
        }
        // The assignment itself as librdkafka's default does it.
        let default = DefaultRebalance;
        default.assign_or_revoke(base_consumer, err, tpl);
        let partitions: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .map(|element| element.partition())
            .collect();
        let event = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                info!(group = %self.group, ?partitions, "partitions assigned");
                RebalanceEvent::Assigned(partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(group = %self.group, ?partitions, "partitions revoked");
                RebalanceEvent::Revoked(partitions)
            }
            other => {
                error!(group = %self.group, error = ?other, "rebalance failed");
                return;
            }
        };
        let _ = self.events.send(event);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            debug!(group = %self.group, %error, "offset commit failed (retried with the next)");
        }
    }
}

impl GroupContext {
    /// Where each assigned partition starts: its committed offset; the beginning when it has
    /// none (a new group, or the embedded broker after a restart); its earliest record when the
    /// committed offset lies outside what the broker has (alarmed: records may be gone).
    fn start_new_partitions_at_the_beginning(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(committed) => {
                for element in committed.elements() {
                    let (topic, partition) = (element.topic(), element.partition());
                    let start = match element.offset() {
                        Offset::Invalid => {
                            info!(group = %self.group, partition,
                                  "no committed offset: starting at the beginning of the partition");
                            Offset::Beginning
                        }
                        Offset::Offset(offset) => match consumer.fetch_watermarks(
                            topic,
                            partition,
                            Duration::from_secs(10),
                        ) {
                            Ok((low, high)) if offset < low || offset > high => {
                                error!(group = %self.group, partition, offset, low, high,
                                       "committed offset out of range (retention deleted records, or the broker lost them): starting at the earliest record");
                                Offset::Offset(low)
                            }
                            _ => continue,
                        },
                        _ => continue,
                    };
                    let _ = tpl.set_partition_offset(topic, partition, start);
                }
            }
            Err(error) => {
                warn!(group = %self.group, %error,
                      "cannot read committed offsets; partitions without one will alarm (auto.offset.reset=error)");
            }
        }
    }
}

/// librdkafka's own assign/unassign step of a rebalance (what rdkafka's default `rebalance`
/// does between its hooks), so that [`GroupContext::rebalance`] only adds to it.
struct DefaultRebalance;

impl DefaultRebalance {
    fn assign_or_revoke(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr;
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => consumer.assign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(error) = outcome {
            error!(%error, "applying a rebalance failed");
        }
    }
}

/// Create (or check) the topic the groups consume and every DLQ topic (one partition each).
/// Everything is created up front: a producer touching a missing topic would have the broker
/// auto-create it with its own default partition count.
pub async fn ensure_topics(
    admin: &dyn TopicAdmin,
    topic: &str,
    partitions: i32,
) -> Result<(), crate::kafka::TopicError> {
    admin.ensure_topic(topic, partitions).await?;
    for cause in DLQ_CAUSES {
        admin.ensure_topic(&dlq_topic(cause), 1).await?;
    }
    Ok(())
}

/// One consumer group member running a handler.
pub struct ConsumerGroup {
    config: ConsumerConfig,
    store: Arc<dyn EventStore>,
    handler: Arc<dyn Handler>,
    stats: Arc<ConsumerStats>,
}

impl ConsumerGroup {
    pub fn new(
        config: ConsumerConfig,
        store: Arc<dyn EventStore>,
        handler: Arc<dyn Handler>,
    ) -> ConsumerGroup {
        ConsumerGroup {
            config,
            store,
            handler,
            stats: Arc::new(ConsumerStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Create the topics it needs, then consume until `shutdown` resolves; stops cleanly
    /// (finishing or dropping records in progress, committing only finished work).
    pub async fn run(
        &self,
        admin: &dyn TopicAdmin,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ConsumerError> {
        let config = &self.config;
        crate::metrics::export_consumer_stats(&config.group, self.stats.clone());
        tokio::pin!(shutdown);
        // A member started while the broker or the store is down waits for them (not ready
        // meanwhile); a topic with another partition count stops it.
        let started = until_available(&config.group, "creating the topics", &mut shutdown, || {
            ensure_topics(admin, &config.topic, config.partitions)
        })
        .await?;
        if started.is_none() {
            return Ok(());
        }
        let watermark_start = match &config.track_watermark {
            Some(_) => {
                let name = watermark_checkpoint(&config.group);
                let saved = until_available(
                    &config.group,
                    "reading the group's watermark",
                    &mut shutdown,
                    || self.store.checkpoint(&name),
                )
                .await?;
                match saved {
                    Some(saved) => saved.unwrap_or(Position::START),
                    None => return Ok(()),
                }
            }
            None => Position::START,
        };
        if let Some(marks) = &config.track_watermark {
            marks.register(&config.group, watermark_start);
        }

        let (events, mut rebalances) = mpsc::unbounded_channel();
        let context = GroupContext {
            group: config.group.clone(),
            topic: config.topic.clone(),
            events,
        };
        let consumer: Arc<StreamConsumer<GroupContext>> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", &config.bootstrap_servers)
                .set("group.id", &config.group)
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", "1000")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "error")
                .set(
                    "session.timeout.ms",
                    config.session_timeout.as_millis().to_string(),
                )
                .set("heartbeat.interval.ms", "500")
                .set("enable.partition.eof", "false")
                // The broker answers a fetch at once when records arrive; librdkafka's mock
                // waits out the whole interval, so keep it short: a record is seconds' worth of
                // a customer's wait at every hop of the saga otherwise.
                .set("fetch.wait.max.ms", "20")
                .create_with_context(context)?,
        );
        consumer.subscribe(&[&config.topic])?;
        info!(group = %config.group, topic = %config.topic, mode = ?config.mode,
              member = %config.member, "consumer group started");

        let dead_letters = Arc::new(DeadLetterSink::new(
            self.store.clone(),
            &config.group,
            &config.bootstrap_servers,
        )?);
        let shared = Arc::new(WorkerShared {
            group: config.group.clone(),
            topic: config.topic.clone(),
            handler: self.handler.clone(),
            consumer: consumer.clone(),
            dead_letters: dead_letters.clone(),
            store: self.store.clone(),
            stats: self.stats.clone(),
            retry: config.retry,
            skip_through: watermark_start,
            stopping: Arc::new(AtomicBool::new(false)),
            retrying: std::sync::atomic::AtomicUsize::new(0),
            watermarks: config.track_watermark.clone(),
            progress: Mutex::new(Progress {
                partitions: HashMap::new(),
                watermark: LogPrefix::starting_at(watermark_start),
            }),
        });

        let housekeeping = tokio::spawn(housekeeping(
            self.store.clone(),
            shared.clone(),
            config.clone(),
        ));
        let mut dispatcher = Dispatcher {
            shared: shared.clone(),
            config: config.clone(),
            workers: HashMap::new(),
            waiting: HashMap::new(),
            rejoin: false,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(event) = rebalances.recv() => dispatcher.rebalanced(event),
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let raw = RawRecord::from_message(&message);
                        drop(message);
                        // The rebalance callback runs inside `recv`, before the first record of
                        // a new assignment comes out: apply it first, so that the record meets
                        // its partition's new worker rather than being taken for a stray.
                        while let Ok(event) = rebalances.try_recv() {
                            dispatcher.rebalanced(event);
                        }
                        dispatcher.route(raw);
                    }
                    Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                        // auto.offset.reset=error: librdkafka would have jumped to the newest
                        // record and skipped the rest silently. Alarm, and join the group again:
                        // the assignment then starts such partitions at their earliest record
                        // (see `GroupContext::rebalance`). Handlers are idempotent, so redone
                        // work is harmless and nothing still on the broker is skipped.
                        error!(group = %config.group,
                               "an offset is out of range (retention deleted records, or the broker lost them): rejoining to restart at the earliest records");
                        consumer.unsubscribe();
                        consumer.subscribe(&[&config.topic])?;
                    }
                    Err(error) => {
                        error!(group = %config.group, %error, "consuming failed");
                    }
                },
                _ = tick.tick() => {
                    dispatcher.flush_waiting();
                    dispatcher.check_workers();
                }
            }
            while let Ok(event) = rebalances.try_recv() {
                dispatcher.rebalanced(event);
            }
            if std::mem::take(&mut dispatcher.rejoin) {
                consumer.unsubscribe();
                for (_, worker) in dispatcher.workers.drain() {
                    worker.revoke();
                }
                dispatcher.waiting.clear();
                consumer.subscribe(&[&config.topic])?;
            }
        }

        info!(group = %config.group, "consumer group stopping");
        shared.stopping.store(true, Ordering::SeqCst);
        dispatcher.stop(config.shutdown_grace).await;
        housekeeping.abort();
        crate::resilience::Readiness::global().remove(&format!("{} broker", config.group));
        save_progress(&*self.store, &shared, config).await;
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last commit, or the broker is away: either way only
            // finished work was ever stored, and unfinished work is redone after a restart.
            debug!(group = %config.group, %error, "final commit");
        }
        consumer.unsubscribe();
        info!(group = %config.group, "consumer group stopped");
        Ok(())
    }
}

/// Progress of this member's partitions.
pub(crate) struct Progress {
    /// Partition → log position of the last record of its completed prefix.
    pub partitions: HashMap<i32, Position>,
    pub watermark: LogPrefix,
}

/// Routes records to partition workers and applies rebalances.
struct Dispatcher {
    shared: Arc<WorkerShared>,
    config: ConsumerConfig,
    workers: HashMap<i32, PartitionWorker>,
    /// Records polled for a partition whose queue was full, in order; the partition is paused
    /// while any wait.
    waiting: HashMap<i32, VecDeque<RawRecord>>,
    /// A worker ended unexpectedly: rejoin the group (see [`Dispatcher::worker_gone`]).
    rejoin: bool,
}

impl Dispatcher {
    fn route(&mut self, raw: RawRecord) {
        let partition = raw.partition;
        if !self.workers.contains_key(&partition) {
            // No worker: assignments are applied before routing, so this is a record of a
            // partition being revoked, already in librdkafka's queue. A worker takes it anyway
            // (handlers are idempotent): dropping records of a partition that is ours would
            // stall it, taking one of a partition that moved only repeats work.
            self.start_worker(partition);
        }
        if let Some(waiting) = self.waiting.get_mut(&partition) {
            waiting.push_back(raw);
            return;
        }
        let Some(worker) = self.workers.get(&partition) else {
            return;
        };
        match worker.queue.try_send(raw) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(raw)) => {
                self.pause(partition);
                self.waiting.insert(partition, VecDeque::from([raw]));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.worker_gone(partition),
        }
    }

    /// A worker of a partition that is still ours has ended: found on the tick, not only when
    /// its partition's next record arrives (which may be never).
    fn check_workers(&mut self) {
        let ended: Vec<i32> = self
            .workers
            .iter()
            .filter(|(_, worker)| worker.has_ended())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in ended {
            self.worker_gone(partition);
        }
    }

    /// A worker ended while its partition is still ours (it cannot: workers turn every failure
    /// into a dead letter; this is the net under that). Records it had queued are gone from
    /// this member, so dropping this one too and going on would let a later offset commit past
    /// them. Instead the member rejoins the group: every partition restarts from its committed
    /// offset, which only finished work ever moved, and idempotent handlers redo the rest.
    fn worker_gone(&mut self, partition: i32) {
        error!(group = %self.config.group, partition,
               "a partition worker ended unexpectedly; rejoining the group to resume from the committed offsets");
        self.rejoin = true;
    }

    fn flush_waiting(&mut self) {
        let mut drained = Vec::new();
        let mut gone = Vec::new();
        for (partition, waiting) in &mut self.waiting {
            let Some(worker) = self.workers.get(partition) else {
                continue;
            };
            while let Some(raw) = waiting.pop_front() {
                match worker.queue.try_send(raw) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(raw)) => {
                        waiting.push_front(raw);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        waiting.clear();
                        gone.push(*partition);
                    }
                }
            }
            if waiting.is_empty() {
                drained.push(*partition);
            }
        }
        for partition in drained {
            self.waiting.remove(&partition);
            self.resume(partition);
        }
        for partition in gone {
            self.worker_gone(partition);
        }
    }

    fn partition_list(&self, partition: i32) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.config.topic, partition);
        list
    }

    fn pause(&self, partition: i32) {
        debug!(group = %self.config.group, partition, "queue full: pausing the partition");
        if let Err(error) = self.shared.consumer.pause(&self.partition_list(partition)) {
            warn!(%error, partition, "pausing a partition failed");
        }
    }

    fn resume(&self, partition: i32) {
        debug!(group = %self.config.group, partition, "queue drained: resuming the partition");
        if let Err(error) = self.shared.consumer.resume(&self.partition_list(partition)) {
            debug!(%error, partition, "resuming a partition failed");
        }
    }

    fn start_worker(&mut self, partition: i32) {
        let worker = PartitionWorker::start(
            self.shared.clone(),
            partition,
            self.config.mode,
            self.config.queue_per_partition,
        );
        self.workers.insert(partition, worker);
    }

    fn rebalanced(&mut self, event: RebalanceEvent) {
        match event {
            RebalanceEvent::Revoked(partitions) => {
                for partition in partitions {
                    self.shared.lock_progress().partitions.remove(&partition);
                    self.waiting.remove(&partition);
                    if let Some(worker) = self.workers.remove(&partition) {
                        worker.revoke();
                    }
                }
            }
            RebalanceEvent::Assigned(partitions) => {
                for partition in partitions {
                    // Heartbeats for every owned partition, busy or not; a position never moves
                    // back in the store, so 0 only stands for "nothing finished yet".
                    self.shared
                        .lock_progress()
                        .partitions
                        .entry(partition)
                        .or_insert(Position::START);
                    // A worker may exist already if a record of the partition arrived first: it
                    // keeps its records (replacing it would drop records librdkafka considers
                    // delivered, stalling the partition until the next restart).
                    if self.workers.contains_key(&partition) {
                        continue;
                    }
                    self.waiting.remove(&partition);
                    // A partition paused for a full queue before a rebalance must not stay
                    // paused: the new worker's queue is empty.
                    self.resume(partition);
                    self.start_worker(partition);
                }
            }
        }
    }

    async fn stop(&mut self, grace: Duration) {
        let workers: Vec<PartitionWorker> = self.workers.drain().map(|(_, w)| w).collect();
        let finished = futures::future::join_all(workers.into_iter().map(|w| w.finish()));
        if tokio::time::timeout(grace, finished).await.is_err() {
            warn!(group = %self.config.group, "records still in progress at shutdown were dropped; they are redone after a restart");
        }
    }
}

/// Every second: save progress and heartbeats, mirror dead letters, run requested redrives.
async fn housekeeping(
    store: Arc<dyn EventStore>,
    shared: Arc<WorkerShared>,
    config: ConsumerConfig,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sweeps = 0u64;
    let mut redrives: Option<tokio::task::JoinHandle<()>> = None;
    let broker_component = format!("{} broker", config.group);
    loop {
        tick.tick().await;
        crate::kafka::probe_broker(
            shared.consumer.clone(),
            shared.topic.clone(),
            &broker_component,
        )
        .await;
        save_progress(&*store, &shared, &config).await;
        if sweeps.is_multiple_of(5)
            && let Err(error) = shared.dead_letters.sweep().await
        {
            warn!(%error, "mirroring dead letters failed");
        }
        sweeps += 1;
        // Redrives run beside this loop (a slow one must not delay heartbeats), one round at a
        // time.
        if redrives.as_ref().is_none_or(|round| round.is_finished()) {
            let (store, shared, group) = (store.clone(), shared.clone(), config.group.clone());
            redrives = Some(tokio::spawn(async move {
                match store.pending_redrives(&group, 100).await {
                    Ok(letters) => {
                        for letter in letters {
                            worker::redrive(&shared, &*store, &letter).await;
                        }
                    }
                    Err(error) => warn!(%error, "reading redrive requests failed"),
                }
            }));
        }
    }
}

async fn save_progress(store: &dyn EventStore, shared: &WorkerShared, config: &ConsumerConfig) {
    let (rows, watermark) = {
        let progress = shared.lock_progress();
        let now = Utc::now();
        let rows: Vec<ConsumerProgress> = progress
            .partitions
            .iter()
            .map(|(partition, position)| ConsumerProgress {
                group: config.group.clone(),
                partition: *partition,
                position: *position,
                member: config.member.clone(),
                heartbeat_at: now,
            })
            .collect();
        (rows, progress.watermark.watermark())
    };
    if let Err(error) = store.save_consumer_progress(&rows).await {
        warn!(%error, "saving consumer progress failed");
    }
    let counter = |value: &std::sync::atomic::AtomicU64| value.load(Ordering::Relaxed);
    let counters = event_store::MemberCounters {
        group: config.group.clone(),
        member: config.member.clone(),
        processed: counter(&shared.stats.processed),
        failed: counter(&shared.stats.failed),
        retried: counter(&shared.stats.retried),
        dead_lettered: counter(&shared.stats.dead_lettered),
        heartbeat_at: Utc::now(),
    };
    if let Err(error) = store.save_member_counters(&counters).await {
        warn!(%error, "saving the member's counters failed");
    }
    if config.track_watermark.is_some()
        && let Err(error) = store
            .save_checkpoint(&watermark_checkpoint(&config.group), watermark)
            .await
    {
        warn!(%error, "saving the group's watermark failed");
    }
}
