//! The consumer runtime on a real Kafka-protocol broker (librdkafka's mock cluster from testkit)
//! and a real event store (SQLite in a temporary folder), with handlers that record what they
//! see: order per stream, work on several streams at once, skipping and counting, and offsets
//! that never pass unfinished work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use domain::booking::{
    self, BookingCommand, BookingEvent, BookingRejected, EmailChannel, EmailSent, RequestBooking,
};
use domain::{
    BookingId, BookingStatus, Customer, DomainEvent, EventEnvelope, EventId, Money, ShowId,
    event_types,
};
use event_store::{
    EventMetadata, EventStore, ExpectedVersion, Position, RecordedEvent, StreamAppend,
};
use infra::consumer::{
    ConsumerConfig, ConsumerGroup, ConsumerStats, EventRecord, Handled, Handler, HandlerError, Mode,
};
use infra::kafka::KafkaTopicAdmin;
use infra::relay::cloud_event_headers;
use infra::stored_events::to_new_event;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;
use uuid::Uuid;

const TOPIC: &str = "zq.booking-events";

/// Handles `booking.email_sent.v2`, recording (stream, version) in the order handled.
#[derive(Default)]
struct Recorder {
    handled: Mutex<Vec<(String, u64)>>,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    /// While set, every record fails transiently.
    failing: AtomicBool,
    /// While set, the records of this stream fail transiently (the others succeed).
    failing_stream: Mutex<Option<String>>,
    delay: Duration,
}

#[async_trait]
impl Handler for Recorder {
    fn subscribes_to(&self, event_type: &str) -> bool {
        event_type == event_types::BOOKING_EMAIL_SENT
    }

    async fn handle(&self, record: &EventRecord) -> Result<Handled, HandlerError> {
        if self.failing.load(Ordering::SeqCst)
            || self.failing_stream.lock().unwrap().as_deref() == Some(record.stream_id.as_str())
        {
            return Err(HandlerError::Transient("the test says no".into()));
        }
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.handled
            .lock()
            .unwrap()
            .push((record.stream_id.clone(), record.stream_version));
        Ok(Handled::Done)
    }
}

struct Setup {
    kafka: testkit::KafkaBroker,
    store: Arc<dyn EventStore>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let kafka = testkit::kafka();
    kafka.create_topic(TOPIC, 1).unwrap();
    for cause in infra::consumer::DLQ_CAUSES {
        kafka
            .create_topic(&infra::consumer::dlq_topic(cause), 1)
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = event_store::open(&format!("sqlite://{}", dir.path().join("zq.db").display()))
        .await
        .unwrap();
    Setup {
        kafka,
        store,
        _dir: dir,
    }
}

/// Publish events as the relay would (CloudEvents headers), all on partition 0.
async fn publish(kafka: &testkit::KafkaBroker, events: &[(String, u64, DomainEvent)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .create()
        .unwrap();
    for (index, (stream, version, event)) in events.iter().enumerate() {
        let recorded = RecordedEvent {
            position: Position(index as u64 + 1),
            event_id: Uuid::new_v4(),
            stream_id: stream.clone(),
            stream_version: *version,
            event_type: event.event_type().to_string(),
            data: event.to_json_string(),
            metadata: EventMetadata::default(),
            recorded_at: Utc::now(),
        };
        let record = FutureRecord::to(TOPIC)
            .partition(0)
            .key("show")
            .payload(recorded.data.as_str())
            .headers(cloud_event_headers(&recorded, "/test"));
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
}

fn email(booking: BookingId) -> DomainEvent {
    DomainEvent::Booking(BookingEvent::EmailSent(EmailSent {
        booking_id: booking,
        show_id: ShowId::new(),
        about_event_id: EventId::new(),
        message_id: "<m@zingqueue>".into(),
        channel: EmailChannel::Smtp,
    }))
}

fn rejected(booking: BookingId) -> DomainEvent {
    DomainEvent::Booking(BookingEvent::Rejected(BookingRejected {
        booking_id: booking,
        show_id: ShowId::new(),
        taken: BTreeSet::from(["A-1-1".parse().unwrap()]),
    }))
}

fn config(kafka: &testkit::KafkaBroker, group: &str, mode: Mode) -> ConsumerConfig {
    ConsumerConfig {
        partitions: 1,
        session_timeout: Duration::from_secs(6),
        shutdown_grace: Duration::from_secs(2),
        ..ConsumerConfig::new(group, &kafka.bootstrap_servers, mode)
    }
}

/// Run a group until `done` holds (or panic after 60 s), then stop it.
async fn run_until(
    setup: &Setup,
    config: ConsumerConfig,
    handler: Arc<dyn Handler>,
    done: impl Fn(&ConsumerStats) -> bool,
) -> Arc<ConsumerStats> {
    let group = ConsumerGroup::new(config, setup.store.clone(), handler);
    let stats = group.stats();
    let (stop, stopped) = watch::channel(false);
    let admin = KafkaTopicAdmin::new(&setup.kafka.bootstrap_servers).unwrap();
    let running = tokio::spawn(async move {
        let mut stopped = stopped;
        group
            .run(&admin, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&stats) {
        assert!(
            Instant::now() < deadline,
            "the group never got there: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    stats
}

fn committed(kafka: &testkit::KafkaBroker, group: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition(TOPIC, 0);
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    match committed.elements()[0].offset() {
        rdkafka::Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mode_keeps_each_streams_order_while_streams_run_at_once() {
    let setup = setup().await;
    let bookings: Vec<BookingId> = (0..4).map(|_| BookingId::new()).collect();
    let mut events = Vec::new();
    for version in 1..=5 {
        for booking in &bookings {
            events.push((booking.stream_id(), version, email(*booking)));
        }
    }
    publish(&setup.kafka, &events).await;
    let handler = Arc::new(Recorder {
        delay: Duration::from_millis(30),
        ..Recorder::default()
    });
    let stats = run_until(
        &setup,
        config(
            &setup.kafka,
            "concurrent",
            Mode::Concurrent { max_in_flight: 16 },
        ),
        handler.clone(),
        |stats| ConsumerStats::get(&stats.processed) == 20,
    )
    .await;
    let handled = handler.handled.lock().unwrap().clone();
    let mut per_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (stream, version) in handled {
        per_stream.entry(stream).or_default().push(version);
    }
    assert_eq!(per_stream.len(), 4);
    assert!(
        per_stream
            .values()
            .all(|versions| *versions == [1, 2, 3, 4, 5]),
        "{per_stream:?}"
    );
    assert!(
        handler.most_at_once.load(Ordering::SeqCst) > 1,
        "streams ran one at a time"
    );
    assert!(
        handler.most_at_once.load(Ordering::SeqCst) <= 4,
        "one record at a time per stream"
    );
    assert_eq!(ConsumerStats::get(&stats.dead_lettered), 0);
    // Everything finished is committed (at shutdown at the latest).
    assert_eq!(committed(&setup.kafka, "concurrent"), Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_unsubscribed_types_are_skipped_and_counted_not_dead_lettered() {
    let setup = setup().await;
    let booking = BookingId::new();
    publish(
        &setup.kafka,
        &[
            (booking.stream_id(), 1, rejected(booking)),
            (booking.stream_id(), 2, email(booking)),
        ],
    )
    .await;
    // A type this build does not know, as a newer service would write it.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &setup.kafka.bootstrap_servers)
        .create()
        .unwrap();
    let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: "ce_type",
        value: Some("zingqueue.booking.teleported.v9"),
    });
    producer
        .send(
            FutureRecord::to(TOPIC)
                .partition(0)
                .key("show")
                .payload("{}")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    for mode in [
        Mode::InOrder { batch_max: 10 },
        Mode::Concurrent { max_in_flight: 4 },
    ] {
        let group = format!("skipping-{mode:?}").replace([' ', '{', '}', ':'], "");
        let stats = run_until(
            &setup,
            config(&setup.kafka, &group, mode),
            Arc::new(Recorder::default()),
            |stats| {
                ConsumerStats::get(&stats.unknown_types) == 1
                    && ConsumerStats::get(&stats.processed) == 1
            },
        )
        .await;
        assert_eq!(
            ConsumerStats::get(&stats.skipped),
            1,
            "{mode:?}: the unsubscribed rejection"
        );
        assert_eq!(ConsumerStats::get(&stats.dead_lettered), 0, "{mode:?}");
        assert_eq!(committed(&setup.kafka, &group), Some(3), "{mode:?}");
    }
    assert!(
        setup
            .store
            .dead_letters(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_is_never_committed_past_a_record_that_has_not_succeeded() {
    let setup = setup().await;
    let booking = BookingId::new();
    publish(
        &setup.kafka,
        &[
            (booking.stream_id(), 1, email(booking)),
            (booking.stream_id(), 2, email(booking)),
        ],
    )
    .await;
    for mode in [
        Mode::InOrder { batch_max: 10 },
        Mode::Concurrent { max_in_flight: 4 },
    ] {
        let group = format!("failing-{mode:?}").replace([' ', '{', '}', ':'], "");
        let handler = Arc::new(Recorder::default());
        handler.failing.store(true, Ordering::SeqCst);
        // Stopped while every attempt fails: nothing may be committed.
        let stats = run_until(
            &setup,
            config(&setup.kafka, &group, mode),
            handler.clone(),
            |stats| ConsumerStats::get(&stats.retried) >= 3,
        )
        .await;
        assert_eq!(ConsumerStats::get(&stats.processed), 0);
        assert_eq!(
            committed(&setup.kafka, &group),
            None,
            "{mode:?}: committed unfinished work"
        );
        // Started again with the failure gone: both records handled, then committed.
        handler.failing.store(false, Ordering::SeqCst);
        run_until(
            &setup,
            config(&setup.kafka, &group, mode),
            handler.clone(),
            |stats| ConsumerStats::get(&stats.processed) == 2,
        )
        .await;
        assert_eq!(committed(&setup.kafka, &group), Some(2), "{mode:?}");
    }
}

/// Stands in for a side effect (an email) that takes a while to prepare: with `wait_for_end`,
/// it prepares until its lease ends (deadline 30 s), then does the effect only if its lease is
/// still valid.
#[derive(Default)]
struct LeaseProbe {
    wait_for_end: bool,
    entered: AtomicBool,
    effects: AtomicUsize,
}

#[async_trait]
impl Handler for LeaseProbe {
    fn subscribes_to(&self, event_type: &str) -> bool {
        event_type == event_types::BOOKING_EMAIL_SENT
    }

    async fn handle(&self, _record: &EventRecord) -> Result<Handled, HandlerError> {
        self.entered.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.wait_for_end && infra::consumer::still_owned() {
            assert!(Instant::now() < deadline, "the lease never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        infra::consumer::ensure_owned()?;
        self.effects.fetch_add(1, Ordering::SeqCst);
        Ok(Handled::Done)
    }
}

/// A worker that stops (or loses its partition: the same lease) while a handler is mid-record
/// makes the handler stop before its side effect; the record is not committed, and the next
/// owner does the effect once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_stops_before_its_side_effect_once_its_lease_ends() {
    let setup = setup().await;
    let booking = BookingId::new();
    publish(&setup.kafka, &[(booking.stream_id(), 1, email(booking))]).await;
    let group = "lease";
    let mode = Mode::Concurrent { max_in_flight: 4 };
    let probe = Arc::new(LeaseProbe {
        wait_for_end: true,
        ..LeaseProbe::default()
    });
    let consumer = ConsumerGroup::new(
        config(&setup.kafka, group, mode),
        setup.store.clone(),
        probe.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    let admin = KafkaTopicAdmin::new(&setup.kafka.bootstrap_servers).unwrap();
    let running = tokio::spawn(async move {
        let mut stopped = stopped;
        consumer
            .run(&admin, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !probe.entered.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the record never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The member stops while the handler is mid-record; the handler sees its lease end.
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(
        probe.effects.load(Ordering::SeqCst),
        0,
        "a side effect after the lease ended"
    );
    assert_eq!(committed(&setup.kafka, group), None);
    // The next owner does it, once.
    let again = Arc::new(LeaseProbe::default());
    run_until(
        &setup,
        config(&setup.kafka, group, mode),
        again.clone(),
        |stats| ConsumerStats::get(&stats.processed) == 1,
    )
    .await;
    assert_eq!(again.effects.load(Ordering::SeqCst), 1);
    assert_eq!(committed(&setup.kafka, group), Some(1));
}

/// Panics on the records of one booking; records the others.
struct Panicker {
    doomed: BookingId,
    handled: Mutex<Vec<BookingId>>,
}

#[async_trait]
impl Handler for Panicker {
    fn subscribes_to(&self, event_type: &str) -> bool {
        event_type == event_types::BOOKING_REQUESTED
    }

    async fn handle(&self, record: &EventRecord) -> Result<Handled, HandlerError> {
        let DomainEvent::Booking(event) = &record.event else {
            return Ok(Handled::Done);
        };
        assert!(event.booking_id() != self.doomed, "a bug in the handler");
        self.handled.lock().unwrap().push(event.booking_id());
        Ok(Handled::Done)
    }
}

/// A requested booking, appended to the store as the API would; returns its event.
async fn request_booking(store: &Arc<dyn EventStore>) -> (BookingId, DomainEvent) {
    let booking_id = BookingId::new();
    let events = booking::decide(
        &None,
        BookingCommand::Request(RequestBooking {
            booking_id,
            show_id: ShowId::new(),
            seats: BTreeSet::from(["A-1-1".parse().unwrap()]),
            customer: Customer::new("c-1", "ada@example.com", "Ada").unwrap(),
            payment_method: None,
            amount: Money::new(4_500, "EUR".parse().unwrap()),
            requested_at: Utc::now(),
            access: Default::default(),
        }),
    )
    .unwrap();
    let event = DomainEvent::from(events[0].clone());
    let envelopes = EventEnvelope::fresh([event.clone()]);
    let new_events = envelopes
        .iter()
        .map(|e| to_new_event(e, Utc::now()).unwrap())
        .collect();
    store
        .append(StreamAppend::new(
            booking_id.stream_id(),
            ExpectedVersion::NoStream,
            new_events,
        ))
        .await
        .unwrap();
    (booking_id, event)
}

/// A handler that panics on a record: the panic becomes a dead letter with the reason, the
/// partition moves on to the next record, and the booking ends (`failed`, by
/// `booking.abandoned.v1`) instead of waiting for ever. In order and concurrent alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_dead_lettered_ends_its_booking_and_the_partition_moves_on() {
    for mode in [
        Mode::InOrder { batch_max: 10 },
        Mode::Concurrent { max_in_flight: 4 },
    ] {
        let setup = setup().await;
        let (doomed, doomed_event) = request_booking(&setup.store).await;
        let (fine, fine_event) = request_booking(&setup.store).await;
        publish(
            &setup.kafka,
            &[
                (doomed.stream_id(), 1, doomed_event),
                (fine.stream_id(), 1, fine_event),
            ],
        )
        .await;
        let handler = Arc::new(Panicker {
            doomed,
            handled: Mutex::default(),
        });
        let group = format!("panic-{mode:?}").replace([' ', '{', '}', ':'], "");
        let stats = run_until(
            &setup,
            config(&setup.kafka, &group, mode),
            handler.clone(),
            |stats| {
                ConsumerStats::get(&stats.processed) == 2
                    && ConsumerStats::get(&stats.dead_lettered) == 1
            },
        )
        .await;
        assert_eq!(*handler.handled.lock().unwrap(), vec![fine], "{mode:?}");
        assert_eq!(committed(&setup.kafka, &group), Some(2), "{mode:?}");
        let letters = setup
            .store
            .dead_letters(&event_store::DeadLetterQuery::default())
            .await
            .unwrap();
        assert_eq!(letters.len(), 1, "{mode:?}");
        assert_eq!(letters[0].cause, "handler-failed");
        assert!(
            letters[0].reason.contains("panicked: a bug in the handler"),
            "{}",
            letters[0].reason
        );
        let ended = infra::streams::load_booking(&*setup.store, doomed)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended.booking.status(), BookingStatus::Failed, "{mode:?}");
        let untouched = infra::streams::load_booking(&*setup.store, fine)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(untouched.booking.status(), BookingStatus::Requested);
        drop(stats);
    }
}

/// Concurrent mode: records of other streams behind a failing one finish first, and the
/// committed offset stays before the failing record (the completed prefix), however many
/// records after it are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mode_commits_only_the_completed_prefix() {
    let setup = setup().await;
    let stuck = BookingId::new();
    let others: Vec<BookingId> = (0..3).map(|_| BookingId::new()).collect();
    let mut events = vec![(stuck.stream_id(), 1, email(stuck))];
    events.extend(others.iter().map(|b| (b.stream_id(), 1, email(*b))));
    publish(&setup.kafka, &events).await;
    let group = "prefix";
    let handler = Arc::new(Recorder::default());
    *handler.failing_stream.lock().unwrap() = Some(stuck.stream_id());
    let mode = Mode::Concurrent { max_in_flight: 4 };
    // Stopped once the three later records are done while the first still fails.
    let stats = run_until(
        &setup,
        config(&setup.kafka, group, mode),
        handler.clone(),
        |stats| {
            ConsumerStats::get(&stats.processed) >= 3 && ConsumerStats::get(&stats.retried) >= 2
        },
    )
    .await;
    assert_eq!(ConsumerStats::get(&stats.processed), 3);
    assert_eq!(
        committed(&setup.kafka, group),
        None,
        "committed past the record at offset 0, which never succeeded"
    );
    // The failure gone: every record is done again from the start (nothing was committed)
    // and the prefix covers all four.
    *handler.failing_stream.lock().unwrap() = None;
    run_until(
        &setup,
        config(&setup.kafka, group, mode),
        handler.clone(),
        |stats| ConsumerStats::get(&stats.processed) == 4,
    )
    .await;
    assert_eq!(committed(&setup.kafka, group), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_offset_out_of_range_restarts_at_the_earliest_record_not_the_newest() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let setup = setup().await;
    let booking = BookingId::new();
    publish(
        &setup.kafka,
        &[
            (booking.stream_id(), 1, email(booking)),
            (booking.stream_id(), 2, email(booking)),
        ],
    )
    .await;
    // The group's committed offset points past the end (a broker that lost records).
    let group = "out-of-range";
    {
        let member: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &setup.kafka.bootstrap_servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        member.subscribe(&[TOPIC]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while member.assignment().unwrap().count() == 0 {
            assert!(Instant::now() < deadline, "never joined");
            let _ = member.poll(Duration::from_millis(100));
        }
        let mut offsets = rdkafka::TopicPartitionList::new();
        offsets
            .add_partition_offset(TOPIC, 0, rdkafka::Offset::Offset(50))
            .unwrap();
        member
            .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
            .unwrap();
        member.unsubscribe();
    }
    assert_eq!(committed(&setup.kafka, group), Some(50));
    let handler = Arc::new(Recorder::default());
    run_until(
        &setup,
        config(&setup.kafka, group, Mode::InOrder { batch_max: 10 }),
        handler.clone(),
        |stats| ConsumerStats::get(&stats.processed) == 2,
    )
    .await;
    assert_eq!(
        handler.handled.lock().unwrap().len(),
        2,
        "both records, none skipped"
    );
    assert_eq!(committed(&setup.kafka, group), Some(2));
}
