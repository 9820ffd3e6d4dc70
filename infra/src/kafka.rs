//! Kafka pieces shared by the relay and (later) the consumers: the producer settings that keep
//! per-partition order without loss, and topic administration behind a trait, because
//! librdkafka's mock cluster has no CreateTopics API.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The topic every stored event is published to.
pub const BOOKING_EVENTS_TOPIC: &str = "zq.booking-events";
/// Partitions of the topic unless configured otherwise. Fixed once the topic exists: changing it
/// would move shows between partitions.
pub const DEFAULT_PARTITIONS: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(
        "topic {topic} has {actual} partitions, but {expected} are configured; the partition \
         count of a topic cannot change (it would move shows between partitions)"
    )]
    PartitionMismatch {
        topic: String,
        expected: i32,
        actual: i32,
    },
    #[error("topic {topic} is not in the broker's metadata")]
    Missing { topic: String },
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {reason}")]
    Create { topic: String, reason: String },
}

/// Creates topics and checks their partition counts.
#[async_trait]
pub trait TopicAdmin: Send + Sync {
    /// Create `topic` with `partitions` partitions unless it exists; refuse when it exists with
    /// another partition count.
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), TopicError>;
}

/// Topic administration through Kafka's admin API (real clusters, nisshi).
pub struct KafkaTopicAdmin {
    admin: AdminClient<DefaultClientContext>,
}

impl KafkaTopicAdmin {
    pub fn new(bootstrap_servers: &str) -> Result<KafkaTopicAdmin, TopicError> {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .create()?;
        Ok(KafkaTopicAdmin { admin })
    }
}

#[async_trait]
impl TopicAdmin for KafkaTopicAdmin {
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), TopicError> {
        // A topic that exists is only checked: some brokers (librdkafka's mock cluster behind
        // `zingqueue dev-broker`) have no CreateTopics API, and a cluster may forbid creation.
        // Listing every topic, rather than asking for this one, never auto-creates it.
        let existing = self
            .admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))?;
        if existing
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none())
        {
            return check_partitions(self.admin.inner(), topic, partitions);
        }
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in self.admin.create_topics([&new_topic], &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                // A broker that is starting or moving its controller: try again.
                Err((
                    _,
                    code @ (RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::OperationTimedOut
                    | RDKafkaErrorCode::NotController
                    | RDKafkaErrorCode::BrokerNotAvailable
                    | RDKafkaErrorCode::LeaderNotAvailable
                    | RDKafkaErrorCode::NetworkException
                    | RDKafkaErrorCode::CoordinatorNotAvailable
                    | RDKafkaErrorCode::CoordinatorLoadInProgress),
                )) => return Err(TopicError::Kafka(KafkaError::AdminOp(code))),
                Err((topic, code)) => {
                    return Err(TopicError::Create {
                        topic,
                        reason: code.to_string(),
                    });
                }
            }
        }
        check_partitions(self.admin.inner(), topic, partitions)
    }
}

/// Report on `/readyz` (as `component`) whether the broker answers `client` with `topic`'s
/// metadata within a second. The relay and every consumer group run it once a second: their
/// clients only wait and reconnect while the broker is away, so this is what shows the outage.
pub async fn probe_broker<C>(client: C, topic: String, component: &str)
where
    C: std::ops::Deref + Send + 'static,
    C::Target: AsClient,
{
    let answered = tokio::task::spawn_blocking(move || client.metadata_of(&topic)).await;
    let readiness = crate::resilience::Readiness::global();
    match answered {
        Ok(Ok(())) => readiness.set_ready(component),
        Ok(Err(error)) => readiness.set_not_ready(component, &format!("the broker: {error}")),
        Err(error) => readiness.set_not_ready(component, &format!("probing the broker: {error}")),
    }
}

/// A Kafka client whose broker can be asked for a topic's metadata.
pub trait AsClient {
    fn metadata_of(&self, topic: &str) -> Result<(), KafkaError>;
}

impl<C: rdkafka::consumer::ConsumerContext> AsClient for rdkafka::consumer::StreamConsumer<C> {
    fn metadata_of(&self, topic: &str) -> Result<(), KafkaError> {
        use rdkafka::consumer::Consumer;
        self.client()
            .fetch_metadata(Some(topic), Duration::from_secs(1))
            .map(|_| ())
    }
}

impl AsClient for rdkafka::producer::FutureProducer {
    fn metadata_of(&self, topic: &str) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer;
        self.client()
            .fetch_metadata(Some(topic), Duration::from_secs(1))
            .map(|_| ())
    }
}

/// Refuse a topic whose partition count is not the configured one.
pub fn check_partitions<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    expected: i32,
) -> Result<(), TopicError> {
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .ok_or_else(|| TopicError::Missing {
            topic: topic.to_string(),
        })?;
    let actual = i32::try_from(found.partitions().len()).unwrap_or(i32::MAX);
    if actual != expected {
        return Err(TopicError::PartitionMismatch {
            topic: topic.to_string(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// Producer settings for the relay (DESIGN.md, "Known traps"): idempotent with `acks=all`, so
/// retries neither duplicate nor reorder within a partition; `message.timeout.ms=0`, so a record
/// is retried until delivered (an idempotent producer skips timed-out records while writing later
/// ones); the Java client's murmur2 partitioner, so a show's partition is the one any Kafka
/// client computes from its id.
pub fn relay_producer_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .set("compression.type", "none");
    config
}
