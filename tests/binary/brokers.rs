//! The relay and a Kafka consumer group, unchanged, against two brokers in processes of their own:
//! the mock cluster hosted by `zingqueue dev-broker`, and nisshi 0.8.1, an independent Kafka
//! implementation started by testkit. The relay runs as `zingqueue run relay` on a real Postgres;
//! a consumer group reads every event back (key = show id, Java's murmur2 partition, store order
//! per stream), commits, and a second member of the group resumes after the commit.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use support::*;
use uuid::Uuid;

const TOPIC: &str = "zq.booking-events";
const PARTITIONS: i32 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consumer_group_against_the_dev_broker_process() {
    let (broker, bootstrap) = spawn_until(&["dev-broker"], &[], "bootstrap servers:");
    relay_and_consumer_group(&bootstrap).await;
    interrupt(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consumer_group_against_nisshi() {
    let nisshi = testkit::nisshi();
    relay_and_consumer_group(&nisshi.bootstrap_servers).await;
}

async fn relay_and_consumer_group(bootstrap: &str) {
    let database = testkit::postgres();
    let store = event_store::open(&database.url).await.unwrap();
    // The relay creates the topic through the admin API where the broker has one (nisshi), and
    // finds it created where it has not (the dev broker).
    let (relay, _) = spawn_until(
        &["run", "relay"],
        &[
            ("ZQ_DATABASE_URL", &database.url),
            ("ZQ_KAFKA_BROKERS", bootstrap),
        ],
        "relay:",
    );

    let shows: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    let first = append(&store, &shows, 3).await;
    let group = format!("brokers-test-{}", Uuid::now_v7());
    let received = consume_in_group(bootstrap, &group, &ids_of(&first)).await;
    check_records(&received, &first);

    // A new member of the group starts after the committed offsets: only the new events.
    let second = append(&store, &shows, 2).await;
    let resumed = consume_in_group(bootstrap, &group, &ids_of(&second)).await;
    let old: HashSet<Uuid> = ids_of(&first);
    assert!(
        resumed.iter().all(|record| !old.contains(&record.event_id)),
        "the group re-read events it had committed"
    );
    check_records(&resumed, &second);

    interrupt(relay);
    store.close().await;
}

/// A record as read back.
#[derive(Debug)]
struct Record {
    partition: i32,
    key: String,
    event_id: Uuid,
    stream: String,
    headers: HashMap<String, String>,
}

/// Append `per_stream` events to one booking stream per show (continuing the stream); returns
/// the appended event ids per stream.
async fn append(
    store: &Arc<dyn EventStore>,
    shows: &[Uuid],
    per_stream: usize,
) -> BTreeMap<String, Vec<Uuid>> {
    let mut appended = BTreeMap::new();
    for show in shows {
        let stream = format!("booking-of-{show}");
        let version = store.read_stream(&stream, 0).await.unwrap().len() as u64;
        let events: Vec<NewEvent> = (0..per_stream)
            .map(|n| {
                NewEvent::from_json_text(
                    Uuid::now_v7(),
                    "booking.requested.v1",
                    format!(r#"{{"show_id":"{show}","n":{n}}}"#),
                    EventMetadata {
                        partition_key: Some(show.to_string()),
                        ..EventMetadata::default()
                    },
                )
                .unwrap()
            })
            .collect();
        let ids = events.iter().map(|event| event.event_id).collect();
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        store
            .append(StreamAppend::new(stream.clone(), expected, events))
            .await
            .unwrap();
        appended.insert(stream, ids);
    }
    appended
}

fn ids_of(appended: &BTreeMap<String, Vec<Uuid>>) -> HashSet<Uuid> {
    appended.values().flatten().copied().collect()
}

/// Join `group`, read until every id of `expected` has arrived, commit, and leave.
async fn consume_in_group(bootstrap: &str, group: &str, expected: &HashSet<Uuid>) -> Vec<Record> {
    let (bootstrap, group, expected) = (bootstrap.to_string(), group.to_string(), expected.clone());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        consumer.subscribe(&[TOPIC]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut records = Vec::new();
        let mut seen = HashSet::new();
        while !expected.is_subset(&seen) {
            assert!(
                Instant::now() < deadline,
                "only {} of {} events arrived in group {group}",
                expected.intersection(&seen).count(),
                expected.len()
            );
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = match message {
                Ok(message) => message,
                // E.g. the topic is not created yet when the group joins: the deadline decides.
                Err(error) => {
                    eprintln!("consumer: {error}");
                    continue;
                }
            };
            let mut headers = HashMap::new();
            if let Some(all) = message.headers() {
                for header in all.iter() {
                    let value = header
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    headers.insert(header.key.to_string(), value.unwrap_or_default());
                }
            }
            let event_id: Uuid = headers["ce_id"].parse().unwrap();
            seen.insert(event_id);
            records.push(Record {
                partition: message.partition(),
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                event_id,
                stream: headers["ce_subject"].clone(),
                headers,
            });
        }
        consumer.commit_consumer_state(CommitMode::Sync).unwrap();
        consumer.unsubscribe();
        records
    })
    .await
    .unwrap()
}

/// Every record keyed by its show, in the show's murmur2 partition, with the CloudEvents headers,
/// and every stream's events in store order (re-publications dropped by stream version).
fn check_records(records: &[Record], appended: &BTreeMap<String, Vec<Uuid>>) {
    let mut applied: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    for record in records {
        assert_eq!(
            record.partition,
            testkit::java_partition(record.key.as_bytes(), PARTITIONS),
            "show {} is not in its murmur2 partition",
            record.key
        );
        assert_eq!(record.headers["ce_partitionkey"], record.key);
        assert_eq!(record.headers["ce_specversion"], "1.0");
        assert_eq!(record.headers["ce_type"], "zingqueue.booking.requested.v1");
        let version: u64 = record.headers["ce_streamversion"].parse().unwrap();
        let seen = versions.entry(record.stream.clone()).or_default();
        if version > *seen {
            *seen = version;
            applied
                .entry(record.stream.clone())
                .or_default()
                .push(record.event_id);
        }
    }
    // Only the streams' newly appended tails are compared: a resumed group starts mid-stream.
    for (stream, ids) in appended {
        let got = applied.get(stream).cloned().unwrap_or_default();
        assert_eq!(
            &got, ids,
            "stream {stream} out of store order or incomplete"
        );
    }
}
