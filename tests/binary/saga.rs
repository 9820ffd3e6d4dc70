//! The booking saga end to end, through the REST API only, on real servers: `zingqueue up` in
//! its own process on Postgres, Redis, a Kafka-protocol broker (librdkafka's mock cluster, in
//! this test process) and an SMTP server (aiosmtpd), all from testkit.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Running, http, interrupt, spawn_until};

const ADMIN: &str = "saga-test-admin-token";

/// One `zingqueue up` and the servers it runs on.
struct Stack {
    up: Option<Running>,
    client: Client,
    env: Vec<(String, String)>,
    servers: Servers,
}

impl Stack {
    fn start(extra_env: &[(&str, &str)]) -> Stack {
        let servers = Servers::start();
        let mut env: Vec<(String, String)> = servers
            .env("6000")
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        env.push(("ZQ_PAYMENT_RETRY_BASE_MS".into(), "20".into()));
        for (key, value) in extra_env {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        }
        let mut stack = Stack {
            up: None,
            client: Client { api: String::new() },
            env,
            servers,
        };
        stack.launch();
        stack
    }

    fn launch(&mut self) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (up, api) = spawn_until(&["up"], &env, "api:");
        self.client.api = api.trim_start_matches("http://").to_string();
        self.up = Some(up);
    }

    fn stop(&mut self) {
        if let Some(up) = self.up.take() {
            interrupt(up);
        }
    }

    /// The payment simulator's ledger entry of a booking (the booking id is its charge key),
    /// read from the store's database, where the simulator of `zingqueue up` keeps it.
    fn ledger_charge(&self, booking_id: &str) -> payment::simulator::ChargeEntry {
        self.try_ledger_charge(booking_id)
            .unwrap_or_else(|| panic!("booking {booking_id} has no charge in the ledger"))
    }

    /// The ledger entry, if the simulator has one yet.
    fn try_ledger_charge(&self, booking_id: &str) -> Option<payment::simulator::ChargeEntry> {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(payment::simulator::ledger_charge(
                &self.servers.database.url,
                booking_id,
            ))
            .unwrap()
    }

    /// The payment simulator's ledger, summed.
    fn ledger_totals(&self) -> payment::simulator::LedgerTotals {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(payment::simulator::ledger_totals(
                &self.servers.database.url,
            ))
            .unwrap()
    }

    fn emails_to(&self, customer: &str) -> Vec<String> {
        let address = format!("{customer}@example.com");
        self.servers
            .smtp
            .messages()
            .into_iter()
            .filter(|m| m.contains(&address))
            .collect()
    }

    fn wait_for_emails(&self, customer: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let emails = self.emails_to(customer);
            if emails.len() >= count || Instant::now() > deadline {
                return emails;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// HTTP against the API, as a client would use it.
struct Client {
    api: String,
}

impl Client {
    fn request(&self, method: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        support::json_request(&self.api, method, path, token, body)
    }

    fn create_show(&self, rows: u32, seats_per_row: u32) -> String {
        let (status, body) = self.request(
            "POST",
            "/shows",
            Some(ADMIN),
            &json!({
                "name": "Saga Live", "starts_at": "2027-05-01T20:00:00Z", "currency": "EUR",
                "sections": [{"name": "A", "rows": rows, "seats_per_row": seats_per_row, "price_cents": 4500}]
            }),
        );
        assert_eq!(status, 201, "{body}");
        body["show_id"].as_str().unwrap().to_string()
    }

    /// Book seats; returns the booking id.
    fn book(&self, show_id: &str, seats: &[&str], payment_method: &str, customer: &str) -> String {
        let (status, body) = self.request(
            "POST",
            "/bookings",
            None,
            &json!({
                "show_id": show_id, "seats": seats, "payment_method": payment_method,
                "customer": {"id": customer, "email": format!("{customer}@example.com"), "name": customer}
            }),
        );
        assert_eq!(status, 202, "{body}");
        body["booking_id"].as_str().unwrap().to_string()
    }

    fn booking(&self, booking_id: &str) -> Value {
        let (status, body) = self.request(
            "GET",
            &format!("/bookings/{booking_id}"),
            Some(ADMIN),
            &Value::Null,
        );
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Wait until the booking satisfies `done`; panics with its last state after `within`.
    fn wait_for(&self, booking_id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let booking = self.booking(booking_id);
            if done(&booking) {
                return booking;
            }
            assert!(
                Instant::now() < deadline,
                "booking never got there: {booking:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_status(&self, booking_id: &str, status: &str) -> Value {
        self.wait_for(booking_id, Duration::from_secs(60), |b| {
            b["status"] == status
        })
    }

    fn dead_letters(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.request(
            "GET",
            &format!("/admin/dead-letters{query}"),
            Some(ADMIN),
            &Value::Null,
        );
        assert_eq!(status, 200, "{body}");
        body.as_array().unwrap().clone()
    }
}

impl std::ops::Deref for Stack {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // `Running` kills the process on drop; keep the servers until it is gone.
        self.up.take();
    }
}

fn timeline(booking: &Value) -> Vec<String> {
    // Type names without the stream prefix and the version: `booking.email_sent.v2` → `email_sent`.
    booking["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let name = entry["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("booking.");
            name.rsplit_once(".v")
                .map_or(name, |(name, _)| name)
                .to_string()
        })
        .collect()
}

fn count(items: &[String], name: &str) -> usize {
    items.iter().filter(|item| *item == name).count()
}

#[test]
fn happy_path_and_a_contended_seat() {
    let stack = Stack::start(&[]);
    let show = stack.create_show(2, 5);

    let booking = stack.book(&show, &["A-1-1", "A-1-2"], "sim_ok", "ada");
    let confirmed = stack.wait_for_status(&booking, "confirmed");
    assert_eq!(
        &timeline(&confirmed)[..4],
        ["requested", "seats_held", "payment_succeeded", "confirmed"]
    );
    assert_eq!(confirmed["refund_status"], "none");
    let emails = stack.wait_for_emails("ada", 1);
    assert_eq!(emails.len(), 1, "one email for the one outcome");
    assert!(
        emails[0].contains("Subject: Booking confirmed"),
        "{}",
        emails[0]
    );
    assert!(
        emails[0].contains("@zingqueue>"),
        "Message-ID from the event id"
    );
    stack.wait_for(&booking, Duration::from_secs(10), |b| {
        timeline(b).contains(&"email_sent".to_string())
    });

    // Two bookings for one seat: exactly one confirmed, the other rejected.
    let first = stack.book(&show, &["A-2-1"], "sim_ok", "bob");
    let second = stack.book(&show, &["A-2-1", "A-2-2"], "sim_ok", "cy");
    let first = stack.wait_for(&first, Duration::from_secs(60), is_terminal);
    let second = stack.wait_for(&second, Duration::from_secs(60), is_terminal);
    let mut statuses = [
        first["status"].as_str().unwrap(),
        second["status"].as_str().unwrap(),
    ];
    statuses.sort();
    assert_eq!(statuses, ["confirmed", "rejected"]);
    // A seat already sold is rejected too.
    let late = stack.book(&show, &["A-1-2"], "sim_ok", "dee");
    let late = stack.wait_for_status(&late, "rejected");
    assert_eq!(count(&timeline(&late), "payment_succeeded"), 0);
    assert_eq!(stack.wait_for_emails("dee", 1).len(), 1);

    // The read models, read-your-writes: as of the last booking's last event.
    let position = late["log_position"].as_u64().unwrap();
    let (status, stats) = stack.request(
        "GET",
        &format!("/shows/{show}/stats?min_position={position}"),
        None,
        &Value::Null,
    );
    assert_eq!(status, 200, "{stats}");
    assert!(stats["log_position"].as_u64().unwrap() >= position);
    assert_eq!(
        (
            stats["requested"].as_u64(),
            stats["confirmed"].as_u64(),
            stats["rejected"].as_u64()
        ),
        (Some(4), Some(2), Some(2)),
        "{stats}"
    );
    assert!(stats["revenue_cents"]["EUR"].as_i64().unwrap() >= 13_500);
    let (status, list) = stack.request(
        "GET",
        &format!("/customers/ada/bookings?min_position={position}"),
        Some(ADMIN),
        &Value::Null,
    );
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["status"], "confirmed");
    // A position the log has not reached: 503 with Retry-After, never stale data.
    let (status, problem) = stack.request(
        "GET",
        &format!("/shows/{show}/stats?min_position={}", position + 1_000_000),
        None,
        &Value::Null,
    );
    assert_eq!(status, 503, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("not yet at"));
}

fn is_terminal(booking: &Value) -> bool {
    matches!(
        booking["status"].as_str(),
        Some("confirmed" | "rejected" | "expired" | "cancelled" | "failed")
    )
}

#[test]
fn payments_that_fail_retry_or_time_out() {
    let stack = Stack::start(&[]);
    let show = stack.create_show(2, 5);

    // Three transient errors, then success.
    let flaky_id = stack.book(&show, &["A-1-1"], "sim_flaky_3", "flaky");
    let flaky = stack.wait_for_status(&flaky_id, "confirmed");
    assert_eq!(count(&timeline(&flaky), "payment_succeeded"), 1);
    let charge = stack.ledger_charge(&flaky_id);
    assert_eq!(
        (charge.charge_calls, charge.times_taken),
        (4, 1),
        "{charge:?}"
    );

    // Declined: failed at once, no dead letter.
    let declined = stack.book(&show, &["A-1-2"], "sim_declined", "declined");
    let declined = stack.wait_for_status(&declined, "failed");
    assert_eq!(
        timeline(&declined)[..4],
        ["requested", "seats_held", "payment_failed", "failed"]
    );

    // Unknown outcome: charged once, not twice.
    let unknown_id = stack.book(&show, &["A-1-3"], "sim_unknown", "unknown");
    let unknown = stack.wait_for_status(&unknown_id, "confirmed");
    assert_eq!(count(&timeline(&unknown), "payment_succeeded"), 1);
    assert_eq!(unknown["refund_status"], "none");
    // The events cannot tell: the charge id derives from the key, and the provider answers a
    // second charge with the first receipt. The provider's ledger can: after the timeout the
    // service asked for the outcome, it did not charge again.
    let charge = stack.ledger_charge(&unknown_id);
    assert_eq!(
        (charge.charge_calls, charge.times_taken),
        (1, 1),
        "one charge call, then status queries: {charge:?}"
    );
    assert!(charge.status_calls >= 1, "{charge:?}");

    // Exhausted (5 attempts by default): failed, seats free again, a dead letter.
    let exhausted_id = stack.book(&show, &["A-2-1"], "sim_flaky_10", "exhausted");
    let exhausted = stack.wait_for_status(&exhausted_id, "failed");
    let charge = stack.ledger_charge(&exhausted_id);
    assert_eq!(
        (charge.charge_calls, charge.times_taken),
        (5, 0),
        "{charge:?}"
    );
    let letters = stack.dead_letters("?cause=payment-exhausted");
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["group"], "payment");
    assert_eq!(letters[0]["attempts"], 5);
    assert_eq!(letters[0]["status"], "dead");
    let rebooked = stack.book(&show, &["A-2-1"], "sim_ok", "rebook");
    stack.wait_for_status(&rebooked, "confirmed");

    // Redrive: processed again by payment, which finds the booking failed and charges nothing.
    let id = letters[0]["id"].as_i64().unwrap();
    let (status, body) = stack.request(
        "POST",
        &format!("/admin/dead-letters/{id}/redrive"),
        Some(ADMIN),
        &Value::Null,
    );
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let letter = stack
            .request(
                "GET",
                &format!("/admin/dead-letters/{id}"),
                Some(ADMIN),
                &Value::Null,
            )
            .1;
        if letter["status"] == "redriven" {
            assert_eq!(letter["redrives"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "never redriven: {letter:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = stack.booking(exhausted["booking_id"].as_str().unwrap());
    assert_eq!(
        timeline(&after),
        timeline(&exhausted)[..]
            .iter()
            .cloned()
            .chain(
                timeline(&after)
                    .into_iter()
                    .skip(timeline(&exhausted).len())
                    .filter(|t| t == "email_sent")
            )
            .collect::<Vec<_>>(),
        "the redrive appended nothing but emails"
    );
    assert_eq!(count(&timeline(&after), "payment_succeeded"), 0);
    assert_eq!(
        stack.ledger_charge(&exhausted_id).charge_calls,
        5,
        "the redrive made no charge call"
    );
    // Asking again changes nothing.
    let (status, body) = stack.request(
        "POST",
        &format!("/admin/dead-letters/{id}/redrive"),
        Some(ADMIN),
        &Value::Null,
    );
    assert_eq!((status, body["status"].as_str()), (202, Some("redriven")));
}

#[test]
fn cancelling_in_each_state_frees_the_seats_and_refunds_what_was_taken() {
    let stack = Stack::start(&[]);
    let show = stack.create_show(1, 5);

    // Right after start, before seat-lock's first rebalance: most likely still requested.
    let early = stack.book(&show, &["A-1-1"], "sim_ok", "early");
    let (status, _) = stack.request(
        "DELETE",
        &format!("/bookings/{early}"),
        Some(ADMIN),
        &Value::Null,
    );
    assert_eq!(status, 202);
    let early = stack.wait_for_status(&early, "cancelled");
    assert_eq!(early["refund_status"], "none", "{early:#}");

    // Held (the payment takes 3 s): cancelled; the payment that lands afterwards is refunded.
    let held = stack.book(&show, &["A-1-2"], "sim_slow_3000", "held");
    let holding = stack.wait_for_status(&held, "held");
    // The seat map shows the hold (from the read models), with its booking for the admin only.
    let position = holding["log_position"].as_u64().unwrap();
    let (_, seats) = stack.request(
        "GET",
        &format!("/shows/{show}/seats?min_position={position}"),
        Some(ADMIN),
        &Value::Null,
    );
    assert_eq!(
        (
            seats["seats"][1]["state"].as_str(),
            seats["seats"][1]["booking_id"].as_str()
        ),
        (Some("held"), Some(held.as_str())),
        "{seats:#}"
    );
    let (_, public) = stack.request(
        "GET",
        &format!("/shows/{show}/seats?min_position={position}"),
        None,
        &Value::Null,
    );
    assert_eq!(public["seats"][1]["state"], "held");
    assert!(public["seats"][1].get("booking_id").is_none());
    // The read models see the hold before payment does (it comes through the relay and
    // Kafka); a cancel that beat it there would leave nothing to charge, or to refund. Cancel
    // once the slow provider has taken the money and before it answers (it answers 3 s later).
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack
        .try_ledger_charge(&held)
        .is_none_or(|charge| charge.times_taken == 0)
    {
        assert!(
            Instant::now() < deadline,
            "the held booking was never charged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = stack.request(
        "DELETE",
        &format!("/bookings/{held}"),
        Some(ADMIN),
        &Value::Null,
    );
    assert_eq!(status, 202);
    let held = stack.wait_for(&held, Duration::from_secs(30), |b| {
        b["refund_status"] == "refunded"
    });
    assert_eq!(held["status"], "cancelled");

    // Confirmed: cancelled, refunded, and the sold seat goes back on sale.
    let confirmed = stack.book(&show, &["A-1-3"], "sim_ok", "confirmed");
    stack.wait_for_status(&confirmed, "confirmed");
    let (status, _) = stack.request(
        "DELETE",
        &format!("/bookings/{confirmed}"),
        Some(ADMIN),
        &Value::Null,
    );
    assert_eq!(status, 202);
    let confirmed = stack.wait_for(&confirmed, Duration::from_secs(30), |b| {
        b["refund_status"] == "refunded"
    });
    assert_eq!(confirmed["status"], "cancelled");

    // Every seat is free again: one booking takes all three.
    let again = stack.book(&show, &["A-1-1", "A-1-2", "A-1-3"], "sim_ok", "again");
    stack.wait_for_status(&again, "confirmed");
    let (_, seats) = stack.request(
        "GET",
        &format!("/shows/{show}/seats"),
        Some(ADMIN),
        &Value::Null,
    );
    let sold: Vec<&Value> = seats["seats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "sold")
        .collect();
    assert_eq!(sold.len(), 3, "{seats:#}");
    assert!(sold.iter().all(|seat| seat["booking_id"] == again.as_str()));
}

#[test]
fn hold_expiry_and_a_payment_racing_it() {
    // Holds of 7 s; payment starts only with 5 s left.
    let stack = Stack::start(&[("ZQ_HOLD_SECONDS", "7")]);
    let show = stack.create_show(1, 5);

    // The payment takes 9 s: the hold expires first, the seats are resold, the payment that
    // lands afterwards is refunded, and an operator hears of it.
    let slow = stack.book(&show, &["A-1-1"], "sim_slow_9000", "slow");
    stack.wait_for_status(&slow, "expired");
    let resale = stack.book(&show, &["A-1-1"], "sim_ok", "resale");
    stack.wait_for_status(&resale, "confirmed");
    let slow = stack.wait_for(&slow, Duration::from_secs(30), |b| {
        b["refund_status"] == "refunded"
    });
    assert_eq!(slow["status"], "failed", "{slow:#}");
    let letters = stack.dead_letters("?cause=expired-seats");
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["group"], "seat-lock");
    let (_, seats) = stack.request(
        "GET",
        &format!("/shows/{show}/seats"),
        Some(ADMIN),
        &Value::Null,
    );
    let seat = &seats["seats"][0];
    assert_eq!(
        (seat["state"].as_str(), seat["booking_id"].as_str()),
        (Some("sold"), Some(resale.as_str()))
    );

    // An unpaid hold (payment never starts with under 5 s left? here it has 7 s; decline it
    // slowly instead) simply expires, and the seat can be held again.
    let lapsed = stack.book(&show, &["A-1-2"], "sim_slow_20000", "lapsed");
    stack.wait_for_status(&lapsed, "expired");
    let next = stack.book(&show, &["A-1-2"], "sim_ok", "next");
    stack.wait_for_status(&next, "confirmed");
}

/// Produce a raw record to `zq.booking-events` with the given `ce_type` and value.
async fn produce(kafka: &testkit::KafkaBroker, key: &str, ce_type: Option<&str>, value: &[u8]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .create()
        .unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "ce_id",
            value: Some(id.as_str()),
        })
        .insert(Header {
            key: "ce_subject",
            value: Some("booking-poison"),
        })
        .insert(Header {
            key: "ce_position",
            value: Some("999999"),
        })
        .insert(Header {
            key: "ce_streamversion",
            value: Some("1"),
        });
    if let Some(ce_type) = ce_type {
        headers = headers.insert(Header {
            key: "ce_type",
            value: Some(ce_type),
        });
    }
    producer
        .send(
            FutureRecord::to("zq.booking-events")
                .key(key)
                .payload(value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_unknown_types_skipped() {
    let stack = tokio::task::block_in_place(|| Stack::start(&[]));
    let show = tokio::task::block_in_place(|| stack.create_show(1, 5));
    // A subscribed type whose data does not decode (payment's), bad JSON (seat-lock's), and a
    // type no service knows, all on the show's partition, before a good booking.
    produce(
        &stack.servers.kafka,
        &show,
        Some("zingqueue.booking.seats_held.v1"),
        br#"{"not":"a hold"}"#,
    )
    .await;
    produce(
        &stack.servers.kafka,
        &show,
        Some("zingqueue.booking.requested.v1"),
        b"{not json",
    )
    .await;
    produce(
        &stack.servers.kafka,
        &show,
        Some("zingqueue.booking.teleported.v1"),
        br#"{"to":"mars"}"#,
    )
    .await;
    tokio::task::block_in_place(|| {
        let booking = stack.book(&show, &["A-1-1"], "sim_ok", "after-poison");
        stack.wait_for_status(&booking, "confirmed");
        stack.wait_for_emails("after-poison", 1);
        let letters = stack.dead_letters("?cause=poison");
        let mut by_group: Vec<(String, String)> = letters
            .iter()
            .map(|l| {
                (
                    l["group"].as_str().unwrap().to_string(),
                    l["event_type"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        by_group.sort();
        assert_eq!(
            by_group,
            [
                ("payment".to_string(), "booking.seats_held.v1".to_string()),
                ("seat-lock".to_string(), "booking.requested.v1".to_string()),
            ],
            "{letters:#?}"
        );
        assert!(
            letters
                .iter()
                .all(|l| l["reason"].as_str().unwrap().contains("invalid data")),
            "{letters:#?}"
        );
        assert!(letters.iter().all(|l| l["payload"].is_string()));
    });
    // Mirrored to zq.dlq.poison with the headers that name the error.
    let mirrored = read_topic(&stack.servers.kafka, "zq.dlq.poison", 2).await;
    assert_eq!(mirrored.len(), 2);
    for headers in &mirrored {
        assert_eq!(
            headers.get("zq_dlq_cause").map(String::as_str),
            Some("poison")
        );
        assert!(
            headers
                .get("zq_dlq_reason")
                .is_some_and(|r| r.contains("invalid data"))
        );
        assert!(
            headers.contains_key("zq_dlq_first_failure")
                && headers.contains_key("zq_dlq_source_offset")
        );
        assert!(
            headers.contains_key("ce_type"),
            "the original headers travel too"
        );
    }
}

/// The headers of the first `count` records of a one-partition topic.
async fn read_topic(
    kafka: &testkit::KafkaBroker,
    topic: &str,
    count: usize,
) -> Vec<std::collections::BTreeMap<String, String>> {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut found = Vec::new();
    while found.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the DLQ topic has the mirrored records")
            .unwrap();
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .filter_map(|h| {
                        Some((
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value?).into_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.push(headers);
    }
    found
}

/// Commit offset 0 on every partition for `group`, from a member of the group (the mock
/// refuses commits from non-members).
fn rewind_group(kafka: &testkit::KafkaBroker, group: &str) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&["zq.booking-events"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment().unwrap().count() < 4 {
        assert!(Instant::now() < deadline, "never joined {group}");
        let _ = consumer.poll(Duration::from_millis(100));
    }
    let mut offsets = rdkafka::TopicPartitionList::new();
    for partition in 0..4 {
        offsets
            .add_partition_offset("zq.booking-events", partition, rdkafka::Offset::Offset(0))
            .unwrap();
    }
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
    consumer.unsubscribe();
}

/// The group's committed offsets, summed over partitions.
fn committed(kafka: &testkit::KafkaBroker, group: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in 0..4 {
        partitions.add_partition("zq.booking-events", partition);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(offset) => offset,
            _ => 0,
        })
        .sum()
}

fn log_head(stack: &Stack) -> u64 {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = event_store::open(&stack.servers.database.url)
            .await
            .unwrap();
        store.head().await.unwrap().0
    })
}

#[test]
fn redelivery_from_offset_zero_repeats_no_effect() {
    let mut stack = Stack::start(&[]);
    let show = stack.create_show(1, 5);
    let confirmed = stack.book(&show, &["A-1-1"], "sim_ok", "kept");
    let rejected = stack.book(&show, &["A-1-1"], "sim_ok", "late");
    let declined = stack.book(&show, &["A-1-2"], "sim_declined", "declined");
    for booking in [&confirmed, &rejected, &declined] {
        stack.wait_for(booking, Duration::from_secs(60), |b| {
            is_terminal(b) && timeline(b).contains(&"email_sent".to_string())
        });
    }
    let emails = stack.servers.smtp.messages().len();
    assert_eq!(emails, 3);
    // The provider's ledger: two charge calls (the confirmed booking's and the declined one's;
    // the rejected booking was never held), one of which took money, no refund.
    let ledger = stack.ledger_totals();
    assert_eq!(
        (
            ledger.charge_calls,
            ledger.charges_taken,
            ledger.refund_calls,
            ledger.refunds_made
        ),
        (2, 1, 0, 0),
        "{ledger:?}"
    );
    stack.stop();
    let head = log_head(&stack);
    let end: i64 = committed(&stack.servers.kafka, "seat-lock");
    assert!(end > 0);

    for group in ["seat-lock", "payment", "notifier"] {
        rewind_group(&stack.servers.kafka, group);
        assert_eq!(committed(&stack.servers.kafka, group), 0, "{group} rewound");
    }
    stack.launch();
    // Every group works through the whole topic again...
    let deadline = Instant::now() + Duration::from_secs(60);
    for group in ["seat-lock", "payment", "notifier"] {
        while committed(&stack.servers.kafka, group) < end {
            assert!(Instant::now() < deadline, "{group} never caught up again");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // ...and does nothing twice: no hold, charge, sale, email or event.
    assert_eq!(
        log_head(&stack),
        head,
        "no event was appended by the redelivery"
    );
    // Not even a charge call or a refund: a charge repeated under the booking's key would
    // leave the events as they are (the provider answers it with the first receipt), the
    // provider's ledger counts it. (Status queries are allowed: payment asks about an earlier
    // charge of a booking that is no longer held.)
    let again = stack.ledger_totals();
    assert_eq!(
        (
            again.charge_calls,
            again.charges_taken,
            again.refund_calls,
            again.refunds_made
        ),
        (
            ledger.charge_calls,
            ledger.charges_taken,
            ledger.refund_calls,
            ledger.refunds_made
        ),
        "the redelivery charged or refunded again: {again:?}"
    );
    assert_eq!(
        stack.servers.smtp.messages().len(),
        emails,
        "no email was sent again"
    );
    assert_eq!(stack.booking(&confirmed)["status"], "confirmed");
}

/// Send a raw command to Redis and return its answer.
fn redis_command(url: &str, command: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("redis://");
    let (address, database) = rest.split_once('/').unwrap_or((rest, "0"));
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "SELECT {database}\r\n{command}\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut answer = vec![0; 4096];
    let read = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[test]
fn redis_flushed_and_restarted_mid_sale_never_sells_a_seat_twice() {
    let stack = Stack::start(&[]);
    let show = stack.create_show(2, 10);
    let seats: Vec<String> = (1..=2)
        .flat_map(|row| (1..=10).map(move |n| format!("A-{row}-{n}")))
        .collect();
    let mut bookings = Vec::new();
    for i in 0..90usize {
        // Deterministic contention: overlapping pairs of seats.
        let first = &seats[(i * 7) % seats.len()];
        let second = &seats[(i * 7 + 1) % seats.len()];
        let wanted: Vec<&str> = if i % 3 == 0 {
            vec![first]
        } else {
            vec![first, second]
        };
        bookings.push(stack.book(&show, &wanted, "sim_ok", &format!("fan{i}")));
        if i == 30 {
            assert!(redis_command(&stack.servers.redis.url, "FLUSHDB").contains("+OK"));
        }
        if i == 60 {
            // What a restart without persistence looks like to clients: every connection
            // dropped and the data gone.
            assert!(redis_command(&stack.servers.redis.url, "FLUSHDB").contains("+OK"));
            redis_command(
                &stack.servers.redis.url,
                "CLIENT KILL TYPE normal SKIPME yes",
            );
        }
    }
    let mut owner_of: std::collections::HashMap<String, String> = Default::default();
    let mut confirmed = 0;
    for booking in &bookings {
        let booking = stack.wait_for(booking, Duration::from_secs(90), is_terminal);
        if booking["status"] == "confirmed" {
            confirmed += 1;
            for seat in booking["seats"].as_array().unwrap() {
                let previous = owner_of.insert(
                    seat.as_str().unwrap().to_string(),
                    booking["booking_id"].as_str().unwrap().to_string(),
                );
                assert!(previous.is_none(), "seat {seat} confirmed twice");
            }
        }
    }
    assert!(confirmed > 0);
    // Rebuilt from the log after each flush: a seat sold before was never held again (which
    // would end in a paid booking losing its seats: `failed`, refunded, an expired-seats dead
    // letter), it was rejected at once.
    for booking in &bookings {
        assert_ne!(stack.booking(booking)["status"], "failed");
    }
    assert!(stack.dead_letters("?cause=expired-seats").is_empty());
    let (_, map) = stack.request(
        "GET",
        &format!("/shows/{show}/seats"),
        Some(ADMIN),
        &Value::Null,
    );
    for seat in map["seats"].as_array().unwrap() {
        let name = seat["seat"].as_str().unwrap();
        match owner_of.get(name) {
            Some(owner) => assert_eq!(
                (seat["state"].as_str(), seat["booking_id"].as_str()),
                (Some("sold"), Some(owner.as_str()))
            ),
            None => assert_eq!(seat["state"], "free", "{seat}"),
        }
    }
}

#[test]
fn cancelling_a_paid_booking_refunds_it_and_frees_its_seats() {
    // Components as separate processes, so that seat-lock can be stopped while a booking is
    // paid and not yet confirmed.
    let servers = Servers::start();
    let env = servers.env("3000");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_api, api) = run("api", &env);
    let (_relay, _) = run("relay", &env);
    let (seat_lock, _) = run("seat-lock", &env);
    let (_payment, _) = run("payment", &env);
    let (_notifier, _) = run("notifier", &env);
    let (_projections, _) = run("projections", &env);
    let client = Client { api };
    let show = client.create_show(1, 5);
    // The payment takes 4 s: seat-lock is stopped meanwhile, so the booking stays paid.
    let booking = client.book(&show, &["A-1-1"], "sim_slow_4000", "paid");
    client.wait_for_status(&booking, "held");
    drop(seat_lock);
    let paid = client.wait_for_status(&booking, "paid");
    assert_eq!(
        timeline(&paid).last().map(String::as_str),
        Some("payment_succeeded")
    );
    let (status, _) = client.request(
        "DELETE",
        &format!("/bookings/{booking}"),
        Some(ADMIN),
        &Value::Null,
    );
    assert_eq!(status, 202);
    let cancelled = client.wait_for(&booking, Duration::from_secs(30), |b| {
        b["refund_status"] == "refunded"
    });
    assert_eq!(cancelled["status"], "cancelled");
    // seat-lock back: it drops the paid booking's hold, and the seat sells again.
    let (_seat_lock, _) = run("seat-lock", &env);
    let again = client.book(&show, &["A-1-1"], "sim_ok", "again");
    client.wait_for_status(&again, "confirmed");
    let (_, seats) = client.request(
        "GET",
        &format!("/shows/{show}/seats"),
        Some(ADMIN),
        &Value::Null,
    );
    assert_eq!(seats["seats"][0]["booking_id"], again.as_str());
}

/// `zingqueue run <component>` with `env`; returns the process and the first word of the line
/// it announces itself with (for `api`, its address).
fn run(component: &str, env: &[(&str, &str)]) -> (Running, String) {
    let (running, line) = spawn_until(&["run", component], env, &format!("{component}:"));
    let first = line.split_whitespace().next().unwrap_or_default();
    (running, first.trim_start_matches("http://").to_string())
}

/// The servers a set of separately run components share.
struct Servers {
    database: testkit::PostgresDatabase,
    redis: testkit::RedisDatabase,
    kafka: testkit::KafkaBroker,
    smtp: testkit::SmtpServer,
    data_dir: tempfile::TempDir,
}

impl Servers {
    fn start() -> Servers {
        let kafka = testkit::kafka();
        kafka.create_topic("zq.booking-events", 4).unwrap();
        for cause in [
            "poison",
            "handler-failed",
            "expired-seats",
            "payment-exhausted",
            "email-failed",
        ] {
            kafka.create_topic(&format!("zq.dlq.{cause}"), 1).unwrap();
        }
        Servers {
            database: testkit::postgres(),
            redis: testkit::redis(),
            kafka,
            smtp: testkit::smtp(),
            data_dir: tempfile::tempdir().unwrap(),
        }
    }

    fn env(&self, session_timeout_ms: &str) -> Vec<(&'static str, String)> {
        vec![
            ("ZQ_DATABASE_URL", self.database.url.clone()),
            ("ZQ_KAFKA_BROKERS", self.kafka.bootstrap_servers.clone()),
            ("ZQ_REDIS_URL", self.redis.url.clone()),
            ("ZQ_SMTP_URL", self.smtp.url.clone()),
            ("ZQ_ADMIN_TOKEN", ADMIN.to_string()),
            ("ZQ_LISTEN", "127.0.0.1:0".to_string()),
            (
                "ZQ_DATA_DIR",
                self.data_dir.path().to_str().unwrap().to_string(),
            ),
            ("ZQ_PARTITIONS", "4".to_string()),
            ("ZQ_SESSION_TIMEOUT_MS", session_timeout_ms.to_string()),
            ("RUST_LOG", "warn".to_string()),
        ]
    }
}

#[test]
fn two_processes_of_each_service_split_the_partitions_and_survive_a_kill() {
    let servers = Servers::start();
    let env = servers.env("3000");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_api, api) = run("api", &env);
    let (_relay, _) = run("relay", &env);
    let (seat_lock_a, _) = run("seat-lock", &env);
    let (_seat_lock_b, _) = run("seat-lock", &env);
    let (payment_a, _) = run("payment", &env);
    let (_payment_b, _) = run("payment", &env);
    let (_notifier, _) = run("notifier", &env);
    let (_projections, _) = run("projections", &env);
    let client = Client { api };

    // Several shows, so that both members of each group own busy partitions.
    let shows: Vec<String> = (0..4).map(|_| client.create_show(2, 5)).collect();
    let mut bookings = Vec::new();
    let mut killed = (Some(seat_lock_a), Some(payment_a));
    for i in 0..60usize {
        let show = &shows[i % shows.len()];
        let seat = format!("A-{}-{}", 1 + (i / 4) % 2, 1 + (i / 8) % 5);
        bookings.push(client.book(show, &[&seat], "sim_ok", &format!("p{i}")));
        if i == 30 {
            // Killed outright, mid-sale: their partitions move to the survivors.
            drop(killed.0.take());
            drop(killed.1.take());
        }
    }
    let mut owners = std::collections::HashMap::new();
    for booking in &bookings {
        let booking = client.wait_for(booking, Duration::from_secs(120), is_terminal);
        if booking["status"] == "confirmed" {
            let key = (booking["show_id"].to_string(), booking["seats"].to_string());
            assert!(
                owners
                    .insert(key, booking["booking_id"].to_string())
                    .is_none(),
                "sold twice: {booking:#}"
            );
        }
    }
    assert!(!owners.is_empty());
}

/// Follow a server-sent event stream until `enough` holds for the events so far (name, data),
/// or panic after 30 s.
fn follow_events(
    api: &str,
    path: &str,
    token: Option<&str>,
    enough: impl Fn(&[(String, Value)]) -> bool,
    meanwhile: impl FnOnce(),
) -> Vec<(String, Value)> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {api}\r\n{auth}Accept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next().unwrap().unwrap();
    assert!(status.contains(" 200 "), "{status}");
    let mut events = Vec::new();
    let mut name = String::new();
    let mut meanwhile = Some(meanwhile);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !enough(&events) {
        assert!(
            Instant::now() < deadline,
            "the stream never got there: {events:?}"
        );
        let line = lines.next().expect("the stream stays open").unwrap();
        if let Some(event) = line.strip_prefix("event: ") {
            name = event.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            events.push((
                std::mem::take(&mut name),
                serde_json::from_str(data).unwrap(),
            ));
            // The first event is the current state: act once it is there.
            if let Some(act) = meanwhile.take() {
                act();
            }
        }
    }
    events
}

#[test]
fn live_updates_follow_the_seats_and_the_booking() {
    let stack = Stack::start(&[]);
    let show = stack.create_show(1, 5);
    let booking = std::cell::RefCell::new(String::new());
    // Public seat changes: a snapshot first, then the booked seat held and sold.
    let seats = follow_events(
        &stack.api,
        &format!("/shows/{show}/seats/events"),
        None,
        |events| {
            events
                .iter()
                .any(|(name, data)| name == "seat" && data["state"] == "sold")
        },
        || *booking.borrow_mut() = stack.book(&show, &["A-1-3"], "sim_ok", "live"),
    );
    assert_eq!(seats[0].0, "snapshot");
    assert!(
        seats[1..]
            .iter()
            .all(|(name, data)| name == "seat" && data["seat"] == "A-1-3"),
        "{seats:?}"
    );
    assert!(
        seats
            .iter()
            .all(|(_, data)| data.get("booking_id").is_none()),
        "no booking ids in public"
    );
    // The holder's own stream (the admin token serves too): ends at confirmed.
    let booking = booking.into_inner();
    let updates = follow_events(
        &stack.api,
        &format!("/bookings/{booking}/events"),
        Some(ADMIN),
        |events| events.iter().any(|(_, data)| data["status"] == "confirmed"),
        || {},
    );
    assert_eq!(updates.last().unwrap().1["booking_id"], booking.as_str());
    // No token: refused before any stream starts.
    let (status, _) = stack.request(
        "GET",
        &format!("/bookings/{booking}/events"),
        None,
        &Value::Null,
    );
    assert_eq!(status, 401);
}

#[test]
fn a_stopped_consumer_group_turns_stop_and_its_lag_grows_on_the_api_metrics() {
    let servers = Servers::start();
    let env = servers.env("3000");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_api, api) = run("api", &env);
    let (_relay, _) = run("relay", &env);
    let (_seat_lock, _) = run("seat-lock", &env);
    let (payment, _) = run("payment", &env);
    let (_notifier, _) = run("notifier", &env);
    let (_projections, _) = run("projections", &env);
    let client = Client { api: api.clone() };
    let show = client.create_show(1, 10);
    let first = client.book(&show, &["A-1-1"], "sim_ok", "before");
    client.wait_for_status(&first, "confirmed");
    let metric = |name: &str, labels: &[(&str, &str)]| {
        let (status, page) = http(&api, "GET", "/metrics", None, "");
        assert_eq!(status, 200, "{page}");
        support::series(&page, name, labels)
    };
    let status_of = |group: &str, status: &str| {
        metric(
            "zq_consumer_group_status",
            &[("group", group), ("status", status)],
        )
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait("payment OK", &|| status_of("payment", "OK") == Some(1.0));
    // The payment service goes away (SIGKILL): no more heartbeats, and held bookings pile up.
    drop(payment);
    for seat in ["A-1-2", "A-1-3", "A-1-4"] {
        client.book(&show, &[seat], "sim_ok", "after");
    }
    wait("payment STOP", &|| {
        status_of("payment", "STOP") == Some(1.0)
    });
    wait("payment lag", &|| {
        metric("kafka_consumergroup_group_sum_lag", &[("group", "payment")])
            .is_some_and(|lag| lag >= 3.0)
    });
    // The others keep up.
    wait("seat-lock OK", &|| {
        status_of("seat-lock", "OK") == Some(1.0)
    });
    assert_eq!(status_of("seat-lock", "STOP"), Some(0.0));
}

/// A Prometheus started here with the shipped configuration (`infra/deploy/prometheus/`), its
/// targets file naming the processes to scrape; killed when dropped.
struct Prometheus {
    process: std::process::Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Prometheus {
    fn start(targets: &[(&str, &str)]) -> Prometheus {
        let shipped =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/deploy/prometheus");
        let dir = tempfile::tempdir().unwrap();
        for file in ["prometheus.yml", "alerts.yml"] {
            std::fs::copy(shipped.join(file), dir.path().join(file)).unwrap();
        }
        std::fs::create_dir(dir.path().join("targets")).unwrap();
        let targets: Vec<Value> = targets
            .iter()
            .map(|(address, component)| {
                json!({"targets": [address], "labels": {"component": component}})
            })
            .collect();
        std::fs::write(
            dir.path().join("targets/zingqueue.json"),
            Value::Array(targets).to_string(),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let process = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus runs: install Debian's prometheus (scripts/install-deps does)");
        let prometheus = Prometheus {
            process,
            address,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&prometheus.address).is_err()
            || http(&prometheus.address, "GET", "/-/ready", None, "").0 != 200
        {
            assert!(Instant::now() < deadline, "Prometheus never got ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// `GET /api/v1/<path>?<query>`'s `data`.
    fn api(&self, path: &str, query: &str) -> Value {
        let encoded: String = query
            .bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (byte as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let (status, body) = http(
            &self.address,
            "GET",
            &format!("/api/v1/{path}?query={encoded}"),
            None,
            "",
        );
        assert_eq!(status, 200, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["status"], "success", "{body}");
        body["data"].clone()
    }
}

#[test]
fn prometheus_scrapes_the_system_with_the_shipped_configuration_and_fires_the_stop_alert() {
    let servers = Servers::start();
    let env = servers.env("3000");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_api, api) = run("api", &env);
    // Every other component serves its own /metrics (the address it prints).
    let with_metrics = |component: &str| {
        let (running, line) = spawn_until(&["run", component], &env, "metrics:");
        let address = line
            .trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .to_string();
        (running, address)
    };
    let (_relay, relay) = with_metrics("relay");
    let (_seat_lock, seat_lock) = with_metrics("seat-lock");
    let (payment, payment_metrics) = with_metrics("payment");
    let (_notifier, notifier) = with_metrics("notifier");
    let (_projections, projections) = with_metrics("projections");
    let prometheus = Prometheus::start(&[
        (api.as_str(), "api"),
        (relay.as_str(), "relay"),
        (seat_lock.as_str(), "seat-lock"),
        (payment_metrics.as_str(), "payment"),
        (notifier.as_str(), "notifier"),
        (projections.as_str(), "projections"),
    ]);
    let client = Client { api: api.clone() };
    let show = client.create_show(1, 10);
    for seat in ["A-1-1", "A-1-2", "A-1-3"] {
        let booking = client.book(&show, &[seat], "sim_ok", "scraped");
        client.wait_for_status(&booking, "confirmed");
    }
    let wait = |what: &str, within: u64, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(within);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    // Every component is scraped.
    wait("every target up", 60, &|| {
        let targets = prometheus.api("targets", "")["activeTargets"].clone();
        let targets = targets.as_array().unwrap();
        targets.len() == 6 && targets.iter().all(|target| target["health"] == "up")
    });
    let processed = prometheus.api("query", "sum by (group) (zq_records_processed_total)");
    assert_eq!(
        processed["result"].as_array().unwrap().len(),
        3,
        "each service's own counters: {processed}"
    );
    // The consumer lag Prometheus has is the series the dashboard shows.
    let lag_query = r#"kafka_consumergroup_group_lag{group="payment"}"#;
    wait("payment's lag scraped", 60, &|| {
        !prometheus.api("query", lag_query)["result"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    let scraped: std::collections::BTreeSet<String> = prometheus.api("query", lag_query)["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            format!(
                "{}/{}",
                series["metric"]["topic"].as_str().unwrap(),
                series["metric"]["partition"].as_str().unwrap()
            )
        })
        .collect();
    let look = support::first_dashboard_look(&api);
    let shown: std::collections::BTreeSet<String> = look["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|group| group["group"] == "payment")
        .flat_map(|group| group["partitions"].as_array().unwrap().clone())
        .map(|p| format!("{}/{}", p["topic"].as_str().unwrap(), p["partition"]))
        .collect();
    assert_eq!(scraped, shown);
    assert_eq!(shown.len(), 4, "{look:#}");
    // The services' counters reach the API's dashboard from their own processes (heartbeats).
    let services = look["services"].as_array().unwrap();
    for group in ["seat-lock", "payment", "notifier"] {
        assert!(
            services
                .iter()
                .any(|s| s["group"] == group && s["processed"].as_u64() >= Some(3)),
            "{group}: {look:#}"
        );
    }
    // Every panel of the Grafana board answers.
    let board: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("infra/deploy/grafana/zingqueue.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for panel in board["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            prometheus.api("query", target["expr"].as_str().unwrap());
        }
    }
    // The payment service goes away: its group turns STOP, and the alert fires.
    drop(payment);
    wait("the STOP alert firing for payment", 120, &|| {
        prometheus.api("alerts", "")["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|alert| {
                alert["labels"]["alertname"] == "ZingQueueConsumerGroupStopped"
                    && alert["labels"]["group"] == "payment"
                    && alert["state"] == "firing"
            })
    });
    let stopped = prometheus.api("alerts", "")["alerts"].clone();
    assert!(
        !stopped
            .as_array()
            .unwrap()
            .iter()
            .any(|alert| alert["labels"]["group"] == "seat-lock"),
        "{stopped}"
    );
}
