//! Replays: rebuilding the read models from position zero without taking the queries down.
//!
//! A **rebuild** writes into the shadow tables ([`TableSet::Shadow`]) while the live runner
//! and the queries go on with the live ones. Once the shadow is near the head, the replay
//! pauses the live runner (its [`PauseGate`], when it runs in this process), applies the
//! tail, and [switches](ReadModelDb::switch): tables and checkpoint in one transaction. A live
//! runner in another process needs no gate: the switch locks the live checkpoint row, and that
//! runner's next batch finds the checkpoint moved and goes on from the new one.
//!
//! A **snapshot** ([`Until`]) builds the state as of a position or a time into
//! `rm_*__snap_<name>` tables for inspection and switches nothing.
//!
//! A replay killed halfway leaves the live tables as they were (the shadow is only ever
//! renamed, in the switch's transaction); the next one drops the leftover shadow and starts
//! again from zero, so that a rebuild always reflects one build of the projection code.
//!
//! [`Replays`] runs one replay at a time in the background and reports its [`ReplayStatus`]:
//! `zingqueue replay` uses it directly, or through the admin routes of a running
//! `zingqueue up`, which advertises itself with [`Replays::advertise`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use event_store::{EventStore, Position};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{ProjectionError, ReadModelDb, TABLES, TableSet};
use crate::runner::{PauseGate, Projector, READ_MODELS, Until};

/// The projections a replay can rebuild (all the read models are one projection: they share
/// a checkpoint and are written in one transaction).
pub const PROJECTIONS: &[&str] = &[READ_MODELS];

/// Events per transaction while rebuilding on Postgres.
const POSTGRES_BATCH: usize = 5_000;
/// On SQLite a batch holds the one write lock the event store's appends also need: smaller
/// batches keep a rebuild inside `up` from stalling the command API.
const SQLITE_BATCH: usize = 1_000;
/// The live runner is paused for the switch only once the rebuild is this many batches or
/// fewer behind the head.
const SWITCH_GAP_BATCHES: u64 = 2;
/// How long a rebuild may chase a head that keeps running away before it gives up.
const CHASE_LIMIT: Duration = Duration::from_secs(300);
/// Finished replays whose status is kept for the admin route.
const KEPT_STATUSES: usize = 16;
/// Switch attempts before giving up (one fails only if a live runner in another process
/// moved ahead of the shadow in the meantime, or a lock on the live tables was held too long).
const SWITCH_ATTEMPTS: u32 = 20;
/// A running process that takes replays beats this often in `rm_replayers`.
pub const ADVERTISE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("unknown projection {0:?}: known are {PROJECTIONS:?}")]
    UnknownProjection(String),
    #[error("replay {0} is still running; wait for it or follow it")]
    AlreadyRunning(Uuid),
    #[error("give a snapshot one bound: a position or a time, not both")]
    TwoBounds,
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// What to replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
pub struct ReplayRequest {
    /// Defaults to the read models.
    #[serde(default)]
    pub projection: Option<String>,
    /// Build a snapshot up to this log position instead of rebuilding the live tables.
    #[serde(default)]
    pub until_position: Option<u64>,
    /// Build a snapshot of what was recorded by this time (the database clock).
    #[serde(default)]
    pub until_recorded_at: Option<DateTime<Utc>>,
    /// The snapshot's name (`[a-z0-9_]`, at most 24); derived from the bound if absent.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Events per transaction (default: 5,000 on Postgres, 1,000 on SQLite).
    #[serde(default)]
    pub batch_size: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayState {
    /// Applying the log to the shadow (or snapshot) tables.
    Building,
    /// The live runner is paused while the tail is applied and the tables are switched.
    Switching,
    Done,
    Failed,
}

/// Where a replay stands (what the admin route answers and the progress bar shows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplayStatus {
    pub id: Uuid,
    pub projection: String,
    /// `live` (rebuild and switch) or `snapshot`.
    pub into: String,
    pub snapshot: Option<String>,
    /// The tables this replay writes.
    pub tables: Vec<String>,
    pub until_position: Option<u64>,
    pub until_recorded_at: Option<DateTime<Utc>>,
    pub state: ReplayState,
    /// The log position applied so far.
    pub position: u64,
    /// The position the replay is heading for (the head, as last read, or the bound).
    pub target: u64,
    pub events_per_second: f64,
    /// How long the live runner was paused for the tail and the switch (rebuilds only).
    pub paused_ms: Option<u64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

impl ReplayStatus {
    pub fn finished(&self) -> bool {
        matches!(self.state, ReplayState::Done | ReplayState::Failed)
    }
}

/// Runs replays in the background, one at a time, and keeps their status.
#[derive(Clone)]
pub struct Replays {
    store: Arc<dyn EventStore>,
    /// The live tables.
    db: ReadModelDb,
    /// The live runner of this process, if one runs here.
    live_gate: Option<PauseGate>,
    replays: Arc<Mutex<HashMap<Uuid, watch::Receiver<ReplayStatus>>>>,
}

impl Replays {
    pub fn new(store: Arc<dyn EventStore>, db: ReadModelDb) -> Replays {
        Replays {
            store,
            db: db.with_tables(TableSet::Live),
            live_gate: None,
            replays: Arc::default(),
        }
    }

    /// The live runner of this process: a rebuild pauses it to switch.
    pub fn with_live_runner(self, live: &Projector) -> Replays {
        self.with_live_gate(live.gate())
    }

    /// The gate of this process's live runner (see [`Projector::gate`]).
    pub fn with_live_gate(mut self, gate: PauseGate) -> Replays {
        self.live_gate = Some(gate);
        self
    }

    /// Start a replay in the background; fails when one is still running.
    pub fn start(&self, request: ReplayRequest) -> Result<ReplayStatus, ReplayError> {
        let projection = request
            .projection
            .clone()
            .unwrap_or_else(|| READ_MODELS.to_string());
        if !PROJECTIONS.contains(&projection.as_str()) {
            return Err(ReplayError::UnknownProjection(projection));
        }
        let until = match (request.until_position, request.until_recorded_at) {
            (Some(_), Some(_)) => return Err(ReplayError::TwoBounds),
            (Some(position), None) => Some(Until::Position(Position(position))),
            (None, Some(at)) => Some(Until::RecordedAt(at)),
            (None, None) => None,
        };
        let snapshot = match (&request.snapshot, until) {
            (Some(name), _) => Some(name.clone()),
            (None, Some(Until::Position(position))) => Some(format!("at_{}", position.0)),
            (None, Some(Until::RecordedAt(at))) => {
                Some(format!("at_{}", at.format("%Y%m%d_%H%M%S")))
            }
            (None, None) => None,
        };
        let tables = match &snapshot {
            Some(name) => TableSet::snapshot(name)?,
            None => TableSet::Shadow,
        };
        let mut replays = self
            .replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(running) = replays.values().find(|status| !status.borrow().finished()) {
            return Err(ReplayError::AlreadyRunning(running.borrow().id));
        }
        let status = ReplayStatus {
            id: Uuid::now_v7(),
            projection: projection.clone(),
            into: if snapshot.is_some() {
                "snapshot"
            } else {
                "live"
            }
            .to_string(),
            snapshot: snapshot.clone(),
            tables: TABLES.iter().map(|base| tables.table(base)).collect(),
            until_position: request.until_position,
            until_recorded_at: request.until_recorded_at,
            state: ReplayState::Building,
            position: 0,
            target: 0,
            events_per_second: 0.0,
            paused_ms: None,
            started_at: Utc::now(),
            finished_at: None,
            error: None,
        };
        let (report, follow) = watch::channel(status.clone());
        // Ids are UUIDv7: the oldest finished ones go first.
        let finished: Vec<Uuid> = replays
            .iter()
            .filter(|(_, status)| status.borrow().finished())
            .map(|(id, _)| *id)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for id in finished
            .iter()
            .take(finished.len().saturating_sub(KEPT_STATUSES))
        {
            replays.remove(id);
        }
        replays.insert(status.id, follow);
        let job = Job {
            store: self.store.clone(),
            live: self.db.clone(),
            live_gate: self.live_gate.clone(),
            projection,
            tables,
            until,
            batch_size: request.batch_size,
            report,
            started: Instant::now(),
        };
        let span = info_span!("replay", replay_id = %status.id, into = %status.into);
        tokio::spawn(job.run().instrument(span));
        Ok(status)
    }

    pub fn status(&self, id: Uuid) -> Option<ReplayStatus> {
        let replays = self
            .replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        replays.get(&id).map(|status| status.borrow().clone())
    }

    /// Every status change of a replay, until it finishes.
    pub fn follow(&self, id: Uuid) -> Option<watch::Receiver<ReplayStatus>> {
        let replays = self
            .replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        replays.get(&id).cloned()
    }

    /// Tell `zingqueue replay` run elsewhere that this process takes replays at `api`, until
    /// `shutdown` resolves (a beat every [`ADVERTISE_EVERY`]).
    /// Failures only log: a process that cannot advertise still runs replays it is asked for.
    pub async fn advertise(&self, api: &str, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(error) = self.db.advertise_replayer(READ_MODELS, api).await {
                warn!(%error, "could not advertise this process for replays");
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(ADVERTISE_EVERY) => {}
            }
        }
        if let Err(error) = self.db.withdraw_replayer(READ_MODELS, api).await {
            warn!(%error, "could not withdraw this process from replays (it ages out)");
        }
    }
}

/// One replay, run in its own task.
struct Job {
    store: Arc<dyn EventStore>,
    live: ReadModelDb,
    live_gate: Option<PauseGate>,
    projection: String,
    tables: TableSet,
    until: Option<Until>,
    batch_size: Option<usize>,
    report: watch::Sender<ReplayStatus>,
    started: Instant,
}

impl Job {
    async fn run(self) {
        let outcome = match self.tables {
            TableSet::Snapshot(_) => self.snapshot().await,
            _ => self.rebuild().await,
        };
        self.report.send_modify(|status| {
            status.finished_at = Some(Utc::now());
            match &outcome {
                Ok(position) => {
                    status.state = ReplayState::Done;
                    status.position = position.0;
                }
                Err(failure) => {
                    status.state = ReplayState::Failed;
                    status.error = Some(failure.to_string());
                }
            }
        });
        match outcome {
            Ok(position) => info!(%position, "replay done"),
            Err(error) => error!(%error, "replay failed"),
        }
    }

    fn builder(&self) -> Projector {
        let db = self.live.with_tables(self.tables.clone());
        let batch = self.batch_size.unwrap_or(if db.is_sqlite() {
            SQLITE_BATCH
        } else {
            POSTGRES_BATCH
        });
        let builder = Projector::new(self.store.clone(), db).with_batch_size(batch);
        match self.until {
            Some(until) => builder.until(until),
            None => builder,
        }
    }

    fn progress(&self, position: Position, target: Position, state: ReplayState) {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        self.report.send_modify(|status| {
            status.position = position.0;
            status.target = target.0;
            status.state = state;
            status.events_per_second = position.0 as f64 / elapsed;
        });
    }

    /// Apply batches until `builder` reaches its target as read at the start.
    async fn build(
        &self,
        builder: &Projector,
        mut position: Position,
        state: ReplayState,
    ) -> Result<Position, ProjectionError> {
        let target = builder.target().await?;
        self.progress(position, target, state);
        while position < target {
            position = builder.apply_next_batch(position).await?;
            self.progress(position, target, state);
        }
        Ok(position)
    }

    /// Start the set afresh: leftovers of a replay killed halfway are dropped.
    async fn fresh_tables(&self, builder: &Projector) -> Result<(), ProjectionError> {
        builder.db().drop_tables(&self.projection).await?;
        builder.db().create_tables(false).await
    }

    async fn snapshot(&self) -> Result<Position, ProjectionError> {
        let builder = self.builder();
        self.fresh_tables(&builder).await?;
        let position = self
            .build(&builder, Position::START, ReplayState::Building)
            .await?;
        builder.db().create_tables(true).await?;
        Ok(position)
    }

    async fn rebuild(&self) -> Result<Position, ProjectionError> {
        let builder = self.builder();
        self.fresh_tables(&builder).await?;
        let mut position = self
            .build(&builder, Position::START, ReplayState::Building)
            .await?;
        builder.db().prepare_switch().await?;
        let chasing_since = Instant::now();
        for attempt in 1..=SWITCH_ATTEMPTS {
            position = self.chase(&builder, position, chasing_since).await?;
            // The live runner pauses only for the last couple of batches and the switch.
            let paused_at = Instant::now();
            let paused = match &self.live_gate {
                Some(gate) => Some(gate.pause().await),
                None => None,
            };
            position = self
                .build(&builder, position, ReplayState::Switching)
                .await?;
            let switched = self.live.switch(&self.projection).await;
            drop(paused);
            let paused_ms = u64::try_from(paused_at.elapsed().as_millis()).unwrap_or(u64::MAX);
            match switched {
                Ok(live) => {
                    self.report
                        .send_modify(|status| status.paused_ms = Some(paused_ms));
                    info!(position = %live, paused_ms, "switched to the rebuilt read models");
                    return Ok(live);
                }
                Err(ProjectionError::ShadowBehind { shadow, live }) => {
                    info!(%shadow, %live, attempt,
                        "a live runner elsewhere is ahead of the rebuild; catching up again");
                }
                Err(ProjectionError::SwitchBlocked(reason)) => {
                    warn!(%reason, attempt, "the switch could not lock the live tables; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(error),
            }
        }
        Err(ProjectionError::ShadowBehind {
            shadow: position,
            live: self.live.checkpoint(&self.projection).await?,
        })
    }

    /// Apply batches until the shadow is within [`SWITCH_GAP_BATCHES`] batches of the head, so
    /// that the live runner's pause covers little. A log growing faster than the rebuild for
    /// [`CHASE_LIMIT`] fails the replay rather than pausing the live runner for long.
    async fn chase(
        &self,
        builder: &Projector,
        mut position: Position,
        since: Instant,
    ) -> Result<Position, ProjectionError> {
        let close_enough = SWITCH_GAP_BATCHES * builder.batch_size() as u64;
        loop {
            let head = self.store.head().await?;
            if head.0.saturating_sub(position.0) <= close_enough {
                return Ok(position);
            }
            if since.elapsed() > CHASE_LIMIT {
                return Err(ProjectionError::CannotCatchUp {
                    behind: head.0 - position.0,
                    seconds: CHASE_LIMIT.as_secs(),
                });
            }
            position = self.build(builder, position, ReplayState::Building).await?;
        }
    }
}
