//! `zingqueue dev-broker`: librdkafka's mock cluster in its own process, with the booking topic
//! and every dead-letter topic created (the mock has no CreateTopics API, so clients could not
//! create them themselves: `up` against it would wait for ever to create them).

use infra::embedded_broker::EmbeddedBroker;
use infra::kafka::BOOKING_EVENTS_TOPIC;

use crate::cli::GlobalArgs;

pub async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start(1)?;
    infra::consumer::ensure_topics(&broker, BOOKING_EVENTS_TOPIC, global.partitions).await?;
    println!("dev broker (librdkafka mock cluster; forgets everything when it stops)");
    println!("  bootstrap servers: {}", broker.bootstrap_servers());
    println!(
        "  topic {BOOKING_EVENTS_TOPIC}: {} partitions; dead-letter topics zq.dlq.*: 1 each",
        global.partitions
    );
    println!(
        "  run components with ZQ_KAFKA_BROKERS={}",
        broker.bootstrap_servers()
    );
    println!("Press Ctrl-C to stop.");
    super::interrupted().await;
    println!("dev broker stopped.");
    Ok(())
}
