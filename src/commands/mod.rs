//! One file per subcommand.

pub mod migrate;
pub mod up;

use anyhow::Context;
use infra::config::StoreLocation;

use crate::cli::GlobalArgs;

/// Where the event store is, by the shared configuration.
pub fn store_location(global: &GlobalArgs) -> anyhow::Result<StoreLocation> {
    StoreLocation::resolve(global.database_url.as_deref(), &global.data_dir)
        .context("resolving where the event store lives")
}
