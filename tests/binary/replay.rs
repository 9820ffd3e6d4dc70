//! Replays of the read models end to end, on Postgres (with Redis holds) and on the embedded
//! SQLite default: a randomized workload through the services (every path of the saga), then
//! `zingqueue replay` handed to the running `up`, while clients keep querying:
//! - the rebuilt read models are identical, row for row, to the live ones;
//! - no query fails meanwhile;
//! - a rebuild whose process is SIGKILLed halfway leaves the live read models as they were, and
//!   a rerun completes;
//! - `--until` builds a snapshot and switches nothing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use event_store::Position;
use projections::{READ_MODELS, ReadModelDb, TableRows, TableSet};
use serde_json::{Value, json};
use support::{interrupt, spawn_until, text, zingqueue};

const ADMIN: &str = "replay-test-admin-token";

#[test]
fn replay_on_postgres_while_up_runs() {
    let database = testkit::postgres();
    let redis = testkit::redis();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("ZQ_DATABASE_URL", database.url.as_str()),
        ("ZQ_REDIS_URL", redis.url.as_str()),
        ("ZQ_DATA_DIR", dir.path().to_str().unwrap()),
    ];
    scenario(&env, &database.url);
}

#[test]
fn replay_on_the_embedded_default_while_up_runs() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("zingqueue.db").display());
    let env = [("ZQ_DATA_DIR", dir.path().to_str().unwrap())];
    scenario(&env, &url);
}

fn scenario(backend: &[(&str, &str)], database_url: &str) {
    let mut env: Vec<(&str, &str)> = backend.to_vec();
    env.extend([
        ("ZQ_ADMIN_TOKEN", ADMIN),
        ("ZQ_LISTEN", "127.0.0.1:0"),
        // Short enough for the expiry path, long enough for payments to start (they need 5 s).
        ("ZQ_HOLD_SECONDS", "7"),
        ("ZQ_PAYMENT_RETRY_BASE_MS", "20"),
        // The workload's flaky payments warn by design; keep the test's output for failures.
        ("RUST_LOG", "error"),
    ]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(ReadModelDb::open(database_url)).unwrap();
    let store = runtime.block_on(event_store::open(database_url)).unwrap();

    let (up, api) = spawn_until(&["up"], &env, "api:");
    let api = api.trim_start_matches("http://").to_string();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("workload seed {seed}");
    let workload = Workload::run(&api, seed);
    workload.wait_until_settled(&api);
    let head = wait_until_quiet(&runtime, &store, &db);
    let live = runtime.block_on(db.rows()).unwrap();
    assert_eq!(live.bookings.len(), workload.bookings.len());
    assert!(!live.seats.is_empty());
    every_path_was_taken(&live);

    // A wrong live row (what a projection bug leaves) that the rebuild must correct, then a
    // rebuild handed to the running up, with clients asking all along.
    runtime.block_on(plant_a_wrong_row(&db, head));
    let readers = Readers::start(&api, &workload);
    let output = zingqueue(&["replay", "--batch-size", "5"], &env);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.contains("the replay runs there"),
        "not handed to up: {stdout}"
    );
    assert!(stdout.contains("Switched"), "{stdout}");
    let asked = readers.stop();
    assert!(
        asked >= 5,
        "only {asked} rounds of queries ran during the rebuild"
    );
    assert_eq!(
        runtime.block_on(store.head()).unwrap(),
        head,
        "the log moved during the replay: the workload had not settled"
    );
    same_rows(
        &runtime.block_on(db.rows()).unwrap(),
        &live,
        "the rebuilt rows",
    );
    assert_eq!(runtime.block_on(db.checkpoint(READ_MODELS)).unwrap(), head);

    // A rebuild killed halfway: up is SIGKILLed while it builds the shadow tables.
    let follower = support::command(&["replay", "--batch-size", "1"], &env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rebuilding = TableSet::Shadow.checkpoint(READ_MODELS);
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime.block_on(db.checkpoint(&rebuilding)).unwrap() == Position::START {
        assert!(Instant::now() < deadline, "the rebuild never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(up); // SIGKILL
    let followed = follower.wait_with_output().unwrap();
    assert!(!followed.status.success(), "the follower outlived up");
    assert!(
        text(&followed.stderr).contains("lost the running up"),
        "{}",
        text(&followed.stderr)
    );
    assert!(
        runtime.block_on(db.checkpoint(&rebuilding)).unwrap() > Position::START,
        "the rebuild had already finished: nothing was killed halfway"
    );
    same_rows(
        &runtime.block_on(db.rows()).unwrap(),
        &live,
        "the rows after a killed rebuild",
    );

    // Started again: a rerun while bookings keep coming, each read back with its own
    // `min_position` (its write, or a 503; never an older state).
    let (up, api) = spawn_until(&["up"], &env, "api:");
    let api = api.trim_start_matches("http://").to_string();
    let writers = Writers::start(&api);
    let output = zingqueue(&["replay"], &env);
    assert!(
        output.status.success(),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let (written, unavailable) = writers.stop();
    assert!(
        written >= 5,
        "only {written} bookings were written during the rerun"
    );
    println!("{written} bookings read back during the rerun, {unavailable} answers were 503");
    assert_eq!(
        runtime.block_on(db.checkpoint(&rebuilding)).unwrap(),
        Position::START,
        "the leftover shadow is gone"
    );
    // What the live runner kept through the switch is what a rebuild from scratch gives.
    let head = wait_until_quiet(&runtime, &store, &db);
    let live = runtime.block_on(db.rows()).unwrap();
    let output = zingqueue(&["replay"], &env);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(runtime.block_on(store.head()).unwrap(), head);
    same_rows(
        &runtime.block_on(db.rows()).unwrap(),
        &live,
        "a rebuild after the rerun",
    );

    // A snapshot as of half the log, beside the live tables.
    let half = (head.0 / 2).to_string();
    let output = zingqueue(&["replay", "--until", &half], &env);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains(&format!("Snapshot at_{half}")), "{stdout}");
    let snapshot = db.with_tables(TableSet::snapshot(&format!("at_{half}")).unwrap());
    let then = runtime.block_on(snapshot.rows()).unwrap();
    assert!(!then.bookings.is_empty() && then.bookings.len() < live.bookings.len());
    same_rows(
        &runtime.block_on(db.rows()).unwrap(),
        &live,
        "the live rows beside a snapshot",
    );
    interrupt(up);
}

/// The workload went every way the saga can: each kind of event is in some booking's timeline.
fn every_path_was_taken(rows: &TableRows) {
    let mut seen = std::collections::BTreeSet::new();
    for (.., body, _) in &rows.bookings {
        let view: Value = serde_json::from_str(body).unwrap();
        for entry in view["timeline"].as_array().unwrap() {
            seen.insert(entry["type"].as_str().unwrap().to_string());
        }
    }
    for wanted in [
        "requested",
        "seats_held",
        "rejected",
        "hold_expired",
        "payment_succeeded",
        "payment_failed",
        "confirmed",
        "failed",
        "cancelled",
        "refund_requested",
        "refunded",
        "email_sent",
    ] {
        assert!(
            seen.iter()
                .any(|seen| seen.starts_with(&format!("booking.{wanted}."))),
            "no booking went through {wanted}: {seen:?}"
        );
    }
}

/// Overwrite one booking's live row with a wrong status, through the checkpointed commit.
async fn plant_a_wrong_row(db: &ReadModelDb, head: Position) {
    let rows = db.rows().await.unwrap();
    let id: domain::BookingId = rows.bookings[0].0.parse().unwrap();
    let mut view = db.booking(id).await.unwrap().unwrap();
    view.status = if view.status == domain::BookingStatus::Cancelled {
        domain::BookingStatus::Confirmed
    } else {
        domain::BookingStatus::Cancelled
    };
    let changes = projections::db::Changes {
        bookings: [(id, view)].into(),
        ..Default::default()
    };
    let generation = db.generation(READ_MODELS).await.unwrap();
    db.commit(READ_MODELS, head, generation, head, &changes)
        .await
        .unwrap();
    assert_ne!(db.rows().await.unwrap(), rows);
}

/// Equal row for row; otherwise fail naming the rows that differ (not two walls of JSON).
fn same_rows(found: &TableRows, expected: &TableRows, what: &str) {
    fn differing<T: PartialEq + std::fmt::Debug>(found: &[T], expected: &[T]) -> Vec<String> {
        let mut lines: Vec<String> = found
            .iter()
            .filter(|row| !expected.contains(row))
            .map(|row| format!("  only found:    {row:?}"))
            .collect();
        lines.extend(
            expected
                .iter()
                .filter(|row| !found.contains(row))
                .map(|row| format!("  only expected: {row:?}")),
        );
        lines
    }
    let mut lines = differing(&found.bookings, &expected.bookings);
    lines.extend(differing(&found.seats, &expected.seats));
    lines.extend(differing(&found.stats, &expected.stats));
    assert!(
        lines.is_empty(),
        "{what} differ from the live ones:\n{}",
        lines.join("\n")
    );
}

/// Longer than anything the services keep in flight without appending: the slowest payment
/// (`sim_slow_9000`, which lands after its booking's hold expired and is refunded).
const QUIET: Duration = Duration::from_secs(10);

/// Wait until the log stops growing for [`QUIET`] (every booking settled, every late payment
/// refunded, every email recorded) and the read models have reached its head; returns the
/// head.
fn wait_until_quiet(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<dyn event_store::EventStore>,
    db: &ReadModelDb,
) -> Position {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = (Position::START, Instant::now());
    loop {
        let head = runtime.block_on(store.head()).unwrap();
        let projected = runtime.block_on(db.checkpoint(READ_MODELS)).unwrap();
        if head != last.0 {
            last = (head, Instant::now());
        } else if projected == head && last.1.elapsed() > QUIET {
            return head;
        }
        assert!(
            Instant::now() < deadline,
            "the log never settled (head {head}, read models {projected})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn request(api: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    support::json_request(api, method, path, Some(ADMIN), body)
}

/// A small xorshift generator: the workload is reproducible from its printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Workload {
    show: String,
    bookings: Vec<String>,
    customers: Vec<String>,
}

impl Workload {
    /// 60 bookings of one or two of 30 seats (contention: rejections), paid every way the
    /// simulator can (approved, declined, flaky, exhausted, unknown outcome, too slow for the
    /// hold), some cancelled at some point (requested, held, paid or confirmed).
    fn run(api: &str, seed: u64) -> Workload {
        let mut rng = Rng(seed);
        let (status, body) = request(
            api,
            "POST",
            "/shows",
            &json!({
                "name": "Replay Live", "starts_at": "2027-05-01T20:00:00Z", "currency": "EUR",
                "sections": [{"name": "A", "rows": 3, "seats_per_row": 10, "price_cents": 4500}]
            }),
        );
        assert_eq!(status, 201, "{body}");
        let show = body["show_id"].as_str().unwrap().to_string();
        let customers: Vec<String> = (0..8).map(|n| format!("replay-{n}")).collect();
        let methods = [
            "sim_ok",
            "sim_ok",
            "sim_ok",
            "sim_declined",
            "sim_flaky_3",
            "sim_flaky_10",
            "sim_unknown",
            "sim_slow_9000",
        ];
        let mut bookings = Vec::new();
        let mut to_cancel = Vec::new();
        let mut book = |seats: Vec<String>, customer: &str, method: &str| {
            let (status, body) = request(
                api,
                "POST",
                "/bookings",
                &json!({
                    "show_id": show, "seats": seats, "payment_method": method,
                    "customer": {"id": customer, "email": format!("{customer}@example.com"), "name": customer}
                }),
            );
            assert_eq!(status, 202, "{body}");
            let booking = body["booking_id"].as_str().unwrap().to_string();
            bookings.push(booking.clone());
            booking
        };
        // Every payment method once, on seats of their own (row 3), so each path is taken…
        for (n, method) in methods.iter().enumerate() {
            book(vec![format!("A-3-{}", n + 1)], &customers[n], method);
        }
        // …a seat already taken (rejected), and a booking cancelled at once.
        book(vec!["A-3-1".into()], &customers[0], "sim_ok");
        let cancelled = book(vec!["A-3-10".into()], &customers[1], "sim_ok");
        to_cancel.push((cancelled, 0));
        // Then contention at random on rows 1 and 2, some cancelled at some point of their way.
        for _ in 0..50 {
            let count = 1 + rng.below(2);
            let seats: Vec<String> = (0..count)
                .map(|_| format!("A-{}-{}", 1 + rng.below(2), 1 + rng.below(10)))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let customer = &customers[rng.below(customers.len() as u64) as usize];
            let method = methods[rng.below(methods.len() as u64) as usize];
            let booking = book(seats, customer, method);
            if rng.below(6) == 0 {
                to_cancel.push((booking, rng.below(1_500)));
            }
        }
        // Cancellations at different points of each booking's way.
        let started = Instant::now();
        to_cancel.sort_by_key(|(_, at)| *at);
        for (booking, at) in to_cancel {
            let due = Duration::from_millis(at);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            let (status, body) =
                request(api, "DELETE", &format!("/bookings/{booking}"), &Value::Null);
            // 409: it had already ended (rejected, failed, expired, cancelled).
            assert!(status == 202 || status == 409, "{status} {body}");
        }
        Workload {
            show,
            bookings,
            customers,
        }
    }

    /// Every booking terminal with its refunds done.
    fn wait_until_settled(&self, api: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        for booking in &self.bookings {
            loop {
                let (status, body) =
                    request(api, "GET", &format!("/bookings/{booking}"), &Value::Null);
                assert_eq!(status, 200, "{body}");
                let terminal = matches!(
                    body["status"].as_str(),
                    Some("confirmed" | "rejected" | "expired" | "cancelled" | "failed")
                );
                if terminal && body["refund_status"] != "pending" {
                    break;
                }
                assert!(Instant::now() < deadline, "never settled: {body:#}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Clients asking every kind of query in a loop; any answer but 200 fails the test.
struct Readers {
    stop: Arc<AtomicBool>,
    asked: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Readers {
    fn start(api: &str, workload: &Workload) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(AtomicU64::new(0));
        let paths: Vec<String> = [
            format!("/shows/{}/seats", workload.show),
            format!("/shows/{}/stats", workload.show),
            format!("/bookings/{}", workload.bookings[0]),
            format!(
                "/bookings/{}",
                workload.bookings[workload.bookings.len() - 1]
            ),
            format!("/customers/{}/bookings", workload.customers[0]),
        ]
        .into();
        let threads = (0..2)
            .map(|_| {
                let (api, paths) = (api.to_string(), paths.clone());
                let (stop, asked) = (stop.clone(), asked.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for path in &paths {
                            let (status, body) = request(&api, "GET", path, &Value::Null);
                            assert_eq!(status, 200, "{path} during a rebuild: {body}");
                        }
                        asked.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Readers {
            stop,
            asked,
            threads,
        }
    }

    /// Stop; panics if any reader saw an error. Returns the rounds of queries asked.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a query failed during the rebuild");
        }
        self.asked.load(Ordering::Relaxed)
    }
}

/// A client booking seat after seat, reading each booking back with its own `min_position`:
/// the answer must be that booking, or a 503 (the read models not there yet), nothing else.
struct Writers {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Writers {
    fn start(api: &str) -> Writers {
        let (status, body) = request(
            api,
            "POST",
            "/shows",
            &json!({
                "name": "Replay Rerun", "starts_at": "2027-05-01T20:00:00Z", "currency": "EUR",
                "sections": [{"name": "B", "rows": 20, "seats_per_row": 50, "price_cents": 4500}]
            }),
        );
        assert_eq!(status, 201, "{body}");
        let show = body["show_id"].as_str().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (api, stop) = (api.to_string(), stop.clone());
            move || {
                let (mut written, mut unavailable) = (0, 0);
                let seats = (1..=20).flat_map(|row| (1..=50).map(move |n| format!("B-{row}-{n}")));
                for seat in seats {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (status, body) = request(
                        &api,
                        "POST",
                        "/bookings",
                        &json!({
                            "show_id": show, "seats": [seat], "payment_method": "sim_ok",
                            "customer": {"id": "rerun", "email": "rerun@example.com", "name": "Rerun"}
                        }),
                    );
                    assert_eq!(status, 202, "{body}");
                    let booking = body["booking_id"].as_str().unwrap();
                    let position = body["log_position"].as_u64().unwrap();
                    let path = format!("/bookings/{booking}?min_position={position}");
                    let (status, body) = request(&api, "GET", &path, &Value::Null);
                    match status {
                        200 => assert_eq!(body["booking_id"], booking, "{body}"),
                        503 => unavailable += 1,
                        other => panic!("{path} during a rebuild: {other} {body}"),
                    }
                    written += 1;
                }
                (written, unavailable)
            }
        });
        Writers { stop, thread }
    }

    /// Stop; panics if any answer was wrong. Returns (bookings written, 503 answers).
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("a booking was not read back during the rebuild")
    }
}
