//! One file per subcommand.

pub mod admin_token;
pub mod api;
pub mod dev_broker;
pub mod dlq;
pub mod migrate;
pub mod relay;
pub mod replay;
pub mod services;
pub mod up;

use anyhow::Context;
use infra::config::StoreLocation;

use crate::cli::GlobalArgs;

/// Open the event store of a long-running component, waiting while its database is away (the
/// component is not ready meanwhile, see `infra::resilience`): a process started before its
/// database comes up when the database does. A configuration error (a URL of no known kind, a
/// refused login, a schema newer than this binary) stops it with the message.
pub async fn open_store(
    location: &StoreLocation,
    component: &str,
) -> anyhow::Result<std::sync::Arc<dyn event_store::EventStore>> {
    let what = format!("opening the event store at {}", location.display_url());
    infra::resilience::until_available(component, &what, interrupted(), || {
        event_store::open(location.url())
    })
    .await
    .with_context(|| what.clone())?
    .ok_or_else(|| anyhow::anyhow!("interrupted while {what}"))
}

/// Open the read models, waiting while their database is away (as [`open_store`]).
pub async fn open_read_models(
    location: &StoreLocation,
    component: &str,
) -> anyhow::Result<projections::ReadModelDb> {
    let what = format!("opening the read models at {}", location.display_url());
    infra::resilience::until_available(component, &what, interrupted(), || {
        projections::ReadModelDb::open(location.url())
    })
    .await
    .with_context(|| what.clone())?
    .ok_or_else(|| anyhow::anyhow!("interrupted while {what}"))
}

/// Where the event store is, by the shared configuration.
pub fn store_location(global: &GlobalArgs) -> anyhow::Result<StoreLocation> {
    StoreLocation::resolve(global.database_url.as_deref(), &global.data_dir)
        .context("resolving where the event store lives")
}

/// The Kafka to publish to: the configured brokers (with the admin API), or, when none are
/// configured and `embedded_allowed`, a broker in this process. Returns the bootstrap servers and
/// the topic admin (which owns the embedded broker, keeping it alive).
pub fn kafka(
    global: &GlobalArgs,
    embedded_allowed: bool,
) -> anyhow::Result<(String, Box<dyn infra::kafka::TopicAdmin>)> {
    match global
        .kafka_brokers
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    {
        Some(brokers) => Ok((
            brokers.to_string(),
            Box::new(infra::kafka::KafkaTopicAdmin::new(brokers)?),
        )),
        None if embedded_allowed => {
            let broker = infra::embedded_broker::EmbeddedBroker::start(1)
                .context("starting the in-process Kafka-protocol broker")?;
            Ok((broker.bootstrap_servers().to_string(), Box::new(broker)))
        }
        None => anyhow::bail!(
            "ZQ_KAFKA_BROKERS (--kafka-brokers) is required to run a component on its own; \
             `zingqueue dev-broker` starts a broker for development, and `zingqueue up` runs \
             everything with one in-process"
        ),
    }
}

/// Resolves when the process is asked to stop (Ctrl-C / SIGINT).
pub async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        // Without a signal handler there is nothing to wait for: run until killed.
        std::future::pending::<()>().await;
    }
}

/// Run the relay from `store` to `brokers` until `shutdown` resolves.
pub async fn run_relay(
    global: &GlobalArgs,
    store: std::sync::Arc<dyn event_store::EventStore>,
    brokers: String,
    admin: &dyn infra::kafka::TopicAdmin,
    follow: Option<infra::relay::FollowGroups>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = infra::relay::RelayConfig {
        partitions: global.partitions,
        follow,
        ..infra::relay::RelayConfig::new(brokers)
    };
    infra::relay::Relay::new(store, config)
        .run(admin, shutdown)
        .await?;
    Ok(())
}

/// The consumer groups the monitor watches on `brokers`: every service's, on the booking topic.
pub fn kafka_watch(brokers: &str) -> booking_api::monitor::KafkaWatch {
    booking_api::monitor::KafkaWatch {
        brokers: brokers.to_string(),
        topic: infra::kafka::BOOKING_EVENTS_TOPIC.to_string(),
        groups: [seat_lock::GROUP, payment::GROUP, notifier::GROUP]
            .map(str::to_string)
            .to_vec(),
    }
}

/// Serve GET /metrics, /healthz and /readyz on `global.metrics_listen` for a component run on its
/// own, until the process ends; prints `metrics: http://ADDRESS/metrics`.
pub async fn serve_metrics(global: &GlobalArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(global.metrics_listen)
        .await
        .with_context(|| format!("listening for /metrics on {}", global.metrics_listen))?;
    println!("metrics: http://{}/metrics", listener.local_addr()?);
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(booking_api::observability::metrics),
        )
        .route("/healthz", axum::routing::get(booking_api::health::healthz))
        .route(
            "/readyz",
            axum::routing::get(booking_api::health::components_readyz),
        );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "serving /metrics stopped");
        }
    });
    Ok(())
}
