//! A throwaway SMTP server that keeps what it receives: Debian's `python3-aiosmtpd` with its
//! `Mailbox` handler, which writes every delivered message into a maildir. One server per call,
//! on a free loopback port, in a temporary folder; stopped by [`SmtpServer::stop`], when the value
//! is dropped, or when the test binary exits (a guardian process covers a binary killed outright).
//!
//! Tests send mail to [`SmtpServer::url`] and read back the raw RFC 5322 text of what arrived with
//! [`SmtpServer::messages`] / [`SmtpServer::wait_for_messages`]. Stopping the server is how a test
//! makes the mail server unreachable.
//!
//! The interpreter is `/usr/bin/python3` on purpose: `python3` on PATH may be a pyenv (or venv)
//! Python that does not see Debian's `dist-packages`, where the package lives.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::error::TestkitError;
use crate::process::{free_port, log_tail, on_exit, shell_quote, tcp_exchange, wait_until};

/// The interpreter that sees Debian's Python packages.
const PYTHON: &str = "/usr/bin/python3";

const INSTALL: &str = "Debian's python3-aiosmtpd (scripts/install-deps)";

/// A running aiosmtpd that stores every message it accepts.
#[derive(Debug)]
pub struct SmtpServer {
    /// `smtp://127.0.0.1:PORT`: plain SMTP, no TLS, no authentication.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The maildir the server delivers into (`new/`, `cur/`, `tmp/`).
    pub mailbox: PathBuf,
    /// The server's own temporary folder (mailbox and log), removed on drop.
    dir: PathBuf,
    child: Arc<Mutex<Option<Child>>>,
}

impl SmtpServer {
    /// The raw text of every message delivered so far, oldest first (by file time, then name).
    ///
    /// aiosmtpd writes a message into `tmp/` and renames it into `new/`, so a file seen here is
    /// complete. It adds `X-Peer`, `X-MailFrom` and `X-RcptTo` headers (the envelope) to each.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<(SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.mailbox.join(sub)).ok())
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let modified = entry.metadata().ok()?.modified().ok()?;
                Some((modified, entry.path()))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, path)| std::fs::read(path).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect()
    }

    /// Waits until at least `n` messages have arrived or `deadline` has passed, and returns the
    /// messages there are then (fewer than `n` on timeout: the caller's assertion says what was
    /// missing, with the messages in hand).
    pub fn wait_for_messages(&self, n: usize, deadline: Duration) -> Vec<String> {
        let start = Instant::now();
        loop {
            let messages = self.messages();
            if messages.len() >= n || start.elapsed() >= deadline {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server and waits for it to exit, so its port refuses connections from now on.
    /// The messages it received stay readable until the value is dropped. Stopping twice is fine.
    pub fn stop(&self) {
        stop(&self.child);
    }

    /// Whether the server process is still running.
    pub fn is_running(&self) -> bool {
        running(&self.child)
    }

    /// Starts a stopped server again on the same port, delivering into the same mailbox (what
    /// a mail server restart looks like to its clients). Waits for its greeting.
    pub fn start(&self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Err(TestkitError::StartFailed {
                server: "aiosmtpd",
                reason: "it is running already".into(),
            });
        }
        let log = self.dir.join("aiosmtpd.log");
        let child = spawn(&self.dir, &self.mailbox, self.port, &log)?;
        let pid = child.id();
        *self
            .child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(child);
        if let Err(reason) = wait_ready(&self.child, self.port, &log) {
            stop(&self.child);
            return Err(TestkitError::StartFailed {
                server: "aiosmtpd",
                reason,
            });
        }
        guard(&self.child, &self.dir, pid);
        Ok(())
    }
}

/// Start aiosmtpd on `port`, delivering into `mailbox`, its output appended to `log`.
fn spawn(dir: &Path, mailbox: &Path, port: u16, log: &Path) -> Result<Child, TestkitError> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    // -n: do not setuid to `nobody` (aiosmtpd does that when started as root, and `nobody`
    // could not write into our folder).
    Ok(python()
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(mailbox)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()?)
}

/// Wait for the server's greeting (a connection alone could be another process on the port).
fn wait_ready(child: &Mutex<Option<Child>>, port: u16, log: &Path) -> Result<(), String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(20), || {
        running(child)
            && tcp_exchange(address, b"QUIT\r\n").is_ok_and(|answer| answer.starts_with(b"220"))
    })
    .map_err(|_| format!("no SMTP greeting on port {port}; log:\n{}", log_tail(log)))
}

/// Stop the server at exit, and have the guardian stop this process should the test binary be
/// killed outright.
fn guard(child: &Arc<Mutex<Option<Child>>>, dir: &Path, pid: u32) {
    let in_hook = child.clone();
    let dir_in_hook = dir.to_path_buf();
    let dir_quoted = shell_quote(dir.to_str().unwrap_or_default());
    on_exit(
        move || {
            stop(&in_hook);
            let _ = std::fs::remove_dir_all(&dir_in_hook);
        },
        // The pid may have been reused by the time the guardian runs: kill it only if it is
        // still our server (its command line names our folder).
        &format!(
            "grep -qaF {dir_quoted} /proc/{pid}/cmdline 2>/dev/null && kill {pid}; \
             rm -rf {dir_quoted}"
        ),
    );
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        stop(&self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
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

fn running(child: &Mutex<Option<Child>>) -> bool {
    child
        .lock()
        .ok()
        .and_then(|mut child| child.as_mut().map(|c| matches!(c.try_wait(), Ok(None))))
        .unwrap_or(false)
}

/// `/usr/bin/python3` with an environment that cannot point it at another Python's packages.
fn python() -> Command {
    let mut command = Command::new(PYTHON);
    // A pyenv or venv shell may export these; they would make Debian's interpreter look for its
    // standard library and packages in the wrong place.
    command.env_remove("PYTHONHOME").env_remove("PYTHONPATH");
    command
}

/// Checks that Debian's Python can import aiosmtpd.
fn check_installed() -> Result<(), TestkitError> {
    if !Path::new(PYTHON).is_file() {
        return Err(TestkitError::NotBuilt {
            server: "aiosmtpd",
            install: INSTALL,
        });
    }
    let imports = python()
        .args(["-c", "import aiosmtpd.handlers"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if imports {
        Ok(())
    } else {
        Err(TestkitError::NotBuilt {
            server: "aiosmtpd",
            install: INSTALL,
        })
    }
}

/// A fresh SMTP server for this test.
pub fn try_smtp() -> Result<SmtpServer, TestkitError> {
    check_installed()?;
    let dir = tempfile::Builder::new()
        .prefix("zq-testkit-smtp-")
        .tempdir()?
        .keep();
    let mailbox = dir.join("mbox");
    let log = dir.join("aiosmtpd.log");
    let mut last_error = String::new();
    // A free port may be taken by someone else before the server binds it: try a few.
    for _ in 0..3 {
        let port = free_port()?;
        let child = spawn(&dir, &mailbox, port, &log)?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(Some(child)));
        match wait_ready(&child, port, &log) {
            Ok(()) => {
                guard(&child, &dir, pid);
                let url = format!("smtp://127.0.0.1:{port}");
                eprintln!(
                    "testkit: {} uses aiosmtpd at {url} (pid {pid}, mailbox {})",
                    crate::test_name(),
                    mailbox.display()
                );
                return Ok(SmtpServer {
                    url,
                    host: "127.0.0.1".into(),
                    port,
                    mailbox,
                    dir,
                    child,
                });
            }
            Err(reason) => {
                stop(&child);
                last_error = reason;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Err(TestkitError::StartFailed {
        server: "aiosmtpd",
        reason: last_error,
    })
}
