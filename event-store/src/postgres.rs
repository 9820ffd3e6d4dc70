//! The Postgres backend.
//!
//! One writer task per store (see [`crate::writer`]) writes each batch in one transaction of four
//! round trips: begin and lock the log head row; read the head, the versions of the batch's
//! streams and whichever of its event ids are stored already; plan, then insert every accepted
//! row with one `unnest` insert that also moves the head and `NOTIFY`s `zq_events` with it;
//! commit. Other processes appending to the same database take the
//! same row lock, so positions stay dense and in commit order across processes too.
//!
//! Readers are woken by `LISTEN zq_events` (a task per store keeps a listener connection and
//! reconnects when it drops) and by the store's own commits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{AppendResult, Position, RecordedEvent, StreamAppend};
use crate::ops::{
    ConsumerProgress, DeadLetter, DeadLetterCount, DeadLetterQuery, DeadLetterStatus,
    MemberCounters, NewDeadLetter,
};
use crate::plan::{StoredEventRef, plan_batch};
use crate::row::{EventRow, from_i64, recorded_events, to_i64};
use crate::store::EventStore;
use crate::writer::{BatchSink, Writer, announce};

/// The channel the store notifies with the new head after each commit.
const NOTIFY_CHANNEL: &str = "zq_events";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PostgresEventStore {
    pool: PgPool,
    writer: Writer,
    head_hint: watch::Receiver<Position>,
    listener: JoinHandle<()>,
}

impl PostgresEventStore {
    /// Connect with a pool of default size and migrate the schema.
    pub async fn connect(database_url: &str) -> Result<PostgresEventStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(crate::POOL_ACQUIRE_TIMEOUT)
            .connect(database_url)
            .await?;
        PostgresEventStore::with_pool(pool).await
    }

    /// Use an existing pool (the caller sizes it) for reads, migrating the schema first. The
    /// writer and the LISTEN task keep a connection each of their own, so that busy readers never
    /// hold up appends.
    pub async fn with_pool(pool: PgPool) -> Result<PostgresEventStore, StoreError> {
        MIGRATOR.run(&pool).await?;
        let head = read_head(&pool).await?;
        let (hint_sender, head_hint) = watch::channel(head);
        let listener = tokio::spawn(listen_for_appends(pool.clone(), hint_sender.clone()));
        let sink = PgBatchSink {
            options: pool.connect_options(),
            connection: None,
        };
        let writer = Writer::spawn(sink, hint_sender);
        Ok(PostgresEventStore {
            pool,
            writer,
            head_hint,
            listener,
        })
    }

    /// The pool, for the read models and tools that share this database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Drop for PostgresEventStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
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
            "{SELECT_EVENTS} WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version"
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
            "{SELECT_EVENTS} WHERE position > $1 ORDER BY position LIMIT $2"
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
            sqlx::query_scalar("SELECT position FROM zq_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        position
            .map(|position| Ok(Position(from_i64(position, position)?)))
            .transpose()
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO zq_checkpoints (name, position, updated_at) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE
                SET position = greatest(zq_checkpoints.position, excluded.position),
                    updated_at = now()",
        )
        .bind(name)
        .bind(to_i64(position.0))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn head_hint(&self) -> watch::Receiver<Position> {
        self.head_hint.clone()
    }

    async fn record_dead_letter(&self, letter: &NewDeadLetter) -> Result<(i64, bool), StoreError> {
        operations::record_dead_letter(&self.pool, letter).await
    }

    async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        operations::dead_letter(&self.pool, id).await
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        operations::dead_letters(&self.pool, query).await
    }

    async fn request_redrive(&self, id: i64) -> Result<Option<DeadLetterStatus>, StoreError> {
        operations::request_redrive(&self.pool, id).await
    }

    async fn pending_redrives(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        operations::pending_redrives(&self.pool, group, limit).await
    }

    async fn claim_redrive(&self, id: i64) -> Result<bool, StoreError> {
        operations::claim_redrive(&self.pool, id).await
    }

    async fn finish_redrive(&self, id: i64, failure: Option<&str>) -> Result<(), StoreError> {
        operations::finish_redrive(&self.pool, id, failure).await
    }

    async fn unmirrored_dead_letters(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        operations::unmirrored_dead_letters(&self.pool, group, limit).await
    }

    async fn mark_dead_letter_mirrored(&self, id: i64) -> Result<(), StoreError> {
        operations::mark_dead_letter_mirrored(&self.pool, id).await
    }

    async fn save_consumer_progress(
        &self,
        progress: &[ConsumerProgress],
    ) -> Result<(), StoreError> {
        operations::save_consumer_progress(&self.pool, progress).await
    }

    async fn consumer_progress(&self) -> Result<Vec<ConsumerProgress>, StoreError> {
        operations::consumer_progress(&self.pool).await
    }

    async fn dead_letter_counts(&self) -> Result<Vec<DeadLetterCount>, StoreError> {
        operations::dead_letter_counts(&self.pool).await
    }

    async fn save_member_counters(&self, counters: &MemberCounters) -> Result<(), StoreError> {
        operations::save_member_counters(&self.pool, counters).await
    }

    async fn next_generation(&self, name: &str) -> Result<u64, StoreError> {
        operations::next_generation(&self.pool, name).await
    }

    async fn member_counters(&self) -> Result<Vec<MemberCounters>, StoreError> {
        operations::member_counters(&self.pool).await
    }
}

mod operations {
    crate::ops::operations!(sqlx::PgPool, sqlx::postgres::PgRow);
}

const SELECT_EVENTS: &str = "SELECT position, event_id, stream_id, stream_version, event_type, \
     data::text AS data, correlation_id, causation_id, partition_key, trace_context, occurred_at, \
     recorded_at FROM zq_events";

async fn read_head(pool: &PgPool) -> Result<Position, StoreError> {
    let head: i64 = sqlx::query_scalar("SELECT position FROM zq_log_head")
        .fetch_one(pool)
        .await?;
    Ok(Position(from_i64(head, head)?))
}

/// The writer's side of the store: a connection of its own, opened on first use and dropped after
/// any failure, so that a connection left in an unknown state (an aborted transaction, a broken
/// socket) is never used again.
struct PgBatchSink {
    options: Arc<PgConnectOptions>,
    connection: Option<PgConnection>,
}

impl BatchSink for PgBatchSink {
    async fn write_batch<'a>(
        &'a mut self,
        appends: &'a [&'a [StreamAppend]],
    ) -> Result<(Vec<Result<AppendResult, StoreError>>, Position), StoreError> {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => PgConnection::connect_with(&self.options).await?,
        };
        let outcome = write_batch_on(&mut connection, appends).await;
        if outcome.is_ok() {
            self.connection = Some(connection);
        }
        outcome
    }
}

async fn write_batch_on<'a>(
    connection: &mut PgConnection,
    appends: &'a [&'a [StreamAppend]],
) -> Result<(Vec<Result<AppendResult, StoreError>>, Position), StoreError> {
    // One round trip opens the transaction and takes the lock that keeps positions dense and
    // in commit order; it is held until commit. The reads that follow are statements of
    // their own, so under READ COMMITTED (asked for explicitly, whatever the database's
    // default) their snapshot is taken after the lock is granted and sees every append
    // committed before ours. Folding the lock into the reads would make them stale.
    let mut tx = connection
        .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT 1 FROM zq_log_head FOR UPDATE")
        .await?;
    let streams = appends.iter().flat_map(|a| a.iter());
    let stream_ids: Vec<&str> = streams
        .clone()
        .map(|s| s.stream_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let event_ids: Vec<Uuid> = streams
        .flat_map(|s| s.events.iter().map(|e| e.event_id))
        .collect();
    let (head, versions, stored) = read_batch_state(&mut tx, &stream_ids, &event_ids).await?;

    let plan = plan_batch(appends, versions, stored, head);
    if !plan.rows.is_empty() {
        insert_rows(&mut tx, &plan.rows, plan.head).await?;
    }
    tx.commit().await?;
    Ok((plan.outcomes, plan.head))
}

type BatchState = (
    Position,
    HashMap<String, u64>,
    HashMap<Uuid, StoredEventRef>,
);

/// The log head, the newest version of each stream the batch names, and whichever of its event
/// ids are stored already, in one round trip. Every lookup is an index probe per key (the
/// `LIMIT 1` laterals keep the planner from turning them into scans of the whole log).
async fn read_batch_state(
    tx: &mut Transaction<'_, Postgres>,
    stream_ids: &[&str],
    event_ids: &[Uuid],
) -> Result<BatchState, StoreError> {
    let rows = sqlx::query(
        "SELECT 'head' AS kind, NULL::uuid AS event_id, NULL::text AS stream_id,
                NULL::bigint AS stream_version, position
           FROM zq_log_head
         UNION ALL
         SELECT 'stream', NULL, s.stream_id, v.stream_version, NULL
           FROM unnest($1::text[]) AS s(stream_id)
           CROSS JOIN LATERAL (
               SELECT e.stream_version FROM zq_events e
                WHERE e.stream_id = s.stream_id
                ORDER BY e.stream_version DESC LIMIT 1) AS v
         UNION ALL
         SELECT 'event', e.event_id, e.stream_id, e.stream_version, e.position
           FROM unnest($2::uuid[]) AS i(event_id)
           CROSS JOIN LATERAL (
               SELECT e.event_id, e.stream_id, e.stream_version, e.position FROM zq_events e
                WHERE e.event_id = i.event_id LIMIT 1) AS e",
    )
    .bind(stream_ids)
    .bind(event_ids)
    .fetch_all(&mut **tx)
    .await?;

    let mut head = None;
    let mut versions = HashMap::new();
    let mut stored = HashMap::new();
    for row in rows {
        let kind: &str = row.try_get("kind")?;
        match kind {
            "head" => {
                let position: i64 = row.try_get("position")?;
                head = Some(Position(from_i64(position, position)?));
            }
            "stream" => {
                let version: i64 = row.try_get("stream_version")?;
                versions.insert(row.try_get("stream_id")?, from_i64(version, -1)?);
            }
            _ => {
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
    }
    let head = head.ok_or_else(|| StoreError::Corrupt {
        position: -1,
        reason: "zq_log_head has no row".into(),
    })?;
    Ok((head, versions, stored))
}

async fn insert_rows(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[crate::plan::PlannedRow<'_>],
    head: Position,
) -> Result<(), StoreError> {
    let mut positions = Vec::with_capacity(rows.len());
    let mut event_ids = Vec::with_capacity(rows.len());
    let mut stream_ids = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    let mut types = Vec::with_capacity(rows.len());
    let mut data = Vec::with_capacity(rows.len());
    let mut correlation_ids = Vec::with_capacity(rows.len());
    let mut causation_ids = Vec::with_capacity(rows.len());
    let mut partition_keys = Vec::with_capacity(rows.len());
    let mut trace_contexts = Vec::with_capacity(rows.len());
    let mut occurred_ats: Vec<DateTime<Utc>> = Vec::with_capacity(rows.len());
    for row in rows {
        let event = row.event;
        positions.push(to_i64(row.position.0));
        event_ids.push(event.event_id);
        stream_ids.push(row.stream_id);
        versions.push(to_i64(row.stream_version));
        types.push(event.event_type.as_str());
        data.push(event.data());
        correlation_ids.push(event.metadata.correlation_id);
        causation_ids.push(event.metadata.causation_id);
        partition_keys.push(event.metadata.partition_key.as_deref());
        trace_contexts.push(event.metadata.trace_context.as_deref());
        occurred_ats.push(event.metadata.occurred_at);
    }
    // Data-modifying CTEs all run, referenced or not: insert the rows, move the head, notify
    // (delivered at commit) — one round trip.
    sqlx::query(
        "WITH inserted AS (
            INSERT INTO zq_events (position, event_id, stream_id, stream_version, event_type,
                data, correlation_id, causation_id, partition_key, trace_context, occurred_at,
                recorded_at)
            SELECT p, i, s, v, t, d::json, c, ca, pk, tc, o, clock_timestamp()
            FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[],
                        $6::text[], $7::uuid[], $8::uuid[], $9::text[], $10::text[],
                        $11::timestamptz[])
                 AS u(p, i, s, v, t, d, c, ca, pk, tc, o)
            RETURNING 1
        ), moved AS (
            UPDATE zq_log_head SET position = $12 RETURNING 1
        )
        SELECT pg_notify($13, $12::text)",
    )
    .bind(&positions)
    .bind(&event_ids)
    .bind(&stream_ids)
    .bind(&versions)
    .bind(&types)
    .bind(&data)
    .bind(&correlation_ids)
    .bind(&causation_ids)
    .bind(&partition_keys)
    .bind(&trace_contexts)
    .bind(&occurred_ats)
    .bind(to_i64(head.0))
    .bind(NOTIFY_CHANNEL)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Keep a `LISTEN zq_events` connection and pass every announced head on to the readers. When
/// the connection drops, sqlx reconnects on the next `recv`; notifications sent meanwhile are
/// lost, which the readers' polling covers. After a failed reconnect we back off and retry.
async fn listen_for_appends(pool: PgPool, head_hint: watch::Sender<Position>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                warn!(%error, "cannot open the LISTEN connection; readers fall back to polling");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(error) = listener.listen(NOTIFY_CHANNEL).await {
            warn!(%error, "LISTEN failed; readers fall back to polling");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        loop {
            match listener.recv().await {
                Ok(notification) => match notification.payload().parse::<u64>() {
                    Ok(head) => announce(&head_hint, Position(head)),
                    Err(_) => debug!(payload = notification.payload(), "ignored notification"),
                },
                Err(error) => {
                    warn!(%error, "LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}
