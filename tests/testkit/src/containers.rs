//! Servers from testcontainers, where a Docker engine answers and `ZQ_TEST_CONTAINERS=1`.
//!
//! Our own machines have no Docker engine; this is for contributors who do. It is behind the
//! `containers` feature so that everyone else does not compile a Docker client. Asking for
//! containers (`ZQ_TEST_CONTAINERS=1`) where no engine answers fails the tests loudly rather than
//! quietly falling back to other servers: the variable says which servers the run must use.

#[cfg(not(feature = "containers"))]
use crate::error::TestkitError;

fn wanted() -> bool {
    std::env::var("ZQ_TEST_CONTAINERS").is_ok_and(|value| value == "1")
}

#[cfg(not(feature = "containers"))]
fn unavailable() -> TestkitError {
    TestkitError::StartFailed {
        server: "testcontainers",
        reason: "ZQ_TEST_CONTAINERS=1, but testkit was built without its `containers` feature: \
                 run the tests with `--features testkit/containers`"
            .into(),
    }
}

/// A Postgres admin URL from a container, when containers are asked for.
#[cfg(not(feature = "containers"))]
pub(crate) fn postgres() -> Result<Option<String>, TestkitError> {
    if wanted() {
        return Err(unavailable());
    }
    Ok(None)
}

/// A Redis base URL from a container, when containers are asked for.
#[cfg(not(feature = "containers"))]
pub(crate) fn redis() -> Result<Option<String>, TestkitError> {
    if wanted() {
        return Err(unavailable());
    }
    Ok(None)
}

#[cfg(feature = "containers")]
mod docker {
    use std::sync::Mutex;

    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::SyncRunner;
    use testcontainers::{Container, GenericImage, ImageExt};

    use crate::error::TestkitError;

    /// Containers live as long as the test binary; dropping one stops it, which the exit hook
    /// does.
    static CONTAINERS: Mutex<Vec<Container<GenericImage>>> = Mutex::new(Vec::new());

    fn keep(container: Container<GenericImage>) {
        let mut containers = CONTAINERS.lock().unwrap_or_else(|p| p.into_inner());
        if containers.is_empty() {
            crate::process::on_exit(
                || {
                    let mut containers = CONTAINERS.lock().unwrap_or_else(|p| p.into_inner());
                    containers.clear();
                },
                "true",
            );
        }
        containers.push(container);
    }

    fn failed(server: &'static str, error: impl std::fmt::Display) -> TestkitError {
        TestkitError::StartFailed {
            server,
            reason: format!("testcontainers (is a Docker engine running?): {error}"),
        }
    }

    pub(crate) fn postgres() -> Result<Option<String>, TestkitError> {
        if !super::wanted() {
            return Ok(None);
        }
        let container = GenericImage::new("postgres", "16")
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
            .start()
            .map_err(|error| failed("Postgres", error))?;
        let port = container
            .get_host_port_ipv4(5432.tcp())
            .map_err(|error| failed("Postgres", error))?;
        keep(container);
        Ok(Some(format!(
            "postgres://postgres@127.0.0.1:{port}/postgres"
        )))
    }

    pub(crate) fn redis() -> Result<Option<String>, TestkitError> {
        if !super::wanted() {
            return Ok(None);
        }
        let container = GenericImage::new("redis", "7")
            .with_exposed_port(6379.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .start()
            .map_err(|error| failed("Redis", error))?;
        let port = container
            .get_host_port_ipv4(6379.tcp())
            .map_err(|error| failed("Redis", error))?;
        keep(container);
        Ok(Some(format!("redis://127.0.0.1:{port}")))
    }
}

#[cfg(feature = "containers")]
pub(crate) use docker::{postgres, redis};
