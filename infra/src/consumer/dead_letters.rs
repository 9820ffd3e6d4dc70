//! Dead letters: rows in the database first (they must outlive the broker), then mirrored to
//! `zq.dlq.<cause>` with the original key, value and headers plus headers naming the error
//! (API.md, "Kafka"). A mirror that fails is retried by a sweep, so every row reaches its topic.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use event_store::{DeadLetter, EventStore, NewDeadLetter, StoreError};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::{info, warn};

use super::record::RawRecord;

/// Every cause a service dead-letters with; each has its topic, created at start-up.
pub const DLQ_CAUSES: &[&str] = &[
    CAUSE_POISON,
    CAUSE_HANDLER_FAILED,
    CAUSE_EXPIRED_SEATS,
    CAUSE_PAYMENT_EXHAUSTED,
    CAUSE_EMAIL_FAILED,
];
/// A record that is not a valid event of a subscribed type.
pub const CAUSE_POISON: &str = "poison";
/// A handler refused a record for good.
pub const CAUSE_HANDLER_FAILED: &str = "handler-failed";
/// A payment arrived after its hold expired and the seats were lost: refunded.
pub const CAUSE_EXPIRED_SEATS: &str = "expired-seats";
/// Transient payment failures went on past the last retry.
pub const CAUSE_PAYMENT_EXHAUSTED: &str = "payment-exhausted";
/// An email could not be sent within its retries.
pub const CAUSE_EMAIL_FAILED: &str = "email-failed";

/// The DLQ topic of a cause.
pub fn dlq_topic(cause: &str) -> String {
    format!("zq.dlq.{cause}")
}

/// Records and mirrors one group's dead letters.
pub struct DeadLetterSink {
    store: Arc<dyn EventStore>,
    group: String,
    producer: FutureProducer,
}

impl DeadLetterSink {
    pub fn new(
        store: Arc<dyn EventStore>,
        group: &str,
        bootstrap_servers: &str,
    ) -> Result<DeadLetterSink, rdkafka::error::KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(DeadLetterSink {
            store,
            group: group.to_string(),
            producer,
        })
    }

    /// Store a dead letter (durable when this returns) and mirror it in the background.
    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        self: &Arc<Self>,
        raw: &RawRecord,
        event_type: Option<&str>,
        cause: &str,
        reason: &str,
        attempts: u32,
        first_failed_at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let letter = NewDeadLetter {
            group: self.group.clone(),
            cause: cause.to_string(),
            reason: reason.to_string(),
            topic: raw.topic.clone(),
            partition: raw.partition,
            offset: raw.offset,
            key: raw.key.clone(),
            payload: raw.payload.clone(),
            headers: raw.headers_as_text(),
            event_id: raw.header("ce_id").map(str::to_string),
            event_type: event_type.map(str::to_string),
            position: raw.log_position(),
            attempts,
            first_failed_at,
            last_failed_at: Utc::now(),
        };
        let (id, new) = self.store.record_dead_letter(&letter).await?;
        if new {
            warn!(group = %self.group, dead_letter = id, cause, reason, partition = raw.partition,
                  offset = raw.offset, event_id = ?letter.event_id, "dead-lettered");
            let sink = self.clone();
            tokio::spawn(async move {
                if let Ok(Some(stored)) = sink.store.dead_letter(id).await {
                    sink.mirror(&stored).await;
                }
            });
        }
        Ok(id)
    }

    /// Publish a stored dead letter to its topic and mark it mirrored; on failure it stays
    /// unmirrored for the next sweep.
    pub async fn mirror(&self, letter: &DeadLetter) {
        let topic = dlq_topic(&letter.cause);
        let mut headers = OwnedHeaders::new();
        for (key, value) in &letter.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let fields = [
            ("zq_dlq_id", letter.id.to_string()),
            ("zq_dlq_group", letter.group.clone()),
            ("zq_dlq_cause", letter.cause.clone()),
            ("zq_dlq_reason", letter.reason.clone()),
            ("zq_dlq_attempts", letter.attempts.to_string()),
            ("zq_dlq_first_failure", letter.first_failed_at.to_rfc3339()),
            ("zq_dlq_last_failure", letter.last_failed_at.to_rfc3339()),
            ("zq_dlq_source_topic", letter.topic.clone()),
            ("zq_dlq_source_partition", letter.partition.to_string()),
            ("zq_dlq_source_offset", letter.offset.to_string()),
        ];
        for (key, value) in &fields {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &letter.payload {
            record = record.payload(payload.as_slice());
        }
        match self.producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => {
                if let Err(error) = self.store.mark_dead_letter_mirrored(letter.id).await {
                    warn!(%error, dead_letter = letter.id, "mirrored, but not marked; the sweep mirrors it again");
                }
            }
            Err((error, _)) => {
                warn!(%error, dead_letter = letter.id, %topic, "mirroring a dead letter failed; the sweep retries");
            }
        }
    }

    /// Mirror whatever is still unmirrored (after a crash or a broker outage).
    pub async fn sweep(&self) -> Result<(), StoreError> {
        let letters = self.store.unmirrored_dead_letters(&self.group, 100).await?;
        if !letters.is_empty() {
            info!(group = %self.group, count = letters.len(), "mirroring dead letters");
        }
        for letter in letters {
            self.mirror(&letter).await;
        }
        Ok(())
    }
}

/// A stored dead letter as a record again, for a redrive.
pub fn raw_record_of(letter: &DeadLetter) -> RawRecord {
    RawRecord {
        topic: letter.topic.clone(),
        partition: letter.partition,
        offset: letter.offset,
        key: letter.key.clone(),
        payload: letter.payload.clone(),
        headers: letter
            .headers
            .iter()
            .map(|(key, value)| (key.clone(), value.as_ref().map(|v| v.as_bytes().to_vec())))
            .collect(),
    }
}
