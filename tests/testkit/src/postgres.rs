//! A throwaway Postgres, one per test binary, and a fresh database per test.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::TestkitError;
use crate::process::{
    find_program, free_port, log_tail, on_exit, run, running_as_root, shell_quote,
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
    run(
        Command::new(&server.psql).args([
            "--no-psqlrc",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-d",
            &server.admin_url,
            "-c",
            &format!("CREATE DATABASE {name}"),
        ]),
        "CREATE DATABASE",
    )
    .map_err(|reason| TestkitError::Unusable {
        server: "Postgres",
        address: redact(&server.admin_url),
        reason,
    })?;
    let url = with_database(&server.admin_url, &name);
    eprintln!(
        "testkit: {} uses Postgres database {name} on {}",
        crate::test_name(),
        server.origin
    );
    Ok(PostgresDatabase { url, name })
}

fn server() -> Result<PostgresServer, TestkitError> {
    let psql = find_program("psql", &postgres_bin_dirs()).ok_or(TestkitError::NotInstalled {
        server: "Postgres",
        what: "psql".into(),
        package: "postgresql",
        variable: "ZQ_TEST_DATABASE_URL",
    })?;
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
    let admin_url = start_local()?;
    Ok(PostgresServer {
        origin: format!("{admin_url} (started by testkit)"),
        admin_url,
        psql,
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

fn start_local() -> Result<String, TestkitError> {
    let dirs = postgres_bin_dirs();
    let missing = |what: &str| TestkitError::NotInstalled {
        server: "Postgres",
        what: what.into(),
        package: "postgresql",
        variable: "ZQ_TEST_DATABASE_URL",
    };
    let initdb = find_program("initdb", &dirs).ok_or_else(|| missing("initdb"))?;
    let pg_ctl = find_program("pg_ctl", &dirs).ok_or_else(|| missing("pg_ctl"))?;
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
    let data = dir.join("data");
    let log = dir.join("server.log");
    run(
        &mut as_postgres(
            as_root,
            &initdb,
            &[
                "-D",
                path_str(&data),
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
    let stop = format!(
        "{}{} stop -m immediate -D {} >/dev/null 2>&1; rm -rf {}",
        if as_root {
            "runuser -u postgres -- "
        } else {
            ""
        },
        shell_quote(path_str(&pg_ctl)),
        shell_quote(path_str(&data)),
        shell_quote(path_str(&dir))
    );
    let stop_in_hook = stop.clone();
    on_exit(
        move || {
            let _ = Command::new("sh").args(["-c", &stop_in_hook]).status();
        },
        &stop,
    );

    // The port may be taken between finding it and binding it: try a few.
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port()?;
        // Tests need no durability; fsync off makes them several times faster.
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=400",
            path_str(&dir)
        );
        let started = run(
            &mut as_postgres(
                as_root,
                &pg_ctl,
                &[
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    path_str(&data),
                    "-l",
                    path_str(&log),
                    "-o",
                    &options,
                ],
            ),
            "pg_ctl start",
        );
        match started {
            Ok(_) => return Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres")),
            Err(error) => last_error = format!("{error}\nserver log:\n{}", log_tail(&log)),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(failed(last_error))
}

fn as_postgres(as_root: bool, program: &PathBuf, args: &[&str]) -> Command {
    if as_root {
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
fn redact(url: &str) -> String {
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
