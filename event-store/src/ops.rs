//! Operational records kept beside the log: dead letters and consumer-group progress.
//!
//! They are not events, but they are what DESIGN.md calls "the only memory that must survive":
//! a dead letter must outlive the broker it came from, and the embedded default refills an empty
//! broker from the positions the groups have finished. Like events, the store keeps them opaque
//! (bytes, names, positions); what a cause or a group means is the consumers' business.
//!
//! The SQL is the same on both backends (sqlx binds `$N` on SQLite too), so it lives once, in the
//! [`operations!`] macro that each backend instantiates for its pool type.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Position;

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterStatus {
    /// Waiting for an operator.
    Dead,
    /// An operator asked for it to be processed again; its group picks it up.
    RedriveRequested,
    /// A member of its group claimed it and is processing it again.
    Redriving,
    /// Processed again successfully: resolved.
    Redriven,
}

impl DeadLetterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dead => "dead",
            Self::RedriveRequested => "redrive_requested",
            Self::Redriving => "redriving",
            Self::Redriven => "redriven",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "dead" => Some(Self::Dead),
            "redrive_requested" => Some(Self::RedriveRequested),
            "redriving" => Some(Self::Redriving),
            "redriven" => Some(Self::Redriven),
            _ => None,
        }
    }
}

/// A record a consumer group gives up on, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    pub group: String,
    /// Short machine name of the cause (`poison`, `expired-seats`, ...): the DLQ topic suffix.
    pub cause: String,
    /// What went wrong, for people.
    pub reason: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The record's headers (values as UTF-8, lossily).
    pub headers: Vec<(String, Option<String>)>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub position: Option<Position>,
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
}

impl NewDeadLetter {
    /// The same record dead-lettered twice is one row: by event id when the record names one
    /// (the embedded broker gives a republished record a new offset), else by its place.
    pub fn dedup_key(&self) -> String {
        match &self.event_id {
            Some(event_id) => format!("event:{event_id}"),
            None => format!("offset:{}/{}/{}", self.topic, self.partition, self.offset),
        }
    }
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub group: String,
    pub cause: String,
    pub reason: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<String>)>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub position: Option<Position>,
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub status: DeadLetterStatus,
    pub redrives: u32,
    pub mirrored: bool,
    pub recorded_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterQuery {
    pub group: Option<String>,
    pub cause: Option<String>,
    pub status: Option<DeadLetterStatus>,
    /// At most this many, newest first (0 = 100).
    pub limit: u32,
}

/// How many dead letters one group has of one cause in one status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterCount {
    pub group: String,
    pub cause: String,
    pub status: DeadLetterStatus,
    pub count: u64,
}

/// A consumer group member's counters since it started (saved with its heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberCounters {
    pub group: String,
    pub member: String,
    pub processed: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub heartbeat_at: DateTime<Utc>,
}

/// One group's progress on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerProgress {
    pub group: String,
    pub partition: i32,
    /// The log position of the last record of the completed prefix of the partition.
    pub position: Position,
    /// Which process reported it.
    pub member: String,
    pub heartbeat_at: DateTime<Utc>,
}

/// The operations on [`DeadLetter`]s and [`ConsumerProgress`] for one sqlx pool type; each
/// backend instantiates it in a module of its own.
macro_rules! operations {
    ($pool:ty, $row:ty) => {
        use chrono::Utc;
        use sqlx::Row;

        use crate::error::StoreError;
        use crate::event::Position;
        use crate::ops::{
            ConsumerProgress, DeadLetter, DeadLetterCount, DeadLetterQuery, DeadLetterStatus, MemberCounters, NewDeadLetter,
        };
        use crate::row::{from_i64, to_i64};

        const DEAD_LETTER_COLUMNS: &str = "id, group_name, cause, reason, topic, partition, \
             record_offset, record_key, payload, headers, event_id, event_type, position, \
             attempts, first_failed_at, last_failed_at, status, redrives, mirrored, recorded_at, \
             resolved_at";

        fn corrupt(id: i64, reason: impl Into<String>) -> StoreError {
            StoreError::Corrupt {
                position: id,
                reason: format!("dead letter {id}: {}", reason.into()),
            }
        }

        fn dead_letter_from_row(row: &$row) -> Result<DeadLetter, StoreError>
        {
            let id: i64 = row.try_get("id")?;
            let headers: String = row.try_get("headers")?;
            let status: String = row.try_get("status")?;
            let position: Option<i64> = row.try_get("position")?;
            let attempts: i32 = row.try_get("attempts")?;
            let redrives: i32 = row.try_get("redrives")?;
            Ok(DeadLetter {
                id,
                group: row.try_get("group_name")?,
                cause: row.try_get("cause")?,
                reason: row.try_get("reason")?,
                topic: row.try_get("topic")?,
                partition: row.try_get("partition")?,
                offset: row.try_get("record_offset")?,
                key: row.try_get("record_key")?,
                payload: row.try_get("payload")?,
                headers: serde_json::from_str(&headers)
                    .map_err(|error| corrupt(id, format!("headers: {error}")))?,
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                position: position.map(|p| from_i64(p, id).map(Position)).transpose()?,
                attempts: u32::try_from(attempts).map_err(|_| corrupt(id, "attempts"))?,
                first_failed_at: row.try_get("first_failed_at")?,
                last_failed_at: row.try_get("last_failed_at")?,
                status: DeadLetterStatus::parse(&status)
                    .ok_or_else(|| corrupt(id, format!("status {status:?}")))?,
                redrives: u32::try_from(redrives).map_err(|_| corrupt(id, "redrives"))?,
                mirrored: row.try_get("mirrored")?,
                recorded_at: row.try_get("recorded_at")?,
                resolved_at: row.try_get("resolved_at")?,
            })
        }

        /// Store a dead letter unless the same record is stored already; returns its id and
        /// whether it is new. A letter that was redriven and fails again is dead again (and
        /// mirrored again), rather than hidden behind its resolved row.
        pub(crate) async fn record_dead_letter(
            pool: &$pool,
            letter: &NewDeadLetter,
        ) -> Result<(i64, bool), StoreError> {
            let headers = serde_json::to_string(&letter.headers).map_err(|error| {
                StoreError::InvalidAppend(format!("dead letter headers: {error}"))
            })?;
            let dedup_key = letter.dedup_key();
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO zq_dead_letters (group_name, dedup_key, cause, reason, topic, \
                 partition, record_offset, record_key, payload, headers, event_id, event_type, \
                 position, attempts, first_failed_at, last_failed_at, status, recorded_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 'dead', $17) \
                 ON CONFLICT (group_name, dedup_key) DO UPDATE SET status = 'dead', \
                 cause = excluded.cause, reason = excluded.reason, attempts = excluded.attempts, \
                 last_failed_at = excluded.last_failed_at, mirrored = false, resolved_at = NULL \
                 WHERE zq_dead_letters.status = 'redriven' RETURNING id",
            )
            .bind(&letter.group)
            .bind(&dedup_key)
            .bind(&letter.cause)
            .bind(&letter.reason)
            .bind(&letter.topic)
            .bind(letter.partition)
            .bind(letter.offset)
            .bind(letter.key.as_deref())
            .bind(letter.payload.as_deref())
            .bind(headers)
            .bind(letter.event_id.as_deref())
            .bind(letter.event_type.as_deref())
            .bind(letter.position.map(|p| to_i64(p.0)))
            .bind(i32::try_from(letter.attempts).unwrap_or(i32::MAX))
            .bind(letter.first_failed_at)
            .bind(letter.last_failed_at)
            .bind(Utc::now())
            .fetch_optional(pool)
            .await?;
            if let Some(id) = inserted {
                return Ok((id, true));
            }
            let id: i64 = sqlx::query_scalar(
                "SELECT id FROM zq_dead_letters WHERE group_name = $1 AND dedup_key = $2",
            )
            .bind(&letter.group)
            .bind(&dedup_key)
            .fetch_one(pool)
            .await?;
            Ok((id, false))
        }

        pub(crate) async fn dead_letter(
            pool: &$pool,
            id: i64,
        ) -> Result<Option<DeadLetter>, StoreError> {
            let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM zq_dead_letters WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
            row.as_ref().map(dead_letter_from_row).transpose()
        }

        pub(crate) async fn dead_letters(
            pool: &$pool,
            query: &DeadLetterQuery,
        ) -> Result<Vec<DeadLetter>, StoreError> {
            let sql = format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM zq_dead_letters \
                 WHERE ($1 IS NULL OR group_name = $1) AND ($2 IS NULL OR cause = $2) \
                 AND ($3 IS NULL OR status = $3) ORDER BY id DESC LIMIT $4"
            );
            let limit = if query.limit == 0 { 100 } else { query.limit };
            let rows = sqlx::query(&sql)
                .bind(query.group.as_deref())
                .bind(query.cause.as_deref())
                .bind(query.status.map(DeadLetterStatus::as_str))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(dead_letter_from_row).collect()
        }

        pub(crate) async fn dead_letter_counts(
            pool: &$pool,
        ) -> Result<Vec<DeadLetterCount>, StoreError> {
            let rows = sqlx::query(
                "SELECT group_name, cause, status, COUNT(*) AS letters FROM zq_dead_letters \
                 GROUP BY group_name, cause, status ORDER BY group_name, cause, status",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    let status: String = row.try_get("status")?;
                    let letters: i64 = row.try_get("letters")?;
                    Ok(DeadLetterCount {
                        group: row.try_get("group_name")?,
                        cause: row.try_get("cause")?,
                        status: DeadLetterStatus::parse(&status)
                            .ok_or_else(|| corrupt(0, format!("status {status:?}")))?,
                        count: u64::try_from(letters).unwrap_or(0),
                    })
                })
                .collect()
        }

        /// Ask for a dead letter to be processed again. Idempotent: a letter waiting for its
        /// redrive or already redriven is left as it is. `None` when there is no such letter.
        pub(crate) async fn request_redrive(
            pool: &$pool,
            id: i64,
        ) -> Result<Option<DeadLetterStatus>, StoreError> {
            sqlx::query(
                "UPDATE zq_dead_letters SET status = 'redrive_requested' \
                 WHERE id = $1 AND status IN ('dead', 'redriving')",
            )
            .bind(id)
            .execute(pool)
            .await?;
            Ok(dead_letter(pool, id).await?.map(|letter| letter.status))
        }

        pub(crate) async fn pending_redrives(
            pool: &$pool,
            group: &str,
            limit: u32,
        ) -> Result<Vec<DeadLetter>, StoreError> {
            let sql = format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM zq_dead_letters \
                 WHERE group_name = $1 AND status = 'redrive_requested' ORDER BY id LIMIT $2"
            );
            let rows = sqlx::query(&sql)
                .bind(group)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(dead_letter_from_row).collect()
        }

        /// Claim a requested redrive for this member: only one member of the group runs it.
        pub(crate) async fn claim_redrive(pool: &$pool, id: i64) -> Result<bool, StoreError> {
            let claimed = sqlx::query(
                "UPDATE zq_dead_letters SET status = 'redriving' \
                 WHERE id = $1 AND status = 'redrive_requested'",
            )
            .bind(id)
            .execute(pool)
            .await?;
            Ok(claimed.rows_affected() == 1)
        }

        /// Record the outcome of a redrive: resolved, or dead again with the new reason.
        pub(crate) async fn finish_redrive(
            pool: &$pool,
            id: i64,
            failure: Option<&str>,
        ) -> Result<(), StoreError> {
            let now = Utc::now();
            match failure {
                None => {
                    sqlx::query(
                        "UPDATE zq_dead_letters SET status = 'redriven', \
                         redrives = redrives + 1, resolved_at = $2 \
                         WHERE id = $1 AND status = 'redriving'",
                    )
                    .bind(id)
                    .bind(now)
                    .execute(pool)
                    .await?;
                }
                Some(reason) => {
                    sqlx::query(
                        "UPDATE zq_dead_letters SET status = 'dead', redrives = redrives + 1, \
                         attempts = attempts + 1, reason = $2, last_failed_at = $3 \
                         WHERE id = $1 AND status = 'redriving'",
                    )
                    .bind(id)
                    .bind(reason)
                    .bind(now)
                    .execute(pool)
                    .await?;
                }
            }
            Ok(())
        }

        pub(crate) async fn unmirrored_dead_letters(
            pool: &$pool,
            group: &str,
            limit: u32,
        ) -> Result<Vec<DeadLetter>, StoreError> {
            let sql = format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM zq_dead_letters \
                 WHERE group_name = $1 AND NOT mirrored ORDER BY id LIMIT $2"
            );
            let rows = sqlx::query(&sql)
                .bind(group)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(dead_letter_from_row).collect()
        }

        pub(crate) async fn mark_dead_letter_mirrored(
            pool: &$pool,
            id: i64,
        ) -> Result<(), StoreError> {
            sqlx::query("UPDATE zq_dead_letters SET mirrored = true WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            Ok(())
        }

        /// Save progress rows; a position never moves back (a rebalanced partition's new owner
        /// may report an older prefix for a moment), the member and heartbeat always move.
        pub(crate) async fn save_consumer_progress(
            pool: &$pool,
            progress: &[ConsumerProgress],
        ) -> Result<(), StoreError> {
            let mut tx = pool.begin().await?;
            for row in progress {
                sqlx::query(
                    "INSERT INTO zq_consumer_progress \
                     (group_name, partition, position, member, heartbeat_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (group_name, partition) DO UPDATE SET \
                     position = CASE WHEN excluded.position > zq_consumer_progress.position \
                     THEN excluded.position ELSE zq_consumer_progress.position END, \
                     member = excluded.member, heartbeat_at = excluded.heartbeat_at",
                )
                .bind(&row.group)
                .bind(row.partition)
                .bind(to_i64(row.position.0))
                .bind(&row.member)
                .bind(row.heartbeat_at)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        pub(crate) async fn next_generation(pool: &$pool, name: &str) -> Result<u64, StoreError> {
            let generation: i64 = sqlx::query_scalar(
                "INSERT INTO zq_generations (name, generation) VALUES ($1, 1) \
                 ON CONFLICT (name) DO UPDATE SET generation = zq_generations.generation + 1 \
                 RETURNING generation",
            )
            .bind(name)
            .fetch_one(pool)
            .await?;
            Ok(u64::try_from(generation).unwrap_or(0))
        }

        pub(crate) async fn save_member_counters(
            pool: &$pool,
            counters: &MemberCounters,
        ) -> Result<(), StoreError> {
            let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
            sqlx::query(
                "INSERT INTO zq_consumer_members \
                 (group_name, member, processed, failed, retried, dead_lettered, heartbeat_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (group_name, member) DO UPDATE SET \
                 processed = excluded.processed, failed = excluded.failed, \
                 retried = excluded.retried, dead_lettered = excluded.dead_lettered, \
                 heartbeat_at = excluded.heartbeat_at",
            )
            .bind(&counters.group)
            .bind(&counters.member)
            .bind(count(counters.processed))
            .bind(count(counters.failed))
            .bind(count(counters.retried))
            .bind(count(counters.dead_lettered))
            .bind(counters.heartbeat_at)
            .execute(pool)
            .await?;
            Ok(())
        }

        pub(crate) async fn member_counters(
            pool: &$pool,
        ) -> Result<Vec<MemberCounters>, StoreError> {
            let rows = sqlx::query(
                "SELECT group_name, member, processed, failed, retried, dead_lettered, \
                 heartbeat_at FROM zq_consumer_members ORDER BY group_name, member",
            )
            .fetch_all(pool)
            .await?;
            let count = |value: i64| u64::try_from(value).unwrap_or(0);
            rows.iter()
                .map(|row| {
                    Ok(MemberCounters {
                        group: row.try_get("group_name")?,
                        member: row.try_get("member")?,
                        processed: count(row.try_get("processed")?),
                        failed: count(row.try_get("failed")?),
                        retried: count(row.try_get("retried")?),
                        dead_lettered: count(row.try_get("dead_lettered")?),
                        heartbeat_at: row.try_get("heartbeat_at")?,
                    })
                })
                .collect()
        }

        pub(crate) async fn consumer_progress(
            pool: &$pool,
        ) -> Result<Vec<ConsumerProgress>, StoreError> {
            let rows = sqlx::query(
                "SELECT group_name, partition, position, member, heartbeat_at \
                 FROM zq_consumer_progress ORDER BY group_name, partition",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    let position: i64 = row.try_get("position")?;
                    Ok(ConsumerProgress {
                        group: row.try_get("group_name")?,
                        partition: row.try_get("partition")?,
                        position: Position(from_i64(position, position)?),
                        member: row.try_get("member")?,
                        heartbeat_at: row.try_get("heartbeat_at")?,
                    })
                })
                .collect()
        }
    };
}
pub(crate) use operations;
