//! The `zingqueue` binary as a user runs it.

mod support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use support::*;

#[test]
fn up_opens_the_embedded_store_in_the_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = zingqueue(
        &["up", "--once", "--data-dir", data_dir.to_str().unwrap()],
        &[],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.contains("embedded (SQLite, in-process broker)"),
        "{stdout}"
    );
    assert!(stdout.contains("position 0"), "{stdout}");
    assert!(data_dir.join("zingqueue.db").is_file());

    // The environment twin of --data-dir works the same.
    let again = zingqueue(
        &["up", "--once"],
        &[("ZQ_DATA_DIR", data_dir.to_str().unwrap())],
    );
    assert!(again.status.success());
    assert!(text(&again.stdout).contains(data_dir.to_str().unwrap()));
}

#[test]
fn migrate_prepares_a_postgres_store() {
    let database = testkit::postgres();
    let output = zingqueue(&["migrate"], &[("ZQ_DATABASE_URL", &database.url)]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("up to date"), "{stdout}");
    assert!(stdout.contains(&database.name), "{stdout}");
}

#[test]
fn an_unreachable_database_is_a_clear_error_not_a_panic() {
    let output = zingqueue(
        &["up", "--once", "--listen", "127.0.0.1:0"],
        &[
            (
                "ZQ_DATABASE_URL",
                "postgres://nobody:secret@127.0.0.1:1/none",
            ),
            ("ZQ_ADMIN_TOKEN", "any"),
            // A server that is starting gets this long; one that never answers, an error.
            ("ZQ_WAIT_FOR_SERVERS", "2"),
        ],
    );
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("opening the event store"), "{stderr}");
    assert!(stderr.contains("no answer within 2 s"), "{stderr}");
    assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let unknown = zingqueue(&["migrate"], &[("ZQ_DATABASE_URL", "mysql://db/zq")]);
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("postgres://"));
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["up", "--help"],
        &["bench", "store", "--help"],
        &["run", "api", "--help"],
        &["run", "relay", "--help"],
    ] {
        let output = zingqueue(args, &[]);
        assert!(output.status.success(), "{args:?}");
        assert!(text(&output.stdout).contains("Usage"), "{args:?}");
    }
    let help = text(&zingqueue(&["--help"], &[]).stdout);
    assert!(
        help.contains("ZQ_DATABASE_URL") && help.contains("ZQ_DATA_DIR"),
        "{help}"
    );
}

#[test]
fn every_flag_has_an_environment_twin_and_help_text() {
    for args in [
        &["up", "--help"][..],
        &["run", "api", "--help"],
        &["run", "relay", "--help"],
        &["dev-broker", "--help"],
        &["migrate", "--help"],
        &["bench", "store", "--help"],
        &["bench", "relay", "--help"],
        &["bench", "api", "--help"],
        &["bench", "sale", "--help"],
        &["run", "seat-lock", "--help"],
        &["run", "payment", "--help"],
        &["run", "notifier", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "show", "--help"],
        &["dlq", "redrive", "--help"],
    ] {
        let help = text(&zingqueue(args, &[]).stdout);
        // clap prints each option as a block: the flag line (`-x, --flag` or `--flag`), then
        // its help text and `[env: …]`.
        let mut blocks: Vec<String> = Vec::new();
        for line in help.lines() {
            if line.trim_start().starts_with('-') && line.starts_with("  ") {
                blocks.push(String::new());
            }
            if let Some(block) = blocks.last_mut() {
                block.push_str(line);
                block.push('\n');
            }
        }
        blocks.retain(|block| !block.contains("--help") && !block.contains("--version"));
        assert!(!blocks.is_empty(), "{args:?}: no options in {help}");
        for block in blocks {
            assert!(
                block.contains("[env: ZQ_"),
                "{args:?}: no environment twin: {block}"
            );
            let words = block
                .split_whitespace()
                .filter(|word| word.chars().all(char::is_alphabetic))
                .count();
            assert!(words >= 3, "{args:?}: no help text: {block}");
        }
    }
}

#[test]
fn dev_broker_serves_the_booking_topic_to_other_processes() {
    let (broker, bootstrap) = spawn_until(&["dev-broker"], &[], "bootstrap servers:");
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let metadata = client
        .fetch_metadata(Some("zq.booking-events"), Duration::from_secs(10))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 12);
    interrupt(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_relays_what_is_appended_to_its_in_process_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_string();
    let (up, bootstrap) = spawn_until(
        &["up", "--listen", "127.0.0.1:0", "--data-dir", &data_dir],
        &[],
        "kafka brokers:",
    );

    // Another process (this test) appends to the same SQLite store; the relay polls it.
    let url = format!("sqlite://{data_dir}/zingqueue.db");
    let store = event_store::open(&url).await.unwrap();
    let event_id = uuid::Uuid::now_v7();
    let event = event_store::NewEvent::from_json_text(
        event_id,
        "show.scheduled.v1",
        r#"{"name":"relayed"}"#,
        event_store::EventMetadata {
            partition_key: Some("show-42".into()),
            ..Default::default()
        },
    )
    .unwrap();
    store
        .append(event_store::StreamAppend::new(
            "show-42",
            event_store::ExpectedVersion::NoStream,
            vec![event],
        ))
        .await
        .unwrap();

    // Read every partition from the start, without a consumer group: nothing to rebalance, and
    // nothing to leave when the broker goes away with `up`.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "cli-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in 0..12 {
        partitions
            .add_partition_offset("zq.booking-events", partition, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&partitions).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        assert!(
            Instant::now() < deadline,
            "the event never reached the broker"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            break (
                String::from_utf8_lossy(message.key().unwrap()).into_owned(),
                String::from_utf8_lossy(message.payload().unwrap()).into_owned(),
            );
        }
    };
    assert_eq!(
        record,
        ("show-42".to_string(), r#"{"name":"relayed"}"#.to_string())
    );
    store.close().await;
    interrupt(up);
}

#[test]
fn real_mode_refuses_to_start_without_an_admin_token() {
    let database = testkit::postgres();
    let output = zingqueue(
        &["up", "--once", "--listen", "127.0.0.1:0"],
        &[("ZQ_DATABASE_URL", &database.url)],
    );
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("ZQ_ADMIN_TOKEN"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn up_serves_the_api_with_a_generated_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_string();
    let (up, api) = spawn_until(
        &["up", "--listen", "127.0.0.1:0", "--data-dir", &data_dir],
        &[],
        "api:",
    );
    let address = api.trim_start_matches("http://").to_string();
    let token_file = dir.path().join("admin-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the admin token file is private");
    let endpoints: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("endpoints.json")).unwrap()).unwrap();
    assert_eq!(endpoints["api"], api.as_str());
    for field in [
        "api",
        "dashboard",
        "metrics",
        "kafka_brokers",
        "database_url",
        "mail_dir",
        "admin_token_file",
    ] {
        assert!(
            endpoints.get(field).is_some(),
            "endpoints.json lacks {field}"
        );
    }

    let (status, _) = http(&address, "GET", "/healthz", None, "");
    assert_eq!(status, 200);
    let show = r#"{"name":"CLI show","starts_at":"2027-01-01T20:00:00Z","currency":"EUR",
        "sections":[{"name":"A","rows":2,"seats_per_row":3,"price_cents":1000}]}"#;
    let (status, _) = http(&address, "POST", "/shows", None, show);
    assert_eq!(status, 401);
    let (status, body) = http(&address, "POST", "/shows", Some(&token), show);
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let show_id = created["show_id"].as_str().unwrap();
    let (status, body) = http(&address, "GET", &format!("/shows/{show_id}"), None, "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("CLI show"));
    book_and_read_back(&address, show_id);
    interrupt(up);
}

/// `POST /bookings` (202), then `GET` it with the access token the answer gave.
fn book_and_read_back(address: &str, show_id: &str) {
    let booking = format!(
        r#"{{"show_id":"{show_id}","seats":["A-1-1","A-1-2"],
            "customer":{{"id":"c-1","email":"ada@example.com","name":"Ada"}}}}"#
    );
    let (status, body) = http(address, "POST", "/bookings", None, &booking);
    assert_eq!(status, 202, "{body}");
    let accepted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = accepted["access_token"].as_str().unwrap();
    let status_url = accepted["status_url"].as_str().unwrap();
    let (status, body) = http(address, "GET", status_url, Some(token), "");
    assert_eq!(status, 200, "{body}");
    let read: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(read["status"], "requested");
    assert_eq!(read["amount_cents"], 2000);
    let (status, _) = http(address, "GET", status_url, None, "");
    assert_eq!(status, 401);
}

#[test]
fn run_api_serves_on_its_own_and_needs_an_admin_token() {
    let database = testkit::postgres();
    let output = zingqueue(
        &["run", "api", "--listen", "127.0.0.1:0"],
        &[("ZQ_DATABASE_URL", &database.url)],
    );
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("ZQ_ADMIN_TOKEN"));

    let (api, line) = spawn_until(
        &["run", "api", "--listen", "127.0.0.1:0"],
        &[
            ("ZQ_DATABASE_URL", &database.url),
            ("ZQ_ADMIN_TOKEN", "separate-admin"),
        ],
        "api:",
    );
    let address = line
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let show = r#"{"name":"Solo","starts_at":"2027-01-01T20:00:00Z","currency":"EUR",
        "sections":[{"name":"A","rows":1,"seats_per_row":4,"price_cents":1000}]}"#;
    let (status, body) = http(&address, "POST", "/shows", Some("separate-admin"), show);
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Queries answer from the read models, which another process keeps.
    let (projections, _) = spawn_until(
        &["run", "projections"],
        &[("ZQ_DATABASE_URL", &database.url)],
        "projections:",
    );
    book_and_read_back(&address, created["show_id"].as_str().unwrap());
    interrupt(api);
    interrupt(projections);
}

/// The shipped Prometheus configuration and alert rules pass promtool, and the alerts fire as
/// their unit tests say (`infra/deploy/prometheus/alerts_test.yml`).
#[test]
fn the_shipped_prometheus_configuration_and_alerts_pass_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let output = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs: install Debian's prometheus (scripts/install-deps does)");
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }
    let board: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("infra/deploy/grafana/zingqueue.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(board["panels"].as_array().unwrap().len() >= 8);
}
