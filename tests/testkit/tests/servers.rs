//! testkit starts real servers, gives each test its own database, and stops everything when the
//! test binary ends, also when a test panics.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use testkit::{PgStop, RedisPersistence};

/// `psql -tA -c sql` against a URL.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args([
            "--no-psqlrc",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn each_test_gets_a_fresh_postgres_database() {
    let first = testkit::postgres();
    let second = testkit::postgres();
    assert_ne!(first.name, second.name);
    assert_eq!(
        psql(&first.url, "SELECT current_database()").unwrap(),
        first.name
    );
    psql(
        &first.url,
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    // The second database does not see the first one's table.
    assert!(psql(&second.url, "SELECT * FROM t").is_err());
    let version = psql(&first.url, "SHOW server_version_num").unwrap();
    assert!(
        version.parse::<u32>().unwrap() >= 130000,
        "Postgres {version}"
    );
}

/// `redis-cli` against a URL; a missing key prints as an empty string.
fn redis_cli(url: &str, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-u", url])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// 127.0.0.1:PORT of a server URL.
fn address_of(url: &str) -> std::net::SocketAddr {
    let after_scheme = url.split_once("://").unwrap().1;
    let host_port = after_scheme.rsplit('@').next().unwrap();
    host_port.split('/').next().unwrap().parse().unwrap()
}

#[test]
fn an_own_postgres_keeps_committed_rows_across_stops_kills_and_restarts() {
    let server = testkit::own_postgres();
    assert!(server.url.ends_with("/zq"), "{}", server.url);
    assert!(server.is_running());
    psql(
        &server.url,
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    let rows = || {
        psql(
            &server.url,
            "SELECT string_agg(x::text, ',' ORDER BY x) FROM t",
        )
    };

    server.restart(PgStop::Fast).unwrap();
    assert_eq!(rows().unwrap(), "1");

    server.stop(PgStop::Fast).unwrap();
    assert!(!server.is_running());
    assert!(rows().is_err(), "a stopped server answers");
    server.start().unwrap();
    assert_eq!(rows().unwrap(), "1");

    // A row committed just before the kill is there after it: commits are not left in memory.
    psql(&server.url, "INSERT INTO t VALUES (2)").unwrap();
    // A backend busy with a statement does not keep the server from starting again.
    let mut busy = Command::new("psql")
        .args([
            "--no-psqlrc",
            "-d",
            &server.url,
            "-c",
            "SELECT pg_sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sleeping = || {
        psql(
            &server.url,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'",
        )
    };
    while sleeping().unwrap() != "1" {
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill9().unwrap();
    assert!(!busy.wait().unwrap().success());
    assert!(!server.is_running());
    assert!(rows().is_err(), "a killed server answers");
    server.start().unwrap();
    assert_eq!(rows().unwrap(), "1,2");

    // Twice in a row, then an immediate stop: crash recovery each time.
    server.kill9().unwrap();
    server.start().unwrap();
    server.restart(PgStop::Immediate).unwrap();
    assert_eq!(rows().unwrap(), "1,2");

    let address = address_of(&server.url);
    drop(server);
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err(),
        "{address} still listens after the server was dropped"
    );
}

#[test]
fn an_own_redis_restarts_from_its_last_snapshot() {
    let redis = testkit::own_redis(RedisPersistence::Rdb);
    redis_cli(&redis.url, &["SET", "a", "1"]);
    redis.save().unwrap();
    redis_cli(&redis.url, &["SET", "b", "2"]);
    let first_run = redis.run_id().unwrap();

    redis.restart_from_snapshot().unwrap();
    assert!(redis.is_running());
    assert_eq!(redis_cli(&redis.url, &["GET", "a"]), "1");
    assert_eq!(
        redis_cli(&redis.url, &["GET", "b"]),
        "",
        "b came after the snapshot"
    );
    let second_run = redis.run_id().unwrap();
    assert_ne!(first_run, second_run);

    // A clean shutdown saves what was written since.
    redis_cli(&redis.url, &["SET", "c", "3"]);
    redis.shutdown_and_start().unwrap();
    assert_eq!(redis_cli(&redis.url, &["MGET", "a", "c"]), "1\n3");
    assert_ne!(redis.run_id().unwrap(), second_run);

    redis.flushall().unwrap();
    assert_eq!(redis_cli(&redis.url, &["DBSIZE"]), "0");
    redis.kill9();
    assert!(!redis.is_running());
    let address = address_of(&redis.url);
    assert!(TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err());
    redis.start().unwrap();
    assert_eq!(redis_cli(&redis.url, &["DBSIZE"]), "0");
}

#[test]
fn an_own_redis_without_persistence_comes_back_empty() {
    let redis = testkit::own_redis(RedisPersistence::None);
    redis_cli(&redis.url, &["SET", "a", "1"]);
    redis.shutdown_and_start().unwrap();
    assert_eq!(redis_cli(&redis.url, &["DBSIZE"]), "0");
    redis_cli(&redis.url, &["SET", "a", "1"]);
    redis.restart_from_snapshot().unwrap();
    assert_eq!(redis_cli(&redis.url, &["DBSIZE"]), "0");
}

#[test]
fn redis_answers_ping() {
    use std::io::{Read, Write};
    let redis = testkit::redis();
    let address = redis
        .url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut stream = TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"PING\r\n").unwrap();
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"+PONG\r\n");
}

#[test]
fn the_mock_kafka_cluster_stores_and_serves_records() {
    let kafka = testkit::kafka();
    assert_eq!(
        kafka.is_mock(),
        std::env::var_os("ZQ_TEST_KAFKA_BROKERS").is_none()
    );
    kafka.create_topic("zq.test", 3).unwrap();

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::to("zq.test")
                .key("show-1")
                .payload("hello")
                .partition(2),
        )
        .map_err(|(error, _)| error)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", "testkit")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset("zq.test", 2, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no record within 20 s"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            assert_eq!(message.key(), Some(&b"show-1"[..]));
            assert_eq!(message.payload(), Some(&b"hello"[..]));
            assert_eq!(message.partition(), 2);
            break;
        }
    }
    let metadata = consumer
        .fetch_metadata(Some("zq.test"), Duration::from_secs(5))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 3);
}

/// Run as a child of the two tests below (they set ZQ_TESTKIT_CHILD): start the servers, say
/// where they are, then panic, or hang until killed. Run on its own, there is nothing to do.
#[test]
fn child_starts_servers_then_panics_or_hangs() {
    let Some(mode) = std::env::var_os("ZQ_TESTKIT_CHILD") else {
        return;
    };
    let postgres = testkit::postgres();
    let nisshi = testkit::own_nisshi(testkit::NisshiStorage::Memory);
    // Restarted, so that the guardian has to find the broker's new process.
    nisshi.restart().unwrap();
    let redis = testkit::redis();
    println!("CHILD_POSTGRES={}", postgres.url);
    println!("CHILD_NISSHI={}", nisshi.bootstrap_servers);
    println!("CHILD_REDIS={}", redis.url);
    if mode == "hang" {
        std::thread::sleep(Duration::from_secs(120));
    }
    panic!("this test panics on purpose");
}

/// The host:port of a server URL the child printed.
fn reported_address(stdout: &str, prefix: &str) -> std::net::SocketAddr {
    let url = stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("child did not report {prefix}: {stdout}"));
    let host = url
        .rsplit('@')
        .next()
        .unwrap()
        .trim_start_matches("redis://");
    host.split('/').next().unwrap().parse().unwrap()
}

fn child(mode: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child_starts_servers_then_panics_or_hangs",
            "--nocapture",
        ])
        .env("ZQ_TESTKIT_CHILD", mode)
        .env_remove("ZQ_TEST_DATABASE_URL")
        .env_remove("ZQ_TEST_REDIS_URL");
    command
}

#[test]
fn servers_are_stopped_when_the_test_binary_is_killed() {
    use std::io::{BufRead, BufReader};
    let mut running = child("hang")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    let mut lines = BufReader::new(running.stdout.take().unwrap()).lines();
    while !stdout.contains("CHILD_REDIS=") {
        let line = lines
            .next()
            .expect("the child reports its servers")
            .unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let servers = [
        reported_address(&stdout, "CHILD_POSTGRES="),
        reported_address(&stdout, "CHILD_NISSHI="),
        reported_address(&stdout, "CHILD_REDIS="),
    ];
    for server in servers {
        assert!(TcpStream::connect_timeout(&server, Duration::from_secs(1)).is_ok());
    }
    // SIGKILL: no exit hook runs; the guardian must notice and stop the servers.
    running.kill().unwrap();
    running.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for server in servers {
        while TcpStream::connect_timeout(&server, Duration::from_secs(1)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{server} still listens 20 s after the test binary was killed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn servers_are_stopped_when_a_test_panics() {
    let output = child("panic").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "the child test should fail");
    for server in [
        reported_address(&stdout, "CHILD_POSTGRES="),
        reported_address(&stdout, "CHILD_NISSHI="),
        reported_address(&stdout, "CHILD_REDIS="),
    ] {
        // The exit hook has run by the time the child is gone: nothing listens any more.
        assert!(
            TcpStream::connect_timeout(&server, Duration::from_secs(1)).is_err(),
            "{server} is still listening after the test binary exited"
        );
    }
}
