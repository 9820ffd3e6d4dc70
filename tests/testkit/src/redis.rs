//! Throwaway `redis-server`s: one per test binary with a database index per test, and servers of a
//! test's own ([`OwnRedis`]) that it may kill and restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::TestkitError;
use crate::process::{ChildServer, find_program, log_tail, loopback, tcp_exchange, wait_until};

/// Databases the started server offers; tests get them in turn.
const DATABASES: u32 = 64;

/// A Redis database for one test.
#[derive(Debug, Clone)]
pub struct RedisDatabase {
    /// `redis://127.0.0.1:PORT/N`: connect here.
    pub url: String,
}

struct RedisServer {
    /// `redis://host:port` without a database.
    base_url: String,
    address: SocketAddr,
    origin: String,
    /// Whether each test may have a database index of its own (only on a server we started).
    own_databases: bool,
}

static SERVER: OnceLock<Result<RedisServer, String>> = OnceLock::new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

pub fn try_redis() -> Result<RedisDatabase, TestkitError> {
    let server = SERVER
        .get_or_init(|| server().map_err(|error| error.to_string()))
        .as_ref()
        .map_err(|reason| TestkitError::StartFailed {
            server: "Redis",
            reason: reason.clone(),
        })?;
    let url = if server.own_databases {
        // Indexes are reused after DATABASES tests: empty the database before handing it out.
        let index = NEXT_DATABASE.fetch_add(1, Ordering::Relaxed) % DATABASES;
        let request = format!("SELECT {index}\r\nFLUSHDB\r\n");
        let answer = tcp_exchange(server.address, request.as_bytes()).unwrap_or_default();
        if !answer.starts_with(b"+OK") {
            return Err(TestkitError::Unusable {
                server: "Redis",
                address: server.base_url.clone(),
                reason: format!(
                    "SELECT/FLUSHDB answered {:?}",
                    String::from_utf8_lossy(&answer)
                ),
            });
        }
        format!("{}/{index}", server.base_url)
    } else {
        // A server we did not start may hold data of its own: tests on it use keys of their own
        // rather than a flushed database.
        server.base_url.clone()
    };
    eprintln!(
        "testkit: {} uses Redis {url} on {}",
        crate::test_name(),
        server.origin
    );
    Ok(RedisDatabase { url })
}

fn server() -> Result<RedisServer, TestkitError> {
    if let Ok(url) = std::env::var("ZQ_TEST_REDIS_URL") {
        return Ok(RedisServer {
            origin: "ZQ_TEST_REDIS_URL".into(),
            address: answering_address(&url)?,
            base_url: url,
            own_databases: false,
        });
    }
    if let Some(base_url) = crate::containers::redis()? {
        return Ok(RedisServer {
            origin: "testcontainers".into(),
            address: answering_address(&base_url)?,
            base_url,
            // The image's server has 16 databases, not ours: tests share index 0.
            own_databases: false,
        });
    }
    let server = LocalRedis::create(vec![
        "--save".into(),
        String::new(),
        "--databases".into(),
        DATABASES.to_string(),
    ])?;
    Ok(RedisServer {
        origin: "a server started by testkit".into(),
        base_url: server.url(),
        address: server.address(),
        own_databases: true,
    })
}

/// The address of a Redis URL (`redis://[user:password@]host:port[/db]`), checked with a PING so
/// that a wrong URL fails here, with testkit's message, not later in a test.
fn answering_address(url: &str) -> Result<SocketAddr, TestkitError> {
    let unusable = |reason: String| TestkitError::Unusable {
        server: "Redis",
        address: url.to_string(),
        reason,
    };
    let host_port = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    let address = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .map_err(|error| unusable(format!("cannot resolve {host_port:?}: {error}")))?
        .next()
        .ok_or_else(|| unusable(format!("no address for {host_port:?}")))?;
    let answer = tcp_exchange(address, b"PING\r\n").map_err(|error| unusable(error.to_string()))?;
    if answer.starts_with(b"+PONG") || answer.starts_with(b"-NOAUTH") {
        Ok(address)
    } else {
        Err(unusable(format!(
            "PING answered {:?}",
            String::from_utf8_lossy(&answer)
        )))
    }
}

/// What an [`OwnRedis`] keeps across restarts (`--appendonly no` either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisPersistence {
    /// RDB snapshots (`dump.rdb` in the server's folder): [`OwnRedis::save`] and a clean shutdown
    /// write one, and a start loads it. The automatic rule, `save 3600 1`, makes Redis run as with
    /// snapshots on, yet never fires within a test: a restart after a kill brings back exactly the
    /// last explicit snapshot, not one taken at a moment the test cannot know.
    Rdb,
    /// No automatic snapshots, and a clean shutdown writes none: a restart comes back empty,
    /// unless [`OwnRedis::save`] wrote a snapshot, which a start loads (as Redis does).
    None,
}

/// A `redis-server` of one test's own, which it may kill and restart (the shared server of
/// [`try_redis`] must stay up for the other tests). Always started by testkit, whatever
/// `ZQ_TEST_REDIS_URL` says. Dropping it stops the server and removes its folder.
#[derive(Debug)]
pub struct OwnRedis {
    /// `redis://127.0.0.1:PORT`, the same across restarts.
    pub url: String,
    persistence: RedisPersistence,
    server: LocalRedis,
}

/// A dedicated `redis-server` for a test that kills or restarts it.
pub fn try_own_redis(persistence: RedisPersistence) -> Result<OwnRedis, TestkitError> {
    let save_rule = match persistence {
        RedisPersistence::Rdb => "3600 1",
        RedisPersistence::None => "",
    };
    let server = LocalRedis::create(vec!["--save".into(), save_rule.into()])
        .map_err(TestkitError::for_own_server)?;
    let url = server.url();
    eprintln!(
        "testkit: {} has its own Redis {url} ({persistence:?}) in {}",
        crate::test_name(),
        server.process.dir().display()
    );
    Ok(OwnRedis {
        url,
        persistence,
        server,
    })
}

impl OwnRedis {
    /// SAVE: a snapshot, written before this returns.
    pub fn save(&self) -> Result<(), TestkitError> {
        self.expect_ok("snapshot", &["SAVE"])
    }

    /// FLUSHALL. With [`RedisPersistence::Rdb`], Redis also snapshots the now empty data set.
    pub fn flushall(&self) -> Result<(), TestkitError> {
        self.expect_ok("flush", &["FLUSHALL"])
    }

    /// The server's `run_id` (INFO server): a new one after every start.
    pub fn run_id(&self) -> Result<String, TestkitError> {
        let info = request(self.server.address(), &["INFO", "server"])
            .and_then(|reply| reply.ok_or_else(|| "no reply".to_string()))
            .map_err(|reason| TestkitError::control("Redis", "read run_id of", reason))?;
        info.lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string())
            .ok_or_else(|| {
                TestkitError::control(
                    "Redis",
                    "read run_id of",
                    format!("no run_id in INFO: {info}"),
                )
            })
    }

    /// SIGKILL the server and wait for it to be gone. Nothing is saved.
    pub fn kill9(&self) {
        self.server.process.kill();
    }

    /// Start the server again: same port, same folder, so it loads its last snapshot, if any.
    /// Returns once it answers PING.
    pub fn start(&self) -> Result<(), TestkitError> {
        self.server
            .start()
            .map_err(|reason| TestkitError::StartFailed {
                server: "Redis",
                reason,
            })
    }

    /// [`kill9`](Self::kill9) then [`start`](Self::start): the data comes back as of the last
    /// snapshot, as when Redis restarts from an older snapshot.
    pub fn restart_from_snapshot(&self) -> Result<(), TestkitError> {
        self.kill9();
        self.start()
    }

    /// A clean restart: SHUTDOWN (SAVE with [`RedisPersistence::Rdb`], NOSAVE without), then
    /// [`start`](Self::start).
    pub fn shutdown_and_start(&self) -> Result<(), TestkitError> {
        let how = match self.persistence {
            RedisPersistence::Rdb => "SAVE",
            RedisPersistence::None => "NOSAVE",
        };
        self.server
            .shutdown(how)
            .map_err(|reason| TestkitError::control("Redis", "shut down", reason))?;
        self.start()
    }

    /// Whether the server process lives and answers PING.
    pub fn is_running(&self) -> bool {
        self.server.is_running()
    }

    fn expect_ok(&self, action: &'static str, command: &[&str]) -> Result<(), TestkitError> {
        match request(self.server.address(), command) {
            Ok(Some(reply)) if reply == "OK" => Ok(()),
            other => Err(TestkitError::control(
                "Redis",
                action,
                format!("{} answered {other:?}", command.join(" ")),
            )),
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.server.process.remove();
    }
}

/// A `redis-server` testkit runs in a temporary folder of its own, as its child process.
#[derive(Debug, Clone)]
struct LocalRedis {
    program: PathBuf,
    port: u16,
    /// Options beyond the port and the files: persistence, databases.
    options: Vec<String>,
    /// The process, in a folder with the snapshot, the log and the pid file.
    process: ChildServer,
}

impl LocalRedis {
    /// Start a server on a free loopback port in a fresh folder. It is stopped and its folder
    /// removed when the test binary exits.
    fn create(options: Vec<String>) -> Result<Self, TestkitError> {
        let program =
            find_program("redis-server", &[]).ok_or_else(|| TestkitError::NotInstalled {
                server: "Redis",
                what: "redis-server".into(),
                package: "redis-server",
                variable: "ZQ_TEST_REDIS_URL",
            })?;
        let mut server = LocalRedis {
            program,
            port: 0,
            options,
            process: ChildServer::in_new_folder("zq-testkit-redis-", "redis.pid")?,
        };
        let process = server.process.clone();
        process.first_start("Redis", |port| {
            server.port = port;
            server.start()
        })?;
        Ok(server)
    }

    /// Start the server on its port, waiting until it answers PING (after loading its snapshot).
    fn start(&self) -> Result<(), String> {
        let mut running = self.process.lock_stopped()?;
        let log = self.process.dir().join("redis.log");
        let mut child = Command::new(&self.program)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "no", "--dbfilename", "dump.rdb"])
            .arg("--dir")
            .arg(self.process.dir())
            .arg("--logfile")
            .arg(&log)
            .arg("--pidfile")
            .arg(self.process.pidfile())
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", self.program.display()))?;
        let address = self.address();
        let ready = wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(None))
                && tcp_exchange(address, b"PING\r\n")
                    .is_ok_and(|answer| answer.starts_with(b"+PONG"))
        });
        if ready.is_ok() {
            *running = Some(child);
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "no PONG on port {}; log:\n{}",
            self.port,
            log_tail(&log)
        ))
    }

    /// SHUTDOWN SAVE|NOSAVE, and wait until the server has exited.
    fn shutdown(&self, how: &str) -> Result<(), String> {
        let mut running = self.process.lock();
        let Some(child) = running.as_mut() else {
            return Err("it is not running".into());
        };
        // A server that shuts down closes the connection without a reply; what counts is that it
        // exits.
        let reply = request(self.address(), &["SHUTDOWN", how]);
        wait_until(Duration::from_secs(30), || {
            !matches!(child.try_wait(), Ok(None))
        })
        .map_err(|waited| {
            format!("still running {waited:?} after SHUTDOWN {how}, which answered {reply:?}")
        })?;
        *running = None;
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.process.alive()
            && tcp_exchange(self.address(), b"PING\r\n")
                .is_ok_and(|answer| answer.starts_with(b"+PONG"))
    }

    fn address(&self) -> SocketAddr {
        loopback(self.port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Send one command and read its reply: `Some(text)` for a status, an integer or a bulk string,
/// `None` when the server closed the connection without one (as SHUTDOWN does), `Err` for an
/// error reply or a broken connection.
fn request(address: SocketAddr, command: &[&str]) -> Result<Option<String>, String> {
    let failed = |error: std::io::Error| format!("{}: {error}", command.join(" "));
    let mut stream =
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).map_err(failed)?;
    // SAVE takes as long as writing the data set, which in tests is small.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(failed)?;
    let mut message = format!("*{}\r\n", command.len());
    for part in command {
        message.push_str(&format!("${}\r\n{part}\r\n", part.len()));
    }
    stream.write_all(message.as_bytes()).map_err(failed)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).map_err(failed)? == 0 {
        return Ok(None);
    }
    let line = line.trim_end();
    let (kind, rest) = line.split_at_checked(1).unwrap_or((line, ""));
    match kind {
        "+" | ":" => Ok(Some(rest.to_string())),
        "$" => {
            let length: usize = rest
                .parse()
                .map_err(|_| format!("unexpected reply {line:?}"))?;
            // The text and its closing CRLF.
            let mut body = vec![0; length + 2];
            reader.read_exact(&mut body).map_err(failed)?;
            body.truncate(length);
            Ok(Some(String::from_utf8_lossy(&body).into_owned()))
        }
        _ => Err(format!("{} answered {line:?}", command.join(" "))),
    }
}
