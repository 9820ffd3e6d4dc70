//! # event-store
//!
//! ZingQueue's event store: the log that is the only memory that must survive. It stores opaque
//! events (a type name, JSON text, metadata) in streams and in one global log, and knows nothing
//! of bookings.
//!
//! What it offers ([`EventStore`]):
//! - `append` / `append_many`: atomic appends to one or several streams, each with an expected
//!   version ([`StoreError::Conflict`] names both versions). Repeating an append whose event ids
//!   are all stored returns the original positions, which makes redelivered work harmless.
//! - `read_stream`, `read_all` (the global log in batches) and [`Subscription`] (catch-up, then
//!   live, woken by the database's notifications with a polling fallback).
//!
//! **Gap safety.** Postgres sequences commit out of order, so a naive reader of `position > n` can
//! pass a position whose transaction commits later. Here every append takes one row lock (the log
//! head) before it allocates positions and holds it until it commits: positions are dense, commit
//! in order, and a rolled-back append gives its positions back. A reader can take everything it
//! sees and never waits on a gap. The price, one writer at a time, is paid back by group commit
//! ([`writer`]): concurrent appends share one transaction.
//!
//! Layout:
//! - [`event`]: the shapes in and out (`NewEvent`, `RecordedEvent`, `ExpectedVersion`, ...).
//! - [`error`]: `StoreError`, and `DecodeError`, which names a stored event that does not decode.
//! - [`store`]: the `EventStore` trait.
//! - `plan`: deciding a batch of appends (versions, repeats, positions); pure, shared by backends.
//! - [`writer`]: the group-commit writer task every backend runs.
//! - [`postgres`], [`sqlite`]: the backends, with their embedded migrations; `row`: the stored
//!   row both read.
//! - [`subscription`]: following the global log.
//! - [`ops`]: operational records beside the log: dead letters and consumer-group progress.
//! - [`open`]: pick a backend from a database URL.

pub mod error;
pub mod event;
pub mod ops;
mod plan;
pub mod postgres;
mod row;
pub mod sqlite;
pub mod store;
pub mod subscription;
pub mod writer;

pub use error::{DecodeError, StoreError, is_transient_sqlx};
pub use event::{
    AppendResult, AppendedStream, EventMetadata, ExpectedVersion, NewEvent, Position,
    RecordedEvent, StreamAppend,
};
pub use ops::{
    ConsumerProgress, DeadLetter, DeadLetterCount, DeadLetterQuery, DeadLetterStatus,
    MemberCounters, NewDeadLetter,
};
pub use postgres::PostgresEventStore;
pub use sqlite::SqliteEventStore;
pub use store::EventStore;
pub use subscription::Subscription;

use std::sync::Arc;

/// How long a read waits for a pooled connection before it fails (transiently). Short, because
/// a database that is down makes sqlx retry its connect until this runs out: the API must answer
/// `503` within a second then, not hang, and the components back off and retry on their own.
/// A pool this busy for this long is overload, which deserves a `503` too. Shared by the read
/// models' pool.
pub const POOL_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// Open the store a database URL names (`postgres://…` or `sqlite://…`), creating or migrating its
/// schema.
pub async fn open(database_url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresEventStore::connect(database_url).await?))
    } else if database_url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteEventStore::open(database_url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(database_url.to_string()))
    }
}
