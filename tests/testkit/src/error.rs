/// Why a server could not be had. The message says what to install or set.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error(
        "testkit: {server} is not installed ({what} not found). Install it with \
         `scripts/install-deps` (Debian package `{package}`), or point the tests at a running \
         server with {variable}."
    )]
    NotInstalled {
        server: &'static str,
        what: String,
        package: &'static str,
        variable: &'static str,
    },

    #[error("testkit: {server} is not installed. Install it with {install}.")]
    NotBuilt {
        server: &'static str,
        install: &'static str,
    },

    #[error("testkit: {server} did not start: {reason}")]
    StartFailed {
        server: &'static str,
        reason: String,
    },

    #[error("testkit: {server} at {address} is not usable: {reason}")]
    Unusable {
        server: &'static str,
        address: String,
        reason: String,
    },

    /// A server a test stops and restarts cannot be one named by `ZQ_TEST_*_URL` or a container:
    /// testkit has to start it, so the message names only the package.
    #[error(
        "testkit: {server} is not installed ({what} not found). Install it with \
         `scripts/install-deps` (Debian package `{package}`); a server of a test's own is always \
         started by testkit."
    )]
    OwnNotInstalled {
        server: &'static str,
        what: String,
        package: &'static str,
    },

    #[error("testkit: could not {action} {server}: {reason}")]
    Control {
        server: &'static str,
        action: &'static str,
        reason: String,
    },

    #[error("testkit: {0}")]
    Io(#[from] std::io::Error),
}

impl TestkitError {
    /// `map_err` for a start that failed with a reason.
    pub(crate) fn start_failed(server: &'static str) -> impl FnOnce(String) -> Self {
        move |reason| Self::StartFailed { server, reason }
    }

    pub(crate) fn control(server: &'static str, action: &'static str, reason: String) -> Self {
        Self::Control {
            server,
            action,
            reason,
        }
    }

    /// The error for a server of a test's own, whose message must not suggest `ZQ_TEST_*_URL`.
    pub(crate) fn for_own_server(self) -> Self {
        match self {
            Self::NotInstalled {
                server,
                what,
                package,
                ..
            } => Self::OwnNotInstalled {
                server,
                what,
                package,
            },
            other => other,
        }
    }
}
