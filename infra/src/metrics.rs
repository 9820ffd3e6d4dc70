//! Prometheus metrics for every ZingQueue process: one recorder per process (the `metrics`
//! facade with `metrics-exporter-prometheus`), rendered in the text format by whoever serves
//! `GET /metrics` (the API's route; `up` serves every component's metrics there).
//!
//! Counters a component already keeps as atomics (the consumer runtime's, the projector's) are
//! not incremented twice: they register a *source*, read when the metrics are rendered, which
//! sets the counters to their current totals.
//!
//! Names: `zq_*` for ours. Histograms have fixed buckets (not summaries), so that they can be
//! summed across processes in PromQL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::consumer::ConsumerStats;

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Source = Box<dyn Fn() + Send + Sync>;

/// The process's recorder and the sources read at each render.
pub struct Metrics {
    handle: PrometheusHandle,
    sources: Mutex<Vec<Source>>,
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// Install the process's recorder (once; later calls return the same). `None` when another
/// recorder was installed first (a test harness): metrics then go there.
pub fn install() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            // Histograms are kept in buffers the exporter drains on upkeep; a render does it
            // too, but a process nobody scrapes must not grow them without end.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("zq-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(Metrics {
                handle,
                sources: Mutex::new(Vec::new()),
            })
        })
        .as_ref()
}

impl Metrics {
    /// Everything recorded, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        for source in self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            source();
        }
        self.handle.render()
    }

    /// Read `source` at each render (it sets counters or gauges from state it keeps).
    pub fn add_source(&self, source: impl Fn() + Send + Sync + 'static) {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(source));
    }
}

/// The consumer groups running in this process, with their counters.
static CONSUMERS: Mutex<Vec<(String, Arc<ConsumerStats>)>> = Mutex::new(Vec::new());

/// A failure a handler retries by itself (the payment service retries a charge inside the
/// booking's own task, out of the consumer runtime's sight): counted into its group's `failed`,
/// and `retried` when it will try again.
pub fn count_handler_failure(group: &str, retried: bool) {
    let consumers = CONSUMERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, stats)) = consumers.iter().find(|(name, _)| name == group) {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        if retried {
            stats.retried.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Export a consumer group's counters (see [`ConsumerStats`]) as `zq_records_*_total{group}`.
pub fn export_consumer_stats(group: &str, stats: Arc<ConsumerStats>) {
    {
        let mut consumers = CONSUMERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match consumers.iter_mut().find(|(name, _)| name == group) {
            // The group runs again in this process: its newest counters are the ones to show
            // (one source per group, or two would set the same series).
            Some(entry) => {
                entry.1 = stats;
                return;
            }
            None => consumers.push((group.to_string(), stats)),
        }
    }
    let Some(metrics) = install() else {
        return;
    };
    let group = group.to_string();
    metrics.add_source(move || {
        let consumers = CONSUMERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((_, stats)) = consumers.iter().find(|(name, _)| *name == group) else {
            return;
        };
        let set = |name: &'static str, value: &AtomicU64| {
            counter!(name, "group" => group.clone()).absolute(value.load(Ordering::Relaxed));
        };
        set("zq_records_processed_total", &stats.processed);
        set("zq_records_skipped_total", &stats.skipped);
        set("zq_records_unknown_type_total", &stats.unknown_types);
        set("zq_records_failed_total", &stats.failed);
        set("zq_records_retried_total", &stats.retried);
        set("zq_records_dead_lettered_total", &stats.dead_lettered);
        set("zq_records_redriven_total", &stats.redriven);
    });
}

fn describe() {
    describe_counter!(
        "zq_records_processed_total",
        Unit::Count,
        "Records a consumer group handled (done or dead-lettered)"
    );
    describe_counter!(
        "zq_records_skipped_total",
        Unit::Count,
        "Records of types a group does not subscribe to"
    );
    describe_counter!(
        "zq_records_unknown_type_total",
        Unit::Count,
        "Records of types this build does not know"
    );
    describe_counter!(
        "zq_records_failed_total",
        Unit::Count,
        "Handler attempts that failed (transient errors, retried, and permanent ones)"
    );
    describe_counter!(
        "zq_records_retried_total",
        Unit::Count,
        "Transient handler failures retried"
    );
    describe_counter!(
        "zq_records_dead_lettered_total",
        Unit::Count,
        "Dead letters a group wrote"
    );
    describe_counter!("zq_records_redriven_total", Unit::Count, "Redrives run");
    describe_histogram!(
        "zq_handler_duration_seconds",
        Unit::Seconds,
        "Time a handler took for one record or batch, per group"
    );
    describe_histogram!(
        "zq_email_unrecorded_seconds",
        Unit::Seconds,
        "Time from the SMTP server accepting an email to its EmailSent being stored (a crash in between sends it again)"
    );
    describe_counter!(
        "zq_http_requests_total",
        Unit::Count,
        "HTTP requests by route template, method and status"
    );
    describe_histogram!(
        "zq_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route template and method"
    );
    describe_gauge!(
        "zq_relay_lag_positions",
        Unit::Count,
        "Log positions stored but not yet published to Kafka"
    );
    describe_gauge!(
        "zq_relay_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event not yet published to Kafka (0 when none)"
    );
    describe_gauge!(
        "zq_projection_lag_positions",
        Unit::Count,
        "Log positions not yet in a projection's read models"
    );
    describe_gauge!(
        "zq_projection_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event not yet in a projection's read models (0 when none)"
    );
    describe_gauge!(
        "zq_lag_probe_up",
        Unit::Count,
        "1 while the monitor reads the consumer groups' offsets from the broker, 0 when it cannot"
    );
    describe_gauge!(
        "zq_dlq_depth",
        Unit::Count,
        "Dead letters not redriven, per group and cause"
    );
    describe_counter!(
        "zq_booking_funnel_total",
        Unit::Count,
        "Bookings that reached each stage of the funnel, from the log"
    );
}
