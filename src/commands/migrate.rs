//! `zingqueue migrate`: create or update the event store's schema.

use anyhow::Context;

use crate::cli::GlobalArgs;

pub async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let location = super::store_location(global)?;
    // Opening a store runs its embedded migrations (under a lock on Postgres).
    let store = event_store::open(location.url())
        .await
        .with_context(|| format!("opening the event store at {}", location.display_url()))?;
    let head = store.head().await?;
    println!(
        "event store at {} is up to date (log head at position {head})",
        location.display_url()
    );
    Ok(())
}
