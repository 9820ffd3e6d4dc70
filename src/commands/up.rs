//! `zingqueue up`: everything in one process.
//!
//! Today "everything" is the event store (the embedded SQLite store in the data folder unless
//! `ZQ_DATABASE_URL` says otherwise), a Kafka-protocol broker (in-process unless
//! `ZQ_KAFKA_BROKERS` names one), the relay between them and the HTTP API (shows and bookings).
//! The consumers join as they are built.
//!
//! Shutdown on Ctrl-C: the API stops accepting and finishes the requests in flight, the relay
//! stops, then the store refuses new appends and writes the queued ones.

use anyhow::Context;
use booking_api::ApiState;
use infra::config::StoreLocation;
use serde_json::json;
use tokio::sync::watch;
use tracing::info;

use crate::cli::{GlobalArgs, UpArgs};

pub async fn run(global: &GlobalArgs, args: UpArgs) -> anyhow::Result<()> {
    let location = super::store_location(global)?;
    let embedded = matches!(location, StoreLocation::Embedded { .. });
    let (admin, admin_token_file) = super::admin_token::resolve(
        global.admin_token.as_deref(),
        embedded.then_some(global.data_dir.as_path()),
    )?;
    let store = event_store::open(location.url())
        .await
        .with_context(|| format!("opening the event store at {}", location.display_url()))?;
    let head = store.head().await?;
    let (brokers, topic_admin) = super::kafka(global, true)?;
    let listener = tokio::net::TcpListener::bind(global.listen)
        .await
        .with_context(|| format!("listening on {}", global.listen))?;
    let api = format!("http://{}", listener.local_addr()?);

    // Written before anything is printed, so that whoever reads the printout finds it.
    if embedded {
        let endpoints = json!({
            "api": api,
            // The dashboard, metrics and mail arrive with the saga and dashboard issues; the
            // fields are here (null) so that the shape of API.md holds from the start.
            "dashboard": null,
            "metrics": null,
            "kafka_brokers": brokers,
            "database_url": location.display_url(),
            "mail_dir": null,
            "admin_token_file": admin_token_file,
        });
        let path = global.data_dir.join("endpoints.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&endpoints)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mode = match (embedded, global.kafka_brokers.is_some()) {
        (true, false) => "embedded (SQLite, in-process broker)",
        _ => "configured (ZQ_DATABASE_URL / ZQ_KAFKA_BROKERS)",
    };
    println!("ZingQueue is up: {mode}");
    println!("  api:           {api}");
    println!("  event store:   {}", location.display_url());
    println!("  log head:      position {head}");
    println!("  kafka brokers: {brokers}");
    println!(
        "  relay:         publishing to zq.booking-events ({} partitions)",
        global.partitions
    );
    if let Some(file) = &admin_token_file {
        println!(
            "  admin token:   {} (kept in {})",
            admin.expose(),
            file.display()
        );
    }
    println!("  not yet built: seat-lock, payment, notifier, projections, dashboard");
    info!(store = %location.display_url(), %head, %brokers, %api, "up");
    if args.once {
        store.close().await;
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");

    let (stop, stopped) = watch::channel(false);
    let signal = tokio::spawn(async move {
        super::interrupted().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let state = ApiState::new(store.clone(), admin);
    let server = tokio::spawn(booking_api::serve(
        listener,
        state,
        until_stopped(stopped.clone()),
    ));
    super::run_relay(
        global,
        store.clone(),
        brokers,
        topic_admin.as_ref(),
        until_stopped(stopped),
    )
    .await?;
    server.await?.context("serving the API")?;
    signal.abort();
    // Refuse new appends and finish the queued ones before the runtime goes away.
    store.close().await;
    println!("ZingQueue stopped.");
    Ok(())
}
