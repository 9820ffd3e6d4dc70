//! Starting, watching and stopping server processes.
//!
//! Servers live as long as the test binary: a registry of stop actions runs from an `atexit` hook
//! (the test harness leaves through `exit`, also after failed tests). For a binary killed outright
//! a guardian shell started next to each server waits for the test process to vanish and then
//! runs the same stop command.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use crate::error::TestkitError;

type StopAction = Box<dyn FnOnce() + Send>;

static STOP_ACTIONS: Mutex<Vec<StopAction>> = Mutex::new(Vec::new());
static REGISTER_HOOK: Once = Once::new();

extern "C" fn run_stop_actions() {
    let actions = match STOP_ACTIONS.lock() {
        Ok(mut actions) => std::mem::take(&mut *actions),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for action in actions.into_iter().rev() {
        action();
    }
}

/// Run `stop` when the test binary exits; also start a guardian that runs `guardian_command` (a
/// shell command) if this process dies without running its exit hooks.
pub(crate) fn on_exit(stop: impl FnOnce() + Send + 'static, guardian_command: &str) {
    REGISTER_HOOK.call_once(|| {
        // SAFETY: registering a plain `extern "C" fn` with no arguments is what atexit expects.
        unsafe {
            libc::atexit(run_stop_actions);
        }
    });
    match STOP_ACTIONS.lock() {
        Ok(mut actions) => actions.push(Box::new(stop)),
        Err(poisoned) => poisoned.into_inner().push(Box::new(stop)),
    }
    // The guardian ignores the signals a Ctrl-C or a job timeout sends to the whole process group,
    // and lives in a group of its own, so that it outlives us by design. Its output goes nowhere.
    let watcher = format!(
        "trap '' INT TERM HUP; while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         {guardian_command}",
        pid = std::process::id()
    );
    let _ = Command::new("sh")
        .args(["-c", &watcher])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A server process testkit starts as its child, in a temporary folder of its own, and may kill
/// and start again: the running process, if any, and the pid file in the folder through which
/// the guardian finds it (restarts change the process). Clones share the process, so that the
/// exit hook kills the current one.
#[derive(Debug, Clone)]
pub(crate) struct ChildServer {
    dir: PathBuf,
    pidfile: PathBuf,
    child: Arc<Mutex<Option<Child>>>,
}

impl ChildServer {
    /// A server in a new temporary folder named `prefix…`, whose pid file is `pidfile` in it, not
    /// running yet. When the test binary exits, or dies without its exit hooks, the process is
    /// killed and the folder removed.
    pub(crate) fn in_new_folder(prefix: &str, pidfile: &str) -> Result<Self, TestkitError> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?.keep();
        let server = ChildServer {
            pidfile: dir.join(pidfile),
            dir,
            child: Arc::default(),
        };
        let guardian = format!(
            "kill -9 \"$(cat {})\" 2>/dev/null; rm -rf {}",
            shell_quote(server.pidfile.to_str().unwrap_or_default()),
            shell_quote(server.dir.to_str().unwrap_or_default())
        );
        let in_hook = server.clone();
        on_exit(move || in_hook.remove(), &guardian);
        Ok(server)
    }

    /// The first start: `start` on a free port, tried on a few (see [`start_on_a_free_port`]).
    /// When none works, the folder is removed.
    pub(crate) fn first_start(
        &self,
        server: &'static str,
        start: impl FnMut(u16) -> Result<(), String>,
    ) -> Result<(), TestkitError> {
        start_on_a_free_port(start).map_err(|reason| {
            self.remove();
            TestkitError::start_failed(server)(reason)
        })
    }

    /// The running process, for a start: an error if one runs already.
    pub(crate) fn lock_stopped(&self) -> Result<MutexGuard<'_, Option<Child>>, String> {
        let running = self.lock();
        match *running {
            Some(_) => Err("it is running already".into()),
            None => Ok(running),
        }
    }

    /// The server's folder.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the running process's id is written (by the server or by its starter).
    pub(crate) fn pidfile(&self) -> &Path {
        &self.pidfile
    }

    /// The running process; a start puts it here.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves the child as valid as before.
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// SIGKILL the process, if it runs, and wait until it has exited.
    pub(crate) fn kill(&self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed server leaves its pid file: the guardian must not kill whoever gets the pid.
        let _ = std::fs::remove_file(&self.pidfile);
    }

    /// Whether the process lives (it may not answer yet).
    pub(crate) fn alive(&self) -> bool {
        self.lock()
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kill the process, if it runs, and remove the folder.
    pub(crate) fn remove(&self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `127.0.0.1:port`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A port that was free a moment ago. Another process may take it before the server binds it;
/// callers retry the start on a new port when that happens.
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Call `start` with a free port until it succeeds, a few times: another process may take the
/// port between our finding it and the server's binding it. Returns the last attempt's error.
pub(crate) fn start_on_a_free_port(
    mut start: impl FnMut(u16) -> Result<(), String>,
) -> Result<(), String> {
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port().map_err(|error| format!("no free port: {error}"))?;
        match start(port) {
            Ok(()) => return Ok(()),
            Err(error) => last_error = error,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last_error)
}

/// Whether the tests run as root (Postgres then has to be started as the `postgres` user).
pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Find `program` on PATH or in any of `extra_dirs` (newest-looking first).
pub(crate) fn find_program(program: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(extra_dirs.iter().cloned())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Run a command to completion; a non-zero exit becomes an error carrying its output.
pub(crate) fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{what}: cannot run: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Wait until `ready` says yes, or fail after `deadline`.
pub(crate) fn wait_until(
    deadline: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(deadline)
}

/// Send a raw request to a TCP server and read the start of its answer.
pub(crate) fn tcp_exchange(address: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(request)?;
    let mut answer = vec![0; 64];
    let read = stream.read(&mut answer)?;
    answer.truncate(read);
    Ok(answer)
}

/// The last lines of a server's log, for an error message.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Quote a path for `sh -c`.
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Whether something accepts TCP connections at `address`.
pub(crate) fn accepts_connections(address: SocketAddr) -> bool {
    TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
}

/// Whether a process lives. A zombie does not: this machine's init may never reap a server that
/// was detached from us (pg_ctl detaches Postgres), yet the zombie's pid still answers `kill -0`.
pub(crate) fn process_alive(pid: i32) -> bool {
    process_stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// SIGKILL a process and the processes it started (not theirs), all of them gone in the same
/// instant, as when a server's container dies. Returns their ids, to wait for.
pub(crate) fn kill_with_children(pid: i32) -> Vec<i32> {
    // Stopped, it cannot start a process between our listing its children and its death.
    signal(pid, libc::SIGSTOP);
    let mut killed = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        killed.extend(
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&child| process_stat(child).is_some_and(|(_, parent)| parent == pid)),
        );
    }
    // The parent first: a server whose child dies alone may start it again.
    for &process in &killed {
        signal(process, libc::SIGKILL);
    }
    killed
}

fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; a wrong pid only fails with ESRCH.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// A process's state letter and parent, from /proc/<pid>/stat.
fn process_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name before them, in parentheses, may hold spaces and parentheses itself.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}
