//! `zingqueue up`: everything in one process.
//!
//! At this stage of the project "everything" is the event store: `up` opens it (the embedded
//! SQLite store in the data folder unless `ZQ_DATABASE_URL` says otherwise), says where it is and
//! runs until interrupted. The booking API, relay and consumers join as they are built.

use anyhow::Context;
use infra::config::StoreLocation;
use tracing::info;

use crate::cli::{GlobalArgs, UpArgs};

pub async fn run(global: &GlobalArgs, args: UpArgs) -> anyhow::Result<()> {
    let location = super::store_location(global)?;
    let store = event_store::open(location.url())
        .await
        .with_context(|| format!("opening the event store at {}", location.display_url()))?;
    let head = store.head().await?;
    let mode = match &location {
        StoreLocation::Embedded { .. } => "embedded (SQLite)",
        StoreLocation::Configured(_) => "configured (ZQ_DATABASE_URL)",
    };
    println!("ZingQueue is up: {mode} event store");
    println!("  event store:  {}", location.display_url());
    println!("  log head:     position {head}");
    println!("  not yet built: booking API, relay, seat-lock, payment, notifier, projections");
    info!(store = %location.display_url(), %head, "event store open");
    if args.once {
        store.close().await;
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    // Refuse new appends and finish the queued ones before the runtime goes away.
    store.close().await;
    println!("ZingQueue stopped.");
    Ok(())
}
