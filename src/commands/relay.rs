//! `zingqueue run relay`: the relay on its own, against the configured Kafka.

use crate::cli::GlobalArgs;

pub async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let (brokers, admin) = super::kafka(global, false)?;
    let location = super::store_location(global)?;
    let store = super::open_store(global, &location, infra::relay::COMPONENT).await?;
    println!(
        "relay: {} → {brokers} ({} partitions)",
        location.display_url(),
        global.partitions
    );
    super::serve_metrics(global).await?;
    super::run_relay(
        global,
        store.clone(),
        brokers,
        admin.as_ref(),
        None,
        super::interrupted(),
    )
    .await?;
    // Refuse new appends and finish the queued ones before the runtime goes away.
    store.close().await;
    Ok(())
}
