//! `zingqueue bench sale`: a flash sale end to end. One hot show of `--seats` seats (default
//! 5,000) gets `--requests` booking requests (default 20,000), each for one seat chosen at random
//! (seeded) by a distinct customer paying with `sim_ok`, with the payment simulator at each
//! `--payment-latency-ms` (default 0 and 50 ms), on Postgres + Redis and on the embedded default
//! (SQLite, in-process hold store).
//!
//! **How.** Each run wires in this process what `zingqueue up` wires (the same functions of
//! `commands::services` and the same relay, following the groups' watermarks): a fresh store (a
//! new Postgres database, or a new SQLite file), an in-process Kafka-protocol broker, the relay,
//! seat-lock (holds in Redis — a throwaway `redis-server` unless `--redis-url` — or in process),
//! payment (the simulator), the notifier (mail to a scratch folder) and the API on a loopback
//! port. The show is created through the API, and the sale starts once every group has consumed
//! it (so the broker's first group rebalance is not measured). `--connections` keep-alive
//! HTTP/1.1 connections then send the requests closed-loop (a 503 is retried after a pause and
//! counted). Afterwards the bench follows the store's global log incrementally and folds each
//! booking's status from its events until every booking is terminal or `--deadline-seconds`
//! pass.
//!
//! **Figures** (median of `--runs`):
//! - *accepted/s*: 202 answers per second of the load (first request sent → last answer).
//! - *terminal/s*: bookings that reached a terminal state (confirmed, rejected, expired,
//!   cancelled, failed) per second, from the first `booking.requested.v1` to the last booking's
//!   terminal event, by the store's `recorded_at`.
//! - *confirm p50/p99*: per confirmed booking, `booking.requested.v1` → `booking.confirmed.v1`,
//!   both by `recorded_at`.
//! - *drain*: the last `booking.requested.v1` → the last booking's terminal event, by
//!   `recorded_at` (target: under 60 s at 50 ms payment latency).
//!
//! **Checks** (a failure makes the command exit non-zero, after the table): folding every
//! `show.seats_sold.v1` / `show.seats_released.v1` of the show stream, no seat is sold to a second
//! booking while it belongs to a first; no seat is in two confirmed bookings; the seats of the
//! confirmed bookings are exactly the seats the show stream has sold, each to that booking; every
//! accepted booking is in the log and terminal within the deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use booking_api::ApiState;
use booking_api::auth::AdminToken;
use chrono::{DateTime, Utc};
use event_store::{EventStore, Position, RecordedEvent};
use futures::FutureExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use infra::consumer::Watermarks;
use infra::relay::FollowGroups;
use sqlx::Connection as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::{Connection, Figure, rate};
use crate::cli::{GlobalArgs, SaleBenchArgs, ServiceArgs};
use crate::commands::{self, services};

const ADMIN_TOKEN: &str = "bench-sale-admin-token";
/// The drain target at 50 ms payment latency, in seconds.
const DRAIN_TARGET_SECONDS: f64 = 60.0;
/// The payment latency the drain target is stated for.
const DRAIN_TARGET_LATENCY_MS: u64 = 50;
/// How often the log is read while waiting for bookings to become terminal.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Events per `read_all` call.
const READ_BATCH: usize = 5_000;
/// How long the groups may take to consume the show before the sale starts (the embedded
/// broker's first rebalance takes about 3 s).
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Seats per row of the show (a last, shorter section takes the remainder).
const SEATS_PER_ROW: u64 = 100;

/// Stable event type names (`domain::event_types`; never renamed, by contract).
mod types {
    pub const SEATS_SOLD: &str = "show.seats_sold.v1";
    pub const SEATS_RELEASED: &str = "show.seats_released.v1";
    pub const REQUESTED: &str = "booking.requested.v1";
    pub const SEATS_HELD: &str = "booking.seats_held.v1";
    pub const REJECTED: &str = "booking.rejected.v1";
    pub const HOLD_EXPIRED: &str = "booking.hold_expired.v1";
    pub const PAYMENT_SUCCEEDED: &str = "booking.payment_succeeded.v1";
    pub const CONFIRMED: &str = "booking.confirmed.v1";
    pub const FAILED: &str = "booking.failed.v1";
    pub const CANCELLED: &str = "booking.cancelled.v1";
}

pub async fn run(global: &GlobalArgs, args: SaleBenchArgs) -> anyhow::Result<()> {
    let mut backends = Vec::new();
    if !args.skip_postgres {
        match args.postgres_url.as_deref() {
            Some(url) => backends.push(Backend::Postgres { url }),
            None => println!(
                "Postgres + Redis figures skipped: give --postgres-url (ZQ_BENCH_POSTGRES_URL) a \
                 server where databases may be created; scripts/bench sale starts a throwaway one"
            ),
        }
    }
    if !args.skip_sqlite {
        backends.push(Backend::Embedded);
    }
    if backends.is_empty() {
        bail!("nothing to measure: both setups are skipped");
    }

    let mut rows = Vec::new();
    for backend in &backends {
        for &latency_ms in &args.payment_latency_ms {
            let mut runs = Vec::new();
            for run in 1..=args.runs {
                eprintln!(
                    "{}: payment {latency_ms} ms, run {run}/{}",
                    backend.name(),
                    args.runs
                );
                let outcome = run_once(global, &args, backend, latency_ms, run).await?;
                eprintln!("{}: {}", backend.name(), outcome.summary());
                runs.push(outcome);
            }
            rows.push(Row {
                backend: backend.name(),
                latency_ms,
                runs,
            });
        }
    }

    println!();
    println!(
        "== zingqueue bench sale: {} requests for {} seats (1 random seat each, seed {}), {} \
         connections, hold {} s; medians of {} run(s) ==",
        rate(args.requests as f64),
        rate(args.seats as f64),
        args.seed,
        args.connections,
        args.hold_seconds,
        args.runs
    );
    println!(
        "{:<18} {:>7} {:>11} {:>11} {:>11} {:>11} {:>9}  outcome",
        "setup", "payment", "accepted/s", "terminal/s", "confirm p50", "confirm p99", "drain"
    );
    let mut failures = Vec::new();
    for row in &rows {
        row.print();
        for run in &row.runs {
            failures.extend(
                run.check
                    .problems
                    .iter()
                    .map(|problem| format!("{}, {} ms: {problem}", row.backend, row.latency_ms)),
            );
        }
    }
    for row in rows
        .iter()
        .filter(|row| row.latency_ms == DRAIN_TARGET_LATENCY_MS)
    {
        let drain = Figure::new(row.runs.iter().map(|run| run.drain_seconds).collect());
        let verdict = if drain.median() < DRAIN_TARGET_SECONDS {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "{}: drain at {DRAIN_TARGET_LATENCY_MS} ms payment latency {:.1} s (target < \
             {DRAIN_TARGET_SECONDS:.0} s: {verdict})",
            row.backend,
            drain.median()
        );
    }
    if !failures.is_empty() {
        for failure in &failures {
            println!("FAILED {failure}");
        }
        bail!("{} check(s) failed", failures.len());
    }
    println!("checks: no seat sold twice, every booking terminal, sold seats = confirmed seats");
    Ok(())
}

enum Backend<'a> {
    Postgres { url: &'a str },
    Embedded,
}

impl Backend<'_> {
    fn name(&self) -> &'static str {
        match self {
            Backend::Postgres { .. } => "postgres+redis",
            Backend::Embedded => "sqlite (embedded)",
        }
    }
}

/// The runs of one setup at one payment latency.
struct Row {
    backend: &'static str,
    latency_ms: u64,
    runs: Vec<SaleRun>,
}

impl Row {
    fn print(&self) {
        let figure = |value: fn(&SaleRun) -> f64| {
            Figure::new(self.runs.iter().map(value).collect()).median()
        };
        let drain = figure(|run| run.drain_seconds);
        let mut outcome: Vec<String> = self.runs.iter().map(SaleRun::outcome).collect();
        outcome.dedup();
        if outcome.len() == 1 && self.runs.len() > 1 {
            outcome[0].push_str(" (every run)");
        }
        println!(
            "{:<18} {:>4} ms {:>11} {:>11} {:>8.0} ms {:>8.0} ms {:>7.1} s  {}",
            self.backend,
            self.latency_ms,
            rate(figure(|run| run.accepted_per_second)),
            rate(figure(|run| run.terminal_per_second)),
            figure(|run| run.confirm_p50_ms),
            figure(|run| run.confirm_p99_ms),
            drain,
            outcome.join(" | ")
        );
        if self.runs.len() > 1 {
            let runs = |value: fn(&SaleRun) -> String| {
                self.runs.iter().map(value).collect::<Vec<_>>().join(", ")
            };
            println!(
                "{:<18} runs: accepted/s {}; terminal/s {}; p50 {}; p99 {}; drain {}",
                "",
                runs(|run| rate(run.accepted_per_second)),
                runs(|run| rate(run.terminal_per_second)),
                runs(|run| format!("{:.0}", run.confirm_p50_ms)),
                runs(|run| format!("{:.0}", run.confirm_p99_ms)),
                runs(|run| format!("{:.1}", run.drain_seconds)),
            );
        }
    }
}

/// What one run measured and found.
struct SaleRun {
    accepted: u64,
    refused: u64,
    accepted_per_second: f64,
    terminal_per_second: f64,
    confirm_p50_ms: f64,
    confirm_p99_ms: f64,
    /// Infinite when some booking never became terminal.
    drain_seconds: f64,
    /// Last 202 → the bench saw every booking terminal, by this process's clock.
    drain_observed_seconds: f64,
    /// Latency of each step of the saga, by `recorded_at`.
    stages: String,
    check: SaleCheck,
}

impl SaleRun {
    fn outcome(&self) -> String {
        let verdict = if self.check.problems.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        format!(
            "{} confirmed, {} rejected, {} other, {} not terminal; {} seats sold, {} sold twice: \
             {verdict}",
            self.check.confirmed,
            self.check.rejected,
            self.check.other_terminal,
            self.check.not_terminal,
            self.check.sold_seats,
            self.check.sold_twice
        )
    }

    fn summary(&self) -> String {
        format!(
            "{} accepted ({} refused and retried), {}/s; {} terminal/s; confirmed p50 {:.0} ms, \
             p99 {:.0} ms ({}); drain {:.1} s by the store's clock ({:.1} s observed); {}",
            self.accepted,
            self.refused,
            rate(self.accepted_per_second),
            rate(self.terminal_per_second),
            self.confirm_p50_ms,
            self.confirm_p99_ms,
            self.stages,
            self.drain_seconds,
            self.drain_observed_seconds,
            self.outcome()
        )
    }
}

/// One run: a fresh store (and Redis), the system, the sale, the checks; cleaned up after.
async fn run_once(
    global: &GlobalArgs,
    args: &SaleBenchArgs,
    backend: &Backend<'_>,
    latency_ms: u64,
    run: u16,
) -> anyhow::Result<SaleRun> {
    let scratch = tempfile::Builder::new()
        .prefix("zq-bench-sale-")
        .tempdir()
        .context("creating a scratch folder")?;
    let (database_url, database, redis) = match backend {
        Backend::Postgres { url } => {
            let database = FreshDatabase::create(url, &format!("{latency_ms}ms_{run}")).await?;
            let redis = match args
                .redis_url
                .as_deref()
                .filter(|url| !url.trim().is_empty())
            {
                Some(url) => Redis::Given(url.to_string()),
                None => Redis::Started(RedisServer::start(scratch.path()).await?),
            };
            (database.url.clone(), Some(database), Some(redis))
        }
        Backend::Embedded => (
            format!("sqlite://{}/zingqueue.db", scratch.path().display()),
            None,
            None,
        ),
    };
    let config = GlobalArgs {
        data_dir: scratch.path().to_path_buf(),
        database_url: Some(database_url),
        kafka_brokers: None,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_token: Some(ADMIN_TOKEN.to_string()),
        partitions: global.partitions,
        wait_for_servers: global.wait_for_servers,
        services: ServiceArgs {
            redis_url: redis.as_ref().map(|redis| redis.url().to_string()),
            // Mail goes to the scratch folder, never to a configured SMTP server.
            smtp_url: None,
            hold_seconds: args.hold_seconds,
            payment_latency_ms: latency_ms,
            ..global.services.clone()
        },
    };
    let outcome = sale(&config, args).await;
    drop(redis);
    if let Some(database) = database {
        database.drop().await;
    }
    outcome
}

/// Run the system of `config` in this process, drive the sale through it, stop it.
async fn sale(config: &GlobalArgs, args: &SaleBenchArgs) -> anyhow::Result<SaleRun> {
    let location = commands::store_location(config)?;
    let store = event_store::open(location.url())
        .await
        .with_context(|| format!("opening the event store at {}", location.display_url()))?;
    let (brokers, topic_admin) = commands::kafka(config, true)?;
    // As `up` does with the in-process broker: the groups' watermarks steer the relay (the store
    // is fresh, so every group starts at the beginning).
    let watermarks = Watermarks::default();
    for group in [seat_lock::GROUP, payment::GROUP, notifier::GROUP] {
        watermarks.register(group, Position::START);
    }
    let holds = services::hold_store(config).await?;
    let seat_lock = services::seat_lock(config, store.clone(), holds, &brokers, Some(&watermarks));
    let payment = services::payment(
        config,
        store.clone(),
        services::payment_gateway(config).await?,
        &brokers,
        Some(&watermarks),
    );
    let (notifier, _mail_dir) =
        services::notifier(config, store.clone(), &brokers, Some(&watermarks))?;
    // As `up` runs it: on a thread of its own.
    let projector = projections::ProjectorThread::start(location.url(), store.head_hint()).await?;
    let committed = projector.committed();
    let projector_stats = projector.stats();

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let until_stopped = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
    }
    .boxed()
    .shared();
    let state = ApiState::new(store.clone(), AdminToken::new(ADMIN_TOKEN));
    let server = tokio::spawn(booking_api::serve(listener, state, until_stopped.clone()));
    let follow = FollowGroups {
        watermarks: watermarks.clone(),
        max_ahead: commands::up::MAX_AHEAD,
    };
    let admin = topic_admin.as_ref();
    let system = async {
        let (relay, seat_lock, payment, notifier, projector) = tokio::join!(
            commands::run_relay(
                config,
                store.clone(),
                brokers.clone(),
                admin,
                Some(follow),
                until_stopped.clone()
            ),
            seat_lock.run(admin, until_stopped.clone()),
            payment.run(admin, until_stopped.clone()),
            notifier.run(admin, until_stopped.clone()),
            projector.run_until(until_stopped.clone()),
        );
        relay.context("relay")?;
        projector.context("projections")?;
        seat_lock.context("seat-lock")?;
        payment.context("payment")?;
        notifier.context("notifier")?;
        anyhow::Ok(())
    };
    let mut driver = tokio::spawn(drive(
        store.clone(),
        address,
        watermarks,
        committed,
        Plan::from_args(args),
    ));
    tokio::pin!(system);
    let outcome = tokio::select! {
        driven = &mut driver => {
            let _ = stop.send(true);
            let stopped = system.await;
            let driven = driven.context("the sale driver panicked").and_then(|result| result);
            stopped.context("stopping the services")?;
            driven
        }
        ended = &mut system => {
            driver.abort();
            let _ = stop.send(true);
            Err(match ended {
                Ok(()) => anyhow::anyhow!("the services stopped before the sale ended"),
                Err(error) => error.context("a service failed during the sale"),
            })
        }
    };
    server.await?.context("serving the API")?;
    store.close().await;
    let batches = projector_stats.batches.load(Ordering::Relaxed).max(1);
    let per_batch =
        |micros: &AtomicU64| micros.load(Ordering::Relaxed) as f64 / batches as f64 / 1e3;
    eprintln!(
        "sale: projector {} batches of {:.0} events on average, {:.1} ms each (commit {:.1} ms)",
        batches,
        projector_stats.applied.load(Ordering::Relaxed) as f64 / batches as f64,
        per_batch(&projector_stats.busy_micros),
        per_batch(&projector_stats.commit_micros),
    );
    outcome
}

/// What one sale does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    requests: u64,
    seats: u64,
    connections: usize,
    seed: u64,
    deadline: Duration,
}

impl Plan {
    fn from_args(args: &SaleBenchArgs) -> Plan {
        Plan {
            requests: args.requests,
            seats: args.seats,
            connections: usize::from(args.connections),
            seed: args.seed,
            deadline: Duration::from_secs(args.deadline_seconds),
        }
    }
}

/// Create the show, wait for the groups, send the requests, wait for every booking to become
/// terminal, check the sale.
async fn drive(
    store: Arc<dyn EventStore>,
    address: SocketAddr,
    watermarks: Watermarks,
    committed: watch::Receiver<(Position, DateTime<Utc>)>,
    plan: Plan,
) -> anyhow::Result<SaleRun> {
    let show_id = create_show(address, plan.seats).await?;
    let show_position = store.head().await?;
    let waiting = Instant::now();
    tokio::time::timeout(READY_WITHIN, watermarks.wait_for_lowest(show_position))
        .await
        .with_context(|| {
            format!(
                "the consumer groups did not consume the show within {} s: {:?}",
                READY_WITHIN.as_secs(),
                watermarks.snapshot()
            )
        })?;
    eprintln!(
        "sale: show {show_id} ({} seats) consumed by every group after {:.1} s; {} requests \
         over {} connections",
        plan.seats,
        waiting.elapsed().as_secs_f64(),
        plan.requests,
        plan.connections
    );

    // Projection lag: when each position became visible in the read models (the projector's
    // commits), set against the events' `recorded_at` after the sale.
    let (probe_target, target) = watch::channel(None);
    let probe = tokio::spawn(watch_read_models(committed, target));
    let load = load(address, &show_id, plan).await?;

    let bar = ProgressBar::new(load.accepted);
    bar.set_style(ProgressStyle::with_template(
        "sale: bookings terminal {bar:40} {pos}/{len}, {per_sec}, {elapsed} since the last request",
    )?);
    let mut log = LogFold::default();
    let deadline = load.ended + plan.deadline;
    let mut next_note = Instant::now() + Duration::from_secs(10);
    let all_terminal_at = loop {
        log.catch_up(store.as_ref()).await?;
        bar.set_position(log.terminal);
        if log.terminal >= load.accepted && log.bookings.len() as u64 >= load.accepted {
            break Some(Instant::now());
        }
        if Instant::now() >= deadline {
            break None;
        }
        if bar.is_hidden() && Instant::now() >= next_note {
            // No terminal to draw on (output captured): a line now and then instead.
            eprintln!(
                "sale: {}/{} bookings terminal, {:.0} s since the last request; log at {}, \
                 groups finished through {:?}",
                log.terminal,
                load.accepted,
                load.ended.elapsed().as_secs_f64(),
                log.after,
                watermarks.snapshot()
            );
            next_note += Duration::from_secs(10);
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    bar.finish_and_clear();
    // The probe stops once the models have passed the whole log (bounded).
    let _ = probe_target.send(Some(store.head().await?));
    let samples = probe.await.unwrap_or_default();
    if all_terminal_at.is_none() {
        eprintln!(
            "sale: after {} s, {} of {} bookings are terminal; statuses: {:?}",
            plan.deadline.as_secs(),
            log.terminal,
            load.accepted,
            log.status_counts()
        );
    }
    // Whatever came after the last poll, then the authoritative show stream.
    log.catch_up(store.as_ref()).await?;
    let show_events = store.read_stream(&format!("show-{show_id}"), 0).await?;
    let check = check_sale(&show_events, &log, load.accepted)?;

    let mut confirm = Histogram::<u64>::new(3)?;
    // Where the time goes: seat-lock's decision, payment, seat-lock's sale.
    let mut stages = [
        Histogram::<u64>::new(3)?,
        Histogram::<u64>::new(3)?,
        Histogram::<u64>::new(3)?,
    ];
    let micros = |from: DateTime<Utc>, to: DateTime<Utc>| {
        (to - from).num_microseconds().unwrap_or(i64::MAX).max(1) as u64
    };
    for booking in log.bookings.values() {
        let steps = [
            booking.requested_at,
            booking.decided_at,
            booking.paid_at,
            booking.confirmed_at,
        ];
        if let (Some(requested), Some(confirmed)) = (steps[0], steps[3]) {
            confirm.record(micros(requested, confirmed))?;
        }
        for (stage, pair) in stages.iter_mut().zip(steps.windows(2)) {
            if let [Some(from), Some(to)] = pair {
                stage.record(micros(*from, *to))?;
            }
        }
    }
    let [decided, paid, sold] = &stages;
    let p = |histogram: &Histogram<u64>, quantile| {
        histogram.value_at_quantile(quantile) as f64 / 1000.0
    };
    let stages = format!(
        "requested → held/rejected p50 {:.0} ms, p99 {:.0} ms; held → paid p50 {:.0} ms, p99 \
         {:.0} ms; paid → confirmed p50 {:.0} ms, p99 {:.0} ms",
        p(decided, 0.5),
        p(decided, 0.99),
        p(paid, 0.5),
        p(paid, 0.99),
        p(sold, 0.5),
        p(sold, 0.99)
    );
    let projection_lag = projection_lag(store.as_ref(), &samples).await?;
    let stages = format!(
        "{stages}; append → read model p50 {:.0} ms, p99 {:.0} ms",
        p(&projection_lag, 0.5),
        p(&projection_lag, 0.99)
    );
    let first_requested = log.bookings.values().filter_map(|b| b.requested_at).min();
    let last_requested = log.bookings.values().filter_map(|b| b.requested_at).max();
    let last_terminal = log.bookings.values().filter_map(|b| b.terminal_at).max();
    let seconds = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| match (from, to) {
        (Some(from), Some(to)) => (to - from).num_microseconds().unwrap_or(0) as f64 / 1e6,
        _ => f64::NAN,
    };
    let all_terminal = check.not_terminal == 0 && all_terminal_at.is_some();
    Ok(SaleRun {
        accepted: load.accepted,
        refused: load.refused,
        accepted_per_second: load.accepted as f64 / load.elapsed.as_secs_f64(),
        terminal_per_second: log.terminal as f64
            / seconds(first_requested, last_terminal).max(1e-3),
        confirm_p50_ms: confirm.value_at_quantile(0.5) as f64 / 1000.0,
        confirm_p99_ms: confirm.value_at_quantile(0.99) as f64 / 1000.0,
        drain_seconds: if all_terminal {
            seconds(last_requested, last_terminal).max(0.0)
        } else {
            f64::INFINITY
        },
        drain_observed_seconds: all_terminal_at
            .map_or(f64::INFINITY, |at| (at - load.ended).as_secs_f64()),
        stages,
        check,
    })
}

/// Every commit of the projector (position, and the moment right after it), until the read
/// models reach the target (or a minute after the target is known).
async fn watch_read_models(
    mut committed: watch::Receiver<(Position, DateTime<Utc>)>,
    target: watch::Receiver<Option<Position>>,
) -> Vec<(DateTime<Utc>, u64)> {
    let mut samples: Vec<(DateTime<Utc>, u64)> = Vec::new();
    let mut give_up: Option<Instant> = None;
    loop {
        let (position, at) = *committed.borrow_and_update();
        if samples.last().is_none_or(|(_, last)| *last < position.0) {
            samples.push((at, position.0));
        }
        if let Some(target) = *target.borrow() {
            let reached = samples.last().is_some_and(|(_, last)| *last >= target.0);
            let deadline = *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(60));
            if reached || Instant::now() >= deadline {
                return samples;
            }
        }
        // A commit, or now and then to look at the target.
        let _ = tokio::time::timeout(Duration::from_millis(50), committed.changed()).await;
    }
}

/// Per event of the log: from `recorded_at` (the database's clock) to the first commit of the
/// projector that covered it (this process's clock, the same machine), in microseconds.
async fn projection_lag(
    store: &dyn EventStore,
    samples: &[(DateTime<Utc>, u64)],
) -> anyhow::Result<Histogram<u64>> {
    let mut lag = Histogram::<u64>::new(3)?;
    let mut after = Position::START;
    loop {
        let events = store.read_all(after, 5_000).await?;
        let Some(last) = events.last() else { break };
        after = last.position;
        for event in &events {
            let visible = samples.partition_point(|(_, position)| *position < event.position.0);
            if let Some((at, _)) = samples.get(visible) {
                let micros = (*at - event.recorded_at)
                    .num_microseconds()
                    .unwrap_or(0)
                    .max(1);
                lag.record(micros as u64)?;
            }
        }
    }
    Ok(lag)
}

/// The seat of index `index` (0-based) of a show made by [`create_show`].
fn seat_name(index: u64, seats: u64) -> String {
    let per_row = SEATS_PER_ROW.min(seats);
    let full = (seats / per_row) * per_row;
    if index < full {
        format!("A-{}-{}", index / per_row + 1, index % per_row + 1)
    } else {
        format!("B-1-{}", index - full + 1)
    }
}

/// Create the show: section A of full rows, section B of one row with the remainder.
async fn create_show(address: SocketAddr, seats: u64) -> anyhow::Result<String> {
    let per_row = SEATS_PER_ROW.min(seats);
    let mut sections = vec![serde_json::json!({
        "name": "A", "rows": seats / per_row, "seats_per_row": per_row, "price_cents": 4500,
    })];
    if !seats.is_multiple_of(per_row) {
        sections.push(serde_json::json!({
            "name": "B", "rows": 1, "seats_per_row": seats % per_row, "price_cents": 4500,
        }));
    }
    let show = serde_json::json!({
        "name": "Flash Sale Night",
        "starts_at": "2030-01-01T20:00:00Z",
        "currency": "EUR",
        "sections": sections,
    });
    let mut connection = Connection::open(address).await?;
    let (status, body) = connection
        .send("POST", "/shows", Some(ADMIN_TOKEN), show.to_string())
        .await?;
    if status != 201 {
        bail!(
            "creating the show answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let created: serde_json::Value = serde_json::from_slice(&body)?;
    created["show_id"]
        .as_str()
        .map(str::to_string)
        .context("no show_id in the answer")
}

/// splitmix64: a seeded, well-mixed choice per request index, with no state to share.
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Request `index` of the sale: one random seat, a customer of its own.
fn booking_request(show_id: &str, plan: &Plan, index: u64) -> String {
    let seat = seat_name(mix(plan.seed, index) % plan.seats, plan.seats);
    serde_json::json!({
        "show_id": show_id,
        "seats": [seat],
        "customer": {
            "id": format!("fan-{index}"),
            "email": format!("fan{index}@example.com"),
            "name": "Sale Fan",
        },
        "payment_method": "sim_ok",
    })
    .to_string()
}

struct Load {
    accepted: u64,
    refused: u64,
    /// First request sent → last answer.
    elapsed: Duration,
    /// When the last answer came.
    ended: Instant,
}

/// Send every request of the plan over `plan.connections` keep-alive connections; a 503 is
/// retried after a short pause.
async fn load(address: SocketAddr, show_id: &str, plan: Plan) -> anyhow::Result<Load> {
    let mut opened = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        opened.push(Connection::open(address).await?);
    }
    let bar = ProgressBar::new(plan.requests);
    bar.set_style(ProgressStyle::with_template(
        "sale: requests {bar:40} {pos}/{len}, {per_sec}",
    )?);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|mut connection| {
            let (next, bar, show_id) = (next.clone(), bar.clone(), show_id.to_string());
            tokio::spawn(async move {
                let (mut accepted, mut refused) = (0u64, 0u64);
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= plan.requests {
                        break;
                    }
                    let body = booking_request(&show_id, &plan, index);
                    loop {
                        let (status, answer) = connection
                            .send("POST", "/bookings", None, body.clone())
                            .await?;
                        match status {
                            202 => break,
                            503 => {
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            other => bail!(
                                "POST /bookings answered {other}: {}",
                                String::from_utf8_lossy(&answer)
                            ),
                        }
                    }
                    accepted += 1;
                    bar.inc(1);
                }
                anyhow::Ok((accepted, refused))
            })
        })
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for task in tasks {
        let (task_accepted, task_refused) = task.await??;
        accepted += task_accepted;
        refused += task_refused;
    }
    let ended = Instant::now();
    bar.finish_and_clear();
    let elapsed = ended - started;
    eprintln!(
        "sale: {accepted} requests accepted in {:.1} s ({}/s), {refused} 503s retried",
        elapsed.as_secs_f64(),
        rate(accepted as f64 / elapsed.as_secs_f64())
    );
    Ok(Load {
        accepted,
        refused,
        elapsed,
        ended,
    })
}

/// A booking's status as its events make it (the booking decider's rules, amounts aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Status {
    Requested,
    Held,
    Paid,
    Confirmed,
    Rejected,
    Expired,
    Cancelled,
    Failed,
}

impl Status {
    fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Confirmed
                | Status::Rejected
                | Status::Expired
                | Status::Cancelled
                | Status::Failed
        )
    }

    /// The status after an event of `event_type`; events that change no status leave it.
    fn after(self, event_type: &str) -> Status {
        match (self, event_type) {
            (Status::Requested, types::SEATS_HELD) => Status::Held,
            (Status::Held, types::PAYMENT_SUCCEEDED) => Status::Paid,
            (Status::Paid, types::CONFIRMED) => Status::Confirmed,
            (_, types::REJECTED) => Status::Rejected,
            (_, types::HOLD_EXPIRED) => Status::Expired,
            (_, types::FAILED) => Status::Failed,
            (_, types::CANCELLED) => Status::Cancelled,
            (status, _) => status,
        }
    }
}

#[derive(Debug)]
struct BookingTrack {
    status: Status,
    seats: Vec<String>,
    requested_at: Option<DateTime<Utc>>,
    /// When seat-lock decided: seats held, or the booking rejected.
    decided_at: Option<DateTime<Utc>>,
    paid_at: Option<DateTime<Utc>>,
    confirmed_at: Option<DateTime<Utc>>,
    /// When it first became terminal.
    terminal_at: Option<DateTime<Utc>>,
}

/// Every booking's status, folded from the global log as it grows.
#[derive(Default)]
struct LogFold {
    after: Position,
    /// By booking id (the stream id without `booking-`).
    bookings: HashMap<String, BookingTrack>,
    terminal: u64,
}

impl LogFold {
    /// Read the log from where the last call stopped to its head.
    async fn catch_up(&mut self, store: &dyn EventStore) -> anyhow::Result<()> {
        loop {
            let events = store.read_all(self.after, READ_BATCH).await?;
            for event in &events {
                self.apply(event)?;
                self.after = event.position;
            }
            if events.len() < READ_BATCH {
                return Ok(());
            }
        }
    }

    fn apply(&mut self, event: &RecordedEvent) -> anyhow::Result<()> {
        let Some(booking_id) = event.stream_id.strip_prefix("booking-") else {
            return Ok(());
        };
        if event.event_type == types::REQUESTED {
            let data: serde_json::Value = serde_json::from_str(&event.data)
                .with_context(|| format!("event at {}", event.position))?;
            let seats = data["seats"]
                .as_array()
                .map(|seats| {
                    seats
                        .iter()
                        .filter_map(|seat| seat.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            self.bookings.insert(
                booking_id.to_string(),
                BookingTrack {
                    status: Status::Requested,
                    seats,
                    requested_at: Some(event.recorded_at),
                    decided_at: None,
                    paid_at: None,
                    confirmed_at: None,
                    terminal_at: None,
                },
            );
            return Ok(());
        }
        let Some(booking) = self.bookings.get_mut(booking_id) else {
            bail!(
                "{} at {} for booking {booking_id}, which was never requested",
                event.event_type,
                event.position
            );
        };
        let before = booking.status;
        booking.status = before.after(&event.event_type);
        if before == Status::Requested && booking.status != before && booking.decided_at.is_none() {
            booking.decided_at = Some(event.recorded_at);
        }
        match (before, booking.status) {
            (Status::Held, Status::Paid) => booking.paid_at = Some(event.recorded_at),
            (Status::Paid, Status::Confirmed) => booking.confirmed_at = Some(event.recorded_at),
            _ => {}
        }
        if booking.status.is_terminal() && booking.terminal_at.is_none() {
            booking.terminal_at = Some(event.recorded_at);
            self.terminal += 1;
        }
        Ok(())
    }

    fn status_counts(&self) -> Vec<(Status, u64)> {
        let mut counts: HashMap<Status, u64> = HashMap::new();
        for booking in self.bookings.values() {
            *counts.entry(booking.status).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort();
        counts
    }
}

/// The end-of-sale checks.
#[derive(Debug, Default)]
struct SaleCheck {
    confirmed: u64,
    rejected: u64,
    /// Expired, cancelled or failed.
    other_terminal: u64,
    not_terminal: u64,
    sold_seats: u64,
    /// Seats sold while another booking owned them, plus seats in two confirmed bookings.
    sold_twice: u64,
    problems: Vec<String>,
}

fn check_sale(
    show_events: &[RecordedEvent],
    log: &LogFold,
    accepted: u64,
) -> anyhow::Result<SaleCheck> {
    let mut check = SaleCheck::default();
    // The show stream, the truth: who owns each seat.
    let mut owner: HashMap<String, String> = HashMap::new();
    for event in show_events {
        let selling = match event.event_type.as_str() {
            types::SEATS_SOLD => true,
            types::SEATS_RELEASED => false,
            _ => continue,
        };
        let data: serde_json::Value = serde_json::from_str(&event.data)
            .with_context(|| format!("event at {}", event.position))?;
        let booking = data["booking_id"]
            .as_str()
            .with_context(|| format!("no booking_id in the event at {}", event.position))?;
        for seat in data["seats"].as_array().into_iter().flatten() {
            let seat = seat
                .as_str()
                .with_context(|| format!("a seat that is no string at {}", event.position))?;
            match (selling, owner.get(seat)) {
                (true, Some(first)) if first != booking => {
                    check.sold_twice += 1;
                    check.problems.push(format!(
                        "seat {seat} sold to booking {booking} at position {} while booking \
                         {first} owned it",
                        event.position
                    ));
                }
                (true, _) => {
                    owner.insert(seat.to_string(), booking.to_string());
                }
                (false, Some(current)) if current == booking => {
                    owner.remove(seat);
                }
                (false, _) => {}
            }
        }
    }
    check.sold_seats = owner.len() as u64;

    // The bookings' final statuses against it.
    let mut confirmed_by_seat: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut confirmed_seats = 0u64;
    for (booking_id, booking) in &log.bookings {
        match booking.status {
            Status::Confirmed => {
                check.confirmed += 1;
                for seat in &booking.seats {
                    confirmed_seats += 1;
                    confirmed_by_seat
                        .entry(seat.as_str())
                        .or_default()
                        .push(booking_id.as_str());
                    if owner.get(seat) != Some(booking_id) {
                        check.problems.push(format!(
                            "confirmed booking {booking_id} has seat {seat}, which the show \
                             stream sold to {:?}",
                            owner.get(seat)
                        ));
                    }
                }
            }
            Status::Rejected => check.rejected += 1,
            status if status.is_terminal() => check.other_terminal += 1,
            _ => check.not_terminal += 1,
        }
    }
    for (seat, bookings) in &confirmed_by_seat {
        if bookings.len() > 1 {
            check.sold_twice += 1;
            check
                .problems
                .push(format!("seat {seat} is in confirmed bookings {bookings:?}"));
        }
    }
    if confirmed_seats != check.sold_seats {
        check.problems.push(format!(
            "confirmed bookings hold {confirmed_seats} seats, the show stream sold {}",
            check.sold_seats
        ));
    }
    if check.not_terminal > 0 {
        check.problems.push(format!(
            "{} bookings not terminal at the deadline: {:?}",
            check.not_terminal,
            log.status_counts()
        ));
    }
    if log.bookings.len() as u64 != accepted {
        check.problems.push(format!(
            "{accepted} requests accepted, {} bookings in the log",
            log.bookings.len()
        ));
    }
    Ok(check)
}

/// A database of its own on the benchmark Postgres, dropped after the run.
struct FreshDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    async fn create(admin_url: &str, tag: &str) -> anyhow::Result<FreshDatabase> {
        let name = format!("zq_bench_sale_{}_{tag}", std::process::id());
        let mut connection = sqlx::PgConnection::connect(admin_url)
            .await
            .context("connecting to the benchmark Postgres")?;
        // One statement each: CREATE DATABASE refuses to run inside a transaction block, which
        // is what several statements of one simple query are.
        for statement in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::raw_sql(&statement)
                .execute(&mut connection)
                .await
                .with_context(|| format!("{statement} on the benchmark Postgres"))?;
        }
        connection.close().await?;
        Ok(FreshDatabase {
            url: with_database(admin_url, &name)?,
            admin_url: admin_url.to_string(),
            name,
        })
    }

    /// Drop it; a failure is reported, not fatal (the figures are taken).
    async fn drop(self) {
        let dropped = async {
            let mut connection = sqlx::PgConnection::connect(&self.admin_url).await?;
            sqlx::raw_sql(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut connection)
            .await?;
            anyhow::Ok(())
        };
        if let Err(error) = dropped.await {
            eprintln!("sale: could not drop database {}: {error:#}", self.name);
        }
    }
}

/// `url` naming `database` instead of its own (query parameters kept).
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").context("the Postgres URL has no scheme")? + 3;
    let rest = &url[scheme_end..];
    let (path_part, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let authority = &path_part[..path_part.find('/').unwrap_or(path_part.len())];
    Ok(format!(
        "{}{authority}/{database}{query}",
        &url[..scheme_end]
    ))
}

enum Redis {
    Given(String),
    Started(RedisServer),
}

impl Redis {
    fn url(&self) -> &str {
        match self {
            Redis::Given(url) => url,
            Redis::Started(server) => &server.url,
        }
    }
}

/// A throwaway `redis-server` (no persistence) on a free loopback port, killed when dropped.
struct RedisServer {
    child: std::process::Child,
    url: String,
}

impl RedisServer {
    async fn start(dir: &Path) -> anyhow::Result<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context(
                "starting redis-server (Debian package redis-server; see scripts/install-deps)",
            )?;
        let server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        let started = Instant::now();
        while !ping(port).await {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("redis-server on port {port} did not answer within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("sale: throwaway redis-server at {}", server.url);
        Ok(server)
    }
}

/// Whether a Redis answers PING on the loopback `port`.
async fn ping(port: u16) -> bool {
    let answered = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut answer = [0u8; 7];
        stream.read_exact(&mut answer).await?;
        std::io::Result::Ok(&answer == b"+PONG\r\n")
    };
    answered.await.unwrap_or(false)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_cover_the_show_exactly() {
        for seats in [1, 7, 100, 250, 5_000] {
            let names: std::collections::HashSet<String> =
                (0..seats).map(|index| seat_name(index, seats)).collect();
            assert_eq!(names.len() as u64, seats, "{seats}");
        }
        assert_eq!(seat_name(0, 5_000), "A-1-1");
        assert_eq!(seat_name(4_999, 5_000), "A-50-100");
        assert_eq!(seat_name(249, 250), "B-1-50");
    }

    #[test]
    fn seat_choices_are_seeded_and_spread() {
        let plan = Plan {
            requests: 20_000,
            seats: 5_000,
            connections: 64,
            seed: 1,
            deadline: Duration::from_secs(1),
        };
        assert_eq!(
            booking_request("s", &plan, 42),
            booking_request("s", &plan, 42)
        );
        let distinct: std::collections::HashSet<u64> = (0..20_000)
            .map(|index| mix(plan.seed, index) % plan.seats)
            .collect();
        // 5,000 × (1 − e⁻⁴) ≈ 4,908 seats are hit by 20,000 uniform picks.
        assert!(
            (4_850..=4_960).contains(&distinct.len()),
            "{}",
            distinct.len()
        );
    }

    #[test]
    fn statuses_follow_the_booking_rules() {
        let confirmed = [
            types::SEATS_HELD,
            types::PAYMENT_SUCCEEDED,
            types::CONFIRMED,
        ]
        .iter()
        .fold(Status::Requested, |status, event| status.after(event));
        assert_eq!(confirmed, Status::Confirmed);
        assert_eq!(Status::Requested.after(types::CONFIRMED), Status::Requested);
        assert_eq!(Status::Held.after(types::HOLD_EXPIRED), Status::Expired);
        assert_eq!(
            Status::Expired.after(types::PAYMENT_SUCCEEDED),
            Status::Expired
        );
        assert!(Status::Rejected.is_terminal() && !Status::Paid.is_terminal());
    }

    #[test]
    fn the_database_is_swapped_in_the_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "zq_x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/zq_x"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "zq_x").unwrap(),
            "postgresql://u:p@h/zq_x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:1", "zq_x").unwrap(),
            "postgres://h:1/zq_x"
        );
        assert!(with_database("h:1", "zq_x").is_err());
    }

    fn recorded(position: u64, stream: &str, event_type: &str, data: &str) -> RecordedEvent {
        RecordedEvent {
            position: Position(position),
            event_id: uuid::Uuid::new_v4(),
            stream_id: stream.to_string(),
            stream_version: 1,
            event_type: event_type.to_string(),
            data: data.to_string(),
            metadata: event_store::EventMetadata::default(),
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn a_seat_sold_twice_is_caught() {
        let mut log = LogFold::default();
        let requested = r#"{"seats":["A-1-1"]}"#;
        for (position, booking) in [(1, "b1"), (2, "b2")] {
            let stream = format!("booking-{booking}");
            log.apply(&recorded(position, &stream, types::REQUESTED, requested))
                .unwrap();
            for event in [
                types::SEATS_HELD,
                types::PAYMENT_SUCCEEDED,
                types::CONFIRMED,
            ] {
                log.apply(&recorded(position, &stream, event, "{}"))
                    .unwrap();
            }
        }
        let sold = |booking: &str| {
            recorded(
                9,
                "show-s",
                types::SEATS_SOLD,
                &format!(r#"{{"booking_id":"{booking}","seats":["A-1-1"]}}"#),
            )
        };
        let check = check_sale(&[sold("b1"), sold("b2")], &log, 2).unwrap();
        assert_eq!(check.confirmed, 2);
        assert!(check.sold_twice >= 2, "{check:?}");
        assert!(!check.problems.is_empty());

        // Released in between, and only one confirmed booking: fine.
        let mut single = LogFold::default();
        single
            .apply(&recorded(1, "booking-b1", types::REQUESTED, requested))
            .unwrap();
        single
            .apply(&recorded(2, "booking-b1", types::REJECTED, "{}"))
            .unwrap();
        let check = check_sale(&[], &single, 1).unwrap();
        assert!(check.problems.is_empty(), "{check:?}");
        assert_eq!((check.rejected, check.sold_seats), (1, 0));
    }
}
