//! # testkit
//!
//! Real servers for ZingQueue's tests, on machines without Docker. Depends on no crate of ours, so
//! any crate can dev-depend on it.
//!
//! - [`postgres()`]: a fresh database on a throwaway Postgres (Debian's `postgresql`), one server
//!   per test binary, started on first use on a free loopback port in a temporary folder (as the
//!   `postgres` user when the tests run as root, since Postgres refuses root).
//! - [`redis()`]: a throwaway `redis-server`, one per test binary, a database index per test.
//! - [`own_postgres()`]: a Postgres server of the test's own, with one database (`zq`), that it
//!   may [stop](OwnPostgres::stop) ([fast or immediate](PgStop)), [kill -9](OwnPostgres::kill9),
//!   [start](OwnPostgres::start) and [restart](OwnPostgres::restart) without disturbing the shared
//!   server; a new one per call, stopped and removed when dropped.
//! - [`own_redis()`]: a `redis-server` of the test's own, with RDB snapshots or none
//!   ([`RedisPersistence`]), that it may [save](OwnRedis::save), [kill -9](OwnRedis::kill9),
//!   [restart from its last snapshot](OwnRedis::restart_from_snapshot) or
//!   [shut down cleanly and start](OwnRedis::shutdown_and_start); a new one per call, stopped and
//!   removed when dropped.
//! - [`kafka()`]: librdkafka's mock cluster, in-process on its own thread (its handle is not
//!   `Send`), speaking the Kafka protocol on loopback; a new one per call.
//! - [`nisshi()`]: nisshi 0.8.1, an independent Kafka implementation, in its own process; a new
//!   one per call. [`java_partition`] is the Java client's partitioner, to check keys against.
//! - [`own_nisshi()`]: a nisshi broker of the test's own, with memory or Postgres storage
//!   ([`NisshiStorage`]), that it may [kill -9](OwnNisshi::kill9), [start](OwnNisshi::start) and
//!   [restart](OwnNisshi::restart) on the same port; with Postgres storage it keeps its topics,
//!   records and group offsets across restarts, as a Kafka keeps its log on disk.
//! - [`smtp()`]: a throwaway SMTP server (Debian's `python3-aiosmtpd`) that keeps every message it
//!   receives, for reading back; a new one per call.
//!
//! Where `ZQ_TEST_DATABASE_URL` / `ZQ_TEST_REDIS_URL` / `ZQ_TEST_KAFKA_BROKERS` are set, those
//! servers are used instead (still a fresh database per test); servers of a test's own are always
//! started by testkit. With `ZQ_TEST_CONTAINERS=1` and the `containers` feature, Postgres and
//! Redis come from testcontainers when a Docker engine answers.
//!
//! A server that cannot be had fails the test with what to install; nothing is skipped silently.
//! Every server testkit starts is stopped when the test binary exits (an `atexit` hook), also when
//! tests panic, and a guardian process stops it should the binary be killed outright. Each
//! function logs (to stderr, shown for failing tests) which server the test got.
//!
//! Layout: `process` (starting, watching and stopping server processes), `postgres`, `redis`,
//! `kafka`, `nisshi`, `murmur2`, `containers`, `smtp`.

mod containers;
mod error;
mod kafka;
mod murmur2;
mod nisshi;
mod postgres;
mod process;
mod redis;
mod smtp;

pub use error::TestkitError;
pub use kafka::{KafkaBroker, try_kafka};
pub use murmur2::java_partition;
pub use nisshi::{NISSHI_VERSION, NisshiStorage, OwnNisshi, try_nisshi, try_own_nisshi};
pub use postgres::{OwnPostgres, PgStop, PostgresDatabase, try_own_postgres, try_postgres};
pub use redis::{OwnRedis, RedisDatabase, RedisPersistence, try_own_redis, try_redis};
pub use smtp::{SmtpServer, try_smtp};

/// A fresh, empty database for this test. Panics with what to install when no Postgres can be had.
pub fn postgres() -> PostgresDatabase {
    try_postgres().unwrap_or_else(|error| panic!("{error}"))
}

/// A Redis database for this test. Panics with what to install when no Redis can be had.
pub fn redis() -> RedisDatabase {
    try_redis().unwrap_or_else(|error| panic!("{error}"))
}

/// A Postgres server of this test's own, to stop, kill and restart. Panics with what to install
/// when Postgres is missing.
pub fn own_postgres() -> OwnPostgres {
    try_own_postgres().unwrap_or_else(|error| panic!("{error}"))
}

/// A `redis-server` of this test's own, to kill and restart. Panics with what to install when
/// Redis is missing.
pub fn own_redis(persistence: RedisPersistence) -> OwnRedis {
    try_own_redis(persistence).unwrap_or_else(|error| panic!("{error}"))
}

/// A Kafka-protocol broker for this test. Panics when none can be had.
pub fn kafka() -> KafkaBroker {
    try_kafka().unwrap_or_else(|error| panic!("{error}"))
}

/// A fresh nisshi broker (an independent Kafka implementation) in its own process. Panics with
/// how to install it when it is missing.
pub fn nisshi() -> KafkaBroker {
    try_nisshi().unwrap_or_else(|error| panic!("{error}"))
}

/// A nisshi broker of this test's own, to kill and restart, keeping its data in `storage`. Panics
/// with how to install nisshi when it is missing.
pub fn own_nisshi(storage: NisshiStorage) -> OwnNisshi {
    try_own_nisshi(storage).unwrap_or_else(|error| panic!("{error}"))
}

/// A fresh SMTP server that keeps what it receives. Panics with what to install when aiosmtpd is
/// missing.
pub fn smtp() -> SmtpServer {
    try_smtp().unwrap_or_else(|error| panic!("{error}"))
}

/// The name of the running test, for the log line that says which server it used.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("(unnamed thread)")
        .to_string()
}
