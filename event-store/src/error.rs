//! The event store's one error enum, and the decode error that names a stored event.

use uuid::Uuid;

use crate::event::{ExpectedVersion, Position};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A stream was not at the expected version. The caller reloads the stream, decides again and
    /// retries (or gives up): this is optimistic concurrency, not a failure of the store.
    #[error("stream {stream_id} is at version {actual}, but the append expected {expected}")]
    Conflict {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },

    /// Some, but not all, of an append's event ids are stored already, or a stored id belongs to
    /// another stream: the append is neither new nor a repeat of an earlier one.
    #[error("event {event_id} is stored already: {reason}")]
    DuplicateEvent { event_id: Uuid, reason: String },

    /// An event that cannot be stored as given.
    #[error("event {event_id} is invalid: {reason}")]
    InvalidEvent { event_id: Uuid, reason: String },

    /// An append that cannot be carried out as given (no events, a stream named twice, ...).
    #[error("invalid append: {0}")]
    InvalidAppend(String),

    /// A stored row that does not map back into an event (the schema was altered by hand?).
    #[error("stored event at position {position} is unreadable: {reason}")]
    Corrupt { position: i64, reason: String },

    /// The store is shutting down or its writer has stopped.
    #[error("the event store is closed")]
    Closed,

    /// The database could not be reached for a batch this append was part of; worth retrying.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),

    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),

    /// The database URL names no backend this store has.
    #[error("unsupported database URL {0:?}: expected postgres://… or sqlite://<file>")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// True for errors worth retrying as they are: the database went away or is busy, a pool
    /// timed out. Not for errors an append causes itself (conflicts, bad data, constraints).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Database(error) => is_transient_sqlx(error),
            _ => false,
        }
    }
}

/// True for database errors worth retrying as they are: the server went away, is restarting or
/// busy, a pool timed out. Shared by the store and the read models (same databases).
pub fn is_transient_sqlx(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| transient_code(&code)),
        _ => false,
    }
}

/// Postgres SQLSTATEs of a lost or refused connection, a server shutting down or a serialization
/// failure; SQLite's BUSY and LOCKED (and their extended codes).
fn transient_code(code: &str) -> bool {
    // SQLite's codes are numbers of at most 4 digits; a Postgres SQLSTATE always has 5
    // characters, some of them all digits ("53300", "08006"), which must not be read as SQLite's.
    if code.len() < 5
        && let Ok(sqlite_code) = code.parse::<u32>()
    {
        return matches!(sqlite_code & 0xff, 5 | 6);
    }
    code.starts_with("08") // connection exception
        || code.starts_with("57P") // operator intervention: admin/crash shutdown
        || code == "53300" // too many connections
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock detected
}

/// A stored event that does not decode into the caller's types. `source` says why (for the domain:
/// an unknown type, which consumers skip, or data that does not fit the type, which is poison).
#[derive(Debug, thiserror::Error)]
#[error("event {event_id} at position {position} (type {event_type}) does not decode: {source}")]
pub struct DecodeError<E: std::error::Error + 'static> {
    pub event_id: Uuid,
    pub position: Position,
    pub event_type: String,
    #[source]
    pub source: E,
}

#[cfg(test)]
mod tests {
    use super::transient_code;

    #[test]
    fn numeric_postgres_states_are_not_taken_for_sqlite_codes() {
        // Postgres: too many connections, connection failures, serialization failure.
        for code in [
            "53300", "08000", "08001", "08003", "08004", "08006", "40001", "57P01",
        ] {
            assert!(transient_code(code), "{code}");
        }
        // SQLite: BUSY, LOCKED and their extended codes (BUSY_SNAPSHOT = 517).
        for code in ["5", "6", "517", "262"] {
            assert!(transient_code(code), "{code}");
        }
        // Constraint violations are not transient on either.
        for code in ["23505", "19", "2067"] {
            assert!(!transient_code(code), "{code}");
        }
    }
}
