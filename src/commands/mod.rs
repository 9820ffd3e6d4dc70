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

/// Run a start-up step that needs a server (opening the store, connecting to Redis, creating
/// the topics), retrying while the server is away (the component is not ready meanwhile, see
/// `infra::resilience`) for at most `--wait-for-servers` seconds: a process started just before
/// its database comes up when the database does, and one pointed at a server that never answers
/// gives up with the last error. A configuration error stops it at once with its message.
pub async fn when_available<T, E, F, Fut>(
    global: &GlobalArgs,
    component: &str,
    what: &str,
    attempt: F,
) -> anyhow::Result<T>
where
    E: infra::resilience::Transience + std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let wait = std::time::Duration::from_secs(global.wait_for_servers);
    let gave_up = std::cell::Cell::new(false);
    let stop = async {
        tokio::select! {
            () = interrupted() => {}
            () = tokio::time::sleep(wait) => gave_up.set(true),
        }
    };
    let outcome = infra::resilience::until_available(component, what, stop, attempt)
        .await
        .with_context(|| what.to_string())?;
    match outcome {
        Some(value) => Ok(value),
        None if gave_up.get() => {
            let last = infra::resilience::Readiness::global()
                .not_ready()
                .into_iter()
                .find(|(name, ..)| name == component)
                .map_or_else(String::new, |(_, reason, _)| format!(": {reason}"));
            anyhow::bail!(
                "{what}: no answer within {} s (--wait-for-servers / ZQ_WAIT_FOR_SERVERS){last}",
                wait.as_secs()
            )
        }
        None => anyhow::bail!("interrupted while {what}"),
    }
}

/// Open the event store of a long-running component (see [`when_available`]).
pub async fn open_store(
    global: &GlobalArgs,
    location: &StoreLocation,
    component: &str,
) -> anyhow::Result<std::sync::Arc<dyn event_store::EventStore>> {
    let what = format!("opening the event store at {}", location.display_url());
    when_available(global, component, &what, || {
        event_store::open(location.url())
    })
    .await
}

/// Open the read models (see [`when_available`]).
pub async fn open_read_models(
    global: &GlobalArgs,
    location: &StoreLocation,
    component: &str,
) -> anyhow::Result<projections::ReadModelDb> {
    let what = format!("opening the read models at {}", location.display_url());
    when_available(global, component, &what, || {
        projections::ReadModelDb::open(location.url())
    })
    .await
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
