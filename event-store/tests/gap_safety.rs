//! Gap safety (DESIGN.md, "No event is lost or skipped"): a live subscriber following the log
//! while many writers append, some of whose transactions roll back after they have taken their
//! positions, sees every committed event exactly once, in position order.
//!
//! The rollbacks are real database rollbacks: a trigger fails inserts of events typed
//! `test.poison.v1` (about 10% of appends) *after* the transaction has locked the head and
//! allocated positions, and stretches other transactions with a short sleep so that commits
//! overlap. Writers are separate store instances (separate writer tasks and connection pools),
//! as separate processes would be. The whole scenario runs `ZQ_GAP_RUNS` times (default 20) in
//! a row, each on a fresh database.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, TestDatabase, event, to};
use event_store::{EventStore, ExpectedVersion, Position, StoreError, Subscription};
use uuid::Uuid;

const WRITERS: usize = 8;
const APPENDS_PER_WRITER: usize = 300;
const POISON_EVERY: usize = 10;

const POSTGRES_TRIGGER: &str = r#"
CREATE FUNCTION zq_test_chaos() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_type = 'test.poison.v1' THEN
        RAISE EXCEPTION 'poisoned event %', NEW.event_id;
    END IF;
    -- Stretch some transactions so that they overlap with others.
    IF random() < 0.05 THEN
        PERFORM pg_sleep(0.002);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER zq_test_chaos BEFORE INSERT ON zq_events
    FOR EACH ROW EXECUTE FUNCTION zq_test_chaos();
"#;

const SQLITE_TRIGGER: &str = r#"
CREATE TRIGGER zq_test_chaos BEFORE INSERT ON zq_events
WHEN NEW.event_type = 'test.poison.v1'
BEGIN
    SELECT RAISE(ABORT, 'poisoned event');
END;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_subscriber_sees_every_committed_event_once_in_order() {
    for run in 1..=runs() {
        one_run(Backend::Postgres, run).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_subscriber_sees_every_committed_event_once_in_order() {
    for run in 1..=runs() {
        one_run(Backend::Sqlite, run).await;
    }
}

/// A poisoned append breaks the transaction of its whole batch; the writer then writes each
/// append alone, so that it alone fails and its batch-mates commit, positions still dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_poisoned_append_fails_alone_in_its_batch() {
    poisoned_append_fails_alone(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_poisoned_append_fails_alone_in_its_batch() {
    poisoned_append_fails_alone(Backend::Sqlite).await;
}

async fn poisoned_append_fails_alone(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.open().await;
    db.execute(match backend {
        Backend::Postgres => POSTGRES_TRIGGER,
        Backend::Sqlite => SQLITE_TRIGGER,
    })
    .await;
    // Many appends at once on one store, so that they share batches; every tenth is poisoned.
    let results = futures::future::join_all((0..200).map(|i| {
        let store = store.clone();
        async move {
            let event_type = if i % 10 == 9 {
                "test.poison.v1"
            } else {
                "test.happened.v1"
            };
            let append = to(
                &format!("s{i}"),
                ExpectedVersion::NoStream,
                vec![event(event_type, serde_json::json!({ "i": i }))],
            );
            (i, store.append(append).await)
        }
    }))
    .await;
    let mut positions = Vec::new();
    for (i, result) in results {
        match result {
            Ok(written) if i % 10 != 9 => positions.push(written.streams[0].positions[0].0),
            Err(StoreError::Database(_)) if i % 10 == 9 => {}
            other => panic!("append {i}: {other:?}"),
        }
    }
    positions.sort_unstable();
    assert_eq!(positions, (1..=180).collect::<Vec<u64>>());
    assert_eq!(store.head().await.unwrap(), Position(180));
}

fn runs() -> usize {
    std::env::var("ZQ_GAP_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(20)
}

async fn one_run(backend: Backend, run: usize) {
    let db = TestDatabase::new(backend);
    // Migrate first, then install the chaos trigger on the events table.
    let reader = db.open().await;
    db.execute(match backend {
        Backend::Postgres => POSTGRES_TRIGGER,
        Backend::Sqlite => SQLITE_TRIGGER,
    })
    .await;

    // The subscriber follows live from the start, while the writers write.
    let seen = Arc::new(Mutex::new(Vec::<(Position, Uuid)>::new()));
    let mut subscription = Subscription::new(reader.clone(), Position(0))
        .with_poll_interval(Duration::from_millis(50));
    let subscriber = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let batch = subscription.next_batch().await.expect("subscription reads");
                let mut seen = seen.lock().expect("not poisoned");
                seen.extend(batch.into_iter().map(|e| (e.position, e.event_id)));
            }
        }
    });

    // Half the writers have a store each (like separate processes), half share one (so their
    // appends meet in group-commit batches that a poisoned append breaks).
    let shared = db.open().await;
    let writers = futures::future::join_all((0..WRITERS).map(|writer| {
        let db = &db;
        let shared = shared.clone();
        async move {
            let store = if writer % 2 == 0 {
                db.open().await
            } else {
                shared
            };
            write(store, writer).await
        }
    }))
    .await;
    let mut committed = HashSet::new();
    let mut rolled_back = 0;
    for (ids, failed) in writers {
        committed.extend(ids);
        rolled_back += failed;
    }
    assert!(rolled_back > 0, "run {run}: no transaction rolled back");

    // Wait, with a deadline, until the subscriber has seen as many events as were committed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.lock().expect("not poisoned").len() < committed.len() {
        assert!(
            !subscriber.is_finished(),
            "run {run}: the subscriber stopped early"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run}: the subscriber saw {} of {} committed events within 60 s",
            seen.lock().expect("not poisoned").len(),
            committed.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    subscriber.abort();
    let _ = subscriber.await;

    let seen = seen.lock().expect("not poisoned").clone();
    let positions: Vec<u64> = seen.iter().map(|(position, _)| position.0).collect();
    let expected_positions: Vec<u64> = (1..=committed.len() as u64).collect();
    assert!(
        positions == expected_positions,
        "run {run}: positions are not 1..={} in order, each once",
        committed.len()
    );
    let seen_ids: HashSet<Uuid> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(
        seen_ids.len(),
        seen.len(),
        "run {run}: an event was seen twice"
    );
    assert_eq!(
        seen_ids, committed,
        "run {run}: seen events differ from committed ones"
    );
    assert_eq!(
        reader.head().await.unwrap(),
        Position(committed.len() as u64)
    );
}

/// One writer: appends single events and small batches to a few streams; every tenth append is
/// poisoned and must roll back. Returns the ids that were committed and the number rolled back.
async fn write(store: Arc<dyn EventStore>, writer: usize) -> (Vec<Uuid>, usize) {
    let mut committed = Vec::new();
    let mut rolled_back = 0;
    for i in 0..APPENDS_PER_WRITER {
        let stream = format!("w{writer}-s{}", i % 7);
        let poisoned = i % POISON_EVERY == POISON_EVERY - 1;
        let count = 1 + i % 3;
        let batch: Vec<_> = (0..count)
            .map(|n| {
                let event_type = if poisoned && n == count - 1 {
                    "test.poison.v1"
                } else {
                    "test.happened.v1"
                };
                event(
                    event_type,
                    serde_json::json!({ "writer": writer, "i": i, "n": n }),
                )
            })
            .collect();
        let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
        match store.append(to(&stream, ExpectedVersion::Any, batch)).await {
            Ok(_) => {
                assert!(!poisoned, "a poisoned append was committed");
                committed.extend(ids);
            }
            Err(StoreError::Database(_)) if poisoned => rolled_back += 1,
            Err(error) => panic!("writer {writer}, append {i}: {error}"),
        }
    }
    (committed, rolled_back)
}
