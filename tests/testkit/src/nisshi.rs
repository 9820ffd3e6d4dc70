//! `nisshi` 0.8.1, an independent Apache Kafka-compatible broker (formerly tansu), in its own
//! process: the second Kafka implementation the relay and consumer groups are tested against
//! (DESIGN.md, "Tests and real servers"). Each broker runs on a free loopback port, in a
//! temporary folder with its log (`nisshi.log`), and is stopped when dropped or when the test
//! binary exits (an exit hook, and a guardian should the binary be killed outright).
//!
//! - [`try_nisshi`]: a fresh broker with in-memory storage, as a [`KafkaBroker`].
//! - [`try_own_nisshi`]: a broker of the test's own ([`OwnNisshi`]), which it may
//!   [kill -9](OwnNisshi::kill9) and [start](OwnNisshi::start) again on the same port with the
//!   same storage ([`NisshiStorage`]): memory, or a Postgres database.
//!
//! Both start the broker the same way (`nisshi broker --storage-engine … --listener-url
//! tcp://127.0.0.1:PORT --advertised-listener-url tcp://127.0.0.1:PORT
//! --group-initial-rebalance-delay 200ms`) and return once it answers a Kafka metadata request.
//!
//! ## Storage, as measured with nisshi 0.8.1 and rdkafka 0.39
//! - `memory://`: a killed broker forgets everything: after a restart it lists no topics (and
//!   so has none of their records).
//! - `postgres://…`: the broker keeps topics, records, committed group offsets and idempotent
//!   producer state in the database, so a broker killed with SIGKILL comes back with all of it.
//!   It needs nothing prepared but the database itself: on its first start it creates its own
//!   tables (24 relations in `public`, and records its schema version in
//!   `nisshi_schema_version`), which took 0.1–0.25 s on an empty database; a later start finds
//!   the recorded version, runs no DDL and is ready in ~20 ms (a `kill9` + `start` took ~0.2 s
//!   with the metadata check). The database must exist: a missing one, or a Postgres that does
//!   not answer, makes the broker exit at once ("failed its startup check"; `start` then fails
//!   with the log's tail). It should be empty: a table of one of its names made by someone else
//!   (`topic`, `record`, `producer`, …) makes it exit with "failed its schema setup". A fresh
//!   `testkit::postgres()` database is what to give it. An idle broker holds 2 connections.
//! - An idempotent producer (`enable.idempotence=true`, `acks=all`) that outlives a kill -9 and
//!   restart of a broker with Postgres storage goes on producing: no fatal error, nothing lost or
//!   written twice, also with records in flight during the kill (4 runs of ~2,500 records sent
//!   every 2 ms across the kill: all delivered, each once); the broker keeps producer ids, epochs
//!   and sequences in its `producer*` tables. (`tests/nisshi.rs` checks the quiet case; DESIGN.md's
//!   relay rebuilds its producer on a fatal error anyway.)
//!
//! `scripts/install-deps` installs it (`cargo +nightly install nisshi --version 0.8.1 --locked`).
//! Another version is refused: tansu 0.6.0 loses records and wedges consumer groups.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::TestkitError;
use crate::kafka::{KafkaBroker, check_brokers_answer};
use crate::process::{
    ChildServer, accepts_connections, find_program, log_tail, loopback, wait_until,
};

/// The version the tests are written against.
pub const NISSHI_VERSION: &str = "0.8.1";

const INSTALL: &str = "scripts/install-deps (it runs `cargo +nightly install nisshi --version \
                       0.8.1 --locked`, ~11 min on 2 cores)";

/// Where a nisshi broker keeps its topics, records and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NisshiStorage {
    /// In the broker's memory (`memory://nisshi/`): lost when the broker stops.
    Memory,
    /// In a Postgres database, given by its URL (`postgres://user[:password]@host:port/db`). The
    /// database must exist and be empty: the broker creates its own tables in it.
    Postgres(String),
}

impl NisshiStorage {
    /// The `--storage-engine` argument.
    fn engine(&self) -> &str {
        match self {
            NisshiStorage::Memory => "memory://nisshi/",
            NisshiStorage::Postgres(url) => url,
        }
    }

    /// For log lines: no password.
    fn describe(&self) -> String {
        match self {
            NisshiStorage::Memory => "memory storage".into(),
            NisshiStorage::Postgres(url) => {
                format!("Postgres storage {}", crate::postgres::redact(url))
            }
        }
    }
}

/// A nisshi broker of one test's own, which it may kill and start again: same port, same
/// storage. Dropping it kills the broker and removes its folder (not the Postgres database).
#[derive(Debug)]
pub struct OwnNisshi {
    /// `127.0.0.1:PORT`: the `bootstrap.servers` to give clients, the same across restarts.
    pub bootstrap_servers: String,
    server: NisshiServer,
}

/// A nisshi broker of this test's own, with `storage`, to kill and restart.
pub fn try_own_nisshi(storage: NisshiStorage) -> Result<OwnNisshi, TestkitError> {
    let server = NisshiServer::create(storage)?;
    eprintln!(
        "testkit: {} has its own nisshi {NISSHI_VERSION} at {} ({}) in {}",
        crate::test_name(),
        server.bootstrap_servers(),
        server.storage.describe(),
        server.process.dir().display()
    );
    Ok(OwnNisshi {
        bootstrap_servers: server.bootstrap_servers(),
        server,
    })
}

impl OwnNisshi {
    /// SIGKILL the broker, if it runs, and wait until it has exited and its port is closed.
    /// Nothing is flushed: what the storage holds is what a crashed broker would leave.
    pub fn kill9(&self) {
        self.server.process.kill();
        let closed = wait_until(Duration::from_secs(10), || {
            !accepts_connections(self.server.address())
        });
        // The kernel closes the listener as the process exits: only another process that took
        // the port at once could hold it open.
        assert!(
            closed.is_ok(),
            "testkit: {} still accepts connections after nisshi was killed",
            self.bootstrap_servers
        );
    }

    /// Start the broker again, on the same port with the same storage. Returns once it answers a
    /// Kafka metadata request.
    pub fn start(&self) -> Result<(), TestkitError> {
        self.server
            .start()
            .map_err(TestkitError::start_failed("nisshi"))
    }

    /// [`kill9`](Self::kill9) then [`start`](Self::start).
    pub fn restart(&self) -> Result<(), TestkitError> {
        self.kill9();
        self.start()
    }

    /// Whether the broker process lives and accepts connections.
    pub fn is_running(&self) -> bool {
        self.server.is_running()
    }
}

impl Drop for OwnNisshi {
    fn drop(&mut self) {
        self.server.process.remove();
    }
}

/// The broker behind a [`KafkaBroker`] from [`try_nisshi`]; removing it on drop.
#[derive(Debug)]
pub(crate) struct NisshiProcess(NisshiServer);

impl Drop for NisshiProcess {
    fn drop(&mut self) {
        self.0.process.remove();
    }
}

/// A fresh nisshi broker for this test, with in-memory storage.
pub fn try_nisshi() -> Result<KafkaBroker, TestkitError> {
    let server = NisshiServer::create(NisshiStorage::Memory)?;
    let bootstrap_servers = server.bootstrap_servers();
    eprintln!(
        "testkit: {} uses nisshi {NISSHI_VERSION} at {bootstrap_servers} (in {})",
        crate::test_name(),
        server.process.dir().display()
    );
    Ok(KafkaBroker::external_process(
        bootstrap_servers,
        NisshiProcess(server),
    ))
}

/// A nisshi broker testkit runs as its child, in a temporary folder of its own (the log and the
/// pid file).
#[derive(Debug, Clone)]
struct NisshiServer {
    program: PathBuf,
    storage: NisshiStorage,
    port: u16,
    process: ChildServer,
}

impl NisshiServer {
    /// Start a broker on a free loopback port in a fresh folder. It is killed and its folder
    /// removed when the test binary exits.
    fn create(storage: NisshiStorage) -> Result<Self, TestkitError> {
        let program = program()?;
        let mut server = NisshiServer {
            program,
            storage,
            port: 0,
            process: ChildServer::in_new_folder("zq-testkit-nisshi-", "nisshi.pid")?,
        };
        let process = server.process.clone();
        process.first_start("nisshi", |port| {
            server.port = port;
            server.start()
        })?;
        Ok(server)
    }

    /// Start the broker on its port, waiting until it answers a metadata request.
    fn start(&self) -> Result<(), String> {
        let mut running = self.process.lock_stopped()?;
        // Appended to, so that the log of a killed broker is kept next to its successor's.
        let log = self.process.dir().join("nisshi.log");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|error| format!("cannot open {}: {error}", log.display()))?;
        let url = format!("tcp://{}", self.address());
        let mut child = Command::new(&self.program)
            .arg("broker")
            .args(["--storage-engine", self.storage.engine()])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--group-initial-rebalance-delay", "200ms"])
            .current_dir(self.process.dir())
            .stdin(Stdio::null())
            .stdout(
                log_file
                    .try_clone()
                    .map_err(|error| format!("cannot share the log file: {error}"))?,
            )
            .stderr(log_file)
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", self.program.display()))?;
        let _ = std::fs::write(self.process.pidfile(), child.id().to_string());
        let address = self.address();
        let mut exited = None;
        let listening = wait_until(Duration::from_secs(20), || {
            exited = child.try_wait().ok().flatten();
            exited.is_some() || accepts_connections(address)
        });
        let answered = match (exited, listening) {
            (Some(status), _) => Err(format!("it exited ({status})")),
            (None, Err(waited)) => Err(format!("nothing listens after {waited:?}")),
            (None, Ok(())) => check_brokers_answer(&self.bootstrap_servers()),
        };
        if let Err(reason) = answered {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(self.process.pidfile());
            return Err(format!(
                "no broker on port {}: {reason}; log:\n{}",
                self.port,
                log_tail(&log)
            ));
        }
        *running = Some(child);
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.process.alive() && accepts_connections(self.address())
    }

    fn address(&self) -> SocketAddr {
        loopback(self.port)
    }

    fn bootstrap_servers(&self) -> String {
        self.address().to_string()
    }
}

/// The nisshi binary, checked to be [`NISSHI_VERSION`].
fn program() -> Result<PathBuf, TestkitError> {
    let program = find_program("nisshi", &cargo_bin_dirs()).ok_or(TestkitError::NotBuilt {
        server: "nisshi",
        install: INSTALL,
    })?;
    let version = Command::new(&program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    if !version.contains(NISSHI_VERSION) {
        return Err(TestkitError::Unusable {
            server: "nisshi",
            address: program.display().to_string(),
            reason: format!(
                "it says it is {:?}; the tests need {NISSHI_VERSION}: {INSTALL}",
                version.trim()
            ),
        });
    }
    Ok(program)
}

/// Where `cargo install` puts binaries, besides PATH.
fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs.push(PathBuf::from("/usr/local/cargo/bin"));
    dirs
}
