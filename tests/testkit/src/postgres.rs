//! Throwaway Postgres servers: one per test binary with a fresh database per test, and servers of
//! a test's own ([`OwnPostgres`]) that it may stop, kill and restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::TestkitError;
use crate::process::{
    accepts_connections, find_program, kill_with_children, log_tail, on_exit, process_alive, run,
    running_as_root, shell_quote, start_on_a_free_port, wait_until,
};

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct PostgresDatabase {
    /// `postgres://…/<database>`: connect here.
    pub url: String,
    /// The database's name.
    pub name: String,
}

/// The server the databases are created on.
struct PostgresServer {
    /// A URL to the `postgres` maintenance database, to create databases with.
    admin_url: String,
    /// Where the server came from, for the log line.
    origin: String,
    psql: PathBuf,
}

static SERVER: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(1);

/// The database created on every [`OwnPostgres`].
const OWN_DATABASE: &str = "zq";

/// A fresh database for this test, on the server testkit started (or `ZQ_TEST_DATABASE_URL`'s, or
/// a container's).
pub fn try_postgres() -> Result<PostgresDatabase, TestkitError> {
    let server = SERVER
        .get_or_init(|| server().map_err(|error| error.to_string()))
        .as_ref()
        .map_err(|reason| TestkitError::StartFailed {
            server: "Postgres",
            reason: reason.clone(),
        })?;
    let name = format!(
        "zq_test_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    create_database(&server.psql, &server.admin_url, &name).map_err(|reason| {
        TestkitError::Unusable {
            server: "Postgres",
            address: redact(&server.admin_url),
            reason,
        }
    })?;
    let url = with_database(&server.admin_url, &name);
    eprintln!(
        "testkit: {} uses Postgres database {name} on {}",
        crate::test_name(),
        server.origin
    );
    Ok(PostgresDatabase { url, name })
}

/// How [`OwnPostgres::stop`] stops the server (`pg_ctl stop -m fast|immediate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgStop {
    /// Sessions are ended and a checkpoint is written: a clean shutdown.
    Fast,
    /// No checkpoint: the next start runs crash recovery.
    Immediate,
}

impl PgStop {
    fn mode(self) -> &'static str {
        match self {
            PgStop::Fast => "fast",
            PgStop::Immediate => "immediate",
        }
    }
}

/// A Postgres server of one test's own, which it may stop, kill and restart (the shared server of
/// [`try_postgres`] must stay up for the other tests). Always started by testkit, whatever
/// `ZQ_TEST_DATABASE_URL` says. Dropping it stops the server and removes its folder.
///
/// Unlike the shared server it keeps `synchronous_commit` on: a commit it acknowledged survives
/// [`kill9`](Self::kill9). fsync stays off, since it guards only against a crash of the machine.
#[derive(Debug)]
pub struct OwnPostgres {
    /// `postgres://postgres@127.0.0.1:PORT/zq`, the same across restarts.
    pub url: String,
    server: LocalServer,
}

/// A dedicated Postgres server with one database, `zq`, for a test that stops or kills it.
pub fn try_own_postgres() -> Result<OwnPostgres, TestkitError> {
    let psql = program("psql").map_err(TestkitError::for_own_server)?;
    let server =
        LocalServer::create(Durability::KeepCommits).map_err(TestkitError::for_own_server)?;
    // Made before the database so that, should creating it fail, dropping it stops the server.
    let own = OwnPostgres {
        url: server.url(OWN_DATABASE),
        server,
    };
    create_database(&psql, &own.server.url("postgres"), OWN_DATABASE).map_err(|reason| {
        TestkitError::Unusable {
            server: "Postgres",
            address: own.url.clone(),
            reason,
        }
    })?;
    eprintln!(
        "testkit: {} has its own Postgres {} in {}",
        crate::test_name(),
        own.url,
        own.server.dir.display()
    );
    Ok(own)
}

impl OwnPostgres {
    /// `pg_ctl stop -m fast|immediate`, waiting until the server is gone.
    pub fn stop(&self, mode: PgStop) -> Result<(), TestkitError> {
        self.server
            .stop(mode)
            .map_err(|reason| TestkitError::control("Postgres", "stop", reason))
    }

    /// SIGKILL the postmaster and every process it started (backends, checkpointer, …) at once,
    /// and wait until they are gone and the port is closed. The next [`start`](Self::start) runs crash recovery.
    pub fn kill9(&self) -> Result<(), TestkitError> {
        let pid = self
            .server
            .postmaster()
            .ok_or_else(|| TestkitError::control("Postgres", "kill", "it is not running".into()))?;
        // Backends would die on their own once they notice the postmaster is gone, but one busy
        // with a statement notices late, and while it holds the shared memory a new postmaster
        // refuses to start. (Postgres gives each its own process group: a group kill misses them.)
        let killed = kill_with_children(pid);
        wait_until(Duration::from_secs(30), || {
            !killed.iter().any(|&process| process_alive(process))
                && !accepts_connections(self.server.address())
        })
        .map_err(|waited| {
            TestkitError::control(
                "Postgres",
                "kill",
                format!("it was still there {waited:?} after SIGKILL"),
            )
        })
    }

    /// Start the server again: same folder, same port. Returns once it accepts connections (after
    /// crash recovery, when it was killed).
    pub fn start(&self) -> Result<(), TestkitError> {
        self.server
            .start()
            .map_err(|reason| TestkitError::StartFailed {
                server: "Postgres",
                reason,
            })
    }

    /// [`stop`](Self::stop) then [`start`](Self::start).
    pub fn restart(&self, mode: PgStop) -> Result<(), TestkitError> {
        self.stop(mode)?;
        self.start()
    }

    /// Whether the postmaster lives and accepts connections.
    pub fn is_running(&self) -> bool {
        self.server.postmaster().is_some() && accepts_connections(self.server.address())
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.server.remove();
    }
}

fn server() -> Result<PostgresServer, TestkitError> {
    let psql = program("psql")?;
    if let Ok(url) = std::env::var("ZQ_TEST_DATABASE_URL") {
        return Ok(PostgresServer {
            origin: format!("{} (ZQ_TEST_DATABASE_URL)", redact(&url)),
            admin_url: url,
            psql,
        });
    }
    if let Some(admin_url) = crate::containers::postgres()? {
        return Ok(PostgresServer {
            origin: format!("{admin_url} (testcontainers)"),
            admin_url,
            psql,
        });
    }
    let admin_url = LocalServer::create(Durability::Fast)?.url("postgres");
    Ok(PostgresServer {
        origin: format!("{admin_url} (started by testkit)"),
        admin_url,
        psql,
    })
}

fn create_database(psql: &Path, admin_url: &str, name: &str) -> Result<(), String> {
    run(
        Command::new(psql).args([
            "--no-psqlrc",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-d",
            admin_url,
            "-c",
            &format!("CREATE DATABASE {name}"),
        ]),
        "CREATE DATABASE",
    )
    .map(drop)
}

/// A Postgres program, from PATH or Debian's folders.
fn program(name: &str) -> Result<PathBuf, TestkitError> {
    find_program(name, &postgres_bin_dirs()).ok_or_else(|| TestkitError::NotInstalled {
        server: "Postgres",
        what: name.into(),
        package: "postgresql",
        variable: "ZQ_TEST_DATABASE_URL",
    })
}

/// Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<version>/bin.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    // Newest major version first ("17" sorts after "16"; versions here all have two digits).
    dirs.sort();
    dirs.reverse();
    dirs
}

/// What a crash of the server may cost.
#[derive(Debug, Clone, Copy)]
enum Durability {
    /// Recent commits may be lost (`synchronous_commit` off): faster, for the shared server,
    /// which no test crashes.
    Fast,
    /// A commit is in the kernel before it is acknowledged, so it survives a SIGKILL.
    KeepCommits,
}

/// A Postgres server testkit runs in a temporary folder of its own: the cluster in `data/`, the
/// log, and the Unix socket.
#[derive(Debug, Clone)]
struct LocalServer {
    pg_ctl: PathBuf,
    /// Postgres refuses to run as root: then it runs as the `postgres` user.
    as_root: bool,
    dir: PathBuf,
    port: u16,
    durability: Durability,
}

impl LocalServer {
    /// initdb in a fresh folder, then start on a free loopback port. The server is stopped and its
    /// folder removed when the test binary exits.
    fn create(durability: Durability) -> Result<Self, TestkitError> {
        let initdb = program("initdb")?;
        let pg_ctl = program("pg_ctl")?;
        let as_root = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("zq-testkit-pg-")
            .tempdir()?
            .keep();
        let failed = |reason: String| TestkitError::StartFailed {
            server: "Postgres",
            reason,
        };
        if as_root {
            // Postgres refuses to run as root: hand the folder to the `postgres` user.
            run(
                Command::new("chown").arg("postgres:").arg(&dir),
                "chown to the postgres user (does the `postgresql` package's user exist?)",
            )
            .map_err(failed)?;
        }
        let mut server = LocalServer {
            pg_ctl,
            as_root,
            dir,
            port: 0,
            durability,
        };
        run(
            &mut server.as_postgres(
                &initdb,
                &[
                    "-D",
                    path_str(&server.data()),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            ),
            "initdb",
        )
        .map_err(failed)?;

        // Stop fast and remove everything, from the exit hook or, if we are killed, the guardian.
        let guardian = format!(
            "{}{} stop -m immediate -D {} >/dev/null 2>&1; rm -rf {}",
            if as_root {
                "runuser -u postgres -- "
            } else {
                ""
            },
            shell_quote(path_str(&server.pg_ctl)),
            shell_quote(path_str(&server.data())),
            shell_quote(path_str(&server.dir))
        );
        let in_hook = server.clone();
        on_exit(move || in_hook.remove(), &guardian);

        start_on_a_free_port(|port| {
            server.port = port;
            server.start()
        })
        .map_err(failed)?;
        Ok(server)
    }

    /// `pg_ctl start` on the server's port, waiting until it accepts connections.
    fn start(&self) -> Result<(), String> {
        self.clear_stale_locks();
        // Tests need no protection from a crash of the machine; fsync off makes them several
        // times faster.
        let synchronous_commit = match self.durability {
            Durability::Fast => "off",
            Durability::KeepCommits => "on",
        };
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit={synchronous_commit} -c full_page_writes=off \
             -c max_connections=400",
            self.port,
            path_str(&self.dir)
        );
        let log = self.dir.join("server.log");
        self.pg_ctl("start", &["-l", path_str(&log), "-o", &options])
            .map_err(|error| format!("{error}\nserver log:\n{}", log_tail(&log)))
    }

    /// `pg_ctl stop`, waiting until the server is gone.
    fn stop(&self, mode: PgStop) -> Result<(), String> {
        // A lock file left by a killed server names a process that never goes away (a zombie):
        // pg_ctl would wait for it until its timeout.
        self.clear_stale_locks();
        self.pg_ctl("stop", &["-m", mode.mode()])
    }

    /// `pg_ctl <action>` on the server's data, waiting up to a minute for it to take effect.
    fn pg_ctl(&self, action: &str, args: &[&str]) -> Result<(), String> {
        let data = self.data();
        let common = [action, "-w", "-t", "60", "-D", path_str(&data)];
        run(
            &mut self.as_postgres(&self.pg_ctl, &[&common[..], args].concat()),
            &format!("pg_ctl {action}"),
        )
        .map(drop)
    }

    /// Stop the server if it runs and remove its folder.
    fn remove(&self) {
        let _ = self.stop(PgStop::Immediate);
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The postmaster's process id, if it lives.
    fn postmaster(&self) -> Option<i32> {
        lock_owner(&self.data().join("postmaster.pid")).filter(|pid| process_alive(*pid))
    }

    /// Remove the lock files (the data folder's and the socket's) of a postmaster that is gone.
    /// Postgres clears them itself unless the dead postmaster lingers as a zombie, which it
    /// takes for a running server.
    fn clear_stale_locks(&self) {
        let socket_locks = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(".s.PGSQL.") && name.ends_with(".lock"))
            });
        for lock in std::iter::once(self.data().join("postmaster.pid")).chain(socket_locks) {
            if lock_owner(&lock).is_some_and(|pid| !process_alive(pid)) {
                let _ = std::fs::remove_file(&lock);
            }
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn as_postgres(&self, program: &Path, args: &[&str]) -> Command {
        if self.as_root {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(program)
                .args(args);
            command
        } else {
            let mut command = Command::new(program);
            command.args(args);
            command
        }
    }
}

/// The process id on the first line of a Postgres lock file.
fn lock_owner(lock: &Path) -> Option<i32> {
    std::fs::read_to_string(lock)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn path_str(path: &std::path::Path) -> &str {
    // Temporary folders and Debian's paths are ASCII.
    path.to_str().unwrap_or_default()
}

/// The same server URL with another database name.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let server = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

/// A URL with its password hidden, for logs.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let Some(at) = url[scheme_end..].find('@').map(|i| i + scheme_end) else {
        return url.to_string();
    };
    match url[scheme_end..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end], &url[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://u:p@h:5/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h:5/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5", "t1"), "postgres://h:5/t1");
    }

    #[test]
    fn hides_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("weird@postgres://h/db"), "weird@postgres://h/db");
    }
}
