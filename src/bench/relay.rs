//! `zingqueue bench relay`: how fast the relay moves the log to Kafka, and how long an event takes
//! from its commit to a consumer (store → Kafka latency), on Postgres and on the embedded default
//! (SQLite and the in-process broker), optionally with a share of appends rolling back.
//!
//! Writers append one-event streams at a fixed total rate (open loop, so latency is not hidden by
//! back-off); the relay runs in this process as in `zingqueue up`; a consumer assigned to every
//! partition notes when each record arrives. Latency = arrival − the moment the append returned
//! (its commit). Rolled-back appends are made real by a trigger that fails events of a poison
//! type after their positions were taken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use event_store::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend};
use hdrhistogram::Histogram;
use infra::embedded_broker::EmbeddedBroker;
use infra::kafka::{BOOKING_EVENTS_TOPIC, TopicAdmin};
use infra::relay::{Relay, RelayConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::Connection;
use uuid::Uuid;

use crate::cli::RelayBenchArgs;

const POISON: &str = "bench.poison.v1";
const PARTITIONS: i32 = 12;

pub async fn run(args: RelayBenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let mut reports = Vec::new();
    if let Some(url) = &args.postgres_url {
        reports.extend(backend("postgres", url, &args).await?);
    } else {
        println!("Postgres figures skipped: give --postgres-url (ZQ_BENCH_POSTGRES_URL)");
    }
    let sqlite_url = format!("sqlite://{}/relay-bench.db", scratch.path().display());
    reports.extend(backend("sqlite (embedded)", &sqlite_url, &args).await?);
    println!();
    println!(
        "== zingqueue bench relay: {} events/s offered for {} s, medians of {} runs ==",
        args.rate, args.seconds, args.runs
    );
    for report in reports {
        println!("{report}");
    }
    Ok(())
}

async fn backend(name: &str, url: &str, args: &RelayBenchArgs) -> anyhow::Result<Vec<String>> {
    let store = event_store::open(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    install_poison_trigger(url).await?;
    let broker = Arc::new(EmbeddedBroker::start(1)?);
    broker
        .ensure_topic(BOOKING_EVENTS_TOPIC, PARTITIONS)
        .await?;
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = {
        let store = store.clone();
        let config = RelayConfig {
            partitions: PARTITIONS,
            ..RelayConfig::new(broker.bootstrap_servers())
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            Relay::new(store, config)
                .run(broker.as_ref(), async {
                    let _ = relay_stopped.await;
                })
                .await
        })
    };

    // Warm up (producer and consumer connections, the relay's first batches), unmeasured.
    let warm_up = RelayBenchArgs {
        seconds: 1,
        postgres_url: None,
        ..*args
    };
    measure(&store, broker.bootstrap_servers(), &warm_up, 0).await?;

    let mut lines = Vec::new();
    for rollback_percent in [0, args.rollback_percent] {
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            eprintln!(
                "{name}: {rollback_percent}% rollbacks, run {run}/{}",
                args.runs
            );
            runs.push(measure(&store, broker.bootstrap_servers(), args, rollback_percent).await?);
        }
        runs.sort_by(|a, b| a.p50_ms.total_cmp(&b.p50_ms));
        let median = &runs[runs.len() / 2];
        let p50s: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.p50_ms)).collect();
        lines.push(format!(
            "{name:<18} {rollback_percent:>2}% rollbacks: relayed {:>7.0} events/s, store → Kafka \
             p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms (p50 of runs: {}) (targets: p50 < 10 ms, \
             p99 < 50 ms)",
            median.events_per_second,
            median.p50_ms,
            median.p99_ms,
            median.max_ms,
            p50s.join(", ")
        ));
    }
    let _ = stop_relay.send(());
    relay.await??;
    store.close().await;
    Ok(lines)
}

struct Measurement {
    events_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn measure(
    store: &Arc<dyn EventStore>,
    bootstrap: &str,
    args: &RelayBenchArgs,
    rollback_percent: u8,
) -> anyhow::Result<Measurement> {
    let committed: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let arrivals: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let consumer = start_consumer(bootstrap, arrivals.clone(), done.clone())?;

    // Open loop: one append every `interval`, each in its own task.
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut appends = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        ticker.tick().await;
        sent += 1;
        let poisoned = u64::from(rollback_percent) > 0 && sent % 100 < u64::from(rollback_percent);
        let store = store.clone();
        let committed = committed.clone();
        appends.spawn(async move {
            let event_id = Uuid::now_v7();
            let event = NewEvent::from_json_text(
                event_id,
                if poisoned {
                    POISON
                } else {
                    "bench.appended.v1"
                },
                r#"{"seat":"A-1-1"}"#,
                EventMetadata {
                    partition_key: Some(format!("show-{}", event_id.as_u128() % 1000)),
                    ..EventMetadata::default()
                },
            )?;
            let append = StreamAppend::new(
                format!("bench-{event_id}"),
                ExpectedVersion::NoStream,
                vec![event],
            );
            let result = store.append(append).await;
            match (result, poisoned) {
                (Ok(_), false) => {
                    let mut committed =
                        committed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    committed.insert(event_id, Instant::now());
                    Ok(true)
                }
                (Err(_), true) => Ok(false),
                (Ok(_), true) => anyhow::bail!("a poisoned append committed"),
                (Err(error), false) => Err(error.into()),
            }
        });
    }
    let mut relayed_expected = 0u64;
    while let Some(outcome) = appends.join_next().await {
        if outcome?? {
            relayed_expected += 1;
        }
    }
    // Wait (bounded) until every committed event has arrived.
    let committed = committed
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let wait_until = Instant::now() + Duration::from_secs(60);
    loop {
        let arrived = {
            let arrivals = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            committed
                .keys()
                .filter(|id| arrivals.contains_key(id))
                .count()
        };
        if arrived as u64 >= relayed_expected {
            break;
        }
        anyhow::ensure!(
            Instant::now() < wait_until,
            "only {arrived} of {relayed_expected} events reached Kafka within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))??;
    let arrivals = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut latencies = Histogram::<u64>::new(3)?;
    for (event_id, committed_at) in &committed {
        if let Some(arrived) = arrivals.get(event_id) {
            // An arrival can precede the append's return by a hair; count it as 1 µs.
            let micros = arrived.saturating_duration_since(*committed_at).as_micros() as u64;
            latencies.record(micros.max(1))?;
        }
    }
    Ok(Measurement {
        events_per_second: relayed_expected as f64 / elapsed.as_secs_f64(),
        p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: latencies.max() as f64 / 1000.0,
    })
}

/// A consumer on every partition from its current high watermark, noting when each record
/// arrives (by its `ce_id`).
fn start_consumer(
    bootstrap: &str,
    arrivals: Arc<Mutex<HashMap<Uuid, Instant>>>,
    done: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-relay")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    // Explicit offsets: `Offset::End` is resolved lazily and could skip the first records.
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        let (_, high) =
            consumer.fetch_watermarks(BOOKING_EVENTS_TOPIC, partition, Duration::from_secs(10))?;
        partitions.add_partition_offset(BOOKING_EVENTS_TOPIC, partition, Offset::Offset(high))?;
    }
    consumer.assign(&partitions)?;
    Ok(std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let message = message?;
            let arrived = Instant::now();
            let event_id = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == "ce_id")
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<Uuid>().ok())
            });
            if let Some(event_id) = event_id {
                arrivals
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .entry(event_id)
                    .or_insert(arrived);
            }
        }
        Ok(())
    }))
}

/// Make appends of `bench.poison.v1` events roll back for real, after their positions were taken.
async fn install_poison_trigger(url: &str) -> anyhow::Result<()> {
    if url.starts_with("postgres") {
        let mut connection = sqlx::PgConnection::connect(url).await?;
        sqlx::raw_sql(
            "CREATE OR REPLACE FUNCTION zq_bench_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.event_type = 'bench.poison.v1' THEN
                     RAISE EXCEPTION 'poisoned benchmark event';
                 END IF;
                 RETURN NEW;
             END $$;
             DROP TRIGGER IF EXISTS zq_bench_poison ON zq_events;
             CREATE TRIGGER zq_bench_poison BEFORE INSERT ON zq_events
                 FOR EACH ROW EXECUTE FUNCTION zq_bench_poison();",
        )
        .execute(&mut connection)
        .await?;
    } else {
        let mut connection = sqlx::SqliteConnection::connect(url).await?;
        sqlx::raw_sql(
            "DROP TRIGGER IF EXISTS zq_bench_poison;
             CREATE TRIGGER zq_bench_poison BEFORE INSERT ON zq_events
             WHEN NEW.event_type = 'bench.poison.v1'
             BEGIN SELECT RAISE(ABORT, 'poisoned benchmark event'); END;",
        )
        .execute(&mut connection)
        .await?;
    }
    Ok(())
}
