//! The three-node cluster of `testcontainers.rs`: every node is listed by
//! every other, topics are replicated three times, and nodes come back at
//! their own addresses with their data after a kill, alone or all together.
//! The cluster tests (`tests/cluster.rs`) build on this.

#[path = "../testcontainers.rs"]
mod testcontainers;

use std::time::Duration;

use kastellan::admin::NewTopic;
use kastellan::{Client, ClientConfig};
use testcontainers::{start_cluster, Cluster, ClusterOptions};

async fn connect(bootstrap: &str) -> Client {
    Client::connect(ClientConfig::new(bootstrap).retry_deadline(Duration::from_secs(60)))
        .await
        .unwrap_or_else(|e| panic!("connect to {bootstrap}: {e}"))
}

// The fixture blocks (JVM starts, Kafka tools): off the async workers.
async fn blocking<T: Send + 'static>(
    cluster: &std::sync::Arc<Cluster>,
    f: impl FnOnce(&Cluster) -> T + Send + 'static,
) -> T {
    let cluster = std::sync::Arc::clone(cluster);
    tokio::task::spawn_blocking(move || f(&cluster))
        .await
        .expect("fixture call panicked")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_replicates_and_its_nodes_restart_alone_and_together() {
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(|| start_cluster(ClusterOptions::default()))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    eprintln!("cluster started in {:?}", cluster.startup_time());
    let addresses: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.address().to_string())
        .collect();
    assert_eq!(cluster.bootstrap(), addresses.join(","));

    let client = connect(cluster.bootstrap()).await;
    let listed: Vec<(i32, String)> = client
        .brokers()
        .into_iter()
        .map(|b| (b.id, b.addr))
        .collect();
    let expected: Vec<(i32, String)> = (1..).zip(addresses.iter().cloned()).collect();
    assert_eq!(listed, expected, "Metadata lists the three nodes");

    client
        .admin()
        .create_topic(NewTopic::new("replicated", 3, 3))
        .await
        .expect("create topic");
    let states = blocking(&cluster, |c| c.describe_topic("replicated"))
        .await
        .expect("kafka-topics --describe");
    assert_eq!(states.len(), 3);
    for p in &states {
        assert_eq!(p.replicas.len(), 3, "{p:?}");
        assert!(p.leader.is_some(), "{p:?}");
    }

    // One node: killed, then back at its address with a new JVM.
    let node2_pid = cluster.node(2).pid();
    blocking(&cluster, |c| c.node(2).kill()).await;
    assert!(!cluster.node(2).is_running());
    assert_eq!(cluster.running_nodes(), vec![1, 3]);
    blocking(&cluster, |c| c.node(2).restart())
        .await
        .expect("node 2 restarts");
    assert!(cluster.node(2).is_running());
    assert_ne!(cluster.node(2).pid(), node2_pid);
    assert_eq!(cluster.node(2).address(), addresses[1]);

    // The whole cluster: killed at once, back together with its data.
    blocking(&cluster, |c| c.kill_all()).await;
    assert!(cluster.running_nodes().is_empty());
    blocking(&cluster, |c| c.restart_all())
        .await
        .expect("the cluster restarts");
    assert_eq!(cluster.running_nodes(), vec![1, 2, 3]);
    blocking(&cluster, |c| {
        c.wait_until_in_sync(Some("replicated"), Duration::from_secs(120))
    })
    .await
    .expect("replicas back in sync");
    let fresh = connect(cluster.bootstrap()).await;
    let topic = fresh
        .admin()
        .describe_topic("replicated")
        .await
        .expect("the topic survives the restart");
    assert_eq!(topic.partitions.len(), 3);
    assert_eq!(fresh.brokers().len(), 3);
}
