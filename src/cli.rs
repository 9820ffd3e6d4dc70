//! The command line. Every flag has an environment twin (`ZQ_…`) and help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "zingqueue",
    version,
    about = "Event-sourced seat booking for flash sales",
    long_about = "Event-sourced seat booking for flash sales.\n\nWith no configuration ZingQueue \
                  runs embedded: a SQLite event store in the data folder. Set ZQ_DATABASE_URL to \
                  use Postgres."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Folder for the embedded default's data (SQLite event store, later mail and tokens).
    #[arg(long, env = "ZQ_DATA_DIR", default_value = infra::config::DEFAULT_DATA_DIR, global = true)]
    pub data_dir: PathBuf,

    /// Event store database: postgres://… or sqlite://…; empty for the embedded SQLite store in
    /// the data folder.
    #[arg(long, env = "ZQ_DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Kafka bootstrap servers (host:port,…); empty for `up`'s in-process broker.
    #[arg(long, env = "ZQ_KAFKA_BROKERS", global = true)]
    pub kafka_brokers: Option<String>,

    /// Address the HTTP API listens on (port 0: any free port).
    #[arg(
        long,
        env = "ZQ_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: std::net::SocketAddr,

    /// Address where a component run on its own (`run relay|seat-lock|payment|notifier|
    /// projections`) serves GET /metrics (port 0: any free port; printed at start). The API
    /// and `up` serve /metrics on their API address.
    #[arg(
        long,
        env = "ZQ_METRICS_LISTEN",
        default_value = "127.0.0.1:0",
        global = true
    )]
    pub metrics_listen: std::net::SocketAddr,

    /// The admin bearer token. The embedded `up` generates one when unset (written to
    /// <data-dir>/admin-token, mode 0600); in real mode every process refuses to start without it.
    #[arg(long, env = "ZQ_ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Partitions of zq.booking-events; fixed once the topic exists (ZingQueue refuses to run
    /// against a topic with another count).
    #[arg(long, env = "ZQ_PARTITIONS", default_value_t = infra::kafka::DEFAULT_PARTITIONS, global = true,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,

    /// How long a process that is starting waits for a server it needs (the database, Redis,
    /// the broker) to answer before it gives up with the last error (0: try once). Once
    /// running, a component waits for its servers as long as it takes.
    #[arg(
        long,
        env = "ZQ_WAIT_FOR_SERVERS",
        default_value_t = 60,
        global = true,
        value_parser = clap::value_parser!(u64).range(0..=86_400)
    )]
    pub wait_for_servers: u64,

    #[command(flatten)]
    pub services: ServiceArgs,
}

/// Settings of the consumer services (seat-lock, payment, notifier).
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Redis for seat holds (redis://host:port/db). Without it, `up` keeps holds in process.
    #[arg(long, env = "ZQ_REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,

    /// SMTP server for customer emails (smtp://host:port). Without it, mail is written to
    /// `<data-dir>/mail/`.
    #[arg(long, env = "ZQ_SMTP_URL", global = true, hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// How long seats are held for payment, in seconds.
    #[arg(long, env = "ZQ_HOLD_SECONDS", default_value_t = 600, global = true,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub hold_seconds: u64,

    /// Payment simulator: latency of every provider call, in milliseconds.
    #[arg(
        long,
        env = "ZQ_PAYMENT_LATENCY_MS",
        default_value_t = 0,
        global = true
    )]
    pub payment_latency_ms: u64,

    /// Payment simulator: share of payments declined (0..1) when no sim_* method is given.
    #[arg(
        long,
        env = "ZQ_PAYMENT_DECLINE_RATE",
        default_value_t = 0.0,
        global = true
    )]
    pub payment_decline_rate: f64,

    /// Payment simulator: share of provider calls failing transiently (0..1) when no sim_*
    /// method is given.
    #[arg(
        long,
        env = "ZQ_PAYMENT_TRANSIENT_RATE",
        default_value_t = 0.0,
        global = true
    )]
    pub payment_transient_rate: f64,

    /// Payment simulator: seed of its random outcomes.
    #[arg(long, env = "ZQ_PAYMENT_SEED", default_value_t = 0, global = true)]
    pub payment_seed: u64,

    /// Payment attempts in all (the first included) before a payment counts as exhausted.
    #[arg(long, env = "ZQ_PAYMENT_MAX_ATTEMPTS", default_value_t = 5, global = true,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub payment_max_attempts: u32,

    /// Payment retries: the ceiling of the first backoff, in milliseconds (it doubles per
    /// attempt, with full jitter).
    #[arg(
        long,
        env = "ZQ_PAYMENT_RETRY_BASE_MS",
        default_value_t = 200,
        global = true
    )]
    pub payment_retry_base_ms: u64,

    /// Kafka session timeout of the consumer groups, in milliseconds: how soon a dead member's
    /// partitions move to another.
    #[arg(long, env = "ZQ_SESSION_TIMEOUT_MS", default_value_t = 10_000, global = true,
          value_parser = clap::value_parser!(u64).range(1_000..=300_000))]
    pub session_timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run ZingQueue in one process: the event store, a Kafka-protocol broker (in-process
    /// unless ZQ_KAFKA_BROKERS names one), the relay, seat-lock, payment, the notifier, the
    /// read-model projector and the HTTP API.
    Up(UpArgs),
    /// Create or update the event store's schema, then exit.
    Migrate,
    /// Run one component on its own, as its own process.
    Run {
        #[command(subcommand)]
        component: Component,
    },
    /// Host librdkafka's mock cluster in this process, for running components as separate
    /// processes without Kafka. Not for production data: it forgets everything when it stops.
    DevBroker,
    /// Dead letters: list, show, redrive.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Rebuild the read models from position 0 into shadow tables and switch to them once
    /// caught up (queries keep answering), or build a snapshot as of a position or time. When
    /// a `zingqueue up` runs on the same database, the rebuild runs there (through its admin
    /// API) and this command follows it.
    Replay(ReplayArgs),
    /// Measure ZingQueue beside the raw ceiling of the same machine.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The projection to rebuild (the read models are one projection: `read-models`).
    #[arg(long, default_value = projections::READ_MODELS)]
    pub projection: String,
    /// Build a snapshot as of this log position (a number) or this time (RFC 3339, compared
    /// with the database's `recorded_at`) into `rm_*__snap_<name>` tables, switching nothing.
    #[arg(long, value_parser = parse_until)]
    pub until: Option<projections::Until>,
    /// The snapshot's name (a-z, 0-9, _; at most 24). Default: from `--until`.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Events per transaction (default: 5000 on Postgres, 1000 on SQLite).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Run here even if a `zingqueue up` advertises itself for replays (it then finds its
    /// checkpoint moved after the switch and goes on from there).
    #[arg(long)]
    pub here: bool,
}

fn parse_until(text: &str) -> Result<projections::Until, String> {
    if let Ok(position) = text.parse::<u64>() {
        return Ok(projections::Until::Position(event_store::Position(
            position,
        )));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| projections::Until::RecordedAt(at.with_timezone(&chrono::Utc)))
        .map_err(|error| {
            format!("{text:?} is neither a log position nor an RFC 3339 time ({error})")
        })
}

#[derive(Debug, Subcommand)]
pub enum Component {
    /// Holds seats, expires holds, sells paid seats (needs ZQ_REDIS_URL).
    SeatLock,
    /// Charges held bookings and refunds, through the payment simulator.
    Payment,
    /// Emails customers about every outcome.
    Notifier,
    /// Keeps the read models (seat maps, bookings, show stats) from the log.
    Projections,
    /// The HTTP API (commands and queries); needs the event store and ZQ_ADMIN_TOKEN.
    Api,
    /// Publish the event store's log to zq.booking-events (needs ZQ_KAFKA_BROKERS).
    Relay,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters, newest first, one JSON object per line.
    List {
        /// Only this consumer group (seat-lock, payment, notifier).
        #[arg(long, env = "ZQ_DLQ_GROUP")]
        group: Option<String>,
        /// Only this cause (poison, handler-failed, expired-seats, payment-exhausted, email-failed).
        #[arg(long, env = "ZQ_DLQ_CAUSE")]
        cause: Option<String>,
        /// Only this status (dead, redrive_requested, redriven).
        #[arg(long, env = "ZQ_DLQ_STATUS")]
        status: Option<String>,
        /// At most this many letters, newest first.
        #[arg(long, env = "ZQ_DLQ_LIMIT", default_value_t = 100)]
        limit: u32,
    },
    /// One dead letter with its record, as JSON.
    Show { id: i64 },
    /// Ask the letter's group to process it again (idempotent); with --wait, until it has.
    Redrive {
        id: i64,
        /// Wait up to this many seconds for the group to run it.
        #[arg(long, env = "ZQ_DLQ_WAIT_SECONDS", default_value_t = 0)]
        wait: u64,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Open the store, report, and exit instead of running until interrupted (for scripts).
    #[arg(long, env = "ZQ_UP_ONCE")]
    pub once: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Event store appends and global-log reads on Postgres and SQLite, beside pgbench, psql's
    /// \copy and raw SQLite inserts and reads measured in the same run.
    Store(StoreBenchArgs),
    /// Relay throughput and store → Kafka latency, on Postgres and on the embedded default, with
    /// and without rolled-back appends.
    Relay(RelayBenchArgs),
    /// POST /bookings through HTTP at several connection counts, on Postgres and on the embedded
    /// default, beside pgbench's one-row INSERTs and raw SQLite inserts measured in the same run.
    Api(ApiBenchArgs),
    /// A flash sale end to end: one hot show, many booking requests for fewer seats, through the
    /// API, relay, seat-lock, payment and notifier in this process, on Postgres + Redis and on
    /// the embedded default; checks at the end that no seat was sold twice.
    Sale(SaleBenchArgs),
    /// A full rebuild of the read models over a log of a million booking events, on Postgres
    /// and SQLite, beside pgbench's and raw SQLite's 100-row INSERTs measured in the same run.
    Replay(ReplayBenchArgs),
    /// The chaos suite (`tests/chaos`) over several rounds of every fault, printing the recovery
    /// time of each (median and worst). Its servers come from testkit, so it runs as the test it
    /// is, from the source tree this binary was built from (needs cargo and the packages of
    /// scripts/install-deps).
    Chaos(ChaosBenchArgs),
}

#[derive(Debug, Args)]
pub struct ChaosBenchArgs {
    /// Rounds of the whole list of faults.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub rounds: u16,
}

#[derive(Debug, Args)]
pub struct ReplayBenchArgs {
    /// Postgres to measure on (a database you can write to; the log written there is kept and
    /// reused). Without it the Postgres figures are skipped.
    #[arg(long, env = "ZQ_BENCH_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,

    /// Events in the log to rebuild from (written once, then reused).
    #[arg(long, env = "ZQ_BENCH_EVENTS", default_value_t = 1_000_000)]
    pub events: u64,

    /// How many times each figure is measured; the median is reported.
    #[arg(long, env = "ZQ_BENCH_RUNS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub runs: u16,

    /// Seconds each raw-ceiling measurement runs.
    #[arg(long, env = "ZQ_BENCH_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,

    /// Events per rebuild transaction (default: the replay's, 5000 on Postgres, 1000 on
    /// SQLite).
    #[arg(long, env = "ZQ_BENCH_BATCH_SIZE")]
    pub batch_size: Option<usize>,

    /// Skip the SQLite figures.
    #[arg(long, env = "ZQ_BENCH_SKIP_SQLITE")]
    pub skip_sqlite: bool,

    /// Folder for the SQLite databases (default: a temporary folder; give one to keep the log
    /// between runs).
    #[arg(long, env = "ZQ_BENCH_SQLITE_DIR")]
    pub sqlite_dir: Option<PathBuf>,
}

/// `bench sale`. `--payment-latency-ms`, `--hold-seconds` and `--redis-url` share their ids with
/// the global service settings of the same names, which they replace for this command; the
/// global variables (`ZQ_PAYMENT_LATENCY_MS`, …) still apply when neither the flag nor its
/// `ZQ_BENCH_*` twin is given.
#[derive(Debug, Clone, Args)]
pub struct SaleBenchArgs {
    /// Postgres to measure on (a server where this user may create databases: each run gets a
    /// fresh one, dropped after). Without it only the embedded default is measured.
    #[arg(long, env = "ZQ_BENCH_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,

    /// Redis for the Postgres setup's holds (its keys are per show). Without it, each run
    /// starts a throwaway redis-server on a free loopback port and stops it after.
    #[arg(long, env = "ZQ_BENCH_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Booking requests of the sale (one seat each, chosen at random).
    #[arg(long, env = "ZQ_BENCH_REQUESTS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub requests: u64,

    /// Seats of the hot show.
    #[arg(long, env = "ZQ_BENCH_SEATS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub seats: u64,

    /// Payment simulator latency per provider call, in milliseconds; one measurement per value.
    #[arg(long, env = "ZQ_BENCH_PAYMENT_LATENCY_MS", value_delimiter = ',', default_values_t = [0u64, 50])]
    pub payment_latency_ms: Vec<u64>,

    /// How long seats are held for payment, in seconds.
    #[arg(long, env = "ZQ_BENCH_HOLD_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub hold_seconds: u64,

    /// Keep-alive HTTP connections sending the requests (closed loop).
    #[arg(long, env = "ZQ_BENCH_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub connections: u16,

    /// Seconds after the last request within which every booking must be terminal; past it the
    /// run fails.
    #[arg(long, env = "ZQ_BENCH_DEADLINE_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub deadline_seconds: u64,

    /// Seed of the random seat choices (the same seed books the same seats).
    #[arg(long, env = "ZQ_BENCH_SEED", default_value_t = 1)]
    pub seed: u64,

    /// How many times each figure is measured; the median is reported.
    #[arg(long, env = "ZQ_BENCH_RUNS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub runs: u16,

    /// Measure the embedded default only.
    #[arg(long, env = "ZQ_BENCH_SKIP_POSTGRES")]
    pub skip_postgres: bool,

    /// Measure Postgres + Redis only.
    #[arg(long, env = "ZQ_BENCH_SKIP_SQLITE")]
    pub skip_sqlite: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ApiBenchArgs {
    /// Postgres to measure on (an empty database you can write to). Without it only the embedded
    /// default (SQLite) is measured.
    #[arg(long, env = "ZQ_BENCH_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,

    /// Keep-alive connections of the closed-loop load, one measurement per count.
    #[arg(long, env = "ZQ_BENCH_CONNECTIONS", value_delimiter = ',', default_values_t = [64u16, 256])]
    pub connections: Vec<u16>,

    /// Seconds each measurement runs.
    #[arg(long, env = "ZQ_BENCH_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,

    /// How many times each figure is measured; the median is reported.
    #[arg(long, env = "ZQ_BENCH_RUNS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub runs: u16,

    /// Measure Postgres only.
    #[arg(long, env = "ZQ_BENCH_SKIP_SQLITE")]
    pub skip_sqlite: bool,

    /// Drive the load from this process even where wrk is installed.
    #[arg(long, env = "ZQ_BENCH_BUILTIN_LOAD")]
    pub builtin_load: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RelayBenchArgs {
    /// Postgres to measure on (an empty database you can write to). Without it only the embedded
    /// default (SQLite) is measured.
    #[arg(long, env = "ZQ_BENCH_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,

    /// Events per second the writers offer (open loop).
    #[arg(long, env = "ZQ_BENCH_RATE", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,

    /// Seconds each measurement offers load.
    #[arg(long, env = "ZQ_BENCH_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,

    /// How many times each figure is measured; the median is reported.
    #[arg(long, env = "ZQ_BENCH_RUNS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub runs: u16,

    /// Share of appends that roll back in the second measurement.
    #[arg(long, env = "ZQ_BENCH_ROLLBACK_PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=50))]
    pub rollback_percent: u8,
}

#[derive(Debug, Args)]
pub struct StoreBenchArgs {
    /// Postgres to measure on (an empty database you can write to). Without it the Postgres
    /// figures are skipped.
    #[arg(long, env = "ZQ_BENCH_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,

    /// Seconds each append measurement runs.
    #[arg(long, env = "ZQ_BENCH_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,

    /// How many times each figure is measured; the median is reported.
    #[arg(long, env = "ZQ_BENCH_RUNS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub runs: u16,

    /// Events in the log for the read measurement.
    #[arg(long, env = "ZQ_BENCH_READ_EVENTS", default_value_t = 1_000_000)]
    pub read_events: u64,

    /// Concurrent writers for one-event appends.
    #[arg(long, env = "ZQ_BENCH_WRITERS", value_delimiter = ',', default_value = "1,16,64", value_parser = clap::value_parser!(u16).range(1..))]
    pub writers: Vec<u16>,

    /// Concurrent writers for 100-event appends.
    #[arg(long, env = "ZQ_BENCH_BATCH_WRITERS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_writers: u16,

    /// Skip the SQLite figures.
    #[arg(long, env = "ZQ_BENCH_SKIP_SQLITE")]
    pub skip_sqlite: bool,

    /// Folder for the SQLite databases (default: a temporary folder).
    #[arg(long, env = "ZQ_BENCH_SQLITE_DIR")]
    pub sqlite_dir: Option<PathBuf>,
}
