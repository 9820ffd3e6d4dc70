//! The consumer services (seat-lock, payment, notifier): how the configuration builds them, and
//! `zingqueue run seat-lock|payment|notifier`, one service in its own process. Several
//! processes of one service share the partitions through their consumer group.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use event_store::EventStore;
use infra::backoff::Backoff;
use infra::consumer::{ConsumerConfig, ConsumerGroup, Mode, Watermarks};
use infra::holds::{HoldStore, MemoryHoldStore, RedisHoldStore};
use infra::kafka::TopicAdmin;
use notifier::NotifierHandler;
use payment::simulator::{PaymentSimulator, SimulatorConfig};
use payment::{PaymentConfig, PaymentHandler};
use seat_lock::{SeatLock, SeatLockConfig};

use crate::cli::{Component, GlobalArgs};

/// How long a hold key outlives its hold in the hold store.
const HOLD_GRACE: Duration = Duration::from_secs(60);

/// One consumer service, ready to run.
pub struct Service {
    pub group: ConsumerGroup,
    /// seat-lock's expiry sweeper runs beside its group.
    pub seat_lock: Option<Arc<SeatLock>>,
}

impl Service {
    /// Run until `shutdown` resolves.
    pub async fn run(
        self,
        admin: &dyn TopicAdmin,
        shutdown: impl std::future::Future<Output = ()> + Clone + Send + 'static,
    ) -> anyhow::Result<()> {
        let sweeper = self
            .seat_lock
            .map(|seat_lock| tokio::spawn(seat_lock::run_sweeper(seat_lock, shutdown.clone())));
        self.group.run(admin, shutdown).await?;
        if let Some(sweeper) = sweeper {
            sweeper.await?;
        }
        Ok(())
    }
}

fn consumer_config(
    global: &GlobalArgs,
    group: &str,
    brokers: &str,
    mode: Mode,
    watermarks: Option<&Watermarks>,
) -> ConsumerConfig {
    ConsumerConfig {
        partitions: global.partitions,
        session_timeout: Duration::from_millis(global.services.session_timeout_ms),
        track_watermark: watermarks.cloned(),
        ..ConsumerConfig::new(group, brokers, mode)
    }
}

/// The hold store: Redis when configured, else in process (embedded default only).
pub async fn hold_store(global: &GlobalArgs) -> anyhow::Result<Arc<dyn HoldStore>> {
    Ok(match &global.services.redis_url {
        Some(url) if !url.trim().is_empty() => {
            // Waits while Redis is away; a server too old for the scripts stops.
            let what = format!(
                "connecting to Redis at {}",
                infra::config::redact_password(url)
            );
            Arc::new(
                super::when_available(global, seat_lock::GROUP, &what, || {
                    RedisHoldStore::connect(url, HOLD_GRACE)
                })
                .await?,
            )
        }
        _ => Arc::new(MemoryHoldStore::new(HOLD_GRACE)),
    })
}

pub fn seat_lock(
    global: &GlobalArgs,
    store: Arc<dyn EventStore>,
    holds: Arc<dyn HoldStore>,
    brokers: &str,
    watermarks: Option<&Watermarks>,
) -> Service {
    let handler = Arc::new(SeatLock::new(
        store.clone(),
        holds,
        SeatLockConfig {
            hold: Duration::from_secs(global.services.hold_seconds),
            ..SeatLockConfig::default()
        },
    ));
    let config = consumer_config(
        global,
        seat_lock::GROUP,
        brokers,
        Mode::InOrder { batch_max: 500 },
        watermarks,
    );
    Service {
        group: ConsumerGroup::new(config, store, handler.clone()),
        seat_lock: Some(handler),
    }
}

/// The payment simulator the configuration describes, its ledger in the event store's database
/// (so that charges and refunds survive a restart and every payment process shares them).
/// Waits while the database is away, as [`super::open_store`] does.
pub async fn payment_gateway(global: &GlobalArgs) -> anyhow::Result<Arc<PaymentSimulator>> {
    let services = &global.services;
    let config = SimulatorConfig {
        latency: Duration::from_millis(services.payment_latency_ms),
        decline_rate: services.payment_decline_rate.clamp(0.0, 1.0),
        transient_rate: services.payment_transient_rate.clamp(0.0, 1.0),
        seed: services.payment_seed,
    };
    let location = super::store_location(global)?;
    let what = format!(
        "opening the payment simulator's ledger at {}",
        location.display_url()
    );
    let simulator = super::when_available(global, payment::GROUP, &what, || {
        PaymentSimulator::open(config.clone(), location.url())
    })
    .await?;
    Ok(Arc::new(simulator))
}

pub fn payment(
    global: &GlobalArgs,
    store: Arc<dyn EventStore>,
    gateway: Arc<PaymentSimulator>,
    brokers: &str,
    watermarks: Option<&Watermarks>,
) -> Service {
    let services = &global.services;
    let handler = Arc::new(PaymentHandler::new(
        store.clone(),
        gateway,
        PaymentConfig {
            retry: Backoff {
                base: Duration::from_millis(services.payment_retry_base_ms),
                max_attempts: services.payment_max_attempts,
                ..PaymentConfig::default().retry
            },
            ..PaymentConfig::default()
        },
    ));
    let config = consumer_config(
        global,
        payment::GROUP,
        brokers,
        Mode::Concurrent {
            max_in_flight: 1_000,
        },
        watermarks,
    );
    Service {
        group: ConsumerGroup::new(config, store, handler),
        seat_lock: None,
    }
}

/// Where mail goes: the SMTP server, or the mail folder (returned, for the printout).
pub fn notifier(
    global: &GlobalArgs,
    store: Arc<dyn EventStore>,
    brokers: &str,
    watermarks: Option<&Watermarks>,
) -> anyhow::Result<(Service, Option<PathBuf>)> {
    let mail_dir = global.data_dir.join("mail");
    let smtp = global
        .services
        .smtp_url
        .as_deref()
        .filter(|url| !url.trim().is_empty());
    let mailer = notifier::mailer::mailer_from_url(smtp, &mail_dir).context("setting up email")?;
    let handler = Arc::new(NotifierHandler::new(store.clone(), Arc::from(mailer)));
    let config = consumer_config(
        global,
        notifier::GROUP,
        brokers,
        Mode::Concurrent { max_in_flight: 200 },
        watermarks,
    );
    Ok((
        Service {
            group: ConsumerGroup::new(config, store, handler),
            seat_lock: None,
        },
        smtp.is_none().then_some(mail_dir),
    ))
}

/// `zingqueue run <component>` for the consumer services (and the API and relay, which have
/// files of their own).
pub async fn run(global: &GlobalArgs, component: Component) -> anyhow::Result<()> {
    let name = match component {
        Component::Api => return super::api::run(global).await,
        Component::Relay => return super::relay::run(global).await,
        Component::SeatLock => seat_lock::GROUP,
        Component::Payment => payment::GROUP,
        Component::Notifier => notifier::GROUP,
        Component::Projections => return run_projections(global).await,
    };
    let (brokers, admin) = super::kafka(global, false)?;
    let location = super::store_location(global)?;
    let store = super::open_store(global, &location, name).await?;
    let service = match component {
        Component::SeatLock => {
            if global
                .services
                .redis_url
                .as_deref()
                .is_none_or(|url| url.trim().is_empty())
            {
                anyhow::bail!(
                    "seat-lock on its own needs ZQ_REDIS_URL: several processes must share their \
                     holds (only `zingqueue up` may keep holds in process)"
                );
            }
            let holds = hold_store(global).await?;
            seat_lock(global, store.clone(), holds, &brokers, None)
        }
        Component::Payment => payment(
            global,
            store.clone(),
            payment_gateway(global).await?,
            &brokers,
            None,
        ),
        _ => notifier(global, store.clone(), &brokers, None)?.0,
    };
    println!(
        "{name}: consuming zq.booking-events on {brokers}, store {}",
        location.display_url()
    );
    super::serve_metrics(global).await?;
    let shutdown = futures::FutureExt::shared(Box::pin(super::interrupted()));
    service.run(admin.as_ref(), shutdown).await?;
    store.close().await;
    Ok(())
}

/// The projector on the store's database: it keeps the read models the API's queries use.
pub async fn projector(
    store: Arc<dyn EventStore>,
    database_url: &str,
) -> anyhow::Result<projections::Projector> {
    let db = projections::ReadModelDb::open(database_url)
        .await
        .context("opening the read models")?;
    Ok(projections::Projector::new(store, db))
}

/// `zingqueue run projections`.
async fn run_projections(global: &GlobalArgs) -> anyhow::Result<()> {
    let location = super::store_location(global)?;
    let store = super::open_store(global, &location, "projections").await?;
    let projector = projector(store.clone(), location.url()).await?;
    println!(
        "projections: keeping the read models on {}",
        location.display_url()
    );
    export_projector_stats(projector.stats());
    super::serve_metrics(global).await?;
    projector.run(super::interrupted()).await?;
    store.close().await;
    Ok(())
}

/// The projector's counters as `zq_projection_*_total{projection}` (read at each render).
pub fn export_projector_stats(stats: std::sync::Arc<projections::runner::ProjectorStats>) {
    let Some(metrics) = infra::metrics::install() else {
        return;
    };
    metrics.add_source(move || {
        use std::sync::atomic::Ordering::Relaxed;
        let labels = [("projection", projections::READ_MODELS)];
        let set = |name: &'static str, value: u64| metrics::counter!(name, &labels).absolute(value);
        set("zq_projection_events_total", stats.applied.load(Relaxed));
        set("zq_projection_batches_total", stats.batches.load(Relaxed));
        set(
            "zq_projection_unknown_types_total",
            stats.unknown_types.load(Relaxed),
        );
        set(
            "zq_projection_undecodable_total",
            stats.undecodable.load(Relaxed),
        );
    });
}
