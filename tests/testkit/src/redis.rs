//! A throwaway `redis-server`, one per test binary, and a database index per test.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::error::TestkitError;
use crate::process::{
    find_program, free_port, log_tail, on_exit, shell_quote, tcp_exchange, wait_until,
};

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
    let (base_url, address) = start_local()?;
    Ok(RedisServer {
        origin: "a server started by testkit".into(),
        base_url,
        address,
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

fn start_local() -> Result<(String, SocketAddr), TestkitError> {
    let redis_server =
        find_program("redis-server", &[]).ok_or_else(|| TestkitError::NotInstalled {
            server: "Redis",
            what: "redis-server".into(),
            package: "redis-server",
            variable: "ZQ_TEST_REDIS_URL",
        })?;
    let dir = tempfile::Builder::new()
        .prefix("zq-testkit-redis-")
        .tempdir()?
        .keep();
    let log = dir.join("redis.log");
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port()?;
        let mut child = Command::new(&redis_server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--databases", &DATABASES.to_string()])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(None))
                && tcp_exchange(address, b"PING\r\n")
                    .is_ok_and(|answer| answer.starts_with(b"+PONG"))
        });
        if ready.is_ok() {
            let pid = child.id();
            let dir_quoted = shell_quote(dir.to_str().unwrap_or_default());
            let child = Mutex::new(child);
            let dir_in_hook = dir.clone();
            on_exit(
                move || {
                    if let Ok(mut child) = child.lock() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    let _ = std::fs::remove_dir_all(&dir_in_hook);
                },
                &format!("kill {pid} 2>/dev/null; rm -rf {dir_quoted}"),
            );
            return Ok((format!("redis://127.0.0.1:{port}"), address));
        }
        let _ = child.kill();
        let _ = child.wait();
        last_error = format!("no PONG on port {port}; log:\n{}", log_tail(&log));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Err(TestkitError::StartFailed {
        server: "Redis",
        reason: last_error,
    })
}
