//! `zingqueue dev-broker`: librdkafka's mock cluster in its own process, with the booking topic
//! created (the mock has no CreateTopics API, so clients could not create it themselves).

use infra::embedded_broker::EmbeddedBroker;
use infra::kafka::{BOOKING_EVENTS_TOPIC, TopicAdmin};

use crate::cli::GlobalArgs;

pub async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start(1)?;
    broker
        .ensure_topic(BOOKING_EVENTS_TOPIC, global.partitions)
        .await?;
    println!("dev broker (librdkafka mock cluster; forgets everything when it stops)");
    println!("  bootstrap servers: {}", broker.bootstrap_servers());
    println!(
        "  topic {BOOKING_EVENTS_TOPIC}: {} partitions",
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
