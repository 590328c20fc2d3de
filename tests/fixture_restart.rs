//! `Broker::restart` of `testcontainers.rs`: a killed broker comes back at the
//! same address with its data, as a restarted broker process would. Fault
//! tests (producer and consumer recovery) build on this.

#[path = "../testcontainers.rs"]
mod testcontainers;

use std::time::Duration;

use kastellan::admin::NewTopic;
use kastellan::{Client, ClientConfig};
use testcontainers::{start_broker, BrokerOptions};

async fn connect(bootstrap: &str) -> Client {
    Client::connect(ClientConfig::new(bootstrap).retry_deadline(Duration::from_secs(30)))
        .await
        .unwrap_or_else(|e| panic!("connect to {bootstrap}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_broker_keeps_its_address_and_its_topics() {
    let mut broker = start_broker(BrokerOptions::default()).expect("broker");
    let bootstrap = broker.bootstrap().to_string();
    let client = connect(&bootstrap).await;
    client
        .admin()
        .create_topic(NewTopic::new("survives-restart", 3, 1))
        .await
        .expect("create topic");
    let pid_before = broker.pid();

    broker.kill();
    assert!(!broker.is_running(), "killed broker still running");
    broker.restart().expect("restart");
    assert!(broker.is_running());
    assert_ne!(broker.pid(), pid_before, "restart must start a new JVM");
    assert_eq!(broker.bootstrap(), bootstrap);

    let fresh = connect(&bootstrap).await;
    let topic = fresh
        .admin()
        .describe_topic("survives-restart")
        .await
        .expect("topic survives the restart");
    assert_eq!(topic.partitions.len(), 3);

    // Restarting a running broker kills it first.
    broker.restart().expect("second restart");
    assert!(broker.is_running());
}
