//! The relay: the transactional outbox's far side. It follows the store's global log and
//! publishes every event to `zq.booking-events`, keyed by its partition key (the show id), so
//! that all events of a show sit in one partition in store order.
//!
//! - **At least once, in order.** Its checkpoint (in the store, name `relay`) moves only over
//!   records Kafka has confirmed, in position order. A crash re-publishes from the checkpoint;
//!   consumers drop records whose stream version they have applied. Re-published records keep
//!   their `ce_id` (the event id).
//! - **Never skips.** The producer retries a record until delivered (`message.timeout.ms=0`). On
//!   an error the producer cannot recover from, the relay drops it, builds a new one and resumes
//!   from the checkpoint.
//! - **Fast.** It is woken by the store's notifications, so store → Kafka takes milliseconds.
//! - **Headers**: CloudEvents 1.0 binary mode, as API.md lists them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{EventStore, Position, RecordedEvent, StoreError, Subscription};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tracing::{Instrument, debug_span, info, warn};

use crate::kafka::{BOOKING_EVENTS_TOPIC, DEFAULT_PARTITIONS, TopicAdmin, relay_producer_config};
use crate::resilience::{Retrying, Transience};

/// The checkpoint name the relay saves its progress under.
pub const CHECKPOINT: &str = "relay";
/// Records sent but not yet confirmed, at most.
const MAX_IN_FLIGHT: usize = 10_000;
/// How often the checkpoint is saved while records keep flowing (always when idle).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    pub partitions: i32,
    /// Events read and published per round.
    pub batch_size: usize,
    /// `ce_source` of every record.
    pub source: String,
    /// How long the producer retries a record before giving up on it; `None` (the default) is
    /// forever. A record given up on makes the relay rebuild its producer and resume from its
    /// checkpoint, so a timeout costs duplicates, never a loss.
    pub delivery_timeout: Option<Duration>,
    /// The embedded default: follow the consumer groups' watermarks (see
    /// [`crate::consumer::progress`]) instead of the relay's checkpoint: start from the lowest
    /// (the embedded broker forgot everything), and stay at most `max_ahead` records ahead of
    /// it (the embedded broker drops a partition's oldest records beyond about 5 MiB).
    pub follow: Option<FollowGroups>,
}

/// How the relay follows the groups in the embedded default.
#[derive(Debug, Clone)]
pub struct FollowGroups {
    pub watermarks: crate::consumer::Watermarks,
    pub max_ahead: u64,
}

impl RelayConfig {
    pub fn new(bootstrap_servers: impl Into<String>) -> RelayConfig {
        RelayConfig {
            bootstrap_servers: bootstrap_servers.into(),
            topic: BOOKING_EVENTS_TOPIC.to_string(),
            partitions: DEFAULT_PARTITIONS,
            batch_size: 500,
            source: "/zingqueue/relay".to_string(),
            delivery_timeout: None,
            follow: None,
        }
    }
}

/// The relay's name in readiness reports and logs.
pub const COMPONENT: &str = "relay";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Topic(#[from] crate::kafka::TopicError),
}

impl Transience for RelayError {
    fn is_transient(&self) -> bool {
        match self {
            RelayError::Store(error) => Transience::is_transient(error),
            // A new producer fixes these (the relay rebuilds it).
            RelayError::Kafka(_) => true,
            RelayError::Topic(error) => error.is_transient(),
        }
    }
}

pub struct Relay {
    store: Arc<dyn EventStore>,
    config: RelayConfig,
}

impl Relay {
    pub fn new(store: Arc<dyn EventStore>, config: RelayConfig) -> Relay {
        Relay { store, config }
    }

    /// Create the topic (or check its partition count), then publish until `shutdown` resolves.
    ///
    /// Rides out its servers: a store or broker that goes away is retried with backoff (the
    /// relay is not ready meanwhile, see [`crate::resilience`]) and publishing resumes from the
    /// checkpoint. Returns an error only for what an operator must fix (a topic with another
    /// partition count, a store that refuses us for good).
    pub async fn run(
        &self,
        admin: &dyn TopicAdmin,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), RelayError> {
        tokio::pin!(shutdown);
        let mut retrying = Retrying::new(COMPONENT);
        let outcome = loop {
            let attempt = async {
                admin
                    .ensure_topic(&self.config.topic, self.config.partitions)
                    .await?;
                let mut producer_config = relay_producer_config(&self.config.bootstrap_servers);
                if let Some(timeout) = self.config.delivery_timeout {
                    producer_config.set("message.timeout.ms", timeout.as_millis().to_string());
                }
                let producer: FutureProducer = producer_config.create()?;
                // Sends wait while the broker is away (`message.timeout.ms=0`): the probe is
                // what shows that on `/readyz`. It ends with this producer.
                let probe = tokio::spawn(probe_broker(producer.clone(), self.config.topic.clone()));
                let published = self.publish_from_checkpoint(&producer, &mut retrying).await;
                probe.abort();
                published
            };
            let error = tokio::select! {
                outcome = attempt => match outcome {
                    Ok(()) => break Ok(()),
                    Err(error) => error,
                },
                () = &mut shutdown => {
                    // Whatever was sent but not confirmed is published again on the next start.
                    info!("relay stopping");
                    break Ok(());
                }
            };
            match error {
                RelayError::Kafka(error) => {
                    // The producer is broken (fatal idempotence error, ...): build a new one
                    // and resume from what Kafka confirmed.
                    warn!(%error, "producer failed; rebuilding it and resuming from the checkpoint");
                    if !retrying.failed(error.to_string(), &mut shutdown).await {
                        break Ok(());
                    }
                }
                error if error.is_transient() => {
                    if !retrying.failed(error.to_string(), &mut shutdown).await {
                        break Ok(());
                    }
                }
                error => break Err(error),
            }
        };
        retrying.stopped();
        crate::resilience::Readiness::global().remove(BROKER_COMPONENT);
        outcome
    }

    /// Publish from the checkpoint; returns only on error.
    ///
    /// A pipeline: records are sent as soon as they are read, up to `MAX_IN_FLIGHT` unconfirmed
    /// ones, and confirmations are taken in position order. The idempotent producer keeps each
    /// partition in send order, so confirming position p means everything up to p is in Kafka;
    /// the checkpoint follows the confirmed prefix, saved at most every `CHECKPOINT_EVERY` (a
    /// crash re-publishes at most that much, which consumers drop by stream version).
    async fn publish_from_checkpoint(
        &self,
        producer: &FutureProducer,
        retrying: &mut Retrying,
    ) -> Result<(), RelayError> {
        let after = match &self.config.follow {
            // The broker starts empty: everything some group has not finished goes out again.
            Some(follow) => follow.watermarks.lowest().unwrap_or(Position::START),
            None => self
                .store
                .checkpoint(CHECKPOINT)
                .await?
                .unwrap_or(Position::START),
        };
        info!(%after, following_groups = self.config.follow.is_some(), "relay publishing");
        retrying.succeeded();
        let mut subscription =
            Subscription::new(self.store.clone(), after).with_batch_size(self.config.batch_size);
        let mut in_flight: VecDeque<(Position, DeliveryFuture)> = VecDeque::new();
        let mut confirmed = after;
        let mut saved = after;
        let mut last_save = Instant::now();
        loop {
            tokio::select! {
                // Confirmations first: they free room and move the checkpoint.
                biased;
                delivery = next_confirmation(&mut in_flight), if !in_flight.is_empty() => {
                    confirmed = delivery?;
                }
                batch = subscription.next_batch(), if in_flight.len() < MAX_IN_FLIGHT => {
                    let batch = batch?;
                    if let (Some(follow), Some(first)) = (&self.config.follow, batch.first()) {
                        // Backpressure from the slowest group: the store is the buffer. Counted
                        // from before this batch, so the groups only wait for records sent.
                        let floor = (first.position.0 - 1).saturating_sub(follow.max_ahead);
                        follow.watermarks.wait_for_lowest(Position(floor)).await;
                    }
                    let span = debug_span!("relay_send", events = batch.len());
                    self.send_batch(producer, &batch, &mut in_flight)
                        .instrument(span)
                        .await?;
                }
            }
            let idle = in_flight.is_empty();
            if confirmed > saved && (idle || last_save.elapsed() >= CHECKPOINT_EVERY) {
                self.store.save_checkpoint(CHECKPOINT, confirmed).await?;
                saved = confirmed;
                last_save = Instant::now();
            }
        }
    }

    async fn send_batch(
        &self,
        producer: &FutureProducer,
        batch: &[RecordedEvent],
        in_flight: &mut VecDeque<(Position, DeliveryFuture)>,
    ) -> Result<(), RelayError> {
        for event in batch {
            in_flight.push_back((event.position, self.send(producer, event).await?));
        }
        Ok(())
    }

    /// Hand one event to the producer (waiting while its queue is full).
    async fn send(
        &self,
        producer: &FutureProducer,
        event: &RecordedEvent,
    ) -> Result<DeliveryFuture, RelayError> {
        let key = event
            .metadata
            .partition_key
            .as_deref()
            .unwrap_or(&event.stream_id);
        let mut record = FutureRecord::to(&self.config.topic)
            .key(key)
            .payload(event.data.as_str())
            .headers(cloud_event_headers(event, &self.config.source));
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // Backpressure from the producer's queue: let it drain, then retry.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }
}

/// The relay's broker in readiness reports.
const BROKER_COMPONENT: &str = "relay broker";

/// Every second, the broker's answer to this producer on `/readyz` (see
/// [`crate::kafka::probe_broker`]).
async fn probe_broker(producer: FutureProducer, topic: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        crate::kafka::probe_broker(Box::new(producer.clone()), topic.clone(), BROKER_COMPONENT)
            .await;
    }
}

/// The position of the oldest unconfirmed record, once Kafka confirms it.
async fn next_confirmation(
    in_flight: &mut VecDeque<(Position, DeliveryFuture)>,
) -> Result<Position, RelayError> {
    let Some((position, delivery)) = in_flight.front_mut() else {
        return std::future::pending().await;
    };
    let outcome = delivery.await;
    let position = *position;
    in_flight.pop_front();
    match outcome {
        Ok(Ok(_)) => Ok(position),
        Ok(Err((error, _))) => Err(error.into()),
        // The producer dropped the record without an answer: treat it as broken.
        Err(_) => Err(KafkaError::Canceled.into()),
    }
}

/// CloudEvents 1.0 binary-mode headers (API.md, "Kafka").
pub fn cloud_event_headers(event: &RecordedEvent, source: &str) -> OwnedHeaders {
    let metadata = &event.metadata;
    let event_id = event.event_id.to_string();
    let ce_type = format!("zingqueue.{}", event.event_type);
    let time = metadata
        .occurred_at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let position = event.position.to_string();
    let stream_version = event.stream_version.to_string();
    let correlation_id = metadata.correlation_id.map(|id| id.to_string());
    let causation_id = metadata.causation_id.map(|id| id.to_string());
    let mut headers = OwnedHeaders::new_with_capacity(14);
    let fields: [(&str, Option<&str>); 13] = [
        ("content-type", Some("application/json")),
        ("ce_specversion", Some("1.0")),
        ("ce_id", Some(&event_id)),
        ("ce_type", Some(&ce_type)),
        ("ce_source", Some(source)),
        ("ce_time", Some(&time)),
        ("ce_subject", Some(&event.stream_id)),
        ("ce_partitionkey", metadata.partition_key.as_deref()),
        ("ce_position", Some(&position)),
        ("ce_streamversion", Some(&stream_version)),
        ("ce_correlationid", correlation_id.as_deref()),
        ("ce_causationid", causation_id.as_deref()),
        ("traceparent", metadata.trace_context.as_deref()),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    headers
}
