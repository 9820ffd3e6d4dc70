//! `zingqueue replay`: rebuild the read models from position 0 into shadow tables and switch
//! once caught up, or build a snapshot as of a position or time (`--until`), with a progress
//! bar (positions applied, rate, ETA).
//!
//! Where it runs: a `zingqueue up` on the same database advertises itself (a heartbeat in
//! `rm_replayers`); the replay is then handed to it through `POST /admin/replays` and followed
//! at `GET /admin/replays/{id}`, because the live runner to pause is in that process and
//! SQLite has one writer. Otherwise it runs here; a live runner in another process (`zingqueue
//! run projections`) needs no pausing: the switch locks its checkpoint, and its next batch
//! finds the checkpoint moved and goes on from the new one.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use projections::replay::ADVERTISE_EVERY;
use projections::{ReadModelDb, ReplayRequest, ReplayState, ReplayStatus, Replays, Until};

use crate::cli::{GlobalArgs, ReplayArgs};
use crate::http::Connection;

/// How often the progress bar asks a remote replay where it stands.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How long a running `up` may take to answer one request.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// An advertisement older than this is of a process that is gone.
const STALE_AFTER: Duration = ADVERTISE_EVERY.saturating_mul(3);

pub async fn run(global: &GlobalArgs, args: ReplayArgs) -> anyhow::Result<()> {
    let location = super::store_location(global)?;
    let store = event_store::open(location.url())
        .await
        .with_context(|| format!("opening the event store at {}", location.display_url()))?;
    let db = ReadModelDb::open(location.url())
        .await
        .context("opening the read models")?;
    let request = ReplayRequest {
        projection: Some(args.projection.clone()),
        until_position: match args.until {
            Some(Until::Position(position)) => Some(position.0),
            _ => None,
        },
        until_recorded_at: match args.until {
            Some(Until::RecordedAt(at)) => Some(at),
            _ => None,
        },
        snapshot: args.snapshot,
        batch_size: args.batch_size,
    };
    let running_up = if args.here {
        None
    } else {
        running_up(&db, &args.projection).await?
    };
    let last = match running_up {
        Some((api, connection)) => {
            println!("A zingqueue up at {api} keeps these read models: the replay runs there.");
            let embedded = matches!(location, infra::config::StoreLocation::Embedded { .. });
            let (admin, _) = super::admin_token::resolve(
                global.admin_token.as_deref(),
                embedded.then_some(global.data_dir.as_path()),
            )?;
            remote(&api, connection, admin.expose(), &request).await?
        }
        None => {
            let replays = Replays::new(store.clone(), db);
            let started = replays.start(request)?;
            let mut updates = replays
                .follow(started.id)
                .context("the replay just started is unknown")?;
            let mut progress = Progress::new(&started);
            loop {
                let status = updates.borrow_and_update().clone();
                progress.show(&status);
                if status.finished() {
                    break status;
                }
                // Wake on a change, or now and then to keep the rate fresh.
                let _ = tokio::time::timeout(FOLLOW_EVERY, updates.changed()).await;
            }
        }
    };
    store.close().await;
    report(&last)
}

/// A running `up` that takes replays, connected to. An advertisement that refuses
/// connections is a process that died without withdrawing it: its beat ages out within
/// [`STALE_AFTER`], and meanwhile a restarted `up` may advertise itself.
async fn running_up(
    db: &ReadModelDb,
    projection: &str,
) -> anyhow::Result<Option<(String, Connection)>> {
    let deadline = tokio::time::Instant::now() + STALE_AFTER;
    loop {
        let advertised = db.live_replayers(projection, STALE_AFTER).await?;
        if advertised.is_empty() {
            return Ok(None);
        }
        for api in &advertised {
            let Ok(address) = address_of(api).await else {
                continue;
            };
            if let Ok(connection) = Connection::open(address).await {
                return Ok(Some((api.clone(), connection)));
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "zingqueue up advertised itself at {advertised:?} for replays but does not answer; \
             if it is stopped, run the replay again in a few seconds (or with --here)"
        );
        tokio::time::sleep(ADVERTISE_EVERY / 2).await;
    }
}

/// Hand the replay to a running `up` and follow it there.
async fn remote(
    api: &str,
    mut connection: Connection,
    token: &str,
    request: &ReplayRequest,
) -> anyhow::Result<ReplayStatus> {
    let (status, body) = tokio::time::timeout(
        ANSWER_WITHIN,
        connection.send(
            "POST",
            "/admin/replays",
            Some(token),
            serde_json::to_string(request)?,
        ),
    )
    .await
    .with_context(|| {
        format!("the running up at {api} did not answer within {ANSWER_WITHIN:?}")
    })??;
    anyhow::ensure!(
        status == 202,
        "the running up at {api} refused the replay ({status}): {}",
        String::from_utf8_lossy(&body)
    );
    let started: ReplayStatus = serde_json::from_slice(&body)?;
    let path = format!("/admin/replays/{}", started.id);
    let mut progress = Progress::new(&started);
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let (status, body) = tokio::time::timeout(
            ANSWER_WITHIN,
            connection.send("GET", &path, Some(token), String::new()),
        )
        .await
        .map_err(anyhow::Error::from)
        .and_then(|answer| answer)
        .with_context(|| {
            format!(
                "lost the running up at {api} while following replay {}; if it stopped, \
                     the live read models are as they were: run the replay again",
                started.id
            )
        })?;
        anyhow::ensure!(
            status == 200,
            "asking {api} about replay {} gave {status}: {}",
            started.id,
            String::from_utf8_lossy(&body)
        );
        let current: ReplayStatus = serde_json::from_slice(&body)?;
        progress.show(&current);
        if current.finished() {
            return Ok(current);
        }
    }
}

/// `http://host:port` as a socket address.
async fn address_of(api: &str) -> anyhow::Result<SocketAddr> {
    let authority = api
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("resolving {api}"))?
        .next()
        .with_context(|| format!("{api} resolves to no address"))
}

/// The progress bar: log positions applied of the target, the rate and the ETA.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(started: &ReplayStatus) -> Progress {
        let bar = ProgressBar::new(started.target.max(1));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {human_pos}/{human_len} positions  {per_sec}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Progress { bar }
    }

    fn show(&mut self, status: &ReplayStatus) {
        self.bar
            .set_length(status.target.max(status.position).max(1));
        self.bar.set_position(status.position);
        self.bar.set_message(match status.state {
            ReplayState::Building => "building",
            ReplayState::Switching => "switching",
            ReplayState::Done => "done",
            ReplayState::Failed => "failed",
        });
        if status.finished() {
            self.bar.finish();
        }
    }
}

fn report(status: &ReplayStatus) -> anyhow::Result<()> {
    let seconds = status
        .finished_at
        .map(|end| (end - status.started_at).num_milliseconds() as f64 / 1000.0)
        .unwrap_or_default();
    match (status.state, &status.snapshot) {
        (ReplayState::Done, None) => {
            println!(
                "Switched: the read models were rebuilt from the log and are live at position \
                 {} ({:.1} s, {:.0} positions/s).",
                status.position, seconds, status.events_per_second
            );
            Ok(())
        }
        (ReplayState::Done, Some(name)) => {
            println!(
                "Snapshot {name} holds the read models as of {} (position {}): tables {}. \
                 The live read models are untouched.",
                match (status.until_position, status.until_recorded_at) {
                    (Some(position), _) => format!("position {position}"),
                    (None, Some(at)) => at.to_rfc3339(),
                    (None, None) => "now".to_string(),
                },
                status.position,
                status.tables.join(", ")
            );
            Ok(())
        }
        _ => anyhow::bail!(
            "replay {} failed: {}; the live read models are as they were",
            status.id,
            status.error.as_deref().unwrap_or("no reason given")
        ),
    }
}
