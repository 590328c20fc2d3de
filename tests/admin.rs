//! Admin operations against a real broker.

mod common;

use std::time::Duration;

use common::{client, new_topic, testcontainers, unique_topic};
use kastellan::admin::{IfExists, NewTopic};
use kastellan::Error;

#[tokio::test]
async fn create_list_describe_delete() {
    let client = client().await;
    let admin = client.admin();
    let name = unique_topic("admin-crud");
    admin
        .create_topic(NewTopic::new(&name, 4, 1).config("retention.ms", "3600000"))
        .await
        .expect("create");

    let listed = admin.list_topics().await.expect("list");
    let t = listed
        .iter()
        .find(|t| t.name == name)
        .expect("new topic listed");
    assert_eq!(t.partitions.len(), 4);
    assert!(t.partitions.iter().all(|p| p.leader >= 0));
    assert!(
        listed.iter().all(|t| !t.name.starts_with("__")),
        "internal topics hidden"
    );

    let described = admin.describe_topic(&name).await.expect("describe");
    assert_eq!(
        described
            .partitions
            .iter()
            .map(|p| p.id)
            .collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );

    // The topic config reached the broker: check with Kafka's own tool.
    let bootstrap = testcontainers::bootstrap();
    let out = testcontainers::run_kafka_class(
        testcontainers::CONFIG_COMMAND,
        &[
            "--bootstrap-server",
            &bootstrap,
            "--entity-type",
            "topics",
            "--entity-name",
            &name,
            "--describe",
        ],
        Duration::from_secs(60),
    )
    .expect("kafka-configs runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("retention.ms=3600000"),
        "kafka-configs said: {text}"
    );

    admin.delete_topic(&name).await.expect("delete");
    // Deletion is asynchronous in the cluster; the topic disappears shortly.
    let mut gone = false;
    for _ in 0..100 {
        if !admin
            .list_topics()
            .await
            .expect("list")
            .iter()
            .any(|t| t.name == name)
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "deleted topic still listed");
}

#[tokio::test]
async fn creating_an_existing_topic_is_a_typed_error_or_idempotent() {
    let client = client().await;
    let admin = client.admin();
    let name = new_topic(&client, "admin-exists", 1).await;

    match admin.create_topic(NewTopic::new(&name, 1, 1)).await {
        Err(Error::TopicAlreadyExists(t)) => assert_eq!(t, name),
        other => panic!("expected TopicAlreadyExists, got {other:?}"),
    }
    let created = admin
        .create_topic_with(NewTopic::new(&name, 1, 1), IfExists::Ignore)
        .await
        .expect("idempotent create");
    assert!(!created);
}

#[tokio::test]
async fn invalid_requests_get_clear_errors() {
    let client = client().await;
    let admin = client.admin();

    match admin.delete_topic(&unique_topic("never-created")).await {
        Err(Error::UnknownTopic(_)) => {}
        other => panic!("expected UnknownTopic, got {other:?}"),
    }
    match admin
        .create_topic(NewTopic::new(unique_topic("zero"), 0, 1))
        .await
    {
        Err(Error::Config(msg)) => assert!(msg.contains("partition"), "{msg}"),
        other => panic!("expected Config error, got {other:?}"),
    }
    // A single broker cannot hold 3 replicas: the broker's error comes back typed.
    match admin
        .create_topic(NewTopic::new(unique_topic("rf3"), 1, 3))
        .await
    {
        Err(Error::Broker(b)) => {
            assert_eq!(b.name(), "INVALID_REPLICATION_FACTOR", "{b}");
            assert_eq!(b.api(), "CreateTopics");
        }
        other => panic!("expected a broker error, got {other:?}"),
    }
    // An unknown config key is refused by the broker.
    match admin
        .create_topic(NewTopic::new(unique_topic("badcfg"), 1, 1).config("no.such.config", "1"))
        .await
    {
        Err(Error::Broker(b)) => assert_eq!(b.name(), "INVALID_CONFIG", "{b}"),
        other => panic!("expected INVALID_CONFIG, got {other:?}"),
    }
    match admin.watermarks(&unique_topic("missing")).await {
        Err(Error::UnknownTopic(_)) => {}
        other => panic!("expected UnknownTopic, got {other:?}"),
    }
}

#[tokio::test]
async fn watermarks_and_offsets_for_timestamp() {
    let client = client().await;
    let admin = client.admin();
    let name = new_topic(&client, "admin-marks", 2).await;
    let producer = client.producer().build().unwrap();

    let t0 = 1_700_000_000_000_i64;
    for i in 0..10 {
        producer
            .to(&name)
            .partition(0)
            .value(format!("v{i}"))
            .timestamp(t0 + i * 1000)
            .send()
            .await
            .expect("send");
    }
    for i in 0..3 {
        producer
            .to(&name)
            .partition(1)
            .value(format!("w{i}"))
            .send()
            .await
            .expect("send");
    }

    let marks = admin.watermarks(&name).await.expect("watermarks");
    assert_eq!(marks.len(), 2);
    assert_eq!(
        (marks[0].partition, marks[0].low, marks[0].high),
        (0, 0, 10)
    );
    assert_eq!((marks[1].partition, marks[1].low, marks[1].high), (1, 0, 3));

    let by_time = admin
        .offsets_for_timestamp(&name, t0 + 4500)
        .await
        .expect("offsets for time");
    assert_eq!(
        by_time.get(&0),
        Some(&Some(5)),
        "first record at or after t0+4.5s"
    );
    // Partition 1 has only records stamped now; t0 is in the past.
    assert_eq!(by_time.get(&1), Some(&Some(0)));
    let future = admin
        .offsets_for_timestamp(&name, 4_000_000_000_000)
        .await
        .expect("offsets for far future");
    assert_eq!(future.get(&0), Some(&None));
}
