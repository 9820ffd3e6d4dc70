//! `zingqueue run api`: the HTTP API on its own. It needs only the event store: commands are
//! appends, and the relay (another process) publishes them. Its `/metrics` also carries what
//! the monitor reads from the database (lags, dead letters, the funnel).

use anyhow::Context;
use booking_api::ApiState;

use crate::cli::GlobalArgs;

pub async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    // Only the embedded `up` generates an admin token; a component on its own needs one given.
    let (admin, _) = super::admin_token::resolve(global.admin_token.as_deref(), None)?;
    let location = super::store_location(global)?;
    let store = super::open_store(global, &location, "api").await?;
    let listener = tokio::net::TcpListener::bind(global.listen)
        .await
        .with_context(|| format!("listening on {}", global.listen))?;
    println!(
        "api: http://{} on {}",
        listener.local_addr()?,
        location.display_url()
    );
    let read_models = super::open_read_models(global, &location, "api").await?;
    // The API serves /metrics for the whole system: the monitor reads lags, dead letters and
    // the funnel from the database, whichever processes run the components.
    let shutdown = futures::FutureExt::shared(Box::pin(super::interrupted()));
    let (looks, dashboard) = tokio::sync::watch::channel(None);
    let mut monitor = booking_api::monitor::Monitor::new(store.clone(), Some(read_models.clone()))
        .publishing_to(looks);
    if let Some(brokers) = global
        .kafka_brokers
        .as_deref()
        .filter(|brokers| !brokers.trim().is_empty())
    {
        monitor = monitor.with_kafka(super::kafka_watch(brokers));
    }
    let monitor = tokio::spawn(monitor.run(shutdown.clone()));
    booking_api::serve(
        listener,
        ApiState::new(store.clone(), admin)
            .with_read_models(read_models)
            .with_dashboard(dashboard),
        shutdown,
    )
    .await
    .context("serving the API")?;
    monitor.abort();
    // The requests in flight have finished; write what they queued before exiting.
    store.close().await;
    Ok(())
}
