//! The sale that runs throughout the faults: customers booking contended seats of four shows
//! through both API replicas with every kind of card, retrying a `503` (or a replica that is
//! down) with the same `Idempotency-Key`, as a client behind a load balancer would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{ADMIN, Cluster};
use crate::support::{assert_no_seat_sold_twice, is_terminal};

const SHOWS: usize = 4;
const ROWS: usize = 5;
const SEATS_PER_ROW: usize = 10;

/// One card per booking, in turn: success, a decline, transient errors then success, an
/// unknown outcome (the money taken), a slow provider.
const CARDS: [&str; 10] = [
    "sim_ok",
    "sim_ok",
    "sim_declined",
    "sim_flaky_2",
    "sim_ok",
    "sim_unknown",
    "sim_slow_1500",
    "sim_ok",
    "sim_flaky_1",
    "sim_ok",
];

/// A booking the API accepted (`202`).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub booking_id: String,
    pub email: String,
}

#[derive(Default)]
struct Log {
    accepted: Vec<Accepted>,
    unavailable: usize,
    /// Answers no client should get (a `500`, a `503` without `Retry-After`, ...).
    wrong: Vec<String>,
}

struct Shared {
    apis: Vec<String>,
    shows: Vec<String>,
    probe_show: String,
    next_probe: AtomicUsize,
    stop: AtomicBool,
    log: Mutex<Log>,
}

pub struct Sale {
    shared: Arc<Shared>,
    driver: Option<JoinHandle<()>>,
}

/// What the sale left, once stopped.
pub struct Outcome {
    pub accepted: Vec<Accepted>,
    pub unavailable: usize,
}

/// Every accepted booking as it ended.
pub struct Settled {
    pub bookings: Vec<(Accepted, Value)>,
}

/// POST a booking until an API replica accepts or refuses it for good: the same
/// `Idempotency-Key` on every try, so a retry never books twice. `None` when `give_up` is set
/// first.
fn book(shared: &Shared, body: &Value, key: &str, first_api: usize) -> Option<(u16, Value)> {
    let body = body.to_string();
    let started = Instant::now();
    let mut attempt = 0usize;
    loop {
        let api = &shared.apis[(first_api + attempt) % shared.apis.len()];
        attempt += 1;
        let asked = Instant::now();
        match post(api, &body, key) {
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock
                    || error.kind() == std::io::ErrorKind::TimedOut =>
            {
                // A replica that hangs is a failure, not a replica that is down.
                shared
                    .log
                    .lock()
                    .unwrap()
                    .wrong
                    .push(format!("no answer from {api} within {:?}", asked.elapsed()));
            }
            Err(_) => {
                // That replica is down (killed, restarting): the other one.
            }
            Ok((status, head, answer)) => match status {
                202 => return Some((status, serde_json::from_str(&answer).unwrap_or_default())),
                // Overloaded or the store away: answered at once (2 s: eight processes share
                // two cores here; `tests/binary/restarts.rs` holds `up` to one second).
                503 | 429
                    if head.contains("retry-after:")
                        && asked.elapsed() < Duration::from_secs(2) =>
                {
                    shared.log.lock().unwrap().unavailable += 1;
                }
                // The same key's first request still in flight (on the other replica).
                409 if answer.contains("in flight") || answer.contains("in-flight") => {}
                400..=499 => {
                    return Some((status, serde_json::from_str(&answer).unwrap_or_default()));
                }
                _ => shared
                    .log
                    .lock()
                    .unwrap()
                    .wrong
                    .push(format!("{status} on {api}: {head} {answer}")),
            },
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no replica accepted a booking within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One request; an error when the replica cannot be reached.
fn post(api: &str, body: &str, key: &str) -> std::io::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(api)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST /bookings HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
         Idempotency-Key: {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if answer.len() < 12 {
        return Err(std::io::Error::other("connection closed without an answer"));
    }
    let status = answer[9..12].parse().unwrap_or(0);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

fn get(cluster: &Cluster, path: &str) -> Option<(u16, Value)> {
    for api in &cluster.apis {
        if std::net::TcpStream::connect(api).is_err() {
            continue;
        }
        let (status, body) =
            crate::support::json_request(api, "GET", path, Some(ADMIN), &Value::Null);
        assert!(
            status < 500 || status == 503,
            "GET {path} on {api}: {status} {body}"
        );
        if status == 200 || status == 404 {
            return Some((status, body));
        }
    }
    None
}

fn create_show(api: &str, name: &str, rows: usize, seats_per_row: usize) -> String {
    let (status, body) = crate::support::json_request(
        api,
        "POST",
        "/shows",
        Some(ADMIN),
        &json!({
            "name": name, "starts_at": "2027-05-01T20:00:00Z", "currency": "EUR",
            "sections": [{"name": "A", "rows": rows, "seats_per_row": seats_per_row, "price_cents": 4500}]
        }),
    );
    assert_eq!(status, 201, "{body}");
    body["show_id"].as_str().unwrap().to_string()
}

/// Wait until the booking satisfies `done`; panics with its last state after `within`.
fn wait_for(cluster: &Cluster, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some((200, booking)) = get(cluster, &format!("/bookings/{id}")) {
            if done(&booking) {
                return booking;
            }
            assert!(
                Instant::now() < deadline,
                "booking never got there: {booking:#}"
            );
        } else {
            assert!(Instant::now() < deadline, "booking {id} never readable");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Sale {
    pub fn start(cluster: &Cluster) -> Sale {
        let shows = (0..SHOWS)
            .map(|i| {
                create_show(
                    &cluster.apis[i % 2],
                    &format!("Chaos {i}"),
                    ROWS,
                    SEATS_PER_ROW,
                )
            })
            .collect();
        let probe_show = create_show(&cluster.apis[0], "Chaos probes", 1, 200);
        let shared = Arc::new(Shared {
            apis: cluster.apis.clone(),
            shows,
            probe_show,
            next_probe: AtomicUsize::new(1),
            stop: AtomicBool::new(false),
            log: Mutex::default(),
        });
        let driver = {
            let shared = shared.clone();
            std::thread::spawn(move || drive(&shared))
        };
        Sale {
            shared,
            driver: Some(driver),
        }
    }

    pub fn wait_for_accepted(&self, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.shared.log.lock().unwrap().accepted.len() < count {
            assert!(Instant::now() < deadline, "the sale never got going");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Book a free probe seat with a card that succeeds and wait for the confirmation: how long
    /// the system took to sell again.
    pub fn probe_confirmed(&self, cluster: &Cluster, within: Duration) -> Duration {
        let started = Instant::now();
        let seat = self.shared.next_probe.fetch_add(1, Ordering::SeqCst);
        let body = json!({
            "show_id": self.shared.probe_show, "seats": [format!("A-1-{seat}")],
            "payment_method": "sim_ok",
            "customer": {"id": format!("probe{seat}"), "email": format!("probe{seat}@example.com"), "name": "Probe"}
        });
        let (status, answer) = book(&self.shared, &body, &format!("probe-{seat}"), seat)
            .expect("the probe is answered");
        assert_eq!(status, 202, "{answer}");
        let id = answer["booking_id"].as_str().unwrap().to_string();
        let booking = wait_for(cluster, &id, within, is_terminal);
        assert_eq!(booking["status"], "confirmed", "probe: {booking:#}");
        self.shared.log.lock().unwrap().accepted.push(Accepted {
            booking_id: id,
            email: format!("probe{seat}@example.com"),
        });
        started.elapsed()
    }

    /// Every booking accepted so far ends, no seat is confirmed twice, and no client got an
    /// answer it should not have.
    pub fn check_so_far(&self, cluster: &Cluster, within: Duration) {
        let accepted = self.shared.log.lock().unwrap().accepted.clone();
        let ended: Vec<Value> = accepted
            .iter()
            .map(|a| wait_for(cluster, &a.booking_id, within, is_terminal))
            .collect();
        assert_no_seat_sold_twice(&ended);
        let wrong = self.shared.log.lock().unwrap().wrong.clone();
        assert!(wrong.is_empty(), "answers no client should get: {wrong:#?}");
    }

    pub fn stop(mut self) -> Outcome {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(driver) = self.driver.take() {
            driver.join().unwrap();
        }
        let log = self.shared.log.lock().unwrap();
        assert!(
            log.wrong.is_empty(),
            "answers no client should get: {:#?}",
            log.wrong
        );
        Outcome {
            accepted: log.accepted.clone(),
            unavailable: log.unavailable,
        }
    }
}

/// The customers: one booking after another until stopped.
fn drive(shared: &Shared) {
    let mut i = 0usize;
    let seat_count = ROWS * SEATS_PER_ROW;
    while !shared.stop.load(Ordering::SeqCst) {
        let show = &shared.shows[i % SHOWS];
        let seat = |n: usize| format!("A-{}-{}", 1 + n / SEATS_PER_ROW, 1 + n % SEATS_PER_ROW);
        let first = (i * 7) % seat_count;
        let seats = if i.is_multiple_of(3) {
            vec![seat(first)]
        } else {
            vec![seat(first), seat((first + 1) % seat_count)]
        };
        let customer = format!("c{i}");
        let body = json!({
            "show_id": show, "seats": seats, "payment_method": CARDS[i % CARDS.len()],
            "customer": {"id": customer, "email": format!("{customer}@example.com"), "name": customer}
        });
        if let Some((202, answer)) = book(shared, &body, &format!("sale-{i}"), i) {
            shared.log.lock().unwrap().accepted.push(Accepted {
                booking_id: answer["booking_id"].as_str().unwrap().to_string(),
                email: format!("{customer}@example.com"),
            });
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(60));
    }
}

impl Outcome {
    /// Wait until every booking has ended and no refund is pending.
    pub fn settle(&self, cluster: &Cluster, within: Duration) -> Settled {
        let bookings = self
            .accepted
            .iter()
            .map(|a| {
                let booking = wait_for(cluster, &a.booking_id, within, |b| {
                    is_terminal(b) && b["refund_status"] != "pending"
                });
                (a.clone(), booking)
            })
            .collect::<Vec<_>>();
        let ended: Vec<Value> = bookings.iter().map(|(_, b)| b.clone()).collect();
        assert_no_seat_sold_twice(&ended);
        Settled { bookings }
    }
}

impl Settled {
    pub fn confirmed(&self) -> usize {
        self.bookings
            .iter()
            .filter(|(_, b)| b["status"] == "confirmed")
            .count()
    }

    /// Money taken = confirmed + refunded bookings, exactly, from the simulator's durable
    /// ledger.
    pub fn check_money(&self, cluster: &Cluster) {
        let refunded = self
            .bookings
            .iter()
            .filter(|(_, b)| b["refund_status"] == "refunded")
            .count();
        let ledger = crate::ledger::totals(&cluster.postgres.url);
        assert_eq!(
            ledger.charges_taken,
            self.confirmed() + refunded,
            "money taken vs confirmed ({}) + refunded ({refunded}) bookings",
            self.confirmed()
        );
        assert_eq!(
            ledger.refunds, refunded,
            "refunds in the ledger vs refunded bookings"
        );
    }

    /// Every outcome was emailed at least once (the end of each booking, and its refund); a
    /// duplicate (same Message-ID) only after a notifier kill, at most one per kill.
    pub fn check_emails(&self, cluster: &Cluster) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut per_message_id: BTreeMap<String, usize> = BTreeMap::new();
        let mut missing: Vec<String>;
        loop {
            let messages = cluster.smtp.messages();
            per_message_id.clear();
            for message in &messages {
                if let Some(id) = message_id(message) {
                    *per_message_id.entry(id).or_default() += 1;
                }
            }
            // One email per outcome: the end, and the refund when money went back.
            missing = self
                .bookings
                .iter()
                .filter(|(accepted, booking)| {
                    let expected = 1 + usize::from(booking["refund_status"] == "refunded");
                    let sent: std::collections::BTreeSet<Option<String>> = messages
                        .iter()
                        .filter(|m| sent_to(m, &accepted.email))
                        .map(|m| message_id(m))
                        .collect();
                    sent.len() < expected
                })
                .map(|(accepted, booking)| {
                    format!(
                        "{} ({}, refund {})",
                        accepted.email, booking["status"], booking["refund_status"]
                    )
                })
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(missing.is_empty(), "an outcome never emailed: {missing:?}");
        let duplicates: usize = per_message_id.values().map(|n| n - 1).sum();
        assert!(
            duplicates <= cluster.notifier_kills,
            "{duplicates} duplicate emails after {} notifier kills",
            cluster.notifier_kills
        );
        duplicates
    }
}

/// Whether the message's envelope (aiosmtpd's `X-RcptTo`) names `address`.
fn sent_to(message: &str, address: &str) -> bool {
    message.lines().any(|line| {
        line.strip_prefix("X-RcptTo:")
            .is_some_and(|to| to.split(',').any(|to| to.trim() == address))
    })
}

/// The Message-ID header of a raw message.
fn message_id(message: &str) -> Option<String> {
    message.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("message-id")
            .then(|| value.trim().to_string())
    })
}
