//! Where the read models live: tables beside the log, in the same database (Postgres or the
//! SQLite file), so that a batch of read-model writes and the projection's checkpoint commit in
//! one transaction: exactly-once read models over an at-least-once reader.
//!
//! The schema is created with `CREATE TABLE IF NOT EXISTS` (not a second sqlx migrator: sqlx
//! keeps one migration table per database, and it belongs to the event store). The SQL is the
//! same on both backends, so it lives once, in the [`read_models!`] macro.

use std::collections::HashMap;

use domain::{BookingId, SeatId, ShowId};
use event_store::Position;

use crate::view::{BookingView, SeatClaim, ShowStats};

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] event_store::StoreError),
    #[error("read model row {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("unsupported database URL {0:?}: expected postgres://… or sqlite://<file>")]
    UnsupportedUrl(String),
    #[error("snapshot name {0:?}: use 1 to 24 of a-z, 0-9 and _")]
    BadSnapshotName(String),
    /// Someone else moved the checkpoint since this writer read it (a replay switched the
    /// tables, or a second runner works on the same set): the batch was not written.
    #[error("checkpoint {name} is no longer at {expected}")]
    CheckpointMoved { name: String, expected: Position },
    /// A switch found the live tables ahead of the rebuilt ones: the rebuild must catch up
    /// first.
    #[error("the rebuilt tables are at {shadow}, behind the live ones at {live}")]
    ShadowBehind { shadow: Position, live: Position },
    /// The switch waited too long for a lock on the live tables (a long query or an idle
    /// transaction holds one); nothing changed.
    #[error("the switch could not lock the live tables in time: {0}")]
    SwitchBlocked(String),
    /// The projector's own thread could not start, or ended without saying why.
    #[error("projector thread: {0}")]
    Thread(String),
    /// The log grew faster than a rebuild could follow.
    #[error(
        "the rebuild stayed {behind} positions behind a growing log for {seconds} s; retry when the load is lower"
    )]
    CannotCatchUp { behind: u64, seconds: u64 },
}

impl infra::resilience::Transience for ProjectionError {
    fn is_transient(&self) -> bool {
        match self {
            ProjectionError::Database(error) => event_store::is_transient_sqlx(error),
            ProjectionError::Store(error) => infra::resilience::Transience::is_transient(error),
            // A switch that could not lock the live tables changed nothing; a bounded wait.
            ProjectionError::SwitchBlocked(_) => true,
            _ => false,
        }
    }
}

/// What one batch changes, written in one transaction with the checkpoint.
#[derive(Debug, Default)]
pub struct Changes {
    pub bookings: HashMap<BookingId, BookingView>,
    /// `None`: the seat is free again.
    pub seats: HashMap<(ShowId, SeatId), Option<SeatClaim>>,
    pub stats: HashMap<ShowId, ShowStats>,
}

/// Which set of read-model tables: the live one the queries read, the shadow a replay builds
/// before it switches, or a named snapshot (the state as of a past point, for inspection).
///
/// A set's tables are the live names with a suffix (`rm_bookings__rebuild`,
/// `rm_bookings__snap_<name>`), in the same database, so that switching is a rename in one
/// transaction. Checkpoints of every set live in the one `rm_checkpoints` table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TableSet {
    Live,
    Shadow,
    Snapshot(String),
}

/// The tables of one set, without the set's suffix.
pub const TABLES: [&str; 3] = ["rm_bookings", "rm_seats", "rm_show_stats"];

/// Longest snapshot name: the longest table name plus suffix plus `_pkey` stays within
/// Postgres's 63-byte identifiers.
const SNAPSHOT_NAME_MAX: usize = 24;

impl TableSet {
    /// A snapshot set; its name becomes part of table names, so it is kept to `[a-z0-9_]`.
    pub fn snapshot(name: &str) -> Result<TableSet, ProjectionError> {
        let valid = !name.is_empty()
            && name.len() <= SNAPSHOT_NAME_MAX
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(TableSet::Snapshot(name.to_string()))
        } else {
            Err(ProjectionError::BadSnapshotName(name.to_string()))
        }
    }

    fn suffix(&self) -> String {
        match self {
            TableSet::Live => String::new(),
            TableSet::Shadow => "__rebuild".to_string(),
            TableSet::Snapshot(name) => format!("__snap_{name}"),
        }
    }

    /// This set's name of one of the [`TABLES`].
    pub fn table(&self, base: &str) -> String {
        format!("{base}{}", self.suffix())
    }

    /// The checkpoint of `projection` kept in this set.
    pub fn checkpoint(&self, projection: &str) -> String {
        match self {
            TableSet::Live => projection.to_string(),
            TableSet::Shadow => format!("{projection}@rebuild"),
            TableSet::Snapshot(name) => format!("{projection}@snapshot:{name}"),
        }
    }

    /// `CREATE TABLE` statements of this set (the customer index is separate: a replay adds it
    /// once the bulk of the rows is in).
    fn schema(&self) -> Vec<String> {
        let bookings = self.table("rm_bookings");
        let seats = self.table("rm_seats");
        let stats = self.table("rm_show_stats");
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {bookings} (booking_id TEXT NOT NULL, \
                 show_id TEXT NOT NULL, customer_id TEXT NOT NULL, status TEXT NOT NULL, \
                 body TEXT NOT NULL, last_position BIGINT NOT NULL, \
                 CONSTRAINT {bookings}_pkey PRIMARY KEY (booking_id))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {seats} (show_id TEXT NOT NULL, seat TEXT NOT NULL, \
                 booking_id TEXT NOT NULL, sold BOOLEAN NOT NULL, \
                 CONSTRAINT {seats}_pkey PRIMARY KEY (show_id, seat))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {stats} (show_id TEXT NOT NULL, body TEXT NOT NULL, \
                 CONSTRAINT {stats}_pkey PRIMARY KEY (show_id))"
            ),
        ]
    }

    fn customer_index(&self) -> String {
        let bookings = self.table("rm_bookings");
        format!("CREATE INDEX IF NOT EXISTS {bookings}_customer ON {bookings} (customer_id)")
    }
}

const CHECKPOINTS: &str =
    "CREATE TABLE IF NOT EXISTS rm_checkpoints (name TEXT PRIMARY KEY, position BIGINT NOT NULL)";

/// The generation of each projection's live tables: a switch moves it on, and every commit into
/// the live set checks it (with the checkpoint) in its transaction. The checkpoint alone is not
/// enough: a projector in another process that missed a switch may find the checkpoint at the
/// very position it expects and write rows it derived from the old tables into the new ones.
/// A table of its own (not a column) so that databases made before it need no migration.
const GENERATIONS: &str = "CREATE TABLE IF NOT EXISTS rm_generations (name TEXT PRIMARY KEY, \
     generation BIGINT NOT NULL)";

/// Processes that take replays over their API (a running `zingqueue up`), with a heartbeat.
const REPLAYERS: &str = "CREATE TABLE IF NOT EXISTS rm_replayers (projection TEXT NOT NULL, \
     api TEXT NOT NULL, beat_ms BIGINT NOT NULL, PRIMARY KEY (projection, api))";

/// Every row of one set's tables in key order (what "identical row for row" compares).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableRows {
    /// booking id, show id, customer id, status, body (JSON), last position.
    pub bookings: Vec<(String, String, String, String, String, i64)>,
    /// show id, seat, booking id, sold.
    pub seats: Vec<(String, String, String, bool)>,
    /// show id, body (JSON).
    pub stats: Vec<(String, String)>,
}

fn corrupt(key: impl std::fmt::Display, reason: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Corrupt {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// Rows per multi-row statement (well below both backends' limits on bound parameters).
const ROWS_PER_STATEMENT: usize = 500;

/// `($1, $2), ($3, $4)` for `rows` rows of `columns` values.
fn value_rows(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| format!("({})", placeholders(row * columns + 1, columns)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn placeholders(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A lock wait that ran out (Postgres `lock_timeout`, SQLSTATE 55P03) is
/// [`ProjectionError::SwitchBlocked`]; anything else stays a database error.
fn blocked_or(error: sqlx::Error) -> ProjectionError {
    match &error {
        sqlx::Error::Database(database) if database.code().as_deref() == Some("55P03") => {
            ProjectionError::SwitchBlocked(database.message().to_string())
        }
        _ => ProjectionError::Database(error),
    }
}

fn position_of(stored: Option<i64>) -> Position {
    Position(stored.map_or(0, |p| u64::try_from(p).unwrap_or(0)))
}

fn stored(position: Position) -> i64 {
    i64::try_from(position.0).unwrap_or(i64::MAX)
}

/// The read-model operations for one sqlx pool type. Table names come from a [`TableSet`];
/// they are never user input (snapshot names are checked by [`TableSet::snapshot`]).
macro_rules! read_models {
    ($pool:ty) => {
        use std::collections::HashMap;

        use domain::{BookingId, SeatId, ShowId};
        use event_store::Position;
        use sqlx::Row;

        use super::{
            CHECKPOINTS, Changes, GENERATIONS, ProjectionError, REPLAYERS, ROWS_PER_STATEMENT, TABLES,
            TableRows, TableSet, blocked_or, corrupt, placeholders, position_of, stored,
            value_rows,
        };
        use crate::view::{BookingView, SeatClaim, ShowStats};

        pub(super) async fn create_tables(
            pool: &$pool,
            tables: &TableSet,
            with_customer_index: bool,
        ) -> Result<(), ProjectionError> {
            let mut statements: Vec<String> = [CHECKPOINTS, GENERATIONS, REPLAYERS]
                .map(String::from)
                .into();
            statements.extend(tables.schema());
            if with_customer_index {
                statements.push(tables.customer_index());
            }
            if CREATE_SETTINGS.is_empty() {
                // SQLite: each statement on its own, under the busy timeout (a deferred
                // transaction that must upgrade to write while a projector writes would fail at
                // once with "database is locked" instead of waiting).
                for statement in &statements {
                    sqlx::query(statement).execute(pool).await?;
                }
                return Ok(());
            }
            // Postgres: one transaction, serialized between processes: two processes starting
            // at once (two API replicas) would otherwise race on `CREATE TABLE IF NOT EXISTS`,
            // which Postgres answers with a unique violation in its catalog.
            let mut tx = pool.begin().await?;
            for statement in CREATE_SETTINGS.iter().copied().chain(statements.iter().map(String::as_str)) {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        }

        pub(super) async fn prepare_switch(
            pool: &$pool,
            tables: &TableSet,
        ) -> Result<(), ProjectionError> {
            if let Some(statement) = index_before_switch(tables) {
                sqlx::query(&statement).execute(pool).await?;
            }
            Ok(())
        }

        pub(super) async fn advertise_replayer(
            pool: &$pool,
            projection: &str,
            api: &str,
            beat_ms: i64,
        ) -> Result<(), ProjectionError> {
            sqlx::query(
                "INSERT INTO rm_replayers (projection, api, beat_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (projection, api) DO UPDATE SET beat_ms = excluded.beat_ms",
            )
            .bind(projection)
            .bind(api)
            .bind(beat_ms)
            .execute(pool)
            .await?;
            Ok(())
        }

        pub(super) async fn withdraw_replayer(
            pool: &$pool,
            projection: &str,
            api: &str,
        ) -> Result<(), ProjectionError> {
            sqlx::query("DELETE FROM rm_replayers WHERE projection = $1 AND api = $2")
                .bind(projection)
                .bind(api)
                .execute(pool)
                .await?;
            Ok(())
        }

        pub(super) async fn replayers(
            pool: &$pool,
            projection: &str,
            since_ms: i64,
        ) -> Result<Vec<String>, ProjectionError> {
            Ok(sqlx::query_scalar(
                "SELECT api FROM rm_replayers WHERE projection = $1 AND beat_ms >= $2 \
                 ORDER BY beat_ms DESC",
            )
            .bind(projection)
            .bind(since_ms)
            .fetch_all(pool)
            .await?)
        }

        /// Drop a set's tables and its checkpoint (never the live set: see `switch`).
        pub(super) async fn drop_tables(
            pool: &$pool,
            tables: &TableSet,
            projection: &str,
        ) -> Result<(), ProjectionError> {
            // A write first: on SQLite it takes the write lock (waiting for it) before any
            // read could pin a snapshot that a later write then cannot upgrade from.
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM rm_checkpoints WHERE name = $1")
                .bind(tables.checkpoint(projection))
                .execute(&mut *tx)
                .await?;
            for base in TABLES {
                sqlx::query(&format!("DROP TABLE IF EXISTS {}", tables.table(base)))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        pub(super) async fn checkpoint(
            pool: &$pool,
            name: &str,
        ) -> Result<Position, ProjectionError> {
            let position: Option<i64> =
                sqlx::query_scalar("SELECT position FROM rm_checkpoints WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?;
            Ok(position_of(position))
        }

        pub(super) async fn generation(pool: &$pool, name: &str) -> Result<u64, ProjectionError> {
            let generation: Option<i64> =
                sqlx::query_scalar("SELECT generation FROM rm_generations WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?;
            Ok(generation.map_or(0, |g| u64::try_from(g).unwrap_or(0)))
        }

        fn booking_of(body: &str, key: &str) -> Result<BookingView, ProjectionError> {
            serde_json::from_str(body).map_err(|error| corrupt(key, error))
        }

        pub(super) async fn bookings(
            pool: &$pool,
            tables: &TableSet,
            ids: &[BookingId],
        ) -> Result<HashMap<BookingId, BookingView>, ProjectionError> {
            let mut found = HashMap::new();
            for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "SELECT booking_id, body FROM {} WHERE booking_id IN ({})",
                    tables.table("rm_bookings"),
                    placeholders(1, chunk.len())
                );
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(id.to_string());
                }
                for row in query.fetch_all(pool).await? {
                    let key: String = row.try_get("booking_id")?;
                    let view = booking_of(row.try_get("body")?, &key)?;
                    found.insert(view.booking_id, view);
                }
            }
            Ok(found)
        }

        pub(super) async fn customer_bookings(
            pool: &$pool,
            tables: &TableSet,
            customer_id: &str,
        ) -> Result<Vec<BookingView>, ProjectionError> {
            let rows = sqlx::query(&format!(
                "SELECT booking_id, body FROM {} WHERE customer_id = $1 ORDER BY booking_id",
                tables.table("rm_bookings")
            ))
            .bind(customer_id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    let key: String = row.try_get("booking_id")?;
                    booking_of(row.try_get("body")?, &key)
                })
                .collect()
        }

        pub(super) async fn seats(
            pool: &$pool,
            tables: &TableSet,
            show_id: ShowId,
            only: Option<&[SeatId]>,
        ) -> Result<HashMap<SeatId, SeatClaim>, ProjectionError> {
            let table = tables.table("rm_seats");
            let rows = match only {
                Some(seats) if seats.is_empty() => Vec::new(),
                Some(seats) => {
                    let mut rows = Vec::new();
                    for chunk in seats.chunks(ROWS_PER_STATEMENT) {
                        let sql = format!(
                            "SELECT seat, booking_id, sold FROM {table} \
                             WHERE show_id = $1 AND seat IN ({})",
                            placeholders(2, chunk.len())
                        );
                        let mut query = sqlx::query(&sql).bind(show_id.to_string());
                        for seat in chunk {
                            query = query.bind(seat.to_string());
                        }
                        rows.extend(query.fetch_all(pool).await?);
                    }
                    rows
                }
                None => {
                    sqlx::query(&format!(
                        "SELECT seat, booking_id, sold FROM {table} WHERE show_id = $1"
                    ))
                    .bind(show_id.to_string())
                    .fetch_all(pool)
                    .await?
                }
            };
            let mut claims = HashMap::new();
            for row in rows {
                let seat: String = row.try_get("seat")?;
                let booking: String = row.try_get("booking_id")?;
                let sold: bool = row.try_get("sold")?;
                let seat_id: SeatId = seat.parse().map_err(|e| corrupt(&seat, e))?;
                let booking_id: BookingId = booking.parse().map_err(|e| corrupt(&booking, e))?;
                claims.insert(seat_id, SeatClaim { booking_id, sold });
            }
            Ok(claims)
        }

        pub(super) async fn stats(
            pool: &$pool,
            tables: &TableSet,
            ids: &[ShowId],
        ) -> Result<HashMap<ShowId, ShowStats>, ProjectionError> {
            let mut found = HashMap::new();
            for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "SELECT show_id, body FROM {} WHERE show_id IN ({})",
                    tables.table("rm_show_stats"),
                    placeholders(1, chunk.len())
                );
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(id.to_string());
                }
                for row in query.fetch_all(pool).await? {
                    let key: String = row.try_get("show_id")?;
                    let body: String = row.try_get("body")?;
                    let id: ShowId = key.parse().map_err(|e| corrupt(&key, e))?;
                    found.insert(
                        id,
                        serde_json::from_str(&body).map_err(|e| corrupt(&key, e))?,
                    );
                }
            }
            Ok(found)
        }

        pub(super) async fn rows(
            pool: &$pool,
            tables: &TableSet,
        ) -> Result<TableRows, ProjectionError> {
            let bookings = sqlx::query_as(&format!(
                "SELECT booking_id, show_id, customer_id, status, body, last_position FROM {} \
                 ORDER BY booking_id",
                tables.table("rm_bookings")
            ))
            .fetch_all(pool)
            .await?;
            let seats = sqlx::query_as(&format!(
                "SELECT show_id, seat, booking_id, sold FROM {} ORDER BY show_id, seat",
                tables.table("rm_seats")
            ))
            .fetch_all(pool)
            .await?;
            let stats = sqlx::query_as(&format!(
                "SELECT show_id, body FROM {} ORDER BY show_id",
                tables.table("rm_show_stats")
            ))
            .fetch_all(pool)
            .await?;
            Ok(TableRows {
                bookings,
                seats,
                stats,
            })
        }

        /// Write a batch's changes and move the checkpoint from `expected` to `position`, in
        /// one transaction. The checkpoint goes first: it locks the row, so a switch or a
        /// second runner waits for this batch or makes it fail whole.
        pub(super) async fn commit(
            pool: &$pool,
            tables: &TableSet,
            name: &str,
            expected: Position,
            generation: u64,
            position: Position,
            changes: &Changes,
        ) -> Result<(), ProjectionError> {
            let mut tx = pool.begin().await?;
            // From the start, the row may not exist yet; past it, a missing row means someone
            // dropped the set under this writer (a second replay starting afresh): moved too.
            let moved = if expected == Position::START {
                sqlx::query(
                    "INSERT INTO rm_checkpoints (name, position) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position \
                     WHERE rm_checkpoints.position = 0",
                )
                .bind(name)
                .bind(stored(position))
                .execute(&mut *tx)
                .await?
            } else {
                sqlx::query(
                    "UPDATE rm_checkpoints SET position = $2 WHERE name = $1 AND position = $3",
                )
                .bind(name)
                .bind(stored(position))
                .bind(stored(expected))
                .execute(&mut *tx)
                .await?
            }
            .rows_affected();
            // Read under the checkpoint row's lock, which a switch holds until it commits: a
            // switch is either wholly before this batch (seen here) or wholly after it.
            let found: Option<i64> =
                sqlx::query_scalar("SELECT generation FROM rm_generations WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let found = found.map_or(0, |g| u64::try_from(g).unwrap_or(0));
            if moved == 0 || found != generation {
                return Err(ProjectionError::CheckpointMoved {
                    name: name.to_string(),
                    expected,
                });
            }
            // Multi-row statements: a burst of bookings is a few statements per batch, not one
            // round trip per row.
            let views: Vec<&BookingView> = changes.bookings.values().collect();
            for chunk in views.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO {} (booking_id, show_id, customer_id, status, body, \
                     last_position) VALUES {} \
                     ON CONFLICT (booking_id) DO UPDATE SET show_id = excluded.show_id, \
                     customer_id = excluded.customer_id, status = excluded.status, \
                     body = excluded.body, last_position = excluded.last_position",
                    tables.table("rm_bookings"),
                    value_rows(chunk.len(), 6)
                );
                let mut query = sqlx::query(&sql);
                for view in chunk {
                    let body =
                        serde_json::to_string(view).map_err(|e| corrupt(view.booking_id, e))?;
                    query = query
                        .bind(view.booking_id.to_string())
                        .bind(view.show_id.to_string())
                        .bind(view.customer.id.as_str().to_string())
                        .bind(view.status.as_str())
                        .bind(body)
                        .bind(i64::try_from(view.last_position).unwrap_or(i64::MAX));
                }
                query.execute(&mut *tx).await?;
            }
            let seats_table = tables.table("rm_seats");
            let mut claimed = Vec::new();
            let mut freed: HashMap<ShowId, Vec<&SeatId>> = HashMap::new();
            for ((show_id, seat), claim) in &changes.seats {
                match claim {
                    Some(claim) => claimed.push((show_id, seat, claim)),
                    None => freed.entry(*show_id).or_default().push(seat),
                }
            }
            for chunk in claimed.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO {seats_table} (show_id, seat, booking_id, sold) VALUES {} \
                     ON CONFLICT (show_id, seat) DO UPDATE \
                     SET booking_id = excluded.booking_id, sold = excluded.sold",
                    value_rows(chunk.len(), 4)
                );
                let mut query = sqlx::query(&sql);
                for (show_id, seat, claim) in chunk {
                    query = query
                        .bind(show_id.to_string())
                        .bind(seat.to_string())
                        .bind(claim.booking_id.to_string())
                        .bind(claim.sold);
                }
                query.execute(&mut *tx).await?;
            }
            for (show_id, seats) in &freed {
                for chunk in seats.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "DELETE FROM {seats_table} WHERE show_id = $1 AND seat IN ({})",
                        placeholders(2, chunk.len())
                    );
                    let mut query = sqlx::query(&sql).bind(show_id.to_string());
                    for seat in chunk {
                        query = query.bind(seat.to_string());
                    }
                    query.execute(&mut *tx).await?;
                }
            }
            let stats: Vec<(&ShowId, &ShowStats)> = changes.stats.iter().collect();
            for chunk in stats.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO {} (show_id, body) VALUES {} \
                     ON CONFLICT (show_id) DO UPDATE SET body = excluded.body",
                    tables.table("rm_show_stats"),
                    value_rows(chunk.len(), 2)
                );
                let mut query = sqlx::query(&sql);
                for (show_id, stats) in chunk {
                    let body = serde_json::to_string(stats).map_err(|e| corrupt(show_id, e))?;
                    query = query.bind(show_id.to_string()).bind(body);
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        }

        /// Make the shadow set the live one, in one transaction: lock the live checkpoint
        /// (a live runner's next batch waits, then finds the checkpoint moved and reloads),
        /// refuse if the live tables are ahead, then replace the live tables by the shadow
        /// ones and the live checkpoint by the shadow's. Readers see the old tables until the
        /// commit and the new ones after it, never a mix.
        pub(super) async fn switch(
            pool: &$pool,
            projection: &str,
        ) -> Result<Position, ProjectionError> {
            let shadow = TableSet::Shadow;
            let mut tx = pool.begin().await?;
            for statement in SWITCH_SETTINGS {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            let live: i64 = sqlx::query_scalar(
                "INSERT INTO rm_checkpoints (name, position) VALUES ($1, 0) \
                 ON CONFLICT (name) DO UPDATE SET position = rm_checkpoints.position \
                 RETURNING position",
            )
            .bind(projection)
            .fetch_one(&mut *tx)
            .await?;
            let rebuilt: Option<i64> =
                sqlx::query_scalar("SELECT position FROM rm_checkpoints WHERE name = $1")
                    .bind(shadow.checkpoint(projection))
                    .fetch_optional(&mut *tx)
                    .await?;
            let (live, rebuilt) = (position_of(Some(live)), position_of(rebuilt));
            if rebuilt < live {
                return Err(ProjectionError::ShadowBehind {
                    shadow: rebuilt,
                    live,
                });
            }
            for base in TABLES {
                sqlx::query(&format!("DROP TABLE IF EXISTS {base}"))
                    .execute(&mut *tx)
                    .await
                    .map_err(blocked_or)?;
                sqlx::query(&format!(
                    "ALTER TABLE {} RENAME TO {base}",
                    shadow.table(base)
                ))
                .execute(&mut *tx)
                .await?;
            }
            for statement in rename_indexes(&shadow) {
                sqlx::query(&statement).execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE rm_checkpoints SET position = $1 WHERE name = $2")
                .bind(stored(rebuilt))
                .bind(projection)
                .execute(&mut *tx)
                .await?;
            // Every projector that read the old generation now fails its next commit and
            // reloads, wherever it runs.
            sqlx::query(
                "INSERT INTO rm_generations (name, generation) VALUES ($1, 1) \
                 ON CONFLICT (name) DO UPDATE SET generation = rm_generations.generation + 1",
            )
            .bind(projection)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM rm_checkpoints WHERE name = $1")
                .bind(shadow.checkpoint(projection))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(rebuilt)
        }
    };
}

mod postgres {
    read_models!(sqlx::PgPool);

    /// The switch takes exclusive locks on the live tables: waiting behind a long query or an
    /// idle transaction must not queue every reader behind it for long. It gives up instead,
    /// and the replay tries again. And it is durable when it says so (the pool's sessions
    /// commit asynchronously).
    const SWITCH_SETTINGS: &[&str] = &[
        "SET LOCAL lock_timeout = '2s'",
        "SET LOCAL synchronous_commit = on",
    ];

    /// Creating the tables takes a transaction-scoped advisory lock (any number of ours: it
    /// names "read-model schema"), so concurrent creators take turns.
    const CREATE_SETTINGS: &[&str] = &["SELECT pg_advisory_xact_lock(7254011001)"];

    /// The shadow's customer index, built before the switch (the bulk load ran without it);
    /// the switch renames it.
    fn index_before_switch(tables: &TableSet) -> Option<String> {
        Some(tables.customer_index())
    }

    /// Postgres names indexes per schema: the renamed shadow's indexes take the live names,
    /// so that the next shadow can be created under its own again.
    fn rename_indexes(from: &TableSet) -> Vec<String> {
        let mut statements: Vec<String> = TABLES
            .iter()
            .map(|base| {
                format!(
                    "ALTER INDEX IF EXISTS {}_pkey RENAME TO {base}_pkey",
                    from.table(base)
                )
            })
            .collect();
        statements.push(format!(
            "ALTER INDEX IF EXISTS {}_customer RENAME TO rm_bookings_customer",
            from.table("rm_bookings")
        ));
        statements.push(TableSet::Live.customer_index());
        statements
    }
}

mod sqlite {
    read_models!(sqlx::SqlitePool);

    /// SQLite readers take no locks that block a writer (WAL); the write lock itself waits
    /// under the busy timeout. The switch commits with `synchronous = NORMAL` like every
    /// read-model commit: a power cut right after it can undo it (the old tables and their
    /// checkpoint come back together); the store's next commit, synchronous, makes it durable.
    const SWITCH_SETTINGS: &[&str] = &[];

    /// None: SQLite has one writer at a time by nature (and its statements then run on their
    /// own, under the busy timeout).
    const CREATE_SETTINGS: &[&str] = &[];

    /// None: SQLite builds the customer index inside the switch (see `rename_indexes`).
    fn index_before_switch(_: &TableSet) -> Option<String> {
        None
    }

    /// SQLite renames a table's automatic indexes with it, and has no `ALTER INDEX`: the
    /// customer index is built again under the live name (readers are not blocked meanwhile).
    fn rename_indexes(from: &TableSet) -> Vec<String> {
        vec![
            format!(
                "DROP INDEX IF EXISTS {}_customer",
                from.table("rm_bookings")
            ),
            TableSet::Live.customer_index(),
        ]
    }
}

#[derive(Debug, Clone)]
enum Pool {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// The read models' database, seen through one [`TableSet`] (the live one unless
/// [`ReadModelDb::with_tables`] says otherwise).
#[derive(Debug, Clone)]
pub struct ReadModelDb {
    pool: Pool,
    tables: TableSet,
    /// SQLite: the in-process turn to write the file, shared with the event store's writer
    /// (see [`event_store::sqlite::write_gate`]).
    write_gate: Option<event_store::sqlite::WriteGate>,
}

macro_rules! dispatch {
    ($self:expr, $function:ident($($arg:expr),*)) => {
        match &$self.pool {
            Pool::Postgres(pool) => postgres::$function(pool $(, $arg)*).await,
            Pool::Sqlite(pool) => sqlite::$function(pool $(, $arg)*).await,
        }
    };
}

impl ReadModelDb {
    /// Connect to the database a URL names (the event store's) and create the live tables.
    pub async fn open(database_url: &str) -> Result<ReadModelDb, ProjectionError> {
        let mut write_gate = None;
        let pool = if database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
        {
            use std::str::FromStr;
            // Read-model commits need not wait for the disk: a crash can lose the last few,
            // but each is rows and checkpoint together, so the projector applies them again.
            // (The switch of a replay turns it back on for itself.)
            let options = sqlx::postgres::PgConnectOptions::from_str(database_url)?
                .options([("synchronous_commit", "off")]);
            Pool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(event_store::POOL_ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await?,
            )
        } else if database_url.starts_with("sqlite:") {
            use std::str::FromStr;
            // `synchronous = NORMAL`, for the same reason as Postgres's `synchronous_commit`
            // above: a read-model commit lost to a power cut is applied again. (The store's
            // own connections keep FULL: its commits are what must survive.)
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(database_url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(std::time::Duration::from_secs(30));
            write_gate = Some(event_store::sqlite::write_gate(options.get_filename()));
            Pool::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?,
            )
        } else {
            return Err(ProjectionError::UnsupportedUrl(database_url.to_string()));
        };
        let db = ReadModelDb {
            pool,
            tables: TableSet::Live,
            write_gate,
        };
        dispatch!(db, create_tables(&TableSet::Live, true))?;
        Ok(db)
    }

    /// The same database seen through another set of tables (nothing is created).
    pub fn with_tables(&self, tables: TableSet) -> ReadModelDb {
        ReadModelDb {
            pool: self.pool.clone(),
            tables,
            write_gate: self.write_gate.clone(),
        }
    }

    pub fn tables(&self) -> &TableSet {
        &self.tables
    }

    /// Whether this is the embedded SQLite database (one writer at a time).
    pub fn is_sqlite(&self) -> bool {
        matches!(self.pool, Pool::Sqlite(_))
    }

    /// Create this set's tables if missing (`with_customer_index`: also the index a bulk
    /// load is faster without).
    pub async fn create_tables(&self, with_customer_index: bool) -> Result<(), ProjectionError> {
        dispatch!(self, create_tables(&self.tables, with_customer_index))
    }

    /// Drop this set's tables and its checkpoint of `projection`. Refuses nothing but is
    /// never called on the live set, which only [`ReadModelDb::switch`] replaces.
    pub async fn drop_tables(&self, projection: &str) -> Result<(), ProjectionError> {
        debug_assert!(
            self.tables != TableSet::Live,
            "the live tables are never dropped"
        );
        dispatch!(self, drop_tables(&self.tables, projection))
    }

    /// A checkpoint by its full name (see [`TableSet::checkpoint`]).
    pub async fn checkpoint(&self, name: &str) -> Result<Position, ProjectionError> {
        dispatch!(self, checkpoint(name))
    }

    pub async fn bookings(
        &self,
        ids: &[BookingId],
    ) -> Result<HashMap<BookingId, BookingView>, ProjectionError> {
        dispatch!(self, bookings(&self.tables, ids))
    }

    pub async fn booking(&self, id: BookingId) -> Result<Option<BookingView>, ProjectionError> {
        Ok(self.bookings(&[id]).await?.remove(&id))
    }

    pub async fn customer_bookings(
        &self,
        customer_id: &str,
    ) -> Result<Vec<BookingView>, ProjectionError> {
        dispatch!(self, customer_bookings(&self.tables, customer_id))
    }

    /// A show's held and sold seats (`only`: just these seats); seats not listed are free.
    pub async fn seats(
        &self,
        show_id: ShowId,
        only: Option<&[SeatId]>,
    ) -> Result<HashMap<SeatId, SeatClaim>, ProjectionError> {
        dispatch!(self, seats(&self.tables, show_id, only))
    }

    pub async fn stats(
        &self,
        ids: &[ShowId],
    ) -> Result<HashMap<ShowId, ShowStats>, ProjectionError> {
        dispatch!(self, stats(&self.tables, ids))
    }

    /// Every row of this set, in key order.
    pub async fn rows(&self) -> Result<TableRows, ProjectionError> {
        dispatch!(self, rows(&self.tables))
    }

    /// The generation of checkpoint `name`'s tables (0 until the first switch): what a
    /// projector expects when it commits.
    pub async fn generation(&self, name: &str) -> Result<u64, ProjectionError> {
        dispatch!(self, generation(name))
    }

    /// Write a batch into this set and move checkpoint `name` from `expected` to `position`;
    /// [`ProjectionError::CheckpointMoved`] (nothing written) when it is no longer at
    /// `expected`, or the tables are no longer of `generation` (a replay switched them).
    pub async fn commit(
        &self,
        name: &str,
        expected: Position,
        generation: u64,
        position: Position,
        changes: &Changes,
    ) -> Result<(), ProjectionError> {
        let _turn = self.turn_to_write().await;
        dispatch!(
            self,
            commit(&self.tables, name, expected, generation, position, changes)
        )
    }

    /// On SQLite, wait for this process's turn to write the file (none on Postgres).
    async fn turn_to_write(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.write_gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        }
    }

    /// Build what the switch needs that the bulk load went without (the customer index).
    pub async fn prepare_switch(&self) -> Result<(), ProjectionError> {
        dispatch!(self, prepare_switch(&self.tables))
    }

    /// Record that a process takes replays of `projection` at `api` (a heartbeat).
    pub async fn advertise_replayer(
        &self,
        projection: &str,
        api: &str,
    ) -> Result<(), ProjectionError> {
        dispatch!(
            self,
            advertise_replayer(projection, api, chrono::Utc::now().timestamp_millis())
        )
    }

    pub async fn withdraw_replayer(
        &self,
        projection: &str,
        api: &str,
    ) -> Result<(), ProjectionError> {
        dispatch!(self, withdraw_replayer(projection, api))
    }

    /// The APIs of processes that take replays of `projection` and have beaten within
    /// `fresh_within` (by this machine's clock), the latest first. A process killed without
    /// withdrawing stays listed until its beat ages out.
    pub async fn live_replayers(
        &self,
        projection: &str,
        fresh_within: std::time::Duration,
    ) -> Result<Vec<String>, ProjectionError> {
        let window = i64::try_from(fresh_within.as_millis()).unwrap_or(i64::MAX);
        let since = chrono::Utc::now().timestamp_millis().saturating_sub(window);
        dispatch!(self, replayers(projection, since))
    }

    /// Replace the live tables of `projection` by the shadow ones, with the shadow's
    /// checkpoint, in one transaction; returns the live position after the switch.
    pub async fn switch(&self, projection: &str) -> Result<Position, ProjectionError> {
        let _turn = self.turn_to_write().await;
        dispatch!(self, switch(projection))
    }
}
