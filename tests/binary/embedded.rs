//! The embedded default (`zingqueue up` with no servers: SQLite, the in-process broker, the
//! in-process hold store, mail to a folder) under the two things it must survive: a backlog far
//! beyond what the in-process broker keeps (it drops a partition's oldest records past ~5 MiB),
//! and being killed mid-sale.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Running, first_dashboard_look, http, series, spawn_until};

const ADMIN: &str = "embedded-test-admin-token";

fn up(data_dir: &std::path::Path) -> (Running, String) {
    let log = std::env::var("ZQ_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into());
    let env = [
        ("ZQ_DATA_DIR", data_dir.to_str().unwrap()),
        ("ZQ_LISTEN", "127.0.0.1:0"),
        ("ZQ_ADMIN_TOKEN", ADMIN),
        ("RUST_LOG", log.as_str()),
    ];
    let (running, api) = spawn_until(&["up"], &env, "api:");
    (running, api.trim_start_matches("http://").to_string())
}

fn request(api: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    support::json_request(api, method, path, Some(ADMIN), body)
}

fn create_show(api: &str, rows: u32, seats_per_row: u32) -> String {
    let (status, body) = request(
        api,
        "POST",
        "/shows",
        &json!({
            "name": "Embedded Live", "starts_at": "2027-05-01T20:00:00Z", "currency": "EUR",
            "sections": [{"name": "A", "rows": rows, "seats_per_row": seats_per_row, "price_cents": 4500}]
        }),
    );
    assert_eq!(status, 201, "{body}");
    body["show_id"].as_str().unwrap().to_string()
}

/// Book seats `A-<row>-<n>` one per booking, from `threads` clients at once.
fn book_all(api: &str, show: &str, seats: &[String], threads: usize) -> Vec<String> {
    let chunks: Vec<Vec<String>> = seats
        .chunks(seats.len().div_ceil(threads))
        .map(<[String]>::to_vec)
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let (api, show) = (api.to_string(), show.to_string());
            std::thread::spawn(move || {
                chunk
                    .iter()
                    .map(|seat| {
                        let customer = format!("c-{seat}");
                        let (status, body) = request(
                            &api,
                            "POST",
                            "/bookings",
                            &json!({
                                "show_id": show, "seats": [seat], "payment_method": "sim_ok",
                                "customer": {"id": customer, "email": format!("{customer}@example.com"), "name": customer}
                            }),
                        );
                        assert_eq!(status, 202, "{body}");
                        body["booking_id"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

fn seats(rows: u32, per_row: u32) -> Vec<String> {
    (1..=rows)
        .flat_map(|row| (1..=per_row).map(move |n| format!("A-{row}-{n}")))
        .collect()
}

/// Wait until every booking is confirmed (each had a seat of its own).
fn wait_all_confirmed(api: &str, bookings: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    let mut pending: Vec<&String> = bookings.iter().collect();
    while !pending.is_empty() {
        pending.retain(|booking| {
            let (status, body) = request(api, "GET", &format!("/bookings/{booking}"), &Value::Null);
            assert_eq!(status, 200, "{body}");
            assert!(
                matches!(
                    body["status"].as_str(),
                    Some("requested" | "held" | "paid" | "confirmed")
                ),
                "a booking of its own seat ended otherwise: {body:#}"
            );
            body["status"] != "confirmed"
        });
        assert!(
            Instant::now() < deadline,
            "{} of {} bookings never got confirmed, e.g. {}",
            pending.len(),
            bookings.len(),
            pending[0]
        );
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn a_backlog_beyond_what_the_in_process_broker_keeps_loses_nothing() {
    let data_dir = tempfile::tempdir().unwrap();
    let (_up, api) = up(data_dir.path());
    // One show, so one partition: 6,000 requests of ~1 KiB each (value and headers) arrive in
    // seconds, and every booking adds four more records (held, paid, confirmed, email) to the
    // same partition: ~25 MiB through a partition of which the broker keeps ~5 MiB.
    let show = create_show(&api, 100, 60);
    let wanted = seats(100, 60);
    let bookings = book_all(&api, &show, &wanted, 4);
    assert_eq!(bookings.len(), 6_000);
    wait_all_confirmed(&api, &bookings, Duration::from_secs(240));
    let (_, map) = request(&api, "GET", &format!("/shows/{show}/seats"), &Value::Null);
    assert!(
        map["seats"]
            .as_array()
            .unwrap()
            .iter()
            .all(|seat| seat["state"] == "sold")
    );
    // The notifier follows the confirmations: one email per booking, each its own file.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Only finished messages: the mailer writes a hidden temporary file, then renames it.
        let mail = std::fs::read_dir(data_dir.path().join("mail"))
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".eml"))
            })
            .count();
        assert!(mail <= 6_000, "{mail} emails for 6,000 bookings");
        if mail == 6_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {mail} of 6,000 emails were written"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn killed_mid_sale_and_started_again_every_booking_ends_and_dead_letters_survive() {
    let data_dir = tempfile::tempdir().unwrap();
    let (up_first, api) = up(data_dir.path());
    let show = create_show(&api, 10, 50);
    // A poison record on the in-process broker: a dead letter that must outlive the broker.
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(data_dir.path().join("endpoints.json")).unwrap())
            .unwrap();
    let brokers = endpoints["kafka_brokers"].as_str().unwrap().to_string();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_type",
                value: Some("zingqueue.booking.requested.v1"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some("0190c0de-0000-7000-8000-000000000001"),
            });
        producer
            .send(
                FutureRecord::to("zq.booking-events")
                    .key(&show)
                    .payload("{broken")
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    });
    let wanted = seats(10, 50);
    let bookings = book_all(&api, &show, &wanted, 4);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, letters) = request(
            &api,
            "GET",
            "/admin/dead-letters?cause=poison",
            &Value::Null,
        );
        if letters.as_array().is_some_and(|l| !l.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the poison record was never dead-lettered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Killed outright (SIGKILL), most bookings still on their way.
    drop(up_first);

    let (_up, api) = up(data_dir.path());
    wait_all_confirmed(&api, &bookings, Duration::from_secs(120));
    let (_, letters) = request(
        &api,
        "GET",
        "/admin/dead-letters?cause=poison",
        &Value::Null,
    );
    let letters = letters.as_array().unwrap();
    assert_eq!(
        letters.len(),
        1,
        "the dead letter survived, and only once: {letters:#?}"
    );
    assert_eq!(letters[0]["group"], "seat-lock");
}

#[test]
fn metrics_follow_a_sale_from_the_database_and_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let (up, api) = up(dir.path());
    let show = create_show(&api, 2, 10);
    let bookings = book_all(&api, &show, &seats(2, 10), 4);
    wait_all_confirmed(&api, &bookings, Duration::from_secs(60));
    // The monitor looks once a second: wait for it to have seen everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let (status, page) = http(&api, "GET", "/metrics", None, "");
        assert_eq!(status, 200, "{page}");
        let caught_up = ["seat-lock", "payment", "notifier"].iter().all(|group| {
            series(
                &page,
                "kafka_consumergroup_group_max_lag",
                &[("group", group)],
            ) == Some(0.0)
        });
        let settled = caught_up
            && series(&page, "zq_booking_funnel_total", &[("stage", "confirmed")]) == Some(20.0)
            && series(&page, "zq_relay_lag_positions", &[]) == Some(0.0)
            && series(
                &page,
                "zq_projection_lag_positions",
                &[("projection", "read-models")],
            ) == Some(0.0);
        if settled {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never settled:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let value = |name: &str, labels: &[(&str, &str)]| {
        series(&page, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{page}"))
    };
    // HTTP, by route template.
    let accepted = [
        ("route", "/bookings"),
        ("method", "POST"),
        ("status", "202"),
    ];
    assert_eq!(value("zq_http_requests_total", &accepted), 20.0);
    let read = [("route", "/bookings/{booking_id}"), ("method", "GET")];
    assert!(value("zq_http_request_duration_seconds_count", &read) >= 20.0);
    // The funnel, from the log.
    assert_eq!(
        value("zq_booking_funnel_total", &[("stage", "requested")]),
        20.0
    );
    assert_eq!(value("zq_booking_funnel_total", &[("stage", "held")]), 20.0);
    assert_eq!(
        value("zq_booking_funnel_total", &[("stage", "rejected")]),
        0.0
    );
    // Every service handled records, timed per call.
    for group in ["seat-lock", "payment", "notifier"] {
        assert!(value("zq_records_processed_total", &[("group", group)]) >= 20.0);
        assert!(value("zq_handler_duration_seconds_count", &[("group", group)]) >= 1.0);
        assert_eq!(
            value("zq_records_dead_lettered_total", &[("group", group)]),
            0.0
        );
    }
    assert_eq!(value("zq_relay_lag_seconds", &[]), 0.0);
    // Consumer lag per partition, as Kafka users chart it, and every group OK.
    for group in ["seat-lock", "payment", "notifier"] {
        let partition = [
            ("group", group),
            ("topic", "zq.booking-events"),
            ("partition", "0"),
        ];
        assert_eq!(value("kafka_consumergroup_group_lag", &partition), 0.0);
        assert_eq!(
            value("kafka_consumergroup_group_lag_seconds", &partition),
            0.0
        );
        assert_eq!(
            value(
                "zq_consumer_group_status",
                &[("group", group), ("status", "OK")]
            ),
            1.0
        );
        assert_eq!(
            value(
                "zq_consumer_group_status",
                &[("group", group), ("status", "STOP")]
            ),
            0.0
        );
    }
    let partitions = page
        .lines()
        .filter(|line| line.starts_with("kafka_partition_latest_offset{"))
        .count();
    assert!(partitions >= 1, "{page}");

    // The dashboard: its page, the vendored chart library, and its stream of looks.
    let (status, html) = http(&api, "GET", "/dashboard", None, "");
    assert_eq!(status, 200);
    assert!(html.contains("/dashboard/uplot.js") && html.contains("EventSource"));
    let (status, library) = http(&api, "GET", "/dashboard/uplot.js", None, "");
    assert_eq!(status, 200);
    assert!(library.contains("uPlot"), "not the chart library");
    let look = first_dashboard_look(&api);
    assert_eq!(look["funnel"]["confirmed"], 20, "{look:#}");
    assert_eq!(look["relay"]["positions"], 0, "{look:#}");
    let groups = look["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{look:#}");
    for group in groups {
        assert_eq!(group["status"], "OK", "{look:#}");
        assert_eq!(group["sum_lag"], 0, "{look:#}");
        assert!(!group["partitions"].as_array().unwrap().is_empty());
    }
    let services = look["services"].as_array().unwrap();
    assert!(
        services
            .iter()
            .any(|s| s["group"] == "payment" && s["processed"].as_u64() >= Some(20)),
        "{look:#}"
    );
    support::interrupt(up);
}
