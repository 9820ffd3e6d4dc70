//! Logging for every ZingQueue process: `tracing` to stderr, filtered by `RUST_LOG` (default
//! `info` for our crates, `warn` for the rest).

use tracing_subscriber::EnvFilter;

/// Per-request logs are at `debug` (a flash sale would drown the log at `info`).
const DEFAULT_FILTER: &str = "warn,zingqueue=info,infra=info,event_store=info,booking_api=info";

/// Install the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
