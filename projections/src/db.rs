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
}

/// What one batch changes, written in one transaction with the checkpoint.
#[derive(Debug, Default)]
pub struct Changes {
    pub bookings: HashMap<BookingId, BookingView>,
    /// `None`: the seat is free again.
    pub seats: HashMap<(ShowId, SeatId), Option<SeatClaim>>,
    pub stats: HashMap<ShowId, ShowStats>,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rm_bookings (booking_id TEXT PRIMARY KEY, show_id TEXT NOT NULL, \
     customer_id TEXT NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL, \
     last_position BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rm_bookings_customer ON rm_bookings (customer_id)",
    "CREATE TABLE IF NOT EXISTS rm_seats (show_id TEXT NOT NULL, seat TEXT NOT NULL, \
     booking_id TEXT NOT NULL, sold BOOLEAN NOT NULL, PRIMARY KEY (show_id, seat))",
    "CREATE TABLE IF NOT EXISTS rm_show_stats (show_id TEXT PRIMARY KEY, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rm_checkpoints (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
];

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

/// The read-model operations for one sqlx pool type.
macro_rules! read_models {
    ($pool:ty) => {
        use std::collections::HashMap;

        use domain::{BookingId, SeatId, ShowId};
        use event_store::Position;
        use sqlx::Row;

        use super::{
            Changes, ProjectionError, ROWS_PER_STATEMENT, SCHEMA, corrupt, placeholders, value_rows,
        };
        use crate::view::{BookingView, SeatClaim, ShowStats};

        pub(super) async fn create_schema(pool: &$pool) -> Result<(), ProjectionError> {
            for statement in SCHEMA {
                sqlx::query(statement).execute(pool).await?;
            }
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
            Ok(Position(
                position.map_or(0, |p| u64::try_from(p).unwrap_or(0)),
            ))
        }

        fn booking_of(body: &str, key: &str) -> Result<BookingView, ProjectionError> {
            serde_json::from_str(body).map_err(|error| corrupt(key, error))
        }

        pub(super) async fn bookings(
            pool: &$pool,
            ids: &[BookingId],
        ) -> Result<HashMap<BookingId, BookingView>, ProjectionError> {
            let mut found = HashMap::new();
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "SELECT booking_id, body FROM rm_bookings WHERE booking_id IN ({})",
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
            customer_id: &str,
        ) -> Result<Vec<BookingView>, ProjectionError> {
            let rows = sqlx::query(
                "SELECT booking_id, body FROM rm_bookings WHERE customer_id = $1 \
                 ORDER BY booking_id",
            )
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
            show_id: ShowId,
            only: Option<&[SeatId]>,
        ) -> Result<HashMap<SeatId, SeatClaim>, ProjectionError> {
            let rows = match only {
                Some(seats) if seats.is_empty() => Vec::new(),
                Some(seats) => {
                    let mut rows = Vec::new();
                    for chunk in seats.chunks(500) {
                        let sql = format!(
                            "SELECT seat, booking_id, sold FROM rm_seats \
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
                    sqlx::query("SELECT seat, booking_id, sold FROM rm_seats WHERE show_id = $1")
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
            ids: &[ShowId],
        ) -> Result<HashMap<ShowId, ShowStats>, ProjectionError> {
            let mut found = HashMap::new();
            for id in ids {
                let body: Option<String> =
                    sqlx::query_scalar("SELECT body FROM rm_show_stats WHERE show_id = $1")
                        .bind(id.to_string())
                        .fetch_optional(pool)
                        .await?;
                if let Some(body) = body {
                    found.insert(
                        *id,
                        serde_json::from_str(&body).map_err(|e| corrupt(id, e))?,
                    );
                }
            }
            Ok(found)
        }

        /// Write a batch's changes and move the checkpoint, in one transaction.
        pub(super) async fn commit(
            pool: &$pool,
            name: &str,
            position: Position,
            changes: &Changes,
        ) -> Result<(), ProjectionError> {
            let mut tx = pool.begin().await?;
            // Multi-row statements: a burst of bookings is a few statements per batch, not one
            // round trip per row.
            let views: Vec<&BookingView> = changes.bookings.values().collect();
            for chunk in views.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO rm_bookings (booking_id, show_id, customer_id, status, body, \
                     last_position) VALUES {} \
                     ON CONFLICT (booking_id) DO UPDATE SET show_id = excluded.show_id, \
                     customer_id = excluded.customer_id, status = excluded.status, \
                     body = excluded.body, last_position = excluded.last_position",
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
                    "INSERT INTO rm_seats (show_id, seat, booking_id, sold) VALUES {} \
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
                        "DELETE FROM rm_seats WHERE show_id = $1 AND seat IN ({})",
                        placeholders(2, chunk.len())
                    );
                    let mut query = sqlx::query(&sql).bind(show_id.to_string());
                    for seat in chunk {
                        query = query.bind(seat.to_string());
                    }
                    query.execute(&mut *tx).await?;
                }
            }
            for (show_id, stats) in &changes.stats {
                let body = serde_json::to_string(stats).map_err(|e| corrupt(show_id, e))?;
                sqlx::query(
                    "INSERT INTO rm_show_stats (show_id, body) VALUES ($1, $2) \
                     ON CONFLICT (show_id) DO UPDATE SET body = excluded.body",
                )
                .bind(show_id.to_string())
                .bind(body)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO rm_checkpoints (name, position) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            )
            .bind(name)
            .bind(i64::try_from(position.0).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }
    };
}

mod postgres {
    read_models!(sqlx::PgPool);
}

mod sqlite {
    read_models!(sqlx::SqlitePool);
}

/// The read models' database.
#[derive(Debug, Clone)]
pub enum ReadModelDb {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

macro_rules! dispatch {
    ($self:expr, $function:ident($($arg:expr),*)) => {
        match $self {
            ReadModelDb::Postgres(pool) => postgres::$function(pool $(, $arg)*).await,
            ReadModelDb::Sqlite(pool) => sqlite::$function(pool $(, $arg)*).await,
        }
    };
}

impl ReadModelDb {
    /// Connect to the database a URL names (the event store's) and create the tables.
    pub async fn open(database_url: &str) -> Result<ReadModelDb, ProjectionError> {
        let db = if database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
        {
            ReadModelDb::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .connect(database_url)
                    .await?,
            )
        } else if database_url.starts_with("sqlite:") {
            use std::str::FromStr;
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(database_url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(30));
            ReadModelDb::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?,
            )
        } else {
            return Err(ProjectionError::UnsupportedUrl(database_url.to_string()));
        };
        dispatch!(&db, create_schema())?;
        Ok(db)
    }

    pub async fn checkpoint(&self, name: &str) -> Result<Position, ProjectionError> {
        dispatch!(self, checkpoint(name))
    }

    pub async fn bookings(
        &self,
        ids: &[BookingId],
    ) -> Result<HashMap<BookingId, BookingView>, ProjectionError> {
        dispatch!(self, bookings(ids))
    }

    pub async fn booking(&self, id: BookingId) -> Result<Option<BookingView>, ProjectionError> {
        Ok(self.bookings(&[id]).await?.remove(&id))
    }

    pub async fn customer_bookings(
        &self,
        customer_id: &str,
    ) -> Result<Vec<BookingView>, ProjectionError> {
        dispatch!(self, customer_bookings(customer_id))
    }

    /// A show's held and sold seats (`only`: just these seats); seats not listed are free.
    pub async fn seats(
        &self,
        show_id: ShowId,
        only: Option<&[SeatId]>,
    ) -> Result<HashMap<SeatId, SeatClaim>, ProjectionError> {
        dispatch!(self, seats(show_id, only))
    }

    pub async fn stats(
        &self,
        ids: &[ShowId],
    ) -> Result<HashMap<ShowId, ShowStats>, ProjectionError> {
        dispatch!(self, stats(ids))
    }

    pub async fn commit(
        &self,
        name: &str,
        position: Position,
        changes: &Changes,
    ) -> Result<(), ProjectionError> {
        dispatch!(self, commit(name, position, changes))
    }
}
