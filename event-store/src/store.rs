//! The `EventStore` trait: what every backend offers.

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::StoreError;
use crate::event::{AppendResult, Position, RecordedEvent, StreamAppend};

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Append events to one stream if it is at the expected version.
    async fn append(&self, stream: StreamAppend) -> Result<AppendResult, StoreError> {
        self.append_many(vec![stream]).await
    }

    /// Append events to several streams atomically: all of them, or none when any stream is not
    /// at its expected version ([`StoreError::Conflict`] with both versions).
    ///
    /// If every event id is stored already, nothing is written and the answer carries the original
    /// positions (`was_repeat`): redelivered work is harmless. Some but not all ids stored is a
    /// [`StoreError::DuplicateEvent`].
    ///
    /// Concurrent appends are gathered into one transaction (group commit); each is still decided
    /// on its own, so an append refused for its own reasons (a conflict, a duplicate, a database
    /// error only it causes) never fails the others. When the database itself is unavailable,
    /// every waiting append gets [`StoreError::Unavailable`] (transient: retry).
    ///
    /// Dropping the returned future does not cancel an append that has been queued: it may still
    /// be written. A caller that gave up retries with the same event ids and gets the original
    /// positions back.
    async fn append_many(&self, streams: Vec<StreamAppend>) -> Result<AppendResult, StoreError>;

    /// The position a named reader of the log (the relay, a projection, a consumer group) has
    /// finished, if it ever saved one.
    async fn checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError>;

    /// Save the position a named reader has finished. Checkpoints only move forward: saving a
    /// position below the stored one changes nothing, so a delayed or duplicate reader can never
    /// rewind another's progress.
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError>;

    /// Refuse new appends ([`StoreError::Closed`]), finish writing those already queued, and
    /// return once they are durable: the store's part of a graceful shutdown. Reads still work.
    async fn close(&self);

    /// The events of one stream with a version above `after_version` (0 = from the start).
    async fn read_stream(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events of the global log after `after`, in position order. Positions are
    /// dense and every position below the log head is committed, so a reader can never pass an
    /// event that is still to commit.
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The position of the newest committed event (0 when the log is empty).
    async fn head(&self) -> Result<Position, StoreError>;

    /// A wake-up hint: changes when the store learns of a new head (its own appends, or another
    /// process's through the database's notifications). Readers still poll now and then, since a
    /// notification can be lost when a connection drops.
    fn head_hint(&self) -> watch::Receiver<Position>;
}
