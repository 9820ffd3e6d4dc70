//! The `EventStore` trait: what every backend offers.

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::StoreError;
use crate::event::{AppendResult, Position, RecordedEvent, StreamAppend};
use crate::ops::{
    ConsumerProgress, DeadLetter, DeadLetterCount, DeadLetterQuery, DeadLetterStatus,
    MemberCounters, NewDeadLetter,
};

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

    // --- Operational records (see `ops`) ---------------------------------------------------

    /// Store a dead letter, unless the same record (by event id, else by its place in the
    /// topic) is stored already for the group. Returns its id and whether it is new.
    async fn record_dead_letter(&self, letter: &NewDeadLetter) -> Result<(i64, bool), StoreError>;

    async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError>;

    /// Dead letters, newest first.
    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError>;

    /// Ask for a dead letter to be processed again by its group; idempotent. The letter's status
    /// after the request, or `None` when there is no such letter.
    async fn request_redrive(&self, id: i64) -> Result<Option<DeadLetterStatus>, StoreError>;

    /// The group's dead letters waiting for a redrive, oldest first.
    async fn pending_redrives(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// Claim a requested redrive, so that one member of the group runs it; false when another
    /// member (or an earlier round) has it.
    async fn claim_redrive(&self, id: i64) -> Result<bool, StoreError>;

    /// Record a redrive's outcome: `None` resolves the letter, `Some(reason)` makes it dead again.
    async fn finish_redrive(&self, id: i64, failure: Option<&str>) -> Result<(), StoreError>;

    /// The group's dead letters not yet mirrored to their DLQ topic.
    async fn unmirrored_dead_letters(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    async fn mark_dead_letter_mirrored(&self, id: i64) -> Result<(), StoreError>;

    /// Save consumer-group progress rows (positions only move forward; heartbeats always).
    async fn save_consumer_progress(&self, progress: &[ConsumerProgress])
    -> Result<(), StoreError>;

    /// Every group's progress on every partition.
    async fn consumer_progress(&self) -> Result<Vec<ConsumerProgress>, StoreError>;

    /// Dead letters counted by group, cause and status.
    async fn dead_letter_counts(&self) -> Result<Vec<DeadLetterCount>, StoreError>;

    /// Save a consumer group member's counters (with its heartbeat).
    async fn save_member_counters(&self, counters: &MemberCounters) -> Result<(), StoreError>;

    /// Every member's latest counters.
    async fn member_counters(&self) -> Result<Vec<MemberCounters>, StoreError>;

    /// The next generation number of `name` (1 on first use): each call, in any process, gets a
    /// number greater than every number handed out before. A fencing token kept where nothing
    /// restored from an older copy can bring it back.
    async fn next_generation(&self, name: &str) -> Result<u64, StoreError>;
}
