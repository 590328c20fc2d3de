//! Reader behaviour against a real broker.

mod common;

use std::time::Duration;

use common::{client, new_topic, testcontainers};
use futures::StreamExt;
use kastellan::{Client, Error, StartOffset};

async fn fill(client: &Client, topic: &str, partitions: i32, per_partition: i64) {
    let producer = client.producer().build().unwrap();
    for p in 0..partitions {
        for i in 0..per_partition {
            producer
                .to(topic)
                .partition(p)
                .key(format!("p{p}"))
                .value(format!("{p}-{i}"))
                .header("seq", i.to_string())
                .enqueue()
                .await
                .unwrap();
        }
    }
    producer.flush().await;
}

#[tokio::test]
async fn read_to_end_returns_everything_once_in_partition_order() {
    let client = client().await;
    let topic = new_topic(&client, "read-end", 3).await;
    fill(&client, &topic, 3, 200).await;

    let reader = client.reader().topic(&topic).build().await.unwrap();
    assert_eq!(
        reader.assignment(),
        (0..3)
            .map(|p| (topic.clone(), p, 0, 200))
            .collect::<Vec<_>>()
    );
    let records = reader.read_to_end().await.unwrap();
    assert_eq!(records.len(), 600);
    for p in 0..3 {
        let offsets: Vec<i64> = records
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        assert_eq!(
            offsets,
            (0..200).collect::<Vec<_>>(),
            "partition {p} complete and ordered"
        );
    }
    let r = records
        .iter()
        .find(|r| r.partition == 1 && r.offset == 7)
        .unwrap();
    assert_eq!(r.value_str(), Some("1-7"));
    assert_eq!(r.header("seq"), Some(&b"7"[..]));
    assert!(r.timestamp > 1_600_000_000_000);

    // An empty topic reads as empty, immediately.
    let empty = new_topic(&client, "read-empty", 2).await;
    let none = client
        .reader()
        .topic(&empty)
        .build()
        .await
        .unwrap()
        .read_to_end()
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn start_positions_and_chosen_partitions() {
    let client = client().await;
    let topic = new_topic(&client, "read-start", 2).await;
    fill(&client, &topic, 2, 50).await;

    let at = client
        .reader()
        .partitions(&topic, &[1])
        .start(StartOffset::Offset(40))
        .build()
        .await
        .unwrap()
        .read_to_end()
        .await
        .unwrap();
    assert_eq!(
        at.iter()
            .map(|r| (r.partition, r.offset))
            .collect::<Vec<_>>(),
        (40..50).map(|o| (1, o)).collect::<Vec<_>>()
    );

    let latest = client
        .reader()
        .topic(&topic)
        .start(StartOffset::Latest)
        .build()
        .await
        .unwrap();
    assert!(latest.read_to_end().await.unwrap().is_empty());

    let mixed = client
        .reader()
        .topic(&topic)
        .start(StartOffset::Latest)
        .start_partition_at(&topic, 0, 45)
        .build()
        .await
        .unwrap()
        .read_to_end()
        .await
        .unwrap();
    assert_eq!(mixed.len(), 5);
    assert!(mixed.iter().all(|r| r.partition == 0 && r.offset >= 45));

    match client.reader().partitions(&topic, &[5]).build().await {
        Err(Error::UnknownPartition {
            partition: 5,
            count: 2,
            ..
        }) => {}
        other => panic!("expected UnknownPartition, got {other:?}"),
    }
    match client
        .reader()
        .topic("no-such-topic-for-reader")
        .build()
        .await
    {
        Err(Error::UnknownTopic(_)) => {}
        other => panic!("expected UnknownTopic, got {other:?}"),
    }
}

#[tokio::test]
async fn start_at_timestamp() {
    let client = client().await;
    let topic = new_topic(&client, "read-time", 1).await;
    let producer = client.producer().build().unwrap();
    let t0 = 1_750_000_000_000_i64;
    for i in 0..20 {
        producer
            .to(&topic)
            .value(format!("{i}"))
            .timestamp(t0 + i * 60_000)
            .send()
            .await
            .unwrap();
    }
    let records = client
        .reader()
        .topic(&topic)
        .start(StartOffset::Timestamp(t0 + 15 * 60_000))
        .build()
        .await
        .unwrap()
        .read_to_end()
        .await
        .unwrap();
    assert_eq!(
        records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (15..20).collect::<Vec<_>>()
    );
    assert_eq!(records[0].timestamp, t0 + 15 * 60_000);
}

#[tokio::test]
async fn stream_delivers_records_produced_after_start() {
    let client = client().await;
    let topic = new_topic(&client, "read-live", 2).await;
    let mut stream = client
        .reader()
        .topic(&topic)
        .start(StartOffset::Latest)
        .max_wait(Duration::from_millis(100))
        .build()
        .await
        .unwrap()
        .stream();
    let producer = client.producer().build().unwrap();
    let sender = tokio::spawn(async move {
        for i in 0..30 {
            producer
                .to(&topic)
                .value(format!("live-{i}"))
                .send()
                .await
                .unwrap();
        }
    });
    let mut got = Vec::new();
    while got.len() < 30 {
        let r = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("records arrive")
            .expect("stream open")
            .expect("no error");
        got.push(r.value_str().unwrap().to_string());
    }
    sender.await.unwrap();
    got.sort_by_key(|v| v[5..].parse::<u32>().unwrap());
    assert_eq!(
        got,
        (0..30).map(|i| format!("live-{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn run_drives_a_handler_and_reads_java_produced_records() {
    let client = client().await;
    let topic = new_topic(&client, "read-java", 1).await;
    let bootstrap = testcontainers::bootstrap();
    let lines: String = (0..25).map(|i| format!("line {i}\n")).collect();
    let out = testcontainers::run_kafka_class_with_stdin(
        testcontainers::CONSOLE_PRODUCER,
        &[
            "--bootstrap-server",
            &bootstrap,
            "--topic",
            &topic,
            "--compression-codec",
            "gzip",
        ],
        lines.as_bytes(),
        Duration::from_secs(90),
    )
    .expect("console producer runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut seen = Vec::new();
    let result = client
        .reader()
        .topic(&topic)
        .build()
        .await
        .unwrap()
        .run(true, |r| {
            seen.push(r.value_str().unwrap_or_default().to_string());
            async { Ok::<(), std::convert::Infallible>(()) }
        })
        .await;
    assert!(result.is_ok());
    assert_eq!(
        seen,
        (0..25).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );

    // A handler error stops the run and is returned as such.
    let result = client
        .reader()
        .topic(&topic)
        .build()
        .await
        .unwrap()
        .run(true, |r| async move {
            if r.offset == 3 {
                Err("boom")
            } else {
                Ok(())
            }
        })
        .await;
    assert!(matches!(
        result,
        Err(kastellan::reader::RunError::Handler("boom"))
    ));
}

/// A position past the end of the log (the log was truncated, or the
/// offset is simply wrong) gets `OFFSET_OUT_OF_RANGE` from the broker; the
/// reader starts over from the earliest offset instead of failing or
/// stopping, and the other partition in the same fetch session goes on.
#[tokio::test]
async fn a_position_past_the_end_starts_over_from_the_earliest_offset() {
    let client = client().await;
    let topic = new_topic(&client, "read-out-of-range", 2).await;
    fill(&client, &topic, 2, 10).await;
    let mut stream = client
        .reader()
        .topic(&topic)
        .start(StartOffset::Earliest)
        .start_partition_at(&topic, 1, 1_000_000)
        .build()
        .await
        .unwrap()
        .stream();
    let mut seen = std::collections::BTreeSet::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while seen.len() < 20 {
            let r = stream
                .next()
                .await
                .expect("stream goes on")
                .expect("no error");
            assert!(
                seen.insert((r.partition, r.offset)),
                "{}/{} delivered twice",
                r.partition,
                r.offset
            );
        }
    })
    .await;
    assert!(read.is_ok(), "read {} of 20 records: {seen:?}", seen.len());
    let expected: std::collections::BTreeSet<_> =
        (0..2).flat_map(|p| (0..10).map(move |o| (p, o))).collect();
    assert_eq!(seen, expected);
}
