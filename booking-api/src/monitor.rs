//! The monitor: once a second, what the whole system is doing, read from the database (so
//! that it covers components running in other processes too), set into the gauges and counters
//! `GET /metrics` renders:
//! - `zq_relay_lag_positions`, `zq_relay_lag_seconds`: the log not yet published to Kafka;
//! - `zq_projection_lag_positions{projection}`, `zq_projection_lag_seconds{projection}`: the log
//!   not yet in the read models (store head minus checkpoint; seconds: the age of the oldest
//!   event waiting, 0 when none);
//! - `zq_dlq_depth{group,cause}`: dead letters not redriven;
//! - `zq_booking_funnel_total{stage}`: bookings that reached each stage, counted from the log
//!   (followed incrementally from position 0).
//!
//! - with the broker's address: consumer lag per group, topic and partition under
//!   kafka-lag-exporter's names (`kafka_consumergroup_group_lag`, `…_lag_seconds`,
//!   `…_group_offset`, `…_group_max_lag`, `…_group_sum_lag`, `kafka_partition_latest_offset`,
//!   `kafka_partition_earliest_offset`, with `cluster_name="zingqueue"`), and each group's
//!   Burrow-style status as `zq_consumer_group_status{group,status}` (1 for the current one),
//!   STOP meaning no member has sent a heartbeat (`zq_consumer_members`) for
//!   [`HEARTBEAT_FRESH`]; `zq_lag_probe_up` is 0 while the broker does not answer. See
//!   `infra::consumer::lag`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::event::event_types;
use event_store::{DeadLetterStatus, EventStore, MemberCounters, Position, StoreError};
use infra::consumer::lag::{GroupStatus, LagProbe, LagTracker, PartitionLag, group_status};
use metrics::{counter, gauge};
use serde::Serialize;
use tokio::sync::watch;
use tracing::warn;

/// How often the monitor looks.
pub const EVERY: Duration = Duration::from_secs(1);

/// A group whose members have all been silent this long has no live consumer (they report
/// every second).
pub const HEARTBEAT_FRESH: Duration = Duration::from_secs(5);

/// The `cluster_name` label of the Kafka lag series.
const CLUSTER: &str = "zingqueue";

/// The consumer groups watched, and their topic.
pub struct KafkaWatch {
    pub brokers: String,
    pub topic: String,
    pub groups: Vec<String>,
}

/// Events per read while following the log for the funnel.
const FUNNEL_BATCH: usize = 5_000;
/// Reads per look (a long log is counted over several looks).
const FUNNEL_BATCHES_PER_LOOK: usize = 20;

/// What the dashboard shows: one look at the whole system.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub at: DateTime<Utc>,
    pub log_head: u64,
    pub relay: Lag,
    pub projection: Option<Lag>,
    /// Worst status first, then most lag.
    pub groups: Vec<GroupView>,
    pub dead_letters: Vec<DlqDepth>,
    pub funnel: BTreeMap<&'static str, u64>,
    /// Each service's counters, summed over its members (from their heartbeats).
    pub services: Vec<ServiceCounters>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Lag {
    pub positions: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub group: String,
    pub status: GroupStatus,
    /// A member sent a heartbeat within [`HEARTBEAT_FRESH`].
    pub alive: bool,
    pub sum_lag: i64,
    pub max_lag_seconds: f64,
    pub partitions: Vec<PartitionLag>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DlqDepth {
    pub group: String,
    pub cause: String,
    pub depth: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceCounters {
    pub group: String,
    pub processed: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

/// One group's lag series and status.
fn export_group(group: &str, lags: &[PartitionLag], status: GroupStatus) {
    for lag in lags {
        let labels = [
            ("cluster_name", CLUSTER.to_string()),
            ("group", group.to_string()),
            ("topic", lag.topic.clone()),
            ("partition", lag.partition.to_string()),
        ];
        if let Some(committed) = lag.committed {
            gauge!("kafka_consumergroup_group_offset", &labels).set(committed as f64);
        }
        gauge!("kafka_consumergroup_group_lag", &labels).set(lag.lag as f64);
        gauge!("kafka_consumergroup_group_lag_seconds", &labels).set(lag.lag_seconds);
        let partition = [
            ("cluster_name", CLUSTER.to_string()),
            ("topic", lag.topic.clone()),
            ("partition", lag.partition.to_string()),
        ];
        gauge!("kafka_partition_latest_offset", &partition).set(lag.latest as f64);
        gauge!("kafka_partition_earliest_offset", &partition).set(lag.earliest as f64);
    }
    let group_labels = [
        ("cluster_name", CLUSTER.to_string()),
        ("group", group.to_string()),
    ];
    let max = |value: fn(&PartitionLag) -> f64| lags.iter().map(value).fold(0.0, f64::max);
    gauge!("kafka_consumergroup_group_max_lag", &group_labels).set(max(|l| l.lag as f64));
    gauge!("kafka_consumergroup_group_max_lag_seconds", &group_labels).set(max(|l| l.lag_seconds));
    gauge!("kafka_consumergroup_group_sum_lag", &group_labels)
        .set(lags.iter().map(|l| l.lag as f64).sum::<f64>());
    for candidate in GroupStatus::ALL {
        gauge!("zq_consumer_group_status", "group" => group.to_string(), "status" => candidate.as_str())
            .set(if candidate == status { 1.0 } else { 0.0 });
    }
}

/// The funnel's stages and the event type that marks each.
const FUNNEL: &[(&str, &str)] = &[
    ("requested", event_types::BOOKING_REQUESTED),
    ("held", event_types::BOOKING_SEATS_HELD),
    ("confirmed", event_types::BOOKING_CONFIRMED),
    ("rejected", event_types::BOOKING_REJECTED),
    ("expired", event_types::BOOKING_HOLD_EXPIRED),
    ("cancelled", event_types::BOOKING_CANCELLED),
    ("failed", event_types::BOOKING_FAILED),
    ("failed", event_types::BOOKING_ABANDONED),
    ("refunded", event_types::BOOKING_REFUNDED),
];

pub struct Monitor {
    store: Arc<dyn EventStore>,
    read_models: Option<projections::ReadModelDb>,
    /// The funnel so far, and the log position it has counted through.
    funnel: BTreeMap<&'static str, u64>,
    counted_through: Position,
    /// Dead-letter series set before, so that one that empties goes back to 0.
    dlq_series: BTreeSet<(String, String)>,
    kafka: Option<KafkaMonitor>,
    /// Where each look is published for the dashboard.
    published: Option<watch::Sender<Option<Snapshot>>>,
    snapshot: Snapshot,
}

struct KafkaMonitor {
    watch: KafkaWatch,
    /// Its calls block: it moves into a blocking task for each look and back.
    probe: Option<LagProbe>,
    tracker: LagTracker,
}

impl Monitor {
    pub fn new(
        store: Arc<dyn EventStore>,
        read_models: Option<projections::ReadModelDb>,
    ) -> Monitor {
        Monitor {
            store,
            read_models,
            funnel: FUNNEL.iter().map(|(stage, _)| (*stage, 0)).collect(),
            counted_through: Position::START,
            dlq_series: BTreeSet::new(),
            kafka: None,
            published: None,
            snapshot: Snapshot::default(),
        }
    }

    /// Publish each look (the dashboard follows the receiver).
    pub fn publishing_to(mut self, sender: watch::Sender<Option<Snapshot>>) -> Monitor {
        self.published = Some(sender);
        self
    }

    /// Also watch the consumer groups' lag on the broker.
    pub fn with_kafka(mut self, watch: KafkaWatch) -> Monitor {
        self.kafka = Some(KafkaMonitor {
            probe: Some(LagProbe::new(&watch.brokers)),
            watch,
            tracker: LagTracker::default(),
        });
        self
    }

    /// Look once a second until `shutdown` resolves. A failed look is logged and the next one
    /// tried: the monitor never stops the process it watches.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(error) = self.look().await {
                warn!(%error, "the monitor could not read the store; trying again");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }

    /// One look: lags, dead letters and the funnel.
    pub async fn look(&mut self) -> Result<(), StoreError> {
        let head = self.store.head().await?;
        self.snapshot.at = Utc::now();
        self.snapshot.log_head = head.0;
        let relay = self
            .store
            .checkpoint(infra::relay::CHECKPOINT)
            .await?
            .unwrap_or(Position::START);
        self.snapshot.relay = Lag {
            positions: head.0.saturating_sub(relay.0),
            seconds: self.age_of_next(relay, head).await?,
        };
        gauge!("zq_relay_lag_positions").set(self.snapshot.relay.positions as f64);
        gauge!("zq_relay_lag_seconds").set(self.snapshot.relay.seconds);
        if let Some(read_models) = &self.read_models {
            match read_models.checkpoint(projections::READ_MODELS).await {
                Ok(projected) => {
                    let lag = Lag {
                        positions: head.0.saturating_sub(projected.0),
                        seconds: self.age_of_next(projected, head).await?,
                    };
                    let labels = [("projection", projections::READ_MODELS)];
                    gauge!("zq_projection_lag_positions", &labels).set(lag.positions as f64);
                    gauge!("zq_projection_lag_seconds", &labels).set(lag.seconds);
                    self.snapshot.projection = Some(lag);
                }
                Err(error) => {
                    warn!(%error, "the monitor could not read the projection's checkpoint")
                }
            }
        }
        self.dead_letters().await?;
        self.count_funnel(head).await?;
        // Every member's heartbeat and counters: liveness for the lag statuses, and the
        // services' counters.
        let members = self.store.member_counters().await?;
        self.consumer_lag(&members).await?;
        // Every member's counters, wherever it runs, summed per group (a restarted member's
        // old row keeps its totals, so the sums only grow).
        let mut services: BTreeMap<String, ServiceCounters> = BTreeMap::new();
        for member in members {
            let service = services
                .entry(member.group.clone())
                .or_insert_with(|| ServiceCounters {
                    group: member.group.clone(),
                    processed: 0,
                    failed: 0,
                    retried: 0,
                    dead_lettered: 0,
                });
            service.processed += member.processed;
            service.failed += member.failed;
            service.retried += member.retried;
            service.dead_lettered += member.dead_lettered;
        }
        self.snapshot.services = services.into_values().collect();
        if let Some(published) = &self.published {
            published.send_replace(Some(self.snapshot.clone()));
        }
        Ok(())
    }

    /// Lag and status of every watched group (nothing without a broker to watch).
    async fn consumer_lag(&mut self, members: &[MemberCounters]) -> Result<(), StoreError> {
        let Some(kafka) = &mut self.kafka else {
            return Ok(());
        };
        let Some(mut probe) = kafka.probe.take() else {
            return Ok(());
        };
        let (topic, groups) = (kafka.watch.topic.clone(), kafka.watch.groups.clone());
        let sampled = tokio::task::spawn_blocking(move || {
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            let sampled = probe.sample(&topic, &groups, Duration::from_secs(5));
            (probe, sampled)
        })
        .await;
        let samples = match sampled {
            Ok((probe, sampled)) => {
                kafka.probe = Some(probe);
                sampled.map_err(|error| error.to_string())
            }
            Err(error) => {
                // The probe panicked: start a new one next time.
                kafka.probe = Some(LagProbe::new(&kafka.watch.brokers));
                Err(error.to_string())
            }
        };
        let samples = match samples {
            Ok(samples) => {
                gauge!("zq_lag_probe_up").set(1.0);
                samples
            }
            Err(error) => {
                // No figures rather than old ones: the dashboard shows no groups, and
                // `zq_lag_probe_up` says why the lag series stopped.
                warn!(%error, "the monitor could not read the consumer groups' offsets");
                gauge!("zq_lag_probe_up").set(0.0);
                self.snapshot.groups.clear();
                return Ok(());
            }
        };
        let fresh_since = Utc::now()
            - chrono::Duration::from_std(HEARTBEAT_FRESH).unwrap_or(chrono::Duration::zero());
        let now = std::time::Instant::now();
        let mut groups = Vec::new();
        for (group, group_samples) in &samples {
            let alive = members
                .iter()
                .any(|member| member.group == *group && member.heartbeat_at >= fresh_since);
            let lags = kafka
                .tracker
                .observe(group, &kafka.watch.topic, group_samples, alive, now);
            let status = group_status(&lags, alive);
            export_group(group, &lags, status);
            groups.push(GroupView {
                group: group.clone(),
                status,
                alive,
                sum_lag: lags.iter().map(|l| l.lag).sum(),
                max_lag_seconds: lags.iter().map(|l| l.lag_seconds).fold(0.0, f64::max),
                partitions: lags,
            });
        }
        // The worst first: status, then lag.
        groups.sort_by(|a, b| a.status.cmp(&b.status).then(b.sum_lag.cmp(&a.sum_lag)));
        self.snapshot.groups = groups;
        Ok(())
    }

    /// Seconds since the first event after `done` was recorded; 0 when there is none.
    async fn age_of_next(&self, done: Position, head: Position) -> Result<f64, StoreError> {
        if done >= head {
            return Ok(0.0);
        }
        let next = self.store.read_all(done, 1).await?;
        Ok(next.first().map_or(0.0, |event| {
            (Utc::now() - event.recorded_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64()
        }))
    }

    async fn dead_letters(&mut self) -> Result<(), StoreError> {
        let mut depth: BTreeMap<(String, String), u64> = BTreeMap::new();
        for count in self.store.dead_letter_counts().await? {
            if count.status != DeadLetterStatus::Redriven {
                *depth.entry((count.group, count.cause)).or_default() += count.count;
            }
        }
        for series in &self.dlq_series {
            depth.entry(series.clone()).or_default();
        }
        for ((group, cause), letters) in &depth {
            gauge!("zq_dlq_depth", "group" => group.clone(), "cause" => cause.clone())
                .set(*letters as f64);
        }
        self.snapshot.dead_letters = depth
            .iter()
            .map(|((group, cause), letters)| DlqDepth {
                group: group.clone(),
                cause: cause.clone(),
                depth: *letters,
            })
            .collect();
        self.dlq_series = depth.into_keys().collect();
        Ok(())
    }

    async fn count_funnel(&mut self, head: Position) -> Result<(), StoreError> {
        // A long log is counted over several looks, so that the other figures keep coming.
        for _ in 0..FUNNEL_BATCHES_PER_LOOK {
            if self.counted_through >= head {
                break;
            }
            let events = self
                .store
                .read_all(self.counted_through, FUNNEL_BATCH)
                .await?;
            let Some(last) = events.last() else { break };
            self.counted_through = last.position;
            for event in &events {
                if let Some((stage, _)) = FUNNEL.iter().find(|(_, kind)| *kind == event.event_type)
                {
                    *self.funnel.entry(stage).or_default() += 1;
                }
            }
        }
        for (stage, bookings) in &self.funnel {
            counter!("zq_booking_funnel_total", "stage" => *stage).absolute(*bookings);
        }
        self.snapshot.funnel = self.funnel.clone();
        Ok(())
    }
}
