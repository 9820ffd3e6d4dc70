//! A nisshi broker of a test's own, killed with SIGKILL and started again: with Postgres storage
//! it keeps its topics, records, group offsets and idempotent producers, as a Kafka keeps its log
//! on disk; with memory storage it comes back empty.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::FromClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use testkit::NisshiStorage;

const TOPIC: &str = "zq.chaos";
const PARTITIONS: i32 = 4;
const GROUP: &str = "chaos-group";

/// A client of the broker at `bootstrap` with `settings`.
fn client<T: FromClientConfig>(bootstrap: &str, settings: &[(&str, &str)]) -> T {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config.create().unwrap()
}

fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap, &[]);
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = futures::executor::block_on(admin.create_topics([&topic], &options)).unwrap();
    for result in results {
        result.unwrap();
    }
}

/// The partition count of every topic the broker lists (a metadata request for all topics, which
/// creates none).
fn topics(bootstrap: &str) -> BTreeMap<String, usize> {
    let consumer: BaseConsumer = client(bootstrap, &[]);
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .map(|topic| (topic.name().to_string(), topic.partitions().len()))
        .collect()
}

fn idempotent_producer(bootstrap: &str) -> FutureProducer {
    client(
        bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            // Bounded, so that a producer the restart broke says so within the test's time.
            ("message.timeout.ms", "20000"),
        ],
    )
}

/// Send `payloads[i]` to partition `i % PARTITIONS` and wait for each delivery (in parallel):
/// the payloads delivered, and the errors of those that were not.
fn produce(producer: &FutureProducer, payloads: &[String]) -> (Vec<String>, Vec<String>) {
    let futures: Vec<_> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            let record = FutureRecord::to(TOPIC)
                .key(payload.as_str())
                .payload(payload.as_str())
                .partition(i as i32 % PARTITIONS);
            producer
                .send_result(record)
                .map_err(|(error, _)| error)
                .unwrap()
        })
        .collect();
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    for (payload, future) in payloads.iter().zip(futures) {
        match futures::executor::block_on(future).expect("the producer dropped a delivery") {
            Ok(_) => delivered.push(payload.clone()),
            Err((error, _)) => failed.push(format!("{payload}: {error}")),
        }
    }
    (delivered, failed)
}

fn payloads(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

/// Every payload in the topic, read from the beginning of each partition outside any group.
fn all_records(bootstrap: &str, expected: usize) -> BTreeSet<String> {
    let consumer: BaseConsumer = client(
        bootstrap,
        &[
            ("group.id", "testkit-reader"),
            ("enable.auto.commit", "false"),
        ],
    );
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    poll_until(&consumer, "the topic's records", |message| {
        records.push(message);
        records.len() >= expected
    });
    let set: BTreeSet<String> = records.into_iter().collect();
    assert_eq!(set.len(), expected, "duplicates in {set:?}");
    set
}

/// Poll `consumer`, giving every payload to `enough`, until it says so; fails after 60 s.
fn poll_until(consumer: &BaseConsumer, what: &str, mut enough: impl FnMut(String) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "{what}: not all within 60 s");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let payload = String::from_utf8_lossy(message.payload().unwrap()).into_owned();
                if enough(payload) {
                    return;
                }
            }
            Some(Err(error)) => panic!("{what}: {error}"),
            None => {}
        }
    }
}

/// A member of [`GROUP`] that commits only on request; a missing committed offset is an error,
/// not a silent jump.
fn group_member(bootstrap: &str, reset: &str) -> BaseConsumer {
    let consumer: BaseConsumer = client(
        bootstrap,
        &[
            ("group.id", GROUP),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", reset),
            ("session.timeout.ms", "6000"),
        ],
    );
    consumer.subscribe(&[TOPIC]).unwrap();
    consumer
}

/// The group's committed offset per partition, asked of the broker (OffsetFetch), not joining.
fn committed(bootstrap: &str) -> Vec<i64> {
    let consumer: BaseConsumer = client(bootstrap, &[("group.id", GROUP)]);
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(TOPIC, partition);
    }
    let offsets = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    offsets
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            other => panic!("partition {}: committed {other:?}", element.partition()),
        })
        .collect()
}

fn high_watermarks(bootstrap: &str) -> Vec<i64> {
    let consumer: BaseConsumer = client(bootstrap, &[]);
    (0..PARTITIONS)
        .map(|partition| {
            consumer
                .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

#[test]
fn with_postgres_storage_a_killed_broker_keeps_topics_records_and_group_offsets() {
    let database = testkit::postgres();
    let broker = testkit::own_nisshi(NisshiStorage::Postgres(database.url.clone()));
    let bootstrap = broker.bootstrap_servers.clone();
    create_topic(&bootstrap, TOPIC, PARTITIONS);

    let original = idempotent_producer(&bootstrap);
    let first = payloads("first", 10);
    let (delivered, failed) = produce(&original, &first);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(delivered.len(), 10);

    // The group reads them all and commits.
    let member = group_member(&bootstrap, "earliest");
    let mut read = BTreeSet::new();
    poll_until(&member, "the group's first read", |payload| {
        read.insert(payload);
        read.len() == first.len()
    });
    member.commit_consumer_state(CommitMode::Sync).unwrap();
    drop(member);
    let offsets = committed(&bootstrap);
    assert_eq!(offsets, vec![3, 3, 2, 2]);

    let started = Instant::now();
    broker.kill9();
    assert!(!broker.is_running());
    broker.start().unwrap();
    eprintln!("kill9 + start took {:?}", started.elapsed());
    assert!(broker.is_running());
    assert_eq!(broker.bootstrap_servers, bootstrap);

    assert_eq!(topics(&bootstrap).get(TOPIC), Some(&(PARTITIONS as usize)));
    assert_eq!(high_watermarks(&bootstrap), vec![3, 3, 2, 2]);
    assert_eq!(all_records(&bootstrap, 10), first.iter().cloned().collect());
    assert_eq!(committed(&bootstrap), offsets, "the group's offsets");

    // The idempotent producer of before the restart, kept: one record to every partition, each of
    // which it has written to before.
    let kept = payloads("kept-producer", PARTITIONS as usize);
    let (kept_delivered, kept_failed) = produce(&original, &kept);
    let fatal = original.client().fatal_error();
    eprintln!(
        "FINDING: the idempotent producer kept across the restart delivered {kept_delivered:?}, \
         failed {kept_failed:?}, fatal error {fatal:?}"
    );
    // Either it goes on, or it fails loudly (a relay rebuilds its producer): never a silent loss.
    assert!(
        kept_failed.is_empty() || fatal.is_some(),
        "records failed without a fatal error: {kept_failed:?}"
    );

    // A new producer works; a member of the same group resumes after the committed offsets.
    let fresh = idempotent_producer(&bootstrap);
    let second = payloads("second", 6);
    let (delivered, failed) = produce(&fresh, &second);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(delivered.len(), second.len());
    let expected: BTreeSet<String> = second.iter().chain(&kept_delivered).cloned().collect();
    let member = group_member(&bootstrap, "error");
    let mut resumed = BTreeSet::new();
    poll_until(&member, "the group's read after the restart", |payload| {
        assert!(
            expected.contains(&payload),
            "the group read {payload} again, or something unexpected"
        );
        resumed.insert(payload);
        resumed.len() == expected.len()
    });
    member.commit_consumer_state(CommitMode::Sync).unwrap();
    // Each record once: nothing written twice by the restart.
    let total = first.len() + expected.len();
    assert_eq!(
        high_watermarks(&bootstrap).iter().sum::<i64>(),
        total as i64
    );
    assert_eq!(all_records(&bootstrap, total).len(), total);
}

#[test]
fn with_memory_storage_a_killed_broker_comes_back_empty() {
    let broker = testkit::own_nisshi(NisshiStorage::Memory);
    let bootstrap = broker.bootstrap_servers.clone();
    create_topic(&bootstrap, TOPIC, PARTITIONS);
    let producer = idempotent_producer(&bootstrap);
    let (_, failed) = produce(&producer, &payloads("lost", 4));
    assert!(failed.is_empty(), "{failed:?}");
    drop(producer);
    assert_eq!(topics(&bootstrap).get(TOPIC), Some(&(PARTITIONS as usize)));

    // Started while running: refused. Killed twice: the second is a no-op.
    assert!(broker.start().is_err());
    broker.kill9();
    broker.kill9();
    assert!(!broker.is_running());
    let address: std::net::SocketAddr = bootstrap.parse().unwrap();
    assert!(TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err());

    broker.restart().unwrap();
    assert!(broker.is_running());
    assert_eq!(topics(&bootstrap), BTreeMap::new(), "the topics are gone");

    drop(broker);
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err(),
        "{address} still listens after the broker was dropped"
    );
}

#[test]
fn nisshi_refuses_to_start_on_a_missing_database() {
    let database = testkit::postgres();
    let missing = format!("{}_missing", database.url);
    let error = testkit::try_own_nisshi(NisshiStorage::Postgres(missing))
        .expect_err("there is no such database");
    let message = error.to_string();
    assert!(message.contains("failed its startup check"), "{message}");
}
