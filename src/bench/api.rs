//! `zingqueue bench api`: `POST /bookings` through the real HTTP stack, on Postgres and on the
//! embedded default (SQLite), each beside the raw ceiling measured in the same run.
//!
//! The API runs in this process on a loopback port, exactly as `zingqueue run api` serves it.
//! The load generator is closed-loop: each of N HTTP/1.1 keep-alive connections sends a booking
//! request, waits for the answer, and sends the next one, so the figures are what N eager clients
//! get, with latency measured per request from send to the full answer. Every request books one
//! or two random seats of one large show for a random customer (whether the seats are free is
//! seat-lock's decision, not the API's: every well-formed request is accepted).
//!
//! Ceilings: pgbench's one-row INSERT transactions per second on the same Postgres (64 clients:
//! a new row in a table shaped like the event log, durably committed, with no HTTP, JSON or
//! validation), and raw one-row SQLite insert transactions on one connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use booking_api::ApiState;
use booking_api::auth::AdminToken;
use event_store::{EventStore, PostgresEventStore, SqliteEventStore};
use hdrhistogram::Histogram;
use tokio::sync::watch;

use super::ceiling::{self, RawSqlite};
use super::{Comparison, Connection, Figure};
use crate::cli::ApiBenchArgs;

const ADMIN_TOKEN: &str = "bench-admin-token";
/// pgbench clients of the ceiling: past this, Postgres on two cores gets no faster.
const PGBENCH_CLIENTS: usize = 64;
/// The show: 10 sections of 100 × 100 seats.
const SECTIONS: u32 = 10;
const ROWS: u32 = 100;
const SEATS_PER_ROW: u32 = 100;

pub async fn run(args: ApiBenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch folder")?;
    let mut comparisons = Vec::new();
    match &args.postgres_url {
        Some(url) => {
            let store: Arc<dyn EventStore> = Arc::new(
                PostgresEventStore::connect(url)
                    .await
                    .context("opening the event store on the benchmark Postgres")?,
            );
            ceiling::prepare_postgres(url).await?;
            let mut pgbench = Vec::new();
            for _ in 0..args.runs {
                let (url, scratch, seconds) =
                    (url.clone(), scratch.path().to_path_buf(), args.seconds);
                pgbench.push(
                    tokio::task::spawn_blocking(move || {
                        ceiling::pgbench_rows_per_second(
                            &url,
                            PGBENCH_CLIENTS,
                            seconds,
                            1,
                            &scratch,
                        )
                    })
                    .await??,
                );
            }
            let pgbench = Figure::new(pgbench);
            for result in measure(store, &args, "postgres").await? {
                comparisons.push(Comparison {
                    backend: "postgres",
                    what: format!(
                        "POST /bookings, {} keep-alive connections (accepted/s)",
                        result.connections
                    ),
                    ours: result.accepted,
                    ceiling_name: "pgbench",
                    ceiling: pgbench.clone(),
                    target: Some(2.0),
                    latency: Some(result.latency),
                });
            }
        }
        None => println!(
            "Postgres figures skipped: give --postgres-url (ZQ_BENCH_POSTGRES_URL) an empty \
             database; scripts/bench api starts a throwaway server for you"
        ),
    }
    if !args.skip_sqlite {
        let store_path = scratch.path().join("bench-api.db");
        let store: Arc<dyn EventStore> = Arc::new(
            SqliteEventStore::open(&format!("sqlite://{}", store_path.display()))
                .await
                .context("opening the SQLite event store")?,
        );
        let results = measure(store.clone(), &args, "sqlite").await?;
        let raw = raw_sqlite_runs(&args, scratch.path(), &store_path).await?;
        for result in results {
            comparisons.push(Comparison {
                backend: "sqlite",
                what: format!(
                    "POST /bookings, {} keep-alive connections (accepted/s; raw: one-row \
                     transactions, one connection)",
                    result.connections
                ),
                ours: result.accepted,
                ceiling_name: "raw SQLite",
                ceiling: raw.clone(),
                target: None,
                latency: Some(result.latency),
            });
        }
    }
    println!();
    println!(
        "== zingqueue bench api: medians of {} runs of {} s ==",
        args.runs, args.seconds
    );
    for comparison in &comparisons {
        comparison.print();
    }
    Ok(())
}

async fn raw_sqlite_runs(
    args: &ApiBenchArgs,
    scratch: &Path,
    store_path: &Path,
) -> anyhow::Result<Figure> {
    let mut raw_sqlite = RawSqlite::open(&scratch.join("bench-raw.db"), store_path).await?;
    let mut runs = Vec::new();
    for _ in 0..args.runs {
        runs.push(raw_sqlite.insert_rows_per_second(args.seconds, 1).await?);
    }
    Ok(Figure::new(runs))
}

struct LoadResult {
    connections: usize,
    accepted: Figure,
    latency: String,
}

/// Serve the API on `store`, create the show, and drive it at each connection count.
async fn measure(
    store: Arc<dyn EventStore>,
    args: &ApiBenchArgs,
    backend: &str,
) -> anyhow::Result<Vec<LoadResult>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let state = ApiState::new(store.clone(), AdminToken::new(ADMIN_TOKEN));
    let server = tokio::spawn(booking_api::serve(listener, state, async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    let show_id = create_show(address).await?;
    // wrk (C, its own process) takes far less of the two cores than a load generator in this
    // process, so the API gets what a real client fleet would leave it; without wrk, the built-in
    // generator runs (same closed loop, same requests).
    let wrk = if args.builtin_load { None } else { find_wrk() };
    eprintln!(
        "{backend}: load from {}",
        if wrk.is_some() {
            "wrk (its own process)"
        } else {
            "the built-in generator (in this process)"
        }
    );

    let mut results = Vec::new();
    for connections in args.connections.iter().copied().map(usize::from) {
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            eprintln!(
                "{backend}: POST /bookings, {connections} connections, run {run}/{}",
                args.runs
            );
            let run = match &wrk {
                Some(wrk) => wrk_run(wrk, address, &show_id, connections, args.seconds).await?,
                None => load_run(address, &show_id, connections, args.seconds).await?,
            };
            runs.push(run);
        }
        runs.sort_by(|a, b| a.accepted_per_second.total_cmp(&b.accepted_per_second));
        let median = &runs[runs.len() / 2];
        let refused: u64 = runs.iter().map(|run| run.refused).sum();
        let latency = format!(
            "per request: p50 {:.2} ms, p99 {:.2} ms (median run); 503s: {refused} in all runs",
            median.latency.value_at_quantile(0.5) as f64 / 1000.0,
            median.latency.value_at_quantile(0.99) as f64 / 1000.0,
        );
        results.push(LoadResult {
            connections,
            accepted: Figure::new(runs.iter().map(|run| run.accepted_per_second).collect()),
            latency,
        });
    }
    let _ = stop.send(true);
    server.await?.context("serving the API")?;
    store.close().await;
    Ok(results)
}

async fn create_show(address: SocketAddr) -> anyhow::Result<String> {
    let sections: Vec<serde_json::Value> = (0..SECTIONS)
        .map(|section| {
            serde_json::json!({
                "name": format!("S{section}"),
                "rows": ROWS,
                "seats_per_row": SEATS_PER_ROW,
                "price_cents": 4500,
            })
        })
        .collect();
    let show = serde_json::json!({
        "name": "Benchmark Night",
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

struct LoadRun {
    accepted_per_second: f64,
    /// 503s (overload): counted, not failures of the run.
    refused: u64,
    /// Microseconds per accepted request.
    latency: Histogram<u64>,
}

async fn load_run(
    address: SocketAddr,
    show_id: &str,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<LoadRun> {
    // Connect first, so that connection set-up is not measured.
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(Connection::open(address).await?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(client, mut connection)| {
            let show_id = show_id.to_string();
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3)?;
                let (mut accepted, mut refused) = (0u64, 0u64);
                let mut request = 0u64;
                while Instant::now() < deadline {
                    request += 1;
                    let body = booking_request(&show_id, client, request);
                    let sent = Instant::now();
                    let (status, answer) = connection.send("POST", "/bookings", None, body).await?;
                    match status {
                        202 => {
                            latency.record(sent.elapsed().as_micros() as u64)?;
                            accepted += 1;
                        }
                        503 => refused += 1,
                        other => bail!(
                            "POST /bookings answered {other}: {}",
                            String::from_utf8_lossy(&answer)
                        ),
                    }
                }
                anyhow::Ok((accepted, refused, latency))
            })
        })
        .collect();
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut accepted, mut refused) = (0, 0);
    for task in tasks {
        let (task_accepted, task_refused, histogram) = task.await??;
        accepted += task_accepted;
        refused += task_refused;
        latency.add(histogram)?;
    }
    Ok(LoadRun {
        accepted_per_second: accepted as f64 / started.elapsed().as_secs_f64(),
        refused,
        latency,
    })
}

fn find_wrk() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("wrk"))
            .find(|candidate| candidate.is_file())
    })
}

/// The same requests as [`booking_request`], built by wrk's LuaJIT per request.
const WRK_SCRIPT: &str = r#"
local counter = 0
local show = os.getenv("ZQ_BENCH_SHOW")
request = function()
  counter = counter + 1
  local index = (counter * 7919) % __SEATS__
  local section = math.floor(index / __PER_SECTION__)
  local row = math.floor((index % __PER_SECTION__) / __PER_ROW__) + 1
  local number = index % __PER_ROW__ + 1
  local body = string.format('{"show_id":"%s","seats":["S%d-%d-%d"],"customer":{"id":"bench-%d","email":"fan%d@example.com","name":"Bench Fan"},"payment_method":"sim_ok"}', show, section, row, number, counter % 1000, counter % 1000)
  return wrk.format("POST", "/bookings", {["Content-Type"] = "application/json"}, body)
end
"#;

/// One closed-loop measurement with wrk: `connections` keep-alive connections on 2 threads.
async fn wrk_run(
    wrk: &Path,
    address: SocketAddr,
    show_id: &str,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<LoadRun> {
    let script = tempfile::Builder::new().suffix(".lua").tempfile()?;
    let per_section = ROWS * SEATS_PER_ROW;
    let text = WRK_SCRIPT
        .replace("__SEATS__", &(SECTIONS * per_section).to_string())
        .replace("__PER_SECTION__", &per_section.to_string())
        .replace("__PER_ROW__", &SEATS_PER_ROW.to_string());
    std::fs::write(script.path(), text)?;
    let output = tokio::process::Command::new(wrk)
        .args(["-t2", "--latency", "-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "-s"])
        .arg(script.path())
        .arg(format!("http://{address}"))
        .env("ZQ_BENCH_SHOW", show_id)
        .output()
        .await
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&stdout)
}

/// Accepted/s and latency from wrk's `--latency` report. Requests that were not 2xx are
/// counted as refused (the API answers nothing but 202 and 503 here).
fn parse_wrk(report: &str) -> anyhow::Result<LoadRun> {
    let field = |prefix: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix).map(str::trim))
            .with_context(|| format!("no {prefix:?} in wrk's report: {report}"))
    };
    let duration_of = |text: &str| -> anyhow::Result<u64> {
        // wrk prints e.g. 812.00us, 3.37ms, 1.02s: microseconds for the histogram.
        let (number, unit) =
            text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
        let value: f64 = number.parse()?;
        let micros = match unit {
            "us" => value,
            "ms" => value * 1e3,
            "s" => value * 1e6,
            "m" => value * 60e6,
            other => bail!("unknown unit {other:?} in wrk's report"),
        };
        Ok(micros.round() as u64)
    };
    let total: u64 = report
        .lines()
        .find_map(|line| {
            let (count, rest) = line.trim().split_once(' ')?;
            if rest.starts_with("requests in") {
                count.parse().ok()
            } else {
                None
            }
        })
        .context("no request count in wrk's report")?;
    let elapsed: f64 = report
        .lines()
        .find_map(|line| {
            let rest = line.split_once("requests in ")?.1;
            rest.split(',')
                .next()?
                .trim()
                .strip_suffix('s')?
                .parse()
                .ok()
        })
        .context("no duration in wrk's report")?;
    let refused: u64 = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(Ok(0), |count| count.trim().parse())?;
    let mut latency = Histogram::<u64>::new(3)?;
    // wrk reports percentiles, not every sample: record the two the report quotes.
    latency.record(duration_of(field("50%")?)?)?;
    latency.record(duration_of(field("99%")?)?)?;
    Ok(LoadRun {
        accepted_per_second: (total - refused) as f64 / elapsed,
        refused,
        latency,
    })
}

/// A booking of one or two seats, spread over the show, for customer `client`.
fn booking_request(show_id: &str, client: usize, request: u64) -> String {
    // A cheap spread of seats (no RNG needed): consecutive requests land far apart.
    let mixed = (request.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ client as u64) >> 7;
    let seat_count = u64::from(SECTIONS * ROWS * SEATS_PER_ROW);
    let first = mixed % seat_count;
    let seat = |index: u64| {
        let per_section = u64::from(ROWS * SEATS_PER_ROW);
        let section = index / per_section;
        let row = (index % per_section) / u64::from(SEATS_PER_ROW) + 1;
        let number = index % u64::from(SEATS_PER_ROW) + 1;
        format!("S{section}-{row}-{number}")
    };
    let mut seats = vec![seat(first)];
    if mixed.is_multiple_of(2) {
        seats.push(seat((first + 1) % seat_count));
    }
    serde_json::json!({
        "show_id": show_id,
        "seats": seats,
        "customer": {
            "id": format!("bench-{client}"),
            "email": format!("fan{client}@example.com"),
            "name": "Bench Fan",
        },
        "payment_method": "sim_ok",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read() {
        let report = "Running 5s test @ http://127.0.0.1:18080
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.53ms    1.53ms  31.26ms   95.50%
    Req/Sec     9.22k   600.00    10.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    4.00ms
     90%    5.00ms
     99%    1.02s
  93551 requests in 5.10s, 37.10MB read
  Non-2xx or 3xx responses: 51
Requests/sec:  18342.94
Transfer/sec:      7.27MB
";
        let run = parse_wrk(report).unwrap();
        assert_eq!(run.refused, 51);
        assert!((run.accepted_per_second - 93500.0 / 5.10).abs() < 0.01);
        assert_eq!(run.latency.value_at_quantile(0.5), 812);
        assert!((run.latency.value_at_quantile(0.99) as i64 - 1_020_000).abs() < 1000);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn booking_requests_name_existing_distinct_seats() {
        for request in 0..1000 {
            let body: serde_json::Value =
                serde_json::from_str(&booking_request("s", 3, request)).unwrap();
            let seats: Vec<&str> = body["seats"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            assert!(!seats.is_empty() && seats.len() <= 2);
            if seats.len() == 2 {
                assert_ne!(seats[0], seats[1]);
            }
            for seat in seats {
                let parts: Vec<u32> = seat[1..].split('-').map(|p| p.parse().unwrap()).collect();
                assert!(parts[0] < SECTIONS && (1..=ROWS).contains(&parts[1]));
                assert!((1..=SEATS_PER_ROW).contains(&parts[2]));
            }
        }
    }
}
