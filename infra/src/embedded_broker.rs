//! The embedded broker: librdkafka's mock cluster, hosted in this process on a thread of its own
//! (its handle is not `Send`), speaking the Kafka protocol on loopback so that every rdkafka
//! client, in this process or another, can use it. It backs the embedded default (`zingqueue up`
//! with no `ZQ_KAFKA_BROKERS`) and `zingqueue dev-broker`.
//!
//! It is a development broker: it forgets everything when the process stops and silently drops a
//! partition's oldest records beyond about 5 MiB (DESIGN.md). The mock has no CreateTopics API, so
//! topics are created through its handle; [`EmbeddedBroker`] is therefore also a [`TopicAdmin`].
//!
//! (testkit hosts the same cluster for tests with a thread of its own: testkit may depend on no
//! crate of ours.)

use std::sync::mpsc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use tokio::sync::oneshot;

use crate::kafka::{TopicAdmin, TopicError, check_partitions};

enum Request {
    CreateTopic {
        topic: String,
        partitions: i32,
        reply: oneshot::Sender<Result<(), KafkaError>>,
    },
}

pub struct EmbeddedBroker {
    bootstrap_servers: String,
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Start a mock cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<EmbeddedBroker, KafkaError> {
        let (started, bootstrap) = mpsc::channel();
        let (requests, incoming) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || host(brokers, started, incoming))
            .map_err(|_| KafkaError::ClientCreation("cannot start the broker thread".into()))?;
        let bootstrap_servers = bootstrap.recv().map_err(|_| {
            KafkaError::ClientCreation("the embedded broker thread stopped".into())
        })??;
        Ok(EmbeddedBroker {
            bootstrap_servers,
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// `host:port[,…]`: the `bootstrap.servers` for clients.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }
}

fn host(
    brokers: i32,
    started: mpsc::Sender<Result<String, KafkaError>>,
    requests: mpsc::Receiver<Request>,
) {
    let cluster = match MockCluster::new(brokers) {
        Ok(cluster) => cluster,
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    let _ = started.send(Ok(cluster.bootstrap_servers()));
    // Serve until the EmbeddedBroker is dropped (the channel closes); the cluster goes with us.
    for request in requests {
        match request {
            Request::CreateTopic {
                topic,
                partitions,
                reply,
            } => {
                let _ = reply.send(cluster.create_topic(&topic, partitions, 1));
            }
        }
    }
}

#[async_trait]
impl TopicAdmin for EmbeddedBroker {
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), TopicError> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .create()?;
        match check_partitions(client.client(), topic, partitions) {
            Err(TopicError::Missing { .. }) => {}
            other => return other,
        }
        let (reply, answer) = oneshot::channel();
        let create = Request::CreateTopic {
            topic: topic.to_string(),
            partitions,
            reply,
        };
        let stopped = || TopicError::Create {
            topic: topic.to_string(),
            reason: "the embedded broker stopped".into(),
        };
        self.requests
            .as_ref()
            .ok_or_else(stopped)?
            .send(create)
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())??;
        check_partitions(client.client(), topic, partitions)
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which drops the cluster.
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
