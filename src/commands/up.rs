//! `zingqueue up`: everything in one process.
//!
//! The event store (the embedded SQLite store in the data folder unless `ZQ_DATABASE_URL` says
//! otherwise), a Kafka-protocol broker (in-process unless `ZQ_KAFKA_BROKERS` names one), the
//! relay between them, the HTTP API, and the three consumer services: seat-lock (holds in Redis
//! when `ZQ_REDIS_URL` is set, else in process), payment (the simulator) and the notifier (SMTP
//! when `ZQ_SMTP_URL` is set, else `.eml` files in `<data-dir>/mail/`).
//!
//! With the in-process broker, the relay follows the groups' watermarks: it republishes on start
//! from the lowest one (the broker starts empty) and stays at most [`MAX_AHEAD`] records ahead of
//! the slowest group (the broker silently drops a partition's oldest records beyond ~5 MiB).
//!
//! Shutdown on Ctrl-C: the API stops accepting and finishes the requests in flight, the relay
//! and the services stop (committing only finished work), then the store refuses new appends and
//! writes the queued ones.

use anyhow::Context;
use booking_api::ApiState;
use event_store::Position;
use futures::FutureExt;
use infra::config::StoreLocation;
use infra::consumer::{Watermarks, watermark_checkpoint};
use infra::relay::FollowGroups;
use serde_json::json;
use tokio::sync::watch;
use tracing::info;

use super::services;
use crate::cli::{GlobalArgs, UpArgs};

/// Records the relay may be ahead of the slowest group with the in-process broker: about 2 MiB
/// of a hot show's partition at ~1 KiB per record, well below the ~5 MiB the broker keeps.
pub const MAX_AHEAD: u64 = 2_000;

pub async fn run(global: &GlobalArgs, args: UpArgs) -> anyhow::Result<()> {
    let location = super::store_location(global)?;
    let embedded = matches!(location, StoreLocation::Embedded { .. });
    let (admin, admin_token_file) = super::admin_token::resolve(
        global.admin_token.as_deref(),
        embedded.then_some(global.data_dir.as_path()),
    )?;
    let store = super::open_store(global, &location, "up").await?;
    let head = store.head().await?;
    let in_process_broker = global
        .kafka_brokers
        .as_deref()
        .is_none_or(|brokers| brokers.trim().is_empty());
    let (brokers, topic_admin) = super::kafka(global, true)?;
    // Every topic exists before anything is announced: a client producing to a missing topic
    // would have the broker create it with its own partition count.
    // Waits while the broker is away; a topic with another partition count stops `up`.
    super::when_available(global, "up", "creating the topics", || {
        infra::consumer::ensure_topics(
            topic_admin.as_ref(),
            infra::kafka::BOOKING_EVENTS_TOPIC,
            global.partitions,
        )
    })
    .await?;
    let listener = tokio::net::TcpListener::bind(global.listen)
        .await
        .with_context(|| format!("listening on {}", global.listen))?;
    let api = format!("http://{}", listener.local_addr()?);

    // With the in-process broker the groups' watermarks steer the relay; they must be known
    // before the relay starts.
    let watermarks = in_process_broker.then(Watermarks::default);
    if let Some(marks) = &watermarks {
        for group in [seat_lock::GROUP, payment::GROUP, notifier::GROUP] {
            let saved = store.checkpoint(&watermark_checkpoint(group)).await?;
            marks.register(group, saved.unwrap_or(Position::START));
        }
    }
    let holds = services::hold_store(global).await?;
    let seat_lock =
        services::seat_lock(global, store.clone(), holds, &brokers, watermarks.as_ref());
    let payment = services::payment(
        global,
        store.clone(),
        services::payment_gateway(global).await?,
        &brokers,
        watermarks.as_ref(),
    );
    let (notifier, mail_dir) =
        services::notifier(global, store.clone(), &brokers, watermarks.as_ref())?;
    let read_models = super::open_read_models(global, &location, "up").await?;
    // The projector runs on a thread of its own (see projections::own_thread: it keeps the
    // read models within milliseconds of the log while the API takes a burst).
    let projector = projections::ProjectorThread::start(location.url(), store.head_hint())
        .await
        .context("starting the projector")?;
    services::export_projector_stats(projector.stats());

    // Written before anything is printed, so that whoever reads the printout finds it.
    if embedded {
        let endpoints = json!({
            "api": api,
            "dashboard": format!("{api}/dashboard"),
            "metrics": format!("{api}/metrics"),
            "kafka_brokers": brokers,
            "database_url": location.display_url(),
            "mail_dir": mail_dir,
            "admin_token_file": admin_token_file,
        });
        let path = global.data_dir.join("endpoints.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&endpoints)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mode = match (embedded, in_process_broker) {
        (true, true) => "embedded (SQLite, in-process broker)",
        _ => "configured (ZQ_DATABASE_URL / ZQ_KAFKA_BROKERS)",
    };
    let redis = global
        .services
        .redis_url
        .as_deref()
        .filter(|url| !url.trim().is_empty());
    println!("ZingQueue is up: {mode}");
    println!("  api:           {api}");
    println!("  event store:   {}", location.display_url());
    println!("  log head:      position {head}");
    println!("  kafka brokers: {brokers}");
    println!(
        "  relay:         publishing to zq.booking-events ({} partitions)",
        global.partitions
    );
    println!(
        "  seat-lock:     holds {} for {} s",
        redis.map_or("in process".to_string(), |url| format!(
            "in Redis ({})",
            infra::config::redact_password(url)
        )),
        global.services.hold_seconds
    );
    println!(
        "  payment:       simulator ({} ms per call)",
        global.services.payment_latency_ms
    );
    match &mail_dir {
        Some(dir) => println!("  notifier:      mail written to {}", dir.display()),
        None => println!("  notifier:      mail sent over SMTP"),
    }
    if let Some(file) = &admin_token_file {
        println!(
            "  admin token:   {} (kept in {})",
            admin.expose(),
            file.display()
        );
    }
    println!("  projections:   read models in the same database");
    println!("  dashboard:     {api}/dashboard");
    println!("  metrics:       {api}/metrics");
    info!(store = %location.display_url(), %head, %brokers, %api, "up");
    if args.once {
        store.close().await;
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");

    let (stop, stopped) = watch::channel(false);
    let stop_on_failure = stop.clone();
    let signal = tokio::spawn(async move {
        super::interrupted().await;
        let _ = stop.send(true);
    });
    let until_stopped = {
        let stopped = stopped.clone();
        async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|stop| *stop).await;
        }
        .boxed()
        .shared()
    };
    // Replays asked for over the admin API run here, pausing this process's projector to
    // switch; `zingqueue replay` finds this process by its advertisement.
    let replays = projections::Replays::new(store.clone(), read_models.clone())
        .with_live_gate(projector.gate());
    let monitor_read_models = read_models.clone();
    let monitor_brokers = brokers.clone();
    let (looks, dashboard) = watch::channel(None);
    let state = ApiState::new(store.clone(), admin)
        .with_read_models(read_models)
        .with_replays(replays.clone())
        .with_dashboard(dashboard);
    let server = tokio::spawn(booking_api::serve(listener, state, until_stopped.clone()));
    let follow = watermarks.map(|watermarks| FollowGroups {
        watermarks,
        max_ahead: MAX_AHEAD,
    });
    let admin = topic_admin.as_ref();
    // A component that fails for good (a topic with the wrong partition count, a database that
    // refuses us) stops everything: a half-running ZingQueue would accept bookings it never
    // finishes.
    let components = async {
        tokio::try_join!(
            super::run_relay(
                global,
                store.clone(),
                brokers,
                admin,
                follow,
                until_stopped.clone()
            ),
            seat_lock.run(admin, until_stopped.clone()),
            payment.run(admin, until_stopped.clone()),
            notifier.run(admin, until_stopped.clone()),
            async {
                projector
                    .run_until(until_stopped.clone())
                    .await
                    .context("projections")
            },
            async {
                replays.advertise(&api, until_stopped.clone()).await;
                Ok(())
            },
            async {
                booking_api::monitor::Monitor::new(store.clone(), Some(monitor_read_models))
                    .with_kafka(super::kafka_watch(&monitor_brokers))
                    .publishing_to(looks)
                    .run(until_stopped.clone())
                    .await;
                Ok(())
            },
        )
    };
    let outcome = components.await;
    if outcome.is_err() {
        let _ = stop_on_failure.send(true);
    }
    server.await?.context("serving the API")?;
    outcome?;
    signal.abort();
    // Refuse new appends and finish the queued ones before the runtime goes away.
    store.close().await;
    println!("ZingQueue stopped.");
    Ok(())
}
