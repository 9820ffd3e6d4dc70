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

    #[error("testkit: {0}")]
    Io(#[from] std::io::Error),
}
