//! `zingqueue run api`: the HTTP API on its own. It needs only the event store: commands are
//! appends, and the relay (another process) publishes them.

use anyhow::Context;
use booking_api::ApiState;

use crate::cli::GlobalArgs;

pub async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    // Only the embedded `up` generates an admin token; a component on its own needs one given.
    let (admin, _) = super::admin_token::resolve(global.admin_token.as_deref(), None)?;
    let location = super::store_location(global)?;
    let store = event_store::open(location.url())
        .await
        .with_context(|| format!("opening the event store at {}", location.display_url()))?;
    let listener = tokio::net::TcpListener::bind(global.listen)
        .await
        .with_context(|| format!("listening on {}", global.listen))?;
    println!(
        "api: http://{} on {}",
        listener.local_addr()?,
        location.display_url()
    );
    booking_api::serve(
        listener,
        ApiState::new(store.clone(), admin).with_read_models(
            projections::ReadModelDb::open(location.url())
                .await
                .context("opening the read models")?,
        ),
        super::interrupted(),
    )
    .await
    .context("serving the API")?;
    // The requests in flight have finished; write what they queued before exiting.
    store.close().await;
    Ok(())
}
