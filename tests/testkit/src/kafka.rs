//! A Kafka-protocol broker: librdkafka's mock cluster, in-process on its own thread (its handle is
//! not `Send`), or the brokers `ZQ_TEST_KAFKA_BROKERS` names.
//!
//! The mock cluster has no CreateTopics API, so topics are created through its handle; for an
//! external broker through the admin API. Broker failures can be injected on the mock.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;

use crate::error::TestkitError;

/// A broker for one test. Dropping it stops a mock cluster.
pub struct KafkaBroker {
    /// `host:port[,host:port]`: the `bootstrap.servers` to give clients.
    pub bootstrap_servers: String,
    mock: Option<MockThread>,
    /// A broker process testkit started (nisshi), stopped with this value.
    _process: Option<crate::nisshi::NisshiProcess>,
}

struct MockThread {
    requests: mpsc::Sender<MockRequest>,
    thread: Option<JoinHandle<()>>,
}

enum MockRequest {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<Result<(), String>>,
    },
    BrokersDown(mpsc::Sender<Result<(), String>>),
    BrokersUp(mpsc::Sender<Result<(), String>>),
}

/// Brokers in a mock cluster: one is enough for the protocol, and makes "the broker is down" a
/// single switch.
const MOCK_BROKERS: i32 = 1;

pub fn try_kafka() -> Result<KafkaBroker, TestkitError> {
    if let Ok(bootstrap_servers) = std::env::var("ZQ_TEST_KAFKA_BROKERS") {
        check_brokers_answer(&bootstrap_servers).map_err(|reason| TestkitError::Unusable {
            server: "Kafka",
            address: bootstrap_servers.clone(),
            reason,
        })?;
        eprintln!(
            "testkit: {} uses Kafka at {bootstrap_servers} (ZQ_TEST_KAFKA_BROKERS)",
            crate::test_name()
        );
        return Ok(KafkaBroker {
            bootstrap_servers,
            mock: None,
            _process: None,
        });
    }
    let (started, bootstrap) = mpsc::channel();
    let (requests, incoming) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("testkit-mock-kafka".into())
        .spawn(move || run_mock_cluster(started, incoming))?;
    let bootstrap_servers = bootstrap
        .recv()
        .map_err(|_| "the mock cluster thread stopped".to_string())
        .and_then(|result| result)
        .map_err(|reason| TestkitError::StartFailed {
            server: "the Kafka mock cluster",
            reason,
        })?;
    eprintln!(
        "testkit: {} uses Kafka mock cluster {bootstrap_servers} (in-process)",
        crate::test_name()
    );
    Ok(KafkaBroker {
        bootstrap_servers,
        mock: Some(MockThread {
            requests,
            thread: Some(thread),
        }),
        _process: None,
    })
}

fn run_mock_cluster(
    started: mpsc::Sender<Result<String, String>>,
    requests: mpsc::Receiver<MockRequest>,
) {
    let cluster = match MockCluster::new(MOCK_BROKERS) {
        Ok(cluster) => cluster,
        Err(error) => {
            let _ = started.send(Err(error.to_string()));
            return;
        }
    };
    let _ = started.send(Ok(cluster.bootstrap_servers()));
    // Serve requests until the KafkaBroker is dropped (the channel closes).
    for request in requests {
        match request {
            MockRequest::CreateTopic {
                name,
                partitions,
                reply,
            } => {
                let result = cluster
                    .create_topic(&name, partitions, 1)
                    .map_err(|error| error.to_string());
                let _ = reply.send(result);
            }
            MockRequest::BrokersDown(reply) => {
                let result = (1..=MOCK_BROKERS)
                    .try_for_each(|id| cluster.broker_down(id))
                    .map_err(|error| error.to_string());
                let _ = reply.send(result);
            }
            MockRequest::BrokersUp(reply) => {
                let result = (1..=MOCK_BROKERS)
                    .try_for_each(|id| cluster.broker_up(id))
                    .map_err(|error| error.to_string());
                let _ = reply.send(result);
            }
        }
    }
}

impl KafkaBroker {
    /// A broker in a process testkit started; it stops when this value is dropped.
    pub(crate) fn external_process(
        bootstrap_servers: String,
        process: crate::nisshi::NisshiProcess,
    ) -> KafkaBroker {
        KafkaBroker {
            bootstrap_servers,
            mock: None,
            _process: Some(process),
        }
    }

    /// Whether this is the in-process mock cluster (which can inject failures).
    pub fn is_mock(&self) -> bool {
        self.mock.is_some()
    }

    /// Create a topic with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), TestkitError> {
        let unusable = |reason: String| TestkitError::Unusable {
            server: "Kafka",
            address: self.bootstrap_servers.clone(),
            reason,
        };
        match &self.mock {
            Some(mock) => mock
                .ask(|reply| MockRequest::CreateTopic {
                    name: name.to_string(),
                    partitions,
                    reply,
                })
                .map_err(unusable),
            None => create_topic_with_admin_api(&self.bootstrap_servers, name, partitions)
                .map_err(unusable),
        }
    }

    /// Take every broker of the mock cluster down (clients see connection failures).
    pub fn brokers_down(&self) -> Result<(), TestkitError> {
        self.mock_only()?
            .ask(MockRequest::BrokersDown)
            .map_err(|reason| self.unusable(reason))
    }

    /// Bring the mock cluster's brokers back.
    pub fn brokers_up(&self) -> Result<(), TestkitError> {
        self.mock_only()?
            .ask(MockRequest::BrokersUp)
            .map_err(|reason| self.unusable(reason))
    }

    fn mock_only(&self) -> Result<&MockThread, TestkitError> {
        self.mock
            .as_ref()
            .ok_or_else(|| self.unusable("failure injection needs the mock cluster".into()))
    }

    fn unusable(&self, reason: String) -> TestkitError {
        TestkitError::Unusable {
            server: "Kafka",
            address: self.bootstrap_servers.clone(),
            reason,
        }
    }
}

impl MockThread {
    fn ask(
        &self,
        request: impl FnOnce(mpsc::Sender<Result<(), String>>) -> MockRequest,
    ) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(request(reply))
            .map_err(|_| "the mock cluster thread stopped".to_string())?;
        answer
            .recv()
            .map_err(|_| "the mock cluster thread stopped".to_string())?
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if let Some(mut mock) = self.mock.take() {
            drop(mock.requests);
            if let Some(thread) = mock.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Ask the brokers for their metadata, so that a wrong address fails here with testkit's message.
pub(crate) fn check_brokers_answer(bootstrap_servers: &str) -> Result<(), String> {
    let client: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .create()
        .map_err(|error| error.to_string())?;
    client
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map(|_| ())
        .map_err(|error| format!("no metadata within 10 s: {error}"))
}

fn create_topic_with_admin_api(
    bootstrap_servers: &str,
    name: &str,
    partitions: i32,
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .create()
        .map_err(|error| error.to_string())?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics([&topic], &options))
        .map_err(|error| error.to_string())?;
    for result in results {
        result.map_err(|(topic, code)| format!("creating topic {topic}: {code}"))?;
    }
    Ok(())
}
