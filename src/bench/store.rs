//! `zingqueue bench store`: event store appends and global-log reads, on Postgres and on SQLite,
//! each figure beside the raw ceiling measured in the same run (see [`super::ceiling`]).
//!
//! Appends model the API's load: each append starts a new stream (`NoStream`, like a new
//! booking) with one event, or with 100 events for the batch figure. Writers are concurrent
//! tasks sharing one store, so the store's group commit does what it does in production. The read
//! figure drains the whole global log (at least `--read-events` events) in batches.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use event_store::{
    EventMetadata, EventStore, ExpectedVersion, NewEvent, Position, PostgresEventStore,
    SqliteEventStore, StreamAppend,
};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use super::ceiling::{self, RawSqlite};
use super::{Comparison, Figure};
use crate::cli::StoreBenchArgs;

const EVENT_TYPE: &str = "bench.appended.v1";
/// The same data the raw ceilings insert.
const EVENT_DATA: &str = r#"{"seat":"A-1-1","n":1}"#;
/// Events per read batch; the projections and relay read in batches of this order.
const READ_BATCH: usize = 10_000;

pub async fn run(args: StoreBenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch folder")?;
    let mut comparisons = Vec::new();
    match &args.postgres_url {
        Some(url) => comparisons.extend(postgres(url, &args, scratch.path()).await?),
        None => println!(
            "Postgres figures skipped: give --postgres-url (ZQ_BENCH_POSTGRES_URL) an empty \
             database; scripts/bench store starts a throwaway server for you"
        ),
    }
    if !args.skip_sqlite {
        let dir = match &args.sqlite_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                dir.clone()
            }
            None => scratch.path().to_path_buf(),
        };
        comparisons.extend(sqlite(&args, &dir).await?);
    }
    println!();
    println!(
        "== zingqueue bench store: medians of {} runs of {} s ==",
        args.runs, args.seconds
    );
    for comparison in &comparisons {
        comparison.print();
    }
    Ok(())
}

async fn postgres(
    url: &str,
    args: &StoreBenchArgs,
    scratch: &Path,
) -> anyhow::Result<Vec<Comparison>> {
    let store: Arc<dyn EventStore> = Arc::new(
        PostgresEventStore::connect(url)
            .await
            .context("opening the event store on the benchmark Postgres")?,
    );
    ceiling::prepare_postgres(url).await?;
    let mut comparisons = Vec::new();

    for writers in args.writers.iter().copied().map(usize::from) {
        let (ours, latency) = repeat_appends(&store, args, writers, 1, "postgres").await?;
        let raw = ceiling::pgbench_runs(url, args.runs, args.seconds, writers, 1, scratch).await?;
        comparisons.push(Comparison {
            backend: "postgres",
            what: format!("one-event appends, {writers} concurrent writers (appends/s)"),
            ours,
            ceiling_name: "pgbench",
            ceiling: raw,
            target: (writers == 64).then_some(0.8),
            latency: Some(latency),
        });
    }

    let writers = usize::from(args.batch_writers);
    let (ours, latency) = repeat_appends(&store, args, writers, 100, "postgres").await?;
    let raw = ceiling::pgbench_runs(url, args.runs, args.seconds, writers, 100, scratch).await?;
    comparisons.push(Comparison {
        backend: "postgres",
        what: format!("100-event appends, {writers} concurrent writers (events/s)"),
        ours,
        ceiling_name: "pgbench",
        ceiling: raw,
        target: Some(0.8),
        latency: Some(latency),
    });

    let events = fill(&store, args.read_events, "postgres").await?;
    let ours = repeat_reads(&store, args.runs).await?;
    let mut raw = Vec::new();
    for _ in 0..args.runs {
        let url = url.to_string();
        raw.push(
            tokio::task::spawn_blocking(move || ceiling::psql_copy_rows_per_second(&url, events))
                .await??,
        );
    }
    comparisons.push(Comparison {
        backend: "postgres",
        what: format!("reading the global log, {events} events (events/s)"),
        ours,
        ceiling_name: "psql \\copy",
        ceiling: Figure::new(raw),
        target: Some(0.5),
        latency: None,
    });
    Ok(comparisons)
}

async fn sqlite(args: &StoreBenchArgs, dir: &Path) -> anyhow::Result<Vec<Comparison>> {
    let store_path = dir.join("bench-store.db");
    let raw_path = dir.join("bench-raw.db");
    for path in [&store_path, &raw_path] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    let store: Arc<dyn EventStore> = Arc::new(
        SqliteEventStore::open(&format!("sqlite://{}", store_path.display()))
            .await
            .context("opening the SQLite event store")?,
    );
    let mut raw_sqlite = RawSqlite::open(&raw_path, &store_path).await?;
    let mut comparisons = Vec::new();

    let mut shapes: Vec<(usize, usize)> =
        args.writers.iter().map(|&w| (usize::from(w), 1)).collect();
    shapes.push((usize::from(args.batch_writers), 100));
    for (writers, events_per_append) in shapes {
        let (ours, latency) =
            repeat_appends(&store, args, writers, events_per_append, "sqlite").await?;
        let mut raw = Vec::new();
        for _ in 0..args.runs {
            raw.push(
                raw_sqlite
                    .insert_rows_per_second(args.seconds, events_per_append)
                    .await?,
            );
        }
        let unit = if events_per_append == 1 {
            "appends/s"
        } else {
            "events/s"
        };
        comparisons.push(Comparison {
            backend: "sqlite",
            what: format!(
                "{events_per_append}-event appends, {writers} concurrent writers ({unit}; raw: \
                 one transaction per append, one connection)"
            ),
            ours,
            ceiling_name: "raw SQLite",
            ceiling: Figure::new(raw),
            target: None,
            latency: Some(latency),
        });
    }

    let events = fill(&store, args.read_events, "sqlite").await?;
    let ours = repeat_reads(&store, args.runs).await?;
    let mut raw = Vec::new();
    for _ in 0..args.runs {
        let (rows, per_second) = RawSqlite::read_rows_per_second(&store_path).await?;
        anyhow::ensure!(
            rows == events,
            "raw read saw {rows} rows, the log has {events}"
        );
        raw.push(per_second);
    }
    comparisons.push(Comparison {
        backend: "sqlite",
        what: format!("reading the global log, {events} events (events/s)"),
        ours,
        ceiling_name: "raw SQLite",
        ceiling: Figure::new(raw),
        target: None,
        latency: None,
    });
    Ok(comparisons)
}

/// `runs` append measurements; the figure is in events/s (= appends/s for one-event appends),
/// the latency line from the median run.
async fn repeat_appends(
    store: &Arc<dyn EventStore>,
    args: &StoreBenchArgs,
    writers: usize,
    events_per_append: usize,
    backend: &str,
) -> anyhow::Result<(Figure, String)> {
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        eprintln!(
            "{backend}: {events_per_append}-event appends, {writers} writers, run {run}/{}",
            args.runs
        );
        runs.push(append_run(store, writers, events_per_append, args.seconds).await?);
    }
    runs.sort_by(|a, b| a.events_per_second.total_cmp(&b.events_per_second));
    let median = &runs[runs.len() / 2];
    let latency = format!(
        "per append: p50 {:.2} ms, p99 {:.2} ms (median run)",
        median.latency.value_at_quantile(0.5) as f64 / 1000.0,
        median.latency.value_at_quantile(0.99) as f64 / 1000.0
    );
    let figure = Figure::new(runs.iter().map(|r| r.events_per_second).collect());
    Ok((figure, latency))
}

struct AppendRun {
    events_per_second: f64,
    /// Microseconds per append.
    latency: Histogram<u64>,
}

async fn append_run(
    store: &Arc<dyn EventStore>,
    writers: usize,
    events_per_append: usize,
    seconds: u64,
) -> anyhow::Result<AppendRun> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3)?;
                let mut events = 0u64;
                while Instant::now() < deadline {
                    let append = new_stream(events_per_append)?;
                    let sent = Instant::now();
                    store.append(append).await?;
                    latency.record(sent.elapsed().as_micros() as u64)?;
                    events += events_per_append as u64;
                }
                anyhow::Ok((events, latency))
            })
        })
        .collect();
    let mut events = 0;
    let mut latency = Histogram::<u64>::new(3)?;
    for task in tasks {
        let (written, histogram) = task.await??;
        events += written;
        latency.add(histogram)?;
    }
    Ok(AppendRun {
        events_per_second: events as f64 / started.elapsed().as_secs_f64(),
        latency,
    })
}

fn new_stream(events: usize) -> anyhow::Result<StreamAppend> {
    let events = (0..events)
        .map(|_| {
            NewEvent::from_json_text(
                Uuid::now_v7(),
                EVENT_TYPE,
                EVENT_DATA,
                EventMetadata {
                    correlation_id: Some(Uuid::now_v7()),
                    partition_key: Some("show-1".into()),
                    ..EventMetadata::default()
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StreamAppend::new(
        format!("bench-{}", Uuid::now_v7()),
        ExpectedVersion::NoStream,
        events,
    ))
}

/// Append until the log holds at least `target` events; returns the log's size.
async fn fill(store: &Arc<dyn EventStore>, target: u64, backend: &str) -> anyhow::Result<u64> {
    let head = store.head().await?.0;
    if head < target {
        let bar = ProgressBar::new(target);
        bar.set_style(ProgressStyle::with_template(&format!(
            "{backend}: filling the log {{bar:40}} {{pos}}/{{len}} events, {{per_sec}}, ETA {{eta}}"
        ))?);
        bar.set_position(head);
        const PER_APPEND: usize = 1000;
        const WRITERS: u64 = 4;
        let remaining = target - head;
        let appends_per_writer = remaining.div_ceil(PER_APPEND as u64 * WRITERS);
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let store = store.clone();
                let bar = bar.clone();
                tokio::spawn(async move {
                    for _ in 0..appends_per_writer {
                        store.append(new_stream(PER_APPEND)?).await?;
                        bar.inc(PER_APPEND as u64);
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        bar.finish();
    }
    Ok(store.head().await?.0)
}

async fn repeat_reads(store: &Arc<dyn EventStore>, runs: u16) -> anyhow::Result<Figure> {
    let mut rates = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut after = Position::START;
        let mut events = 0u64;
        loop {
            let batch = store.read_all(after, READ_BATCH).await?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            events += batch.len() as u64;
        }
        rates.push(events as f64 / started.elapsed().as_secs_f64());
    }
    Ok(Figure::new(rates))
}
