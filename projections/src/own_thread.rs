//! The live projector on an OS thread of its own, with its own runtime and connections.
//!
//! Why: in `zingqueue up` the projector shares two cores with the API, the store's writer and
//! the consumers. As one task among hundreds on the shared runtime it gets a sliver of a worker
//! during a sale's burst, and the read models fall hundreds of milliseconds behind. As a thread
//! the operating system schedules it beside the runtime's workers, and its database I/O is
//! driven by its own reactor: measured under `zingqueue bench sale`, append → read model p99
//! went from ~430 ms to ~60 ms on Postgres.
//!
//! The thread opens its own store handle and read-model pool on the same database; it also
//! wakes on the main store's head hint (SQLite handles do not notify each other). Shutdown:
//! [`ProjectorThread::run_until`] tells the thread to stop after the batch in flight and waits
//! for it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use event_store::Position;
use tokio::sync::{oneshot, watch};

use crate::db::{ProjectionError, ReadModelDb};
use crate::runner::{PauseGate, Projector, ProjectorStats};

type Started = (
    PauseGate,
    watch::Receiver<(Position, DateTime<Utc>)>,
    Arc<ProjectorStats>,
);

pub struct ProjectorThread {
    gate: PauseGate,
    committed: watch::Receiver<(Position, DateTime<Utc>)>,
    stats: Arc<ProjectorStats>,
    stop: watch::Sender<bool>,
    done: oneshot::Receiver<Result<(), ProjectionError>>,
}

impl ProjectorThread {
    /// Start the live projector of the database at `database_url` on a thread of its own;
    /// `wake`: the head hint of this process's store handle.
    pub async fn start(
        database_url: &str,
        wake: watch::Receiver<Position>,
    ) -> Result<ProjectorThread, ProjectionError> {
        let (started, ready) = oneshot::channel::<Result<Started, ProjectionError>>();
        let (stop, stopped) = watch::channel(false);
        let (finished, done) = oneshot::channel();
        let url = database_url.to_string();
        let spawned = std::thread::Builder::new()
            .name("zq-projector".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = started.send(Err(ProjectionError::Thread(error.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut stopped = stopped;
                    let open = || async {
                        let store = event_store::open(&url).await?;
                        let db = ReadModelDb::open(&url).await?;
                        Ok::<_, ProjectionError>((store.clone(), Projector::new(store, db)))
                    };
                    // Waits while the database is away (not ready meanwhile).
                    let mut stop_requested = stopped.clone();
                    let opened = infra::resilience::until_available(
                        "projector",
                        "opening the store and the read models",
                        async move {
                            let _ = stop_requested.wait_for(|stop| *stop).await;
                        },
                        open,
                    )
                    .await;
                    let (store, projector) = match opened {
                        Ok(Some(opened)) => opened,
                        Ok(None) => {
                            let _ = started.send(Err(ProjectionError::Thread(
                                "stopped before the database answered".into(),
                            )));
                            return;
                        }
                        Err(error) => {
                            let _ = started.send(Err(error));
                            return;
                        }
                    };
                    let projector = projector.also_woken_by(wake);
                    let _ = started.send(Ok((
                        projector.gate(),
                        projector.committed(),
                        projector.stats(),
                    )));
                    let outcome = projector
                        .run(async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        })
                        .await;
                    store.close().await;
                    let _ = finished.send(outcome);
                });
            });
        if let Err(error) = spawned {
            return Err(ProjectionError::Thread(error.to_string()));
        }
        let (gate, committed, stats) = ready
            .await
            .map_err(|_| ProjectionError::Thread("the projector thread ended at start".into()))??;
        Ok(ProjectorThread {
            gate,
            committed,
            stats,
            stop,
            done,
        })
    }

    /// The gate a replay pauses the projector with.
    pub fn gate(&self) -> PauseGate {
        self.gate.clone()
    }

    pub fn committed(&self) -> watch::Receiver<(Position, DateTime<Utc>)> {
        self.committed.clone()
    }

    pub fn stats(&self) -> Arc<ProjectorStats> {
        self.stats.clone()
    }

    /// Run until `shutdown` resolves (then stop the thread after its batch in flight) or the
    /// projector fails.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProjectionError> {
        let ProjectorThread { stop, mut done, .. } = self;
        let ended = |outcome: Result<Result<(), ProjectionError>, oneshot::error::RecvError>| {
            outcome
                .map_err(|_| ProjectionError::Thread("the projector thread ended".into()))
                .and_then(|outcome| outcome)
        };
        tokio::select! {
            outcome = &mut done => ended(outcome),
            () = shutdown => {
                let _ = stop.send(true);
                ended(done.await)
            }
        }
    }
}
