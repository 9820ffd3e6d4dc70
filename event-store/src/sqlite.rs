//! The SQLite backend, for the embedded default.
//!
//! SQLite has one writer at a time, which is exactly the discipline the log needs: each batch
//! runs in one `BEGIN IMMEDIATE` transaction on the writer task's own connection, allocates
//! positions as `max + 1` and commits. Readers use a separate small pool; WAL mode lets them read
//! while the writer writes. `synchronous = FULL`: a booking the API has accepted survives a power
//! cut, not only a crash.
//!
//! There is no cross-process notification in SQLite: the writer wakes this process's readers
//! through the head hint, and readers in other processes (e.g. a replay tool) poll.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{AppendResult, Position, RecordedEvent, StreamAppend};
use crate::ops::{
    ConsumerProgress, DeadLetter, DeadLetterCount, DeadLetterQuery, DeadLetterStatus,
    MemberCounters, NewDeadLetter,
};
use crate::plan::{PlannedRow, StoredEventRef, plan_batch};
use crate::row::{EventRow, from_i64, recorded_events, to_i64};
use crate::store::EventStore;
use crate::writer::{BatchSink, Writer};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row statement: 12 bound values a row stays well under SQLite's 32766.
const ROWS_PER_STATEMENT: usize = 1000;

pub struct SqliteEventStore {
    pool: SqlitePool,
    /// One read-write connection for the small writes besides appends (checkpoints); SQLite
    /// serializes it with the writer, waiting up to the busy timeout.
    side_writes: SqlitePool,
    writer: Writer,
    head_hint: watch::Receiver<Position>,
}

impl SqliteEventStore {
    /// Open (creating if missing) the database a `sqlite://path` URL names and migrate it.
    ///
    /// Several processes (or stores) opening one new file at once contend for it: turning on WAL,
    /// migrating and the first reads can meet `SQLITE_BUSY` in places where SQLite does not call
    /// the busy handler (a read transaction upgrading to a write, WAL recovery). Those are retried
    /// as a whole, with growing pauses, for up to [`OPEN_DEADLINE`]; any other error is returned.
    pub async fn open(database_url: &str) -> Result<SqliteEventStore, StoreError> {
        // The writer and the readers are separate connections: an in-memory database would give
        // each its own, empty one.
        if database_url.contains(":memory:") || database_url.contains("mode=memory") {
            return Err(StoreError::UnsupportedUrl(database_url.to_string()));
        }
        let options = SqliteConnectOptions::from_str(database_url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        let mut attempt = 1;
        loop {
            match Self::open_once(&options).await {
                Ok(store) => return Ok(store),
                Err(error)
                    if is_contention(&error, attempt) && started.elapsed() < OPEN_DEADLINE =>
                {
                    attempt += 1;
                    tracing::debug!(%error, "SQLite database busy while opening; retrying");
                    // Offset by the process id so that racing processes do not retry in step.
                    let stagger = Duration::from_millis(u64::from(std::process::id() % 7));
                    tokio::time::sleep(pause + stagger).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn open_once(options: &SqliteConnectOptions) -> Result<SqliteEventStore, StoreError> {
        let mut writer = SqliteConnection::connect_with(options).await?;
        MIGRATOR.run(&mut writer).await?;
        let side_writes = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().read_only(true))
            .await?;
        let head = read_head(&pool).await?;
        let (hint_sender, head_hint) = watch::channel(head);
        let gate = write_gate(options.get_filename());
        let writer = Writer::spawn(SqliteBatchSink { writer, gate }, hint_sender);
        Ok(SqliteEventStore {
            pool,
            side_writes,
            writer,
            head_hint,
        })
    }

    /// The read pool (read-only connections).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// The in-process turn to write one SQLite file: the store's writer and the read models'
/// projector (same process, same file) take it around each write transaction.
///
/// SQLite lets one writer in at a time, and a writer that finds the file locked sleeps in the
/// busy handler (1, 2, 5, 10, … up to 100 ms a step) instead of queueing. Under a steady stream
/// of appends a second writer in the same process can lose that race many times in a row,
/// hundreds of milliseconds of lag for the read models. This gate queues them fairly (FIFO)
/// instead, so each waits for at most the transaction in progress. Writers in other processes
/// still meet the busy handler.
pub type WriteGate = std::sync::Arc<tokio::sync::Mutex<()>>;

/// The gate of the SQLite file `path` (one per file per process).
pub fn write_gate(path: &std::path::Path) -> WriteGate {
    static GATES: std::sync::OnceLock<std::sync::Mutex<HashMap<std::path::PathBuf, WriteGate>>> =
        std::sync::OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut gates = GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    gates.entry(key).or_default().clone()
}

/// How long [`SqliteEventStore::open`] keeps retrying a database other openers keep busy.
const OPEN_DEADLINE: Duration = Duration::from_secs(30);

/// An error of opening that another connection's work causes and a retry clears: SQLite's BUSY
/// or LOCKED. SQLite's migrator takes no lock either, so two processes migrating a new database
/// at once race; the loser's migration fails as a whole (each runs in a transaction with its
/// bookkeeping, and the error can be a unique violation as well as BUSY) and a retry finds it
/// applied. A migration that fails for its own reasons fails the same way every time, so it is
/// retried only a few times.
fn is_contention(error: &StoreError, attempt: u32) -> bool {
    match error {
        StoreError::Migration(_) => attempt < 5,
        other => other.is_transient(),
    }
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append_many(&self, streams: Vec<StreamAppend>) -> Result<AppendResult, StoreError> {
        self.writer.submit(streams).await
    }

    async fn close(&self) {
        self.writer.close().await;
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(&format!(
            "{SELECT_EVENTS} WHERE stream_id = ? AND stream_version > ? ORDER BY stream_version"
        ))
        .bind(stream_id)
        .bind(to_i64(after_version))
        .fetch_all(&self.pool)
        .await?;
        recorded_events(rows)
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(&format!(
            "{SELECT_EVENTS} WHERE position > ? ORDER BY position LIMIT ?"
        ))
        .bind(to_i64(after.0))
        .bind(to_i64(limit as u64))
        .fetch_all(&self.pool)
        .await?;
        recorded_events(rows)
    }

    async fn head(&self) -> Result<Position, StoreError> {
        read_head(&self.pool).await
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM zq_checkpoints WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        position
            .map(|position| Ok(Position(from_i64(position, position)?)))
            .transpose()
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO zq_checkpoints (name, position, updated_at)
             VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             ON CONFLICT (name) DO UPDATE
                SET position = max(zq_checkpoints.position, excluded.position),
                    updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(to_i64(position.0))
        .execute(&self.side_writes)
        .await?;
        Ok(())
    }

    fn head_hint(&self) -> watch::Receiver<Position> {
        self.head_hint.clone()
    }

    async fn record_dead_letter(&self, letter: &NewDeadLetter) -> Result<(i64, bool), StoreError> {
        operations::record_dead_letter(&self.side_writes, letter).await
    }

    async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        operations::dead_letter(&self.pool, id).await
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        operations::dead_letters(&self.pool, query).await
    }

    async fn request_redrive(&self, id: i64) -> Result<Option<DeadLetterStatus>, StoreError> {
        operations::request_redrive(&self.side_writes, id).await
    }

    async fn pending_redrives(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        operations::pending_redrives(&self.pool, group, limit).await
    }

    async fn claim_redrive(&self, id: i64) -> Result<bool, StoreError> {
        operations::claim_redrive(&self.side_writes, id).await
    }

    async fn finish_redrive(&self, id: i64, failure: Option<&str>) -> Result<(), StoreError> {
        operations::finish_redrive(&self.side_writes, id, failure).await
    }

    async fn unmirrored_dead_letters(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        operations::unmirrored_dead_letters(&self.pool, group, limit).await
    }

    async fn mark_dead_letter_mirrored(&self, id: i64) -> Result<(), StoreError> {
        operations::mark_dead_letter_mirrored(&self.side_writes, id).await
    }

    async fn save_consumer_progress(
        &self,
        progress: &[ConsumerProgress],
    ) -> Result<(), StoreError> {
        operations::save_consumer_progress(&self.side_writes, progress).await
    }

    async fn consumer_progress(&self) -> Result<Vec<ConsumerProgress>, StoreError> {
        operations::consumer_progress(&self.pool).await
    }

    async fn dead_letter_counts(&self) -> Result<Vec<DeadLetterCount>, StoreError> {
        operations::dead_letter_counts(&self.pool).await
    }

    async fn save_member_counters(&self, counters: &MemberCounters) -> Result<(), StoreError> {
        operations::save_member_counters(&self.side_writes, counters).await
    }

    async fn next_generation(&self, name: &str) -> Result<u64, StoreError> {
        operations::next_generation(&self.side_writes, name).await
    }

    async fn member_counters(&self) -> Result<Vec<MemberCounters>, StoreError> {
        operations::member_counters(&self.pool).await
    }
}

mod operations {
    crate::ops::operations!(sqlx::SqlitePool, sqlx::sqlite::SqliteRow);
}

const SELECT_EVENTS: &str = "SELECT position, event_id, stream_id, stream_version, event_type, \
     data, correlation_id, causation_id, partition_key, trace_context, occurred_at, recorded_at \
     FROM zq_events";

async fn read_head<'c, E>(executor: E) -> Result<Position, StoreError>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM zq_events")
        .fetch_one(executor)
        .await?;
    Ok(Position(from_i64(head, head)?))
}

struct SqliteBatchSink {
    writer: SqliteConnection,
    gate: WriteGate,
}

impl BatchSink for SqliteBatchSink {
    async fn write_batch<'a>(
        &'a mut self,
        appends: &'a [&'a [StreamAppend]],
    ) -> Result<(Vec<Result<AppendResult, StoreError>>, Position), StoreError> {
        let _turn = self.gate.clone().lock_owned().await;
        // IMMEDIATE takes the write lock now, so that no other process can write between our
        // reads and our inserts.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let head = read_head(&mut *tx).await?;

        let streams = appends.iter().flat_map(|a| a.iter());
        let stream_ids: HashSet<&str> = streams.clone().map(|s| s.stream_id.as_str()).collect();
        let event_ids: Vec<Uuid> = streams
            .flat_map(|s| s.events.iter().map(|e| e.event_id))
            .collect();
        let versions = stream_versions(&mut tx, stream_ids).await?;
        let stored = stored_events(&mut tx, &event_ids).await?;

        let plan = plan_batch(appends, versions, stored, head);
        for chunk in plan.rows.chunks(ROWS_PER_STATEMENT) {
            insert_rows(&mut tx, chunk).await?;
        }
        tx.commit().await?;
        Ok((plan.outcomes, plan.head))
    }
}

async fn stream_versions(
    tx: &mut Transaction<'_, Sqlite>,
    stream_ids: HashSet<&str>,
) -> Result<HashMap<String, u64>, StoreError> {
    let mut versions = HashMap::with_capacity(stream_ids.len());
    for stream_id in stream_ids {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(stream_version) FROM zq_events WHERE stream_id = ?")
                .bind(stream_id)
                .fetch_one(&mut **tx)
                .await?;
        if let Some(version) = version {
            versions.insert(stream_id.to_string(), from_i64(version, -1)?);
        }
    }
    Ok(versions)
}

async fn stored_events(
    tx: &mut Transaction<'_, Sqlite>,
    event_ids: &[Uuid],
) -> Result<HashMap<Uuid, StoredEventRef>, StoreError> {
    let mut stored = HashMap::new();
    for chunk in event_ids.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT event_id, stream_id, stream_version, position FROM zq_events \
             WHERE event_id IN (",
        );
        let mut list = query.separated(", ");
        for event_id in chunk {
            list.push_bind(*event_id);
        }
        query.push(")");
        for row in query.build().fetch_all(&mut **tx).await? {
            let position: i64 = row.try_get("position")?;
            let version: i64 = row.try_get("stream_version")?;
            stored.insert(
                row.try_get("event_id")?,
                StoredEventRef {
                    stream_id: row.try_get("stream_id")?,
                    stream_version: from_i64(version, position)?,
                    position: Position(from_i64(position, position)?),
                },
            );
        }
    }
    Ok(stored)
}

async fn insert_rows(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[PlannedRow<'_>],
) -> Result<(), StoreError> {
    let mut query = QueryBuilder::<Sqlite>::new(
        "INSERT INTO zq_events (position, event_id, stream_id, stream_version, event_type, data, \
         correlation_id, causation_id, partition_key, trace_context, occurred_at) ",
    );
    query.push_values(rows, |mut values, row| {
        let event = row.event;
        values
            .push_bind(to_i64(row.position.0))
            .push_bind(event.event_id)
            .push_bind(row.stream_id)
            .push_bind(to_i64(row.stream_version))
            .push_bind(event.event_type.as_str())
            .push_bind(event.data())
            .push_bind(event.metadata.correlation_id)
            .push_bind(event.metadata.causation_id)
            .push_bind(event.metadata.partition_key.as_deref())
            .push_bind(event.metadata.trace_context.as_deref())
            .push_bind(event.metadata.occurred_at);
    });
    query.build().execute(&mut **tx).await?;
    Ok(())
}
