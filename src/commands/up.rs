//! `zingqueue up`: everything in one process.
//!
//! Today "everything" is the event store (the embedded SQLite store in the data folder unless
//! `ZQ_DATABASE_URL` says otherwise), a Kafka-protocol broker (in-process unless
//! `ZQ_KAFKA_BROKERS` names one) and the relay between them. The booking API and the consumers
//! join as they are built.

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
    let (brokers, admin) = super::kafka(global, true)?;
    let mode = match (&location, global.kafka_brokers.is_some()) {
        (StoreLocation::Embedded { .. }, false) => "embedded (SQLite, in-process broker)",
        _ => "configured (ZQ_DATABASE_URL / ZQ_KAFKA_BROKERS)",
    };
    println!("ZingQueue is up: {mode}");
    println!("  event store:   {}", location.display_url());
    println!("  log head:      position {head}");
    println!("  kafka brokers: {brokers}");
    println!(
        "  relay:         publishing to zq.booking-events ({} partitions)",
        global.partitions
    );
    println!("  not yet built: booking API, seat-lock, payment, notifier, projections");
    info!(store = %location.display_url(), %head, %brokers, "up");
    if args.once {
        store.close().await;
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    super::relay_until_interrupted(global, store, brokers, admin.as_ref()).await?;
    println!("ZingQueue stopped.");
    Ok(())
}
