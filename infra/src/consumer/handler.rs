//! What a service plugs into the consumer runtime.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::record::EventRecord;

/// How a record ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Its effects are durable.
    Done,
    /// The handler finished with it but an operator must look at it: kept as a dead letter
    /// (the handler has recorded whatever the domain needed first, e.g. `PaymentFailed`).
    DeadLetter {
        /// The DLQ topic suffix: `zq.dlq.<cause>`.
        cause: &'static str,
        reason: String,
        attempts: u32,
        first_failed_at: DateTime<Utc>,
    },
}

/// Why a record could not be handled now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A server is away or busy (the store, Redis): retried in place with backoff, forever; the
    /// record's partition waits (in order) or only its booking waits (concurrent).
    #[error("transient: {0}")]
    Transient(String),
    /// The record can never be handled (it contradicts the log, say): dead-lettered as
    /// `handler-failed` with the reason.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A consumer service's logic.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Whether this handler acts on a (current) event type name. Records of other types are
    /// skipped and counted.
    fn subscribes_to(&self, event_type: &str) -> bool;

    /// Handle one record. Must be idempotent: records are delivered at least once.
    async fn handle(&self, record: &EventRecord) -> Result<Handled, HandlerError>;

    /// In-order mode: handle consecutive records of one partition, in order, returning one
    /// outcome per record. A transient error retries the whole batch (so it must be idempotent
    /// as a whole); a permanent one makes the runtime fall back to [`Handler::handle`] record
    /// by record, to find the culprit. The default handles them one by one.
    async fn handle_batch(&self, records: &[EventRecord]) -> Result<Vec<Handled>, HandlerError> {
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            outcomes.push(self.handle(record).await?);
        }
        Ok(outcomes)
    }
}
