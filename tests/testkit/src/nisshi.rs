//! `nisshi` 0.8.1, an independent Apache Kafka-compatible broker (formerly tansu), in its own
//! process: the second Kafka implementation the relay and consumer groups are tested against
//! (DESIGN.md, "Tests and real servers"). One broker per call, in-memory storage, on a free
//! loopback port; stopped when the returned [`KafkaBroker`] is dropped or the test binary exits.
//!
//! `scripts/install-deps` installs it (`cargo +nightly install nisshi --version 0.8.1 --locked`).
//! Another version is refused: tansu 0.6.0 loses records and wedges consumer groups.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::TestkitError;
use crate::kafka::{KafkaBroker, check_brokers_answer};
use crate::process::{find_program, free_port, log_tail, on_exit, shell_quote, wait_until};

/// The version the tests are written against.
pub const NISSHI_VERSION: &str = "0.8.1";

const INSTALL: &str = "scripts/install-deps (it runs `cargo +nightly install nisshi --version \
                       0.8.1 --locked`, ~11 min on 2 cores)";

/// A nisshi process; killing it on drop.
pub(crate) struct NisshiProcess {
    child: Arc<Mutex<Option<Child>>>,
}

impl Drop for NisshiProcess {
    fn drop(&mut self) {
        stop(&self.child);
    }
}

fn stop(child: &Mutex<Option<Child>>) {
    let mut child = child
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
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

/// A fresh nisshi broker for this test.
pub fn try_nisshi() -> Result<KafkaBroker, TestkitError> {
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
    let dir = tempfile::Builder::new()
        .prefix("zq-testkit-nisshi-")
        .tempdir()?
        .keep();
    let log = dir.join("nisshi.log");
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(&program)
            .arg("broker")
            .args(["--storage-engine", "memory://nisshi/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--group-initial-rebalance-delay", "200ms"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(Some(child)));
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let bootstrap_servers = address.to_string();
        let running = || {
            child
                .lock()
                .ok()
                .and_then(|mut child| child.as_mut().map(|c| matches!(c.try_wait(), Ok(None))))
                .unwrap_or(false)
        };
        let listening = wait_until(Duration::from_secs(20), || {
            running() && std::net::TcpStream::connect(address).is_ok()
        });
        if listening.is_ok() && check_brokers_answer(&bootstrap_servers).is_ok() {
            let in_hook = child.clone();
            let dir_in_hook = dir.clone();
            on_exit(
                move || {
                    stop(&in_hook);
                    let _ = std::fs::remove_dir_all(&dir_in_hook);
                },
                &format!(
                    "kill {pid} 2>/dev/null; rm -rf {}",
                    shell_quote(dir.to_str().unwrap_or_default())
                ),
            );
            eprintln!(
                "testkit: {} uses nisshi {NISSHI_VERSION} at {bootstrap_servers} (pid {pid})",
                crate::test_name()
            );
            return Ok(KafkaBroker::external_process(
                bootstrap_servers,
                NisshiProcess { child },
            ));
        }
        stop(&child);
        last_error = format!("no broker on port {port}; log:\n{}", log_tail(&log));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Err(TestkitError::StartFailed {
        server: "nisshi",
        reason: last_error,
    })
}
