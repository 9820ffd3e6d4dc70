//! The dashboard in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, with fantoccini), opened on `zingqueue up` during a sale.
//! It must draw charts with data, show every consumer group, and show the lag going back to
//! zero once the consumers have caught up.
//!
//! `ZQ_DASHBOARD_SCREENSHOT=<file.png>` keeps a screenshot taken during the sale (how
//! `docs/dashboard.png` was made).

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use support::{Running, interrupt, spawn_until};

const ADMIN: &str = "dashboard-test-admin-token";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver, stopped when the test ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_chromedriver() -> (Driver, u16) {
    for binary in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            std::path::Path::new(binary).exists(),
            "{binary} is missing: install Debian's chromium and chromium-driver \
             (scripts/install-deps does)"
        );
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (driver, port)
}

async fn browser(port: u16, profile: &std::path::Path) -> Client {
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1300,1400", format!("--user-data-dir={}", profile.display()),
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
            ]
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!("a JSON object literal")
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session")
}

/// Evaluate `expression` in the page.
async fn eval(client: &Client, expression: &str) -> Value {
    client
        .execute(&format!("return {expression};"), vec![])
        .await
        .unwrap()
}

/// Wait until `expression` is true in the page.
async fn until(client: &Client, expression: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while eval(client, expression).await != Value::Bool(true) {
        assert!(
            Instant::now() < deadline,
            "never true in the page: {expression}; last look: {}",
            eval(
                client,
                "JSON.stringify(window.zqDash && window.zqDash.last)"
            )
            .await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn request(api: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    support::json_request(api, method, path, Some(ADMIN), body)
}

/// `zingqueue up` (embedded, with `settings` on top of the test's own) and a browser on its
/// dashboard, once the page has had its first look.
struct Session {
    up: Running,
    api: String,
    client: Client,
    _driver: Driver,
    _dirs: [tempfile::TempDir; 2],
}

async fn open_dashboard(settings: &[(&str, &str)]) -> Session {
    let (driver, port) = start_chromedriver();
    let data = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("ZQ_DATA_DIR", data.path().to_str().unwrap()),
        ("ZQ_LISTEN", "127.0.0.1:0"),
        ("ZQ_ADMIN_TOKEN", ADMIN),
        ("RUST_LOG", "error"),
    ];
    env.extend_from_slice(settings);
    let (up, api) = spawn_until(&["up"], &env, "api:");
    let api = api.trim_start_matches("http://").to_string();
    let profile = tempfile::tempdir().unwrap();
    let client = browser(port, profile.path()).await;
    client
        .goto(&format!("http://{api}/dashboard"))
        .await
        .unwrap();
    until(&client, "window.zqDash.looks >= 1", Duration::from_secs(30)).await;
    Session {
        up,
        api,
        client,
        _driver: driver,
        _dirs: [data, profile],
    }
}

/// A show of one section `A` of `rows` rows of 100 seats; its id.
fn create_show(api: &str, name: &str, rows: u32) -> String {
    let (status, body) = request(
        api,
        "POST",
        "/shows",
        &json!({
            "name": name, "starts_at": "2027-05-01T20:00:00Z", "currency": "EUR",
            "sections": [{"name": "A", "rows": rows, "seats_per_row": 100, "price_cents": 4500}]
        }),
    );
    assert_eq!(status, 201, "{body}");
    body["show_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_charts_a_sale_and_its_lag_going_back_to_zero() {
    // Bound by name: the driver and folders must live as long as the test.
    let Session {
        up,
        api,
        client,
        _driver,
        _dirs,
    } = open_dashboard(&[("ZQ_PAYMENT_LATENCY_MS", "20")]).await;
    until(&client, "window.zqDash.looks >= 2", Duration::from_secs(30)).await;

    // A sale: 1,500 bookings of their own seats, from 6 clients at once.
    let show = create_show(&api, "Dashboard Live", 15);
    let clients: Vec<_> = (0..6u32)
        .map(|client| {
            let (api, show) = (api.clone(), show.clone());
            std::thread::spawn(move || {
                for row in (client + 1..=15).step_by(6) {
                    for seat in 1..=100 {
                        let (status, body) = request(
                            &api,
                            "POST",
                            "/bookings",
                            &json!({
                                "show_id": show, "seats": [format!("A-{row}-{seat}")],
                                "payment_method": "sim_ok",
                                "customer": {"id": format!("c{row}-{seat}"),
                                             "email": "fan@example.com", "name": "Fan"}
                            }),
                        );
                        assert!(status == 202 || status == 503, "{status} {body}");
                    }
                }
            })
        })
        .collect();
    // During the sale: charts drawn, with data, and lag seen.
    until(
        &client,
        "document.querySelectorAll('#lag-chart canvas').length > 0 \
         && document.querySelectorAll('#throughput-chart canvas').length > 0",
        Duration::from_secs(30),
    )
    .await;
    until(
        &client,
        "Object.values(window.zqDash.lag).some(series => series.some(lag => lag > 0))",
        Duration::from_secs(60),
    )
    .await;
    if let Ok(path) = std::env::var("ZQ_DASHBOARD_SCREENSHOT") {
        // Once every group has a live member (they join a few seconds after start).
        until(
            &client,
            "window.zqDash.last.groups.every(g => g.alive)",
            Duration::from_secs(60),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        std::fs::write(&path, client.screenshot().await.unwrap()).unwrap();
    }
    for handle in clients {
        handle.join().unwrap();
    }
    // The consumers catch up: every group's latest lag is zero and the cards say OK.
    until(
        &client,
        "window.zqDash.last.groups.length === 3 \
         && window.zqDash.last.groups.every(g => g.sum_lag === 0 && g.status === 'OK') \
         && Object.values(window.zqDash.lag).every(series => series[series.length - 1] === 0)",
        Duration::from_secs(120),
    )
    .await;
    let cards = eval(
        &client,
        "Array.from(document.querySelectorAll('#groups .group')).map(c => c.dataset.group + ' ' + c.className)",
    )
    .await;
    for group in ["seat-lock", "payment", "notifier"] {
        assert!(
            cards.as_array().unwrap().iter().any(|card| {
                let card = card.as_str().unwrap();
                card.starts_with(group) && card.ends_with("OK")
            }),
            "{cards}"
        );
    }
    let points = eval(&client, "window.zqDash.charts.lag.data[0].length").await;
    assert!(points.as_u64().unwrap_or(0) >= 3, "{points}");
    // The hot show's partition has its own series, back at zero too.
    let partitions = eval(
        &client,
        "Object.entries(window.zqDash.partitions).map(([k, s]) => [k, Math.max(...s.filter(v => v !== null)), s[s.length - 1]])",
    )
    .await;
    let partitions = partitions.as_array().unwrap();
    assert!(!partitions.is_empty());
    assert!(
        partitions
            .iter()
            .all(|p| p[1].as_f64() > Some(0.0) && p[2].as_f64() == Some(0.0)),
        "{partitions:?}"
    );
    client.close().await.unwrap();
    interrupt(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_failure_rate_shown_rises_when_half_the_charges_fail_transiently() {
    // Bound by name: the driver and folders must live as long as the test.
    let Session {
        up,
        api,
        client,
        _driver,
        _dirs,
    } = open_dashboard(&[
        // Half the charge attempts fail transiently; retried soon, and often enough to end.
        ("ZQ_PAYMENT_TRANSIENT_RATE", "0.5"),
        ("ZQ_PAYMENT_DECLINE_RATE", "0"),
        ("ZQ_PAYMENT_RETRY_BASE_MS", "5"),
        ("ZQ_PAYMENT_MAX_ATTEMPTS", "20"),
    ])
    .await;
    let show = create_show(&api, "Flaky Payments Live", 4);
    let booker = std::thread::spawn({
        let api = api.clone();
        move || {
            for row in 1..=4 {
                for seat in 1..=100 {
                    // No payment method: the simulator's rates apply.
                    let (status, body) = request(
                        &api,
                        "POST",
                        "/bookings",
                        &json!({
                            "show_id": show, "seats": [format!("A-{row}-{seat}")],
                            "customer": {"id": format!("f{row}-{seat}"),
                                         "email": "fan@example.com", "name": "Fan"}
                        }),
                    );
                    assert_eq!(status, 202, "{body}");
                }
            }
        }
    });
    // One failure per record handled is what a 50% transient rate gives on average (each
    // attempt fails with probability 1/2); the chart must show well above zero for payment
    // and zero for the others.
    until(
        &client,
        "(window.zqDash.failure['payment'] || []).some(rate => rate !== null && rate >= 0.3)",
        Duration::from_secs(90),
    )
    .await;
    booker.join().unwrap();
    let others = eval(
        &client,
        "['seat-lock', 'notifier'].every(group => \
           (window.zqDash.failure[group] || []).every(rate => rate === null || rate === 0))",
    )
    .await;
    assert_eq!(others, Value::Bool(true));
    client.close().await.unwrap();
    interrupt(up);
}
