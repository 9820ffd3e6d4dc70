//! Servers restarting under a running ZingQueue (DESIGN.md: "every long-running loop survives its
//! servers"): `zingqueue up` on a Postgres of the test's own that it stops and starts during a
//! sale, on a Redis restarted from an older snapshot, and against the dev broker.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    Running, assert_no_seat_sold_twice, http_with_head, is_terminal, json_request, spawn_until,
};

const ADMIN: &str = "restarts-test-admin-token-0123456789abcdef";

/// `zingqueue up` on `database_url` (and Redis when given), with its in-process broker and the
/// mail folder; returns the process and the API's address.
fn up(database_url: &str, redis_url: Option<&str>, data_dir: &str) -> (Running, String) {
    let mut env = vec![
        ("ZQ_DATABASE_URL", database_url),
        ("ZQ_ADMIN_TOKEN", ADMIN),
        ("ZQ_LISTEN", "127.0.0.1:0"),
        ("ZQ_DATA_DIR", data_dir),
        ("ZQ_PARTITIONS", "4"),
        ("ZQ_SESSION_TIMEOUT_MS", "6000"),
        ("ZQ_PAYMENT_RETRY_BASE_MS", "20"),
        ("RUST_LOG", "error"),
    ];
    if let Some(redis_url) = redis_url {
        env.push(("ZQ_REDIS_URL", redis_url));
    }
    let (running, api) = spawn_until(&["up"], &env, "api:");
    (running, api.trim_start_matches("http://").to_string())
}

fn create_show(api: &str, rows: u32, seats_per_row: u32) -> String {
    let (status, body) = json_request(
        api,
        "POST",
        "/shows",
        Some(ADMIN),
        &json!({
            "name": "Restarts Live", "starts_at": "2027-05-01T20:00:00Z", "currency": "EUR",
            "sections": [{"name": "A", "rows": rows, "seats_per_row": seats_per_row, "price_cents": 4500}]
        }),
    );
    assert_eq!(status, 201, "{body}");
    body["show_id"].as_str().unwrap().to_string()
}

fn booking_request(show: &str, seats: &[String], payment_method: &str, customer: &str) -> String {
    json!({
        "show_id": show, "seats": seats, "payment_method": payment_method,
        "customer": {"id": customer, "email": format!("{customer}@example.com"), "name": customer}
    })
    .to_string()
}

fn booking(api: &str, booking_id: &str) -> (u16, Value) {
    json_request(
        api,
        "GET",
        &format!("/bookings/{booking_id}"),
        Some(ADMIN),
        &Value::Null,
    )
}

/// Wait for every booking to end; panics with the first that did not within `within`.
fn wait_all_terminal(api: &str, bookings: &[String], within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    bookings
        .iter()
        .map(|id| {
            loop {
                let (status, body) = booking(api, id);
                if status == 200 && is_terminal(&body) {
                    break body;
                }
                assert!(
                    Instant::now() < deadline,
                    "booking {id} never ended: {status} {body:#}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .collect()
}

/// What the customers of a running sale saw.
#[derive(Default)]
struct SaleLog {
    accepted: Vec<String>,
    unavailable: usize,
    /// Answers that are neither 202 nor a 503 with `Retry-After` answered within a second.
    wrong: Vec<String>,
}

/// Customers booking pairs of seats of `show` (contended: 2 seats among `seat_count`) until
/// `stop`, one request after another.
fn run_sale(
    api: String,
    show: String,
    seat_count: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<SaleLog>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let seats: Vec<String> = (0..seat_count)
            .map(|i| format!("A-{}-{}", 1 + i / 20, 1 + i % 20))
            .collect();
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let wanted = [
                seats[(i * 7) % seat_count].clone(),
                seats[(i * 7 + 1) % seat_count].clone(),
            ];
            let body = booking_request(&show, &wanted, "sim_ok", &format!("fan{i}"));
            let started = Instant::now();
            let (status, head, answer) = http_with_head(&api, "POST", "/bookings", None, &body);
            let took = started.elapsed();
            let mut log = log.lock().unwrap();
            match status {
                202 => {
                    let answer: Value = serde_json::from_str(&answer).unwrap();
                    log.accepted
                        .push(answer["booking_id"].as_str().unwrap().to_string());
                }
                503 if head.contains("retry-after:") && took < Duration::from_secs(1) => {
                    log.unavailable += 1;
                }
                _ => log
                    .wrong
                    .push(format!("{status} after {took:?}: {head} {answer}")),
            }
            drop(log);
            i += 1;
            std::thread::sleep(Duration::from_millis(15));
        }
    })
}

/// Wait until `condition` holds, or panic with `what` after `within`.
fn wait_until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < within, "{what} not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

#[test]
fn up_keeps_serving_across_three_postgres_restarts_in_a_row() {
    let postgres = testkit::own_postgres();
    let redis = testkit::redis();
    let data_dir = tempfile::tempdir().unwrap();
    let (mut running, api) = up(
        &postgres.url,
        Some(&redis.url),
        data_dir.path().to_str().unwrap(),
    );
    let seat_count = 200;
    let show = create_show(&api, 10, 20);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(SaleLog::default()));
    let sale = run_sale(
        api.clone(),
        show.clone(),
        seat_count,
        stop.clone(),
        log.clone(),
    );
    let accepted = || log.lock().unwrap().accepted.len();
    let mut recoveries = Vec::new();
    for mode in [
        testkit::PgStop::Fast,
        testkit::PgStop::Immediate,
        testkit::PgStop::Fast,
    ] {
        let before = accepted();
        wait_until(
            Duration::from_secs(30),
            "bookings before the restart",
            || accepted() >= before + 20,
        );
        postgres.stop(mode).unwrap();
        // While the store is down the API answers 503 + Retry-After within a second.
        let unavailable = log.lock().unwrap().unavailable;
        wait_until(
            Duration::from_secs(10),
            "a 503 while Postgres is down",
            || log.lock().unwrap().unavailable >= unavailable + 5,
        );
        let (ready, _, detail) = http_with_head(&api, "GET", "/readyz", None, "");
        assert_eq!(ready, 503, "/readyz while Postgres is down: {detail}");
        postgres.start().unwrap();
        let back = Instant::now();
        wait_until(Duration::from_secs(30), "/readyz ready again", || {
            http_with_head(&api, "GET", "/readyz", None, "").0 == 200
        });
        let accepted_before = accepted();
        wait_until(
            Duration::from_secs(60),
            "bookings after the restart",
            || accepted() > accepted_before,
        );
        // Recovery: from the server being back to the first booking confirmed after it.
        let first_after = log.lock().unwrap().accepted[accepted_before].clone();
        wait_until(
            Duration::from_secs(60),
            "a confirmation after the restart",
            || {
                booking(&api, &first_after).1["status"] == "confirmed"
                    || is_terminal(&booking(&api, &first_after).1)
            },
        );
        recoveries.push((mode, back.elapsed()));
        assert!(running.is_running(), "up exited after a {mode:?} stop");
    }
    stop.store(true, Ordering::SeqCst);
    sale.join().unwrap();
    let log = log.lock().unwrap();
    assert!(
        log.wrong.is_empty(),
        "answers other than 202 and a quick 503 with Retry-After: {:#?}",
        log.wrong
    );
    eprintln!(
        "accepted {}, 503 while down {}, recovery (server back → first confirmation): {recoveries:?}",
        log.accepted.len(),
        log.unavailable
    );
    // Every booking accepted before, during and after the restarts ends, and no seat is sold
    // twice.
    let ended = wait_all_terminal(&api, &log.accepted, Duration::from_secs(120));
    let confirmed = assert_no_seat_sold_twice(&ended);
    assert!(confirmed > 0);
    assert!(running.is_running());
    support::interrupt(running);
}

/// `up` with `ZQ_KAFKA_BROKERS` naming a `zingqueue dev-broker` (as the README suggests for
/// separate processes): it used to wait ~2 minutes to create the dead-letter topics the mock
/// cannot create, then exit. Now the dev broker creates every topic and a booking completes.
#[test]
fn up_runs_against_the_dev_broker() {
    let (_broker, bootstrap) = spawn_until(
        &["dev-broker"],
        &[("ZQ_PARTITIONS", "4")],
        "bootstrap servers:",
    );
    let database = testkit::postgres();
    let data_dir = tempfile::tempdir().unwrap();
    let data_dir = data_dir.path().to_str().unwrap();
    let env = [
        ("ZQ_DATABASE_URL", database.url.as_str()),
        ("ZQ_KAFKA_BROKERS", bootstrap.as_str()),
        ("ZQ_ADMIN_TOKEN", ADMIN),
        ("ZQ_LISTEN", "127.0.0.1:0"),
        ("ZQ_DATA_DIR", data_dir),
        ("ZQ_PARTITIONS", "4"),
        ("ZQ_SESSION_TIMEOUT_MS", "6000"),
        ("RUST_LOG", "error"),
    ];
    let started = Instant::now();
    let (running, api) = spawn_until(&["up"], &env, "api:");
    let api = api.trim_start_matches("http://").to_string();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "up took {:?} to start against the dev broker",
        started.elapsed()
    );
    let show = create_show(&api, 1, 5);
    let body = booking_request(&show, &["A-1-1".to_string()], "sim_ok", "devbroker");
    let (status, _, answer) = http_with_head(&api, "POST", "/bookings", None, &body);
    assert_eq!(status, 202, "{answer}");
    let id = serde_json::from_str::<Value>(&answer).unwrap()["booking_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ended = wait_all_terminal(&api, &[id], Duration::from_secs(60));
    assert_eq!(ended[0]["status"], "confirmed", "{:#}", ended[0]);
    support::interrupt(running);
}

/// Book `seats` one request each, as `customer_prefix{i}` with `payment_method`; returns the
/// booking ids in order.
fn book_each(
    api: &str,
    show: &str,
    seats: &[String],
    payment_method: &str,
    customer_prefix: &str,
) -> Vec<String> {
    seats
        .iter()
        .enumerate()
        .map(|(i, seat)| {
            let body = booking_request(
                show,
                std::slice::from_ref(seat),
                payment_method,
                &format!("{customer_prefix}{i}"),
            );
            let (status, _, answer) = http_with_head(api, "POST", "/bookings", None, &body);
            assert_eq!(status, 202, "{answer}");
            serde_json::from_str::<Value>(&answer).unwrap()["booking_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The scenario: Redis with RDB persistence is restarted from a snapshot older than
/// the holds (the snapshot brings the old epoch key back). Seat-lock notices by the server's
/// run_id, rebuilds from the log, and the seats stay with their holders: the newcomers who ask
/// for the same seats are rejected, the holders' slow payments confirm.
#[test]
fn a_redis_restarted_from_an_older_snapshot_keeps_the_seats_with_their_holders() {
    let redis = testkit::own_redis(testkit::RedisPersistence::Rdb);
    let database = testkit::postgres();
    let data_dir = tempfile::tempdir().unwrap();
    let (running, api) = up(
        &database.url,
        Some(&redis.url),
        data_dir.path().to_str().unwrap(),
    );
    // A first sale, so that the hold store has its epoch; then the snapshot is taken.
    let warm_up = create_show(&api, 1, 1);
    let first = book_each(&api, &warm_up, &["A-1-1".to_string()], "sim_ok", "early");
    let ended = wait_all_terminal(&api, &first, Duration::from_secs(60));
    assert_eq!(ended[0]["status"], "confirmed");
    redis.save().unwrap();
    let run_id_before = redis.run_id().unwrap();

    let show = create_show(&api, 1, 20);
    let seats: Vec<String> = (1..=20).map(|n| format!("A-1-{n}")).collect();
    // Slow cards: the holders stay `held` for 8 s.
    let holders = book_each(&api, &show, &seats, "sim_slow_8000", "holder");
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &holders {
        while booking(&api, id).1["status"] == "requested" {
            assert!(Instant::now() < deadline, "booking {id} was never held");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(booking(&api, id).1["status"], "held");
    }
    redis.restart_from_snapshot().unwrap();
    assert_ne!(redis.run_id().unwrap(), run_id_before);
    let newcomers = book_each(&api, &show, &seats, "sim_ok", "newcomer");

    let newcomers = wait_all_terminal(&api, &newcomers, Duration::from_secs(60));
    for booking in &newcomers {
        assert_eq!(booking["status"], "rejected", "{booking:#}");
    }
    let holders = wait_all_terminal(&api, &holders, Duration::from_secs(60));
    for booking in &holders {
        assert_eq!(booking["status"], "confirmed", "{booking:#}");
    }
    support::interrupt(running);
}
