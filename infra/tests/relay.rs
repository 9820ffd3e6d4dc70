//! The relay against a real Postgres event store and librdkafka's mock cluster (a Kafka-protocol
//! broker on loopback): every event arrives, keyed by show, in the partition Java's murmur2
//! gives, in store order per stream, with the CloudEvents headers; nothing is lost across a
//! relay restart or a broker outage longer than the delivery timeout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use event_store::{EventMetadata, EventStore, ExpectedVersion, NewEvent, Position, StreamAppend};
use infra::kafka::{TopicAdmin, TopicError, check_partitions};
use infra::relay::{CHECKPOINT, Relay, RelayConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use uuid::Uuid;

const PARTITIONS: i32 = 12;

/// Topic admin for testkit's broker: the mock cluster creates topics through its handle.
struct TestkitAdmin<'a>(&'a testkit::KafkaBroker);

#[async_trait]
impl TopicAdmin for TestkitAdmin<'_> {
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), TopicError> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.0.bootstrap_servers)
            .create()?;
        if check_partitions(client.client(), topic, partitions).is_err() {
            self.0
                .create_topic(topic, partitions)
                .map_err(|error| TopicError::Create {
                    topic: topic.to_string(),
                    reason: error.to_string(),
                })?;
        }
        check_partitions(client.client(), topic, partitions)
    }
}

use testkit::java_partition;

/// A record as the test reads it back.
#[derive(Debug, Clone)]
struct Received {
    partition: i32,
    key: String,
    payload: String,
    headers: HashMap<String, String>,
}

/// Append `per_stream` events to each of `bookings` booking streams of each show; returns the
/// appended events by stream, in order.
async fn append_bookings(
    store: &Arc<dyn EventStore>,
    shows: &[Uuid],
    bookings: usize,
    per_stream: u64,
) -> BTreeMap<String, Vec<Uuid>> {
    let mut appended = BTreeMap::new();
    for version in 1..=per_stream {
        for show in shows {
            for booking in 0..bookings {
                let stream = format!("booking-{show}-{booking}");
                let event_id = Uuid::now_v7();
                let event = NewEvent::from_json_text(
                    event_id,
                    "booking.something.v1",
                    format!(r#"{{"show":"{show}","booking":{booking},"v":{version}}}"#),
                    EventMetadata {
                        correlation_id: Some(Uuid::now_v7()),
                        causation_id: Some(Uuid::now_v7()),
                        partition_key: Some(show.to_string()),
                        trace_context: Some(
                            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                        ),
                        ..EventMetadata::default()
                    },
                )
                .unwrap();
                store
                    .append(StreamAppend::new(
                        stream.clone(),
                        ExpectedVersion::Exact(version - 1),
                        vec![event],
                    ))
                    .await
                    .unwrap();
                appended
                    .entry(stream)
                    .or_insert_with(Vec::new)
                    .push(event_id);
            }
        }
    }
    appended
}

/// Read every partition from the start until `count` distinct event ids have arrived.
fn consume(bootstrap: &str, topic: &str, count: usize, deadline: Duration) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("relay-test-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut ids = HashSet::new();
    while ids.len() < count {
        assert!(
            started.elapsed() < deadline,
            "only {} of {count} events arrived within {deadline:?}",
            ids.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap();
        let mut headers = HashMap::new();
        if let Some(all) = message.headers() {
            for header in all.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                headers.insert(header.key.to_string(), value.unwrap_or_default());
            }
        }
        ids.insert(headers.get("ce_id").cloned().unwrap_or_default());
        received.push(Received {
            partition: message.partition(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            headers,
        });
    }
    received
}

/// Per stream, the event ids in the order a consumer applies them: records are in partition
/// order; one whose stream version was applied already (a re-publication) is dropped.
fn applied_order(received: &[Received]) -> BTreeMap<String, Vec<Uuid>> {
    let mut applied: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    for record in received {
        let stream = record.headers["ce_subject"].clone();
        let version: u64 = record.headers["ce_streamversion"].parse().unwrap();
        let seen = versions.entry(stream.clone()).or_insert(0);
        if version <= *seen {
            continue;
        }
        assert_eq!(version, *seen + 1, "stream {stream} skipped a version");
        *seen = version;
        applied
            .entry(stream)
            .or_default()
            .push(record.headers["ce_id"].parse().unwrap());
    }
    applied
}

async fn start_relay(
    store: Arc<dyn EventStore>,
    kafka: &testkit::KafkaBroker,
    config: RelayConfig,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let admin = TestkitAdmin(kafka);
    // Create the topic before the relay task starts (the admin borrows the broker).
    admin
        .ensure_topic(&config.topic, config.partitions)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = CheckOnly {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
    };
    let task = tokio::spawn(async move {
        let relay = Relay::new(store, config);
        relay
            .run(&admin, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stop, task)
}

/// Checks the partition count of a topic created beforehand (the mock has no CreateTopics).
struct CheckOnly {
    bootstrap_servers: String,
}

#[async_trait]
impl TopicAdmin for CheckOnly {
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), TopicError> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .create()?;
        check_partitions(client.client(), topic, partitions)
    }
}

fn config(kafka: &testkit::KafkaBroker) -> RelayConfig {
    RelayConfig {
        partitions: PARTITIONS,
        ..RelayConfig::new(kafka.bootstrap_servers.clone())
    }
}

async fn wait_for_checkpoint(store: &Arc<dyn EventStore>, head: Position) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.checkpoint(CHECKPOINT).await.unwrap() < Some(head) {
        assert!(
            Instant::now() < deadline,
            "the relay's checkpoint never reached {head}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Read back everything `appended` (within `deadline`), check that each stream arrived whole and
/// in store order, wait until the relay's checkpoint reaches the log head, and stop the relay.
/// Returns the records as read, duplicates included.
async fn expect_all_relayed(
    store: &Arc<dyn EventStore>,
    kafka: &testkit::KafkaBroker,
    appended: &BTreeMap<String, Vec<Uuid>>,
    deadline: Duration,
    (stop, relay): (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
) -> Vec<Received> {
    let total: usize = appended.values().map(Vec::len).sum();
    let received = consume(
        &kafka.bootstrap_servers,
        "zq.booking-events",
        total,
        deadline,
    );
    assert_eq!(&applied_order(&received), appended);
    wait_for_checkpoint(store, store.head().await.unwrap()).await;
    let _ = stop.send(());
    relay.await.unwrap();
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_keyed_by_show_in_its_murmur2_partition_with_headers() {
    let database = testkit::postgres();
    let store = event_store::open(&database.url).await.unwrap();
    let kafka = testkit::kafka();
    let relay = start_relay(store.clone(), &kafka, config(&kafka)).await;

    let shows: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let appended = append_bookings(&store, &shows, 4, 5).await;
    // Every event once, in store order per stream; the checkpoint reaches the head.
    let received =
        expect_all_relayed(&store, &kafka, &appended, Duration::from_secs(60), relay).await;

    for record in &received {
        assert_eq!(
            record.partition,
            java_partition(record.key.as_bytes(), PARTITIONS),
            "show {} is not in its murmur2 partition",
            record.key
        );
        assert_eq!(record.headers["ce_partitionkey"], record.key);
        assert!(
            record.payload.contains(&record.key),
            "value is the event's JSON data"
        );
        for header in [
            "ce_specversion",
            "ce_id",
            "ce_type",
            "ce_source",
            "ce_time",
            "ce_subject",
            "ce_position",
            "ce_streamversion",
            "ce_correlationid",
            "ce_causationid",
            "traceparent",
            "content-type",
        ] {
            assert!(record.headers.contains_key(header), "missing {header}");
        }
        assert_eq!(record.headers["content-type"], "application/json");
        assert_eq!(record.headers["ce_specversion"], "1.0");
        assert_eq!(record.headers["ce_type"], "zingqueue.booking.something.v1");
        assert_eq!(record.headers["ce_source"], "/zingqueue/relay");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restart_loses_nothing_and_duplicates_keep_their_ce_id() {
    let database = testkit::postgres();
    let store = event_store::open(&database.url).await.unwrap();
    let kafka = testkit::kafka();
    let shows: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();

    let (stop, relay) = start_relay(store.clone(), &kafka, config(&kafka)).await;
    let mut appended = append_bookings(&store, &shows, 2, 3).await;
    let _ = stop.send(());
    relay.await.unwrap();

    // Written while no relay runs; then a new relay resumes from the checkpoint.
    let later_shows: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    appended.extend(append_bookings(&store, &later_shows, 2, 3).await);
    let relay = start_relay(store.clone(), &kafka, config(&kafka)).await;
    let received =
        expect_all_relayed(&store, &kafka, &appended, Duration::from_secs(60), relay).await;
    // A record published twice carries the same ce_id, position and data both times.
    let mut by_id: HashMap<&str, &Received> = HashMap::new();
    for record in &received {
        if let Some(first) = by_id.insert(&record.headers["ce_id"], record) {
            assert_eq!(first.headers["ce_position"], record.headers["ce_position"]);
            assert_eq!(first.payload, record.payload);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_longer_than_the_delivery_timeout_loses_nothing() {
    let database = testkit::postgres();
    let store = event_store::open(&database.url).await.unwrap();
    let kafka = testkit::kafka();
    let shows: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let config = RelayConfig {
        delivery_timeout: Some(Duration::from_secs(1)),
        ..config(&kafka)
    };
    let relay = start_relay(store.clone(), &kafka, config).await;
    let mut appended = append_bookings(&store, &shows, 2, 2).await;

    kafka.brokers_down().unwrap();
    appended.extend(append_bookings(&store, &[Uuid::now_v7()], 3, 3).await);
    // Three delivery timeouts pass with the broker down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.brokers_up().unwrap();
    appended.extend(append_bookings(&store, &[Uuid::now_v7()], 2, 2).await);

    expect_all_relayed(&store, &kafka, &appended, Duration::from_secs(90), relay).await;
}
