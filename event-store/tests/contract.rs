//! The event store's contract, run against both backends on real databases (Postgres from
//! testkit, SQLite in a temporary file).

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{Backend, TestDatabase, event, events, to};
use event_store::{
    EventMetadata, EventStore, ExpectedVersion, NewEvent, Position, StoreError, Subscription,
};
use uuid::Uuid;

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Sqlite).await;
                }
            )*
        }
    };
}

on_both_backends!(
    appends_get_dense_positions_and_stream_versions,
    a_wrong_expected_version_is_a_conflict_naming_both_versions,
    a_repeated_append_returns_the_original_positions,
    a_partial_duplicate_is_an_error_and_writes_nothing,
    append_many_is_all_or_nothing,
    events_keep_their_data_and_metadata,
    the_global_log_reads_in_batches,
    concurrent_appends_with_one_expected_version_let_exactly_one_win,
    a_subscription_catches_up_then_follows_live,
    a_malformed_append_is_refused_before_it_reaches_the_database,
    an_undecodable_event_names_itself,
    a_subscription_polls_when_no_wake_up_comes,
    close_writes_what_is_queued_and_refuses_the_rest,
    checkpoints_only_move_forward,
    many_stores_opening_one_new_database_at_once_all_succeed,
    a_dead_letter_is_kept_once_and_redriven_once,
    a_members_counters_are_kept_per_group_and_member,
    consumer_progress_moves_forward_and_heartbeats_always,
);

async fn appends_get_dense_positions_and_stream_versions(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    assert_eq!(store.head().await.unwrap(), Position(0));

    let first = store
        .append(to("a", ExpectedVersion::NoStream, events(2)))
        .await
        .unwrap();
    let second = store
        .append(to("b", ExpectedVersion::NoStream, events(1)))
        .await
        .unwrap();
    let third = store
        .append(to("a", ExpectedVersion::Exact(2), events(3)))
        .await
        .unwrap();

    assert_eq!(first.streams[0].positions, vec![Position(1), Position(2)]);
    assert_eq!(first.streams[0].version, 2);
    assert_eq!(second.streams[0].positions, vec![Position(3)]);
    assert_eq!(
        third.streams[0].positions,
        vec![Position(4), Position(5), Position(6)]
    );
    assert_eq!(third.streams[0].version, 5);
    assert!(!third.was_repeat);
    assert_eq!(store.head().await.unwrap(), Position(6));

    let stream_a = store.read_stream("a", 0).await.unwrap();
    let versions: Vec<u64> = stream_a.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    let tail = store.read_stream("a", 3).await.unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0].stream_version, 4);
    assert!(store.read_stream("nothing", 0).await.unwrap().is_empty());
}

async fn a_wrong_expected_version_is_a_conflict_naming_both_versions(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    store
        .append(to("s", ExpectedVersion::NoStream, events(2)))
        .await
        .unwrap();

    match store
        .append(to("s", ExpectedVersion::Exact(5), events(1)))
        .await
    {
        Err(StoreError::Conflict {
            stream_id,
            expected,
            actual,
        }) => {
            assert_eq!(stream_id, "s");
            assert_eq!(expected, ExpectedVersion::Exact(5));
            assert_eq!(actual, 2);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    match store
        .append(to("s", ExpectedVersion::NoStream, events(1)))
        .await
    {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, 2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    match store
        .append(to("new", ExpectedVersion::Exact(1), events(1)))
        .await
    {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, 0),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Nothing was written by the refused appends.
    assert_eq!(store.head().await.unwrap(), Position(2));
    // Any appends whatever the version.
    store
        .append(to("s", ExpectedVersion::Any, events(1)))
        .await
        .unwrap();
    assert_eq!(store.read_stream("s", 0).await.unwrap().len(), 3);
}

async fn a_repeated_append_returns_the_original_positions(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    store
        .append(to("other", ExpectedVersion::Any, events(1)))
        .await
        .unwrap();
    let batch = events(3);
    let original = store
        .append(to("s", ExpectedVersion::NoStream, batch.clone()))
        .await
        .unwrap();
    store
        .append(to("s", ExpectedVersion::Exact(3), events(1)))
        .await
        .unwrap();

    // The same events again, with the expected version of the first time: a repeat, not a
    // conflict, and nothing is written.
    let repeat = store
        .append(to("s", ExpectedVersion::NoStream, batch))
        .await
        .unwrap();
    assert!(repeat.was_repeat);
    assert_eq!(repeat.streams, original.streams);
    assert_eq!(
        original.streams[0].positions,
        vec![Position(2), Position(3), Position(4)]
    );
    assert_eq!(store.head().await.unwrap(), Position(5));
    assert_eq!(store.read_stream("s", 0).await.unwrap().len(), 4);
}

async fn a_partial_duplicate_is_an_error_and_writes_nothing(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    let stored = events(1);
    store
        .append(to("s", ExpectedVersion::Any, stored.clone()))
        .await
        .unwrap();
    let mut mixed = stored.clone();
    mixed.extend(events(1));
    match store.append(to("s", ExpectedVersion::Any, mixed)).await {
        Err(StoreError::DuplicateEvent { event_id, .. }) => {
            assert_eq!(event_id, stored[0].event_id)
        }
        other => panic!("expected a duplicate error, got {other:?}"),
    }
    // The same id in another stream is not a repeat either.
    match store.append(to("t", ExpectedVersion::Any, stored)).await {
        Err(StoreError::DuplicateEvent { .. }) => {}
        other => panic!("expected a duplicate error, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), Position(1));
}

async fn append_many_is_all_or_nothing(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    store
        .append(to("show", ExpectedVersion::NoStream, events(1)))
        .await
        .unwrap();

    // The show moved on (version 1), so the sale that expected version 0 must not land anywhere.
    let stale = store
        .append_many(vec![
            to("show", ExpectedVersion::NoStream, events(1)),
            to("booking", ExpectedVersion::Any, events(1)),
        ])
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { ref stream_id, actual: 1, .. }) if stream_id == "show")
    );
    assert!(store.read_stream("booking", 0).await.unwrap().is_empty());

    let sale = vec![
        to("show", ExpectedVersion::Exact(1), events(1)),
        to("booking", ExpectedVersion::Any, events(2)),
    ];
    let sold = store.append_many(sale.clone()).await.unwrap();
    assert_eq!(sold.streams.len(), 2);
    assert_eq!(sold.streams[0].stream_id, "show");
    assert_eq!(sold.streams[0].positions, vec![Position(2)]);
    assert_eq!(sold.streams[1].positions, vec![Position(3), Position(4)]);
    assert_eq!(sold.last_position(), Position(4));

    // A redelivered sale is a repeat across both streams, not a conflict.
    let again = store.append_many(sale).await.unwrap();
    assert!(again.was_repeat);
    assert_eq!(again.streams, sold.streams);
    assert_eq!(store.head().await.unwrap(), Position(4));
}

async fn events_keep_their_data_and_metadata(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    let correlation_id = Uuid::now_v7();
    let causation_id = Uuid::now_v7();
    let occurred_at = Utc::now() - chrono::Duration::seconds(30);
    // Unusual but valid JSON text, kept byte for byte.
    let data = r#"{"seats": ["A-1-1", "A-1-2"],  "name": "Zoë \u00e9", "n": 1.50}"#;
    let new = NewEvent::from_json_text(
        Uuid::now_v7(),
        "booking.requested.v1",
        data,
        EventMetadata {
            correlation_id: Some(correlation_id),
            causation_id: Some(causation_id),
            partition_key: Some("show-1".into()),
            trace_context: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            occurred_at,
        },
    )
    .unwrap();
    let before = Utc::now();
    store
        .append(to(
            "booking-1",
            ExpectedVersion::NoStream,
            vec![new.clone()],
        ))
        .await
        .unwrap();
    let after = Utc::now();

    let stored = &store.read_all(Position(0), 10).await.unwrap()[0];
    assert_eq!(stored.event_id, new.event_id);
    assert_eq!(stored.stream_id, "booking-1");
    assert_eq!(stored.stream_version, 1);
    assert_eq!(stored.position, Position(1));
    assert_eq!(stored.event_type, "booking.requested.v1");
    assert_eq!(stored.data, data);
    assert_eq!(stored.metadata.correlation_id, Some(correlation_id));
    assert_eq!(stored.metadata.causation_id, Some(causation_id));
    assert_eq!(stored.metadata.partition_key.as_deref(), Some("show-1"));
    assert_eq!(stored.metadata.trace_context, new.metadata.trace_context);
    // Databases keep microseconds (Postgres) or milliseconds (SQLite's clock).
    let drift = (stored.metadata.occurred_at - occurred_at)
        .num_milliseconds()
        .abs();
    assert!(drift <= 1, "occurred_at changed by {drift} ms");
    let slack = chrono::Duration::milliseconds(5);
    assert!(
        stored.recorded_at >= before - slack && stored.recorded_at <= after + slack,
        "recorded_at {} is not the database's clock at commit ({before} .. {after})",
        stored.recorded_at
    );

    let invalid = NewEvent::from_json_text(Uuid::now_v7(), "x.v1", "{not json", Default::default());
    assert!(matches!(invalid, Err(StoreError::InvalidEvent { .. })));
}

async fn the_global_log_reads_in_batches(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    for stream in 0..50 {
        store
            .append(to(
                &format!("s{stream}"),
                ExpectedVersion::NoStream,
                events(5),
            ))
            .await
            .unwrap();
    }
    let mut after = Position(0);
    let mut seen = Vec::new();
    loop {
        let batch = store.read_all(after, 64).await.unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 64);
        after = batch.last().unwrap().position;
        seen.extend(batch.into_iter().map(|e| e.position.0));
    }
    assert_eq!(seen, (1..=250).collect::<Vec<u64>>());
}

async fn concurrent_appends_with_one_expected_version_let_exactly_one_win(backend: Backend) {
    // Several store instances: like several processes selling the same seats.
    let db = TestDatabase::new(backend);
    let stores: Vec<Arc<dyn EventStore>> =
        futures::future::join_all((0..4).map(|_| db.open())).await;
    stores[0]
        .append(to("show", ExpectedVersion::NoStream, events(1)))
        .await
        .unwrap();
    for round in 1..=10u64 {
        let attempts = (0..16).map(|i| {
            let store = stores[i % stores.len()].clone();
            async move {
                store
                    .append(to("show", ExpectedVersion::Exact(round), events(1)))
                    .await
            }
        });
        let results = futures::future::join_all(attempts).await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {won} appends won the same version");
        for result in results.iter().filter(|r| r.is_err()) {
            assert!(
                matches!(result, Err(StoreError::Conflict { actual, .. }) if *actual == round + 1)
            );
        }
    }
    assert_eq!(stores[0].read_stream("show", 0).await.unwrap().len(), 11);
}

async fn many_stores_opening_one_new_database_at_once_all_succeed(backend: Backend) {
    // Processes starting together on a new database race to create and migrate it (on SQLite
    // also to turn on WAL). Every one of them must open, and every one must see the same log.
    for _ in 0..5 {
        let db = TestDatabase::new(backend);
        let stores: Vec<Arc<dyn EventStore>> =
            futures::future::join_all((0..8).map(|_| db.open())).await;
        stores[3]
            .append(to("s", ExpectedVersion::NoStream, events(1)))
            .await
            .unwrap();
        for store in &stores {
            assert_eq!(store.read_stream("s", 0).await.unwrap().len(), 1);
        }
    }
}

async fn a_subscription_catches_up_then_follows_live(backend: Backend) {
    let db = TestDatabase::new(backend);
    let writer = db.open().await;
    // On Postgres the reader is another store instance, woken by NOTIFY from the writer's
    // commits; on SQLite the same instance, woken in-process by its writer. The poll interval is
    // far longer than the test's deadline, so neither depends on polling.
    let reader = match backend {
        Backend::Postgres => db.open().await,
        Backend::Sqlite => writer.clone(),
    };
    writer
        .append(to("s", ExpectedVersion::NoStream, events(25)))
        .await
        .unwrap();
    let mut subscription = Subscription::new(reader, Position(0))
        .with_batch_size(10)
        .with_poll_interval(Duration::from_secs(30));
    let mut seen = Vec::new();
    while seen.len() < 25 {
        let batch = subscription.next_batch().await.unwrap();
        assert!(batch.len() <= 10);
        seen.extend(batch.into_iter().map(|e| e.position.0));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<u64>>());

    let live = tokio::spawn(async move {
        let mut live = Vec::new();
        while live.len() < 5 {
            let batch = subscription.next_batch().await.unwrap();
            live.extend(batch.into_iter().map(|e| e.position.0));
        }
        live
    });
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        writer
            .append(to("s", ExpectedVersion::Any, events(1)))
            .await
            .unwrap();
    }
    let live = tokio::time::timeout(Duration::from_secs(10), live)
        .await
        .expect("live events arrive within 10 s")
        .unwrap();
    assert_eq!(live, vec![26, 27, 28, 29, 30]);
}

async fn a_malformed_append_is_refused_before_it_reaches_the_database(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    assert!(matches!(
        store.append_many(vec![]).await,
        Err(StoreError::InvalidAppend(_))
    ));
    assert!(matches!(
        store.append(to("s", ExpectedVersion::Any, vec![])).await,
        Err(StoreError::InvalidAppend(_))
    ));
    let twice = event("t.v1", serde_json::json!({}));
    assert!(matches!(
        store
            .append(to("s", ExpectedVersion::Any, vec![twice.clone(), twice]))
            .await,
        Err(StoreError::InvalidAppend(_))
    ));
    assert_eq!(store.head().await.unwrap(), Position(0));
}

/// The caller's decoder fails; the error names the stored event.
async fn an_undecodable_event_names_itself(backend: Backend) {
    #[derive(Debug, thiserror::Error)]
    #[error("unknown type {0}")]
    struct UnknownType(String);

    let db = TestDatabase::new(backend);
    let store = db.open().await;
    store
        .append(to("s", ExpectedVersion::Any, events(1)))
        .await
        .unwrap();
    let unknown = event("from.the.future.v9", serde_json::json!({"x": 1}));
    store
        .append(to("s", ExpectedVersion::Any, vec![unknown.clone()]))
        .await
        .unwrap();
    let stored = store.read_all(Position(0), 10).await.unwrap();
    let error = stored[1]
        .decode(|event_type, _data| Err::<(), _>(UnknownType(event_type.to_string())))
        .unwrap_err();
    assert_eq!(error.event_id, unknown.event_id);
    assert_eq!(error.position, Position(2));
    assert_eq!(error.event_type, "from.the.future.v9");
    let message = error.to_string();
    assert!(message.contains(&unknown.event_id.to_string()) && message.contains("position 2"));
}

/// Another process appended and no wake-up reached us (a lost NOTIFY on Postgres, another process
/// on SQLite): the rows are written behind the store's back, and polling still finds them.
async fn a_subscription_polls_when_no_wake_up_comes(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    let mut subscription = Subscription::new(store.clone(), Position(0))
        .with_poll_interval(Duration::from_millis(100));
    let follower = tokio::spawn(async move { subscription.next_batch().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let event_id = Uuid::now_v7();
    let (insert, move_head) = match backend {
        Backend::Postgres => (
            format!(
                "INSERT INTO zq_events (position, event_id, stream_id, stream_version, event_type, \
                 data, occurred_at, recorded_at) VALUES (1, '{event_id}', 's', 1, 'test.v1', \
                 '{{}}', now(), now())"
            ),
            "; UPDATE zq_log_head SET position = 1",
        ),
        Backend::Sqlite => (
            format!(
                "INSERT INTO zq_events (position, event_id, stream_id, stream_version, event_type, \
                 data, occurred_at) VALUES (1, X'{}', 's', 1, 'test.v1', '{{}}', \
                 '2026-01-01T00:00:00Z')",
                event_id.simple()
            ),
            "",
        ),
    };
    db.execute(&format!("{insert}{move_head}")).await;
    let batch = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("polling finds the event within 10 s")
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].event_id, event_id);
}

async fn close_writes_what_is_queued_and_refuses_the_rest(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    let appends: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(to(&format!("s{i}"), ExpectedVersion::NoStream, events(2)))
                    .await
            })
        })
        .collect();
    // Let the appends reach the queue, then close while some are still waiting in it.
    tokio::task::yield_now().await;
    store.close().await;
    let mut written = 0;
    for append in appends {
        match append.await.unwrap() {
            Ok(_) => written += 2,
            Err(StoreError::Closed) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    // Whatever was accepted is in the log, with nothing half-written.
    let reopened = db.open().await;
    assert_eq!(reopened.head().await.unwrap(), Position(written));
    assert!(matches!(
        store
            .append(to("late", ExpectedVersion::Any, events(1)))
            .await,
        Err(StoreError::Closed)
    ));
    // Reads still work on a closed store.
    assert_eq!(
        store.read_all(Position(0), 1000).await.unwrap().len() as u64,
        written
    );
}

async fn checkpoints_only_move_forward(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    assert_eq!(store.checkpoint("relay").await.unwrap(), None);
    store.save_checkpoint("relay", Position(10)).await.unwrap();
    store
        .save_checkpoint("projection", Position(3))
        .await
        .unwrap();
    assert_eq!(store.checkpoint("relay").await.unwrap(), Some(Position(10)));
    // A delayed save of an older position does not rewind it.
    store.save_checkpoint("relay", Position(7)).await.unwrap();
    assert_eq!(store.checkpoint("relay").await.unwrap(), Some(Position(10)));
    store.save_checkpoint("relay", Position(12)).await.unwrap();
    // Another instance (another process) sees the same.
    let other = db.open().await;
    assert_eq!(other.checkpoint("relay").await.unwrap(), Some(Position(12)));
    assert_eq!(
        other.checkpoint("projection").await.unwrap(),
        Some(Position(3))
    );
}

fn poison_letter(group: &str, event_id: Option<&str>, offset: i64) -> event_store::NewDeadLetter {
    let failed_at = Utc::now();
    event_store::NewDeadLetter {
        group: group.into(),
        cause: "poison".into(),
        reason: "expected value at line 1 column 1".into(),
        topic: "zq.booking-events".into(),
        partition: 3,
        offset,
        key: Some(b"show-1".to_vec()),
        payload: Some(vec![0xff, b'{', b'x']),
        headers: vec![
            (
                "ce_type".into(),
                Some("zingqueue.booking.requested.v1".into()),
            ),
            ("empty".into(), None),
        ],
        event_id: event_id.map(str::to_string),
        event_type: Some("booking.requested.v1".into()),
        position: Some(Position(42)),
        attempts: 1,
        first_failed_at: failed_at,
        last_failed_at: failed_at,
    }
}

async fn a_dead_letter_is_kept_once_and_redriven_once(backend: Backend) {
    use event_store::{DeadLetterQuery, DeadLetterStatus};
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    let letter = poison_letter("payment", Some("e-1"), 7);
    let (id, new) = store.record_dead_letter(&letter).await.unwrap();
    assert!(new);
    // The same event again, republished at another offset (an emptied embedded broker): one row.
    let again = poison_letter("payment", Some("e-1"), 99);
    assert_eq!(store.record_dead_letter(&again).await.unwrap(), (id, false));
    // Without an event id, the place in the topic identifies the record.
    let (other, new) = store
        .record_dead_letter(&poison_letter("payment", None, 7))
        .await
        .unwrap();
    assert!(new && other != id);
    // Another group keeps its own letter of the same event.
    let (notifier, new) = store
        .record_dead_letter(&poison_letter("notifier", Some("e-1"), 7))
        .await
        .unwrap();
    assert!(new && notifier != id);

    let stored = store.dead_letter(id).await.unwrap().expect("stored");
    assert_eq!(stored.payload, letter.payload);
    assert_eq!(stored.key, letter.key);
    assert_eq!(stored.headers, letter.headers);
    assert_eq!(stored.position, Some(Position(42)));
    assert_eq!(stored.status, DeadLetterStatus::Dead);
    assert!(!stored.mirrored);
    let listed = store
        .dead_letters(&DeadLetterQuery {
            group: Some("payment".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![other, id]
    );

    // Redrive: requested twice is one request; a failed run makes it dead again, a second
    // request and a successful run resolve it, and a request after that changes nothing.
    assert_eq!(
        store.request_redrive(id).await.unwrap(),
        Some(DeadLetterStatus::RedriveRequested)
    );
    assert_eq!(
        store.request_redrive(id).await.unwrap(),
        Some(DeadLetterStatus::RedriveRequested)
    );
    let pending = store.pending_redrives("payment", 10).await.unwrap();
    assert_eq!(pending.iter().map(|l| l.id).collect::<Vec<_>>(), vec![id]);
    assert!(
        store
            .pending_redrives("notifier", 10)
            .await
            .unwrap()
            .is_empty()
    );
    // One member claims it; another (or a second round) does not.
    assert!(store.claim_redrive(id).await.unwrap());
    assert!(!store.claim_redrive(id).await.unwrap());
    assert!(
        store
            .pending_redrives("payment", 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .finish_redrive(id, Some("still broken"))
        .await
        .unwrap();
    let failed = store.dead_letter(id).await.unwrap().unwrap();
    assert_eq!(
        (failed.status, failed.attempts, failed.redrives),
        (DeadLetterStatus::Dead, 2, 1)
    );
    assert_eq!(failed.reason, "still broken");
    store.request_redrive(id).await.unwrap();
    assert!(store.claim_redrive(id).await.unwrap());
    store.finish_redrive(id, None).await.unwrap();
    store
        .finish_redrive(id, Some("late duplicate run"))
        .await
        .unwrap();
    let resolved = store.dead_letter(id).await.unwrap().unwrap();
    assert_eq!(resolved.status, DeadLetterStatus::Redriven);
    // Counted by group, cause and status (what the monitor's DLQ depth reads).
    let counts: Vec<(String, String, DeadLetterStatus, u64)> = store
        .dead_letter_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.group, c.cause, c.status, c.count))
        .collect();
    assert_eq!(
        counts,
        [
            (
                "notifier".into(),
                "poison".into(),
                DeadLetterStatus::Dead,
                1
            ),
            ("payment".into(), "poison".into(), DeadLetterStatus::Dead, 1),
            (
                "payment".into(),
                "poison".into(),
                DeadLetterStatus::Redriven,
                1
            ),
        ]
    );
    assert!(resolved.resolved_at.is_some());
    assert_eq!(
        store.request_redrive(id).await.unwrap(),
        Some(DeadLetterStatus::Redriven)
    );
    assert_eq!(store.request_redrive(987_654).await.unwrap(), None);

    // Mirroring is tracked per letter.
    let unmirrored = store.unmirrored_dead_letters("payment", 10).await.unwrap();
    assert_eq!(unmirrored.len(), 2);
    store.mark_dead_letter_mirrored(id).await.unwrap();

    // Redriven, then failing again (a later delivery): the same row is dead again, to be
    // mirrored again; a letter that is still dead is left as it is.
    let (again_id, new) = store.record_dead_letter(&letter).await.unwrap();
    assert_eq!((again_id, new), (id, true));
    let dead_again = store.dead_letter(id).await.unwrap().unwrap();
    assert_eq!(dead_again.status, DeadLetterStatus::Dead);
    assert!(dead_again.resolved_at.is_none() && !dead_again.mirrored);
    assert_eq!(
        store.record_dead_letter(&letter).await.unwrap(),
        (id, false)
    );
    store.mark_dead_letter_mirrored(id).await.unwrap();
    let unmirrored = store.unmirrored_dead_letters("payment", 10).await.unwrap();
    assert_eq!(
        unmirrored.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![other]
    );
}

async fn consumer_progress_moves_forward_and_heartbeats_always(backend: Backend) {
    use event_store::ConsumerProgress;
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    let at = |position: u64, member: &str, seconds: i64| ConsumerProgress {
        group: "seat-lock".into(),
        partition: 2,
        position: Position(position),
        member: member.into(),
        heartbeat_at: chrono::DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap(),
    };
    store
        .save_consumer_progress(&[at(10, "a", 0)])
        .await
        .unwrap();
    store
        .save_consumer_progress(&[at(7, "b", 5)])
        .await
        .unwrap();
    let rows = store.consumer_progress().await.unwrap();
    assert_eq!(rows, vec![at(10, "b", 5)]);
    store
        .save_consumer_progress(&[at(12, "b", 6)])
        .await
        .unwrap();
    assert_eq!(
        store.consumer_progress().await.unwrap(),
        vec![at(12, "b", 6)]
    );
}

async fn a_members_counters_are_kept_per_group_and_member(backend: Backend) {
    use event_store::MemberCounters;
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    let at = |seconds: i64| {
        chrono::DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a valid time")
    };
    let counters = |member: &str, processed: u64, at| MemberCounters {
        group: "payment".into(),
        member: member.into(),
        processed,
        failed: processed / 2,
        retried: processed / 3,
        dead_lettered: 1,
        heartbeat_at: at,
    };
    store
        .save_member_counters(&counters("a", 10, at(0)))
        .await
        .unwrap();
    store
        .save_member_counters(&counters("b", 4, at(1)))
        .await
        .unwrap();
    // The next heartbeat of `a` replaces its row.
    store
        .save_member_counters(&counters("a", 30, at(2)))
        .await
        .unwrap();
    assert_eq!(
        store.member_counters().await.unwrap(),
        vec![counters("a", 30, at(2)), counters("b", 4, at(1))]
    );
}
