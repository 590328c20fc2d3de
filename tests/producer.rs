//! Producer behaviour against a real broker.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{client, new_topic, read_all, testcontainers, unique_topic};
use kastellan::admin::NewTopic;
use kastellan::producer::java_partition;
use kastellan::{Client, ClientConfig, Compression, Error, Partitioner, ProducerRecord};

#[tokio::test]
async fn send_waits_for_ack_and_reports_offsets() {
    let client = client().await;
    let topic = new_topic(&client, "prod-sync", 1).await;
    let producer = client.producer().build().unwrap();
    for i in 0..5 {
        let d = producer
            .to(&topic)
            .key(format!("k{i}"))
            .header("trace", format!("t{i}"))
            .json(&serde_json::json!({"n": i}))
            .unwrap()
            .send()
            .await
            .expect("send");
        assert_eq!((d.partition, d.offset), (0, i));
        assert_eq!(&*d.topic, topic);
    }
    let records = read_all(&client, &topic).await;
    assert_eq!(records.len(), 5);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as i64);
        assert_eq!(r.key_str(), Some(format!("k{i}").as_str()));
        assert_eq!(r.header("trace"), Some(format!("t{i}").as_bytes()));
        assert_eq!(r.header("content-type"), Some(&b"application/json"[..]));
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["n"], i);
    }
}

#[tokio::test]
async fn default_topic_topic_and_explicit_partition() {
    let client = client().await;
    let topic = new_topic(&client, "prod-forms", 3).await;
    let other = new_topic(&client, "prod-forms-other", 1).await;
    let producer = client.producer().default_topic(&topic).build().unwrap();

    let d = producer
        .message()
        .partition(2)
        .value("to default")
        .send()
        .await
        .unwrap();
    assert_eq!((&*d.topic, d.partition), (topic.as_str(), 2));
    let d = producer.to(&other).value("to other").send().await.unwrap();
    assert_eq!(&*d.topic, other.as_str());
    let d = producer
        .send(ProducerRecord::new().partition(1).value("record form"))
        .await
        .unwrap();
    assert_eq!((&*d.topic, d.partition), (topic.as_str(), 1));

    match producer.message().partition(3).value("x").send().await {
        Err(Error::UnknownPartition {
            partition: 3,
            count: 3,
            ..
        }) => {}
        other => panic!("expected UnknownPartition, got {other:?}"),
    }
    let no_default = client.producer().build().unwrap();
    match no_default.message().value("x").send().await {
        Err(Error::Config(m)) => assert!(m.contains("default topic"), "{m}"),
        other => panic!("expected Config error, got {other:?}"),
    }
}

#[tokio::test]
async fn keyed_records_land_where_the_java_client_puts_them() {
    let client = client().await;
    let topic = new_topic(&client, "prod-java-keys", 6).await;
    let keys: Vec<String> = (0..60).map(|i| format!("customer-{i}")).collect();

    // Produce with Kafka's own console producer (Java default partitioner).
    let input: String = keys.iter().map(|k| format!("{k}:from-java\n")).collect();
    let bootstrap = testcontainers::bootstrap();
    let out = testcontainers::run_kafka_class_with_stdin(
        testcontainers::CONSOLE_PRODUCER,
        &[
            "--bootstrap-server",
            &bootstrap,
            "--topic",
            &topic,
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=:",
        ],
        input.as_bytes(),
        Duration::from_secs(90),
    )
    .expect("console producer runs");
    assert!(
        out.status.success(),
        "console producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Produce the same keys with kastellan.
    let producer = client.producer().build().unwrap();
    for k in &keys {
        producer
            .to(&topic)
            .key(k.clone())
            .value("from-kastellan")
            .send()
            .await
            .unwrap();
    }

    let records = read_all(&client, &topic).await;
    assert_eq!(records.len(), 2 * keys.len());
    let mut java: HashMap<String, i32> = HashMap::new();
    let mut ours: HashMap<String, i32> = HashMap::new();
    for r in &records {
        let k = r.key_str().unwrap().to_string();
        match r.value_str() {
            Some("from-java") => java.insert(k, r.partition),
            Some("from-kastellan") => ours.insert(k, r.partition),
            other => panic!("unexpected value {other:?}"),
        };
    }
    assert_eq!(java.len(), keys.len());
    let used: std::collections::HashSet<i32> = java.values().copied().collect();
    assert!(used.len() > 1, "keys should spread over partitions");
    for k in &keys {
        assert_eq!(
            java[k], ours[k],
            "key {k}: Java chose {}, kastellan {}",
            java[k], ours[k]
        );
        assert_eq!(java[k], java_partition(k.as_bytes(), 6));
    }
}

#[tokio::test]
async fn round_robin_random_and_custom_partitioners() {
    let client = client().await;
    let topic = new_topic(&client, "prod-partitioners", 3).await;

    let rr = client
        .producer()
        .partitioner(Partitioner::RoundRobin)
        .build()
        .unwrap();
    let mut counts = [0; 3];
    for i in 0..30 {
        let d = rr
            .to(&topic)
            .key("same-key")
            .value(format!("{i}"))
            .send()
            .await
            .unwrap();
        counts[d.partition as usize] += 1;
    }
    assert_eq!(counts, [10, 10, 10], "round robin ignores keys");

    let custom = client
        .producer()
        .partitioner(Partitioner::custom(|_, key, n| {
            key.map_or(0, |k| (k[0] - b'0') as i32 % n)
        }))
        .build()
        .unwrap();
    for k in ["0", "1", "2", "4"] {
        let d = custom.to(&topic).key(k).value("v").send().await.unwrap();
        assert_eq!(d.partition, (k.as_bytes()[0] - b'0') as i32 % 3);
    }
    let bad = client
        .producer()
        .partitioner(Partitioner::custom(|_, _, _| 7))
        .build()
        .unwrap();
    assert!(matches!(
        bad.to(&topic).value("v").send().await,
        Err(Error::UnknownPartition { partition: 7, .. })
    ));

    let random = client
        .producer()
        .partitioner(Partitioner::Random)
        .build()
        .unwrap();
    for _ in 0..20 {
        let d = random.to(&topic).value("r").send().await.unwrap();
        assert!((0..3).contains(&d.partition));
    }
}

#[tokio::test]
async fn many_enqueued_records_all_arrive_in_order_with_reports() {
    let client = client().await;
    let topic = new_topic(&client, "prod-bulk", 4).await;
    for compression in [Compression::None, Compression::Gzip, Compression::Snappy] {
        let topic = format!("{topic}-{compression:?}");
        client
            .admin()
            .create_topic(NewTopic::new(&topic, 4, 1))
            .await
            .unwrap();
        let producer = client
            .producer()
            .compression(compression)
            .linger(Duration::from_millis(20))
            .max_batch_bytes(64 * 1024)
            .with_delivery_reports()
            .build()
            .unwrap();
        let mut reports = producer.delivery_reports().expect("reports enabled");
        assert!(producer.delivery_reports().is_none(), "taken once");
        let n = 5_000;
        for i in 0..n {
            // Fire and forget: the delivery future is dropped.
            let delivery = producer
                .to(&topic)
                .key(format!("key-{}", i % 97))
                .value(format!("value-{i:06}"))
                .enqueue()
                .await
                .expect("enqueue");
            drop(delivery);
        }
        producer.flush().await;
        let mut ok = 0;
        while let Ok(r) = reports.try_recv() {
            r.result.expect("delivered");
            ok += 1;
        }
        assert_eq!(ok, n, "one report per record ({compression:?})");

        let records = read_all(&client, &topic).await;
        assert_eq!(records.len(), n, "{compression:?}");
        // Per key, values arrive in the order they were sent.
        let mut last: HashMap<String, String> = HashMap::new();
        for r in &records {
            let k = r.key_str().unwrap().to_string();
            let v = r.value_str().unwrap().to_string();
            if let Some(prev) = last.get(&k) {
                assert!(prev < &v, "{k}: {prev} before {v}");
            }
            last.insert(k, v);
        }
    }
}

#[tokio::test]
async fn unknown_topic_fails_unless_auto_create_is_on() {
    let client = client().await;
    let missing = unique_topic("prod-missing");
    let producer = client.producer().build().unwrap();
    match producer.to(&missing).value("x").send().await {
        Err(Error::UnknownTopic(t)) => assert_eq!(t, missing),
        other => panic!("expected UnknownTopic, got {other:?}"),
    }
    let auto = client.producer().auto_create_topics(2, 1).build().unwrap();
    let d = auto
        .to(&missing)
        .value("x")
        .send()
        .await
        .expect("auto-created");
    assert_eq!(d.offset, 0);
    let meta = client.admin().describe_topic(&missing).await.unwrap();
    assert_eq!(meta.partitions.len(), 2);
}

#[tokio::test]
async fn records_too_large_are_refused_with_a_clear_error() {
    let client = client().await;
    // Producer-side limit.
    let topic = new_topic(&client, "prod-large", 1).await;
    let producer = client
        .producer()
        .max_batch_bytes(16 * 1024)
        .build()
        .unwrap();
    match producer.to(&topic).value(vec![0u8; 20_000]).send().await {
        Err(Error::RecordTooLarge { limit: 16384, .. }) => {}
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    // Broker-side limit: the topic accepts at most 2000-byte batches.
    let small = unique_topic("prod-small-topic");
    client
        .admin()
        .create_topic(NewTopic::new(&small, 1, 1).config("max.message.bytes", "2000"))
        .await
        .unwrap();
    let producer = client.producer().build().unwrap();
    match producer.to(&small).value(vec![1u8; 5000]).send().await {
        // The error names the limit that refused the record, not the
        // producer's own (1 MiB): the topic's max.message.bytes.
        Err(e @ Error::RecordTooLarge { .. }) => {
            let Error::RecordTooLarge { size, limit, which } = &e else {
                unreachable!()
            };
            assert_eq!(*limit, 2000, "{e}");
            assert!(*size > 5000, "the refused batch's size: {e}");
            assert_eq!(*which, "the topic's max.message.bytes", "{e}");
            assert!(e.to_string().contains("limit of 2000 bytes"), "{e}");
        }
        other => panic!("expected RecordTooLarge from the broker, got {other:?}"),
    }
    // Small records to the same topic still go through, even when many are
    // batched together past the topic's limit (the batch is split).
    let producer = client
        .producer()
        .linger(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut futures = Vec::new();
    for i in 0..40 {
        futures.push(
            producer
                .to(&small)
                .value(vec![i as u8; 300])
                .enqueue()
                .await
                .unwrap(),
        );
    }
    for f in futures {
        f.await.expect("small record delivered");
    }
    assert_eq!(read_all(&client, &small).await.len(), 40);
}

#[tokio::test]
async fn unreachable_broker_is_reported_after_the_deadline() {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let result = Client::connect(
        ClientConfig::new(format!("127.0.0.1:{port}"))
            .retry_deadline(Duration::from_secs(2))
            .retry_backoff(Duration::from_millis(50), Duration::from_millis(200)),
    )
    .await;
    match result {
        Err(e @ Error::Unreachable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&port.to_string()), "{msg}");
            assert!(e.is_retriable());
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up in bounded time"
    );
}

#[tokio::test]
async fn every_codec_interoperates_with_the_java_client() {
    let client = client().await;
    let bootstrap = testcontainers::bootstrap();
    for (codec, java_name) in [
        (Compression::Gzip, "gzip"),
        (Compression::Snappy, "snappy"),
        (Compression::Lz4, "lz4"),
        (Compression::Zstd, "zstd"),
    ] {
        // Java produces, kastellan reads.
        let from_java = new_topic(&client, &format!("codec-java-{java_name}"), 1).await;
        let lines: String = (0..50).map(|i| format!("java {java_name} {i}\n")).collect();
        let out = testcontainers::run_kafka_class_with_stdin(
            testcontainers::CONSOLE_PRODUCER,
            &[
                "--bootstrap-server",
                &bootstrap,
                "--topic",
                &from_java,
                "--compression-codec",
                java_name,
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
        let got: Vec<String> = read_all(&client, &from_java)
            .await
            .iter()
            .map(|r| r.value_str().unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            (0..50)
                .map(|i| format!("java {java_name} {i}"))
                .collect::<Vec<_>>()
        );

        // kastellan produces, Java reads.
        let to_java = new_topic(&client, &format!("codec-ours-{java_name}"), 1).await;
        let producer = client
            .producer()
            .compression(codec)
            .linger(Duration::from_millis(20))
            .build()
            .unwrap();
        let mut pending = Vec::new();
        for i in 0..50 {
            pending.push(
                producer
                    .to(&to_java)
                    .value(format!("ours {java_name} {i}"))
                    .enqueue()
                    .await
                    .unwrap(),
            );
        }
        for p in pending {
            p.await.expect("delivered");
        }
        let out = testcontainers::run_kafka_class_checked(
            testcontainers::CONSOLE_CONSUMER,
            &[
                "--bootstrap-server",
                &bootstrap,
                "--topic",
                &to_java,
                "--from-beginning",
                "--max-messages",
                "50",
            ],
            Duration::from_secs(90),
        )
        .expect("console consumer reads our batches");
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("ours")).collect();
        assert_eq!(
            lines,
            (0..50)
                .map(|i| format!("ours {java_name} {i}"))
                .collect::<Vec<_>>(),
            "{codec:?}"
        );
    }
}

/// Pipelined batches (5 in flight per partition) sent the moment a topic is
/// created, while its partition leaders may still refuse writes: every record
/// arrives once, and each partition holds its records in the order they were
/// sent.
#[tokio::test]
async fn pipelined_sends_to_a_new_topic_keep_order_without_duplicates() {
    let client = client().await;
    let topic = unique_topic("prod-pipelined");
    client
        .admin()
        .create_topic(NewTopic::new(&topic, 6, 1))
        .await
        .expect("create topic");
    let producer = client
        .producer()
        .max_in_flight(5)
        .max_batch_bytes(16 * 1024)
        .build()
        .unwrap();
    let total = 30_000;
    let mut pending = Vec::with_capacity(total);
    for i in 0..total {
        pending.push(
            producer
                .to(&topic)
                .partition((i % 6) as i32)
                .value(format!("{i:08}"))
                .enqueue()
                .await
                .unwrap(),
        );
    }
    for p in pending {
        p.await.expect("delivered");
    }
    let records = read_all(&client, &topic).await;
    assert_eq!(records.len(), total, "every record once");
    let mut last: HashMap<i32, usize> = HashMap::new();
    for r in &records {
        let n: usize = r.value_str().unwrap().parse().unwrap();
        assert_eq!(n % 6, r.partition as usize);
        if let Some(prev) = last.insert(r.partition, n) {
            assert!(n > prev, "partition {} holds {n} after {prev}", r.partition);
        }
    }
}

/// The producer is idempotent by default: Kafka's own tool sees our producer
/// id on the partition with the sequence of the last record we sent. Without
/// idempotence the partition has no producer state.
#[tokio::test]
async fn idempotence_is_on_by_default_as_kafka_sees_it() {
    let client = client().await;
    let bootstrap = testcontainers::bootstrap();
    let describe = |topic: &str| {
        testcontainers::run_kafka_class_checked(
            testcontainers::TRANSACTIONS_COMMAND,
            &[
                "--bootstrap-server",
                &bootstrap,
                "describe-producers",
                "--topic",
                topic,
                "--partition",
                "0",
            ],
            Duration::from_secs(90),
        )
        .expect("describe-producers")
    };

    let topic = new_topic(&client, "prod-idempotent", 1).await;
    let producer = client.producer().max_batch_bytes(4096).build().unwrap();
    let mut pending = Vec::new();
    for i in 0..100 {
        pending.push(
            producer
                .to(&topic)
                .value(vec![b'x'; 200 + i])
                .enqueue()
                .await
                .unwrap(),
        );
    }
    for p in pending {
        p.await.expect("delivered");
    }
    let out = describe(&topic);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .filter(|cols: &Vec<&str>| !cols.is_empty())
        .collect();
    assert_eq!(rows.len(), 1, "one producer id on the partition: {out}");
    // Columns: ProducerId ProducerEpoch LatestCoordinatorEpoch LastSequence ...
    assert_eq!(
        rows[0][3], "99",
        "last sequence is that of record 100: {out}"
    );

    let plain = new_topic(&client, "prod-not-idempotent", 1).await;
    let producer = client.producer().idempotent(false).build().unwrap();
    producer.to(&plain).value("x").send().await.expect("sent");
    let out = describe(&plain);
    assert_eq!(
        out.lines().skip(1).filter(|l| !l.trim().is_empty()).count(),
        0,
        "no producer state without idempotence: {out}"
    );
}

#[tokio::test]
async fn idempotence_refuses_more_than_five_in_flight() {
    let client = client().await;
    let err = client.producer().max_in_flight(6).build().unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("max_in_flight 6")),
        "{err}"
    );
    client
        .producer()
        .idempotent(false)
        .max_in_flight(6)
        .build()
        .expect("allowed without idempotence");
}

/// `close` sends what is buffered (without waiting for the linger),
/// returns once it is acknowledged, and later sends fail with a clear
/// error, from every clone of the producer.
#[tokio::test]
async fn close_delivers_buffered_records_and_refuses_later_sends() {
    let client = client().await;
    let topic = new_topic(&client, "prod-close", 2).await;
    // A long linger: without close, these records would wait a minute.
    let producer = client
        .producer()
        .linger(Duration::from_secs(60))
        .build()
        .unwrap();
    let clone = producer.clone();
    let mut pending = Vec::new();
    for i in 0..100 {
        pending.push(
            producer
                .to(&topic)
                .key(format!("k{i}"))
                .value(format!("v{i}"))
                .enqueue()
                .await
                .unwrap(),
        );
    }
    let started = std::time::Instant::now();
    producer
        .close(Duration::from_secs(30))
        .await
        .expect("everything acknowledged before the deadline");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "close did not wait for the linger"
    );
    assert!(clone.is_closed());
    for p in pending {
        // Already resolved: close waited for them.
        let d = tokio::time::timeout(Duration::from_millis(100), p)
            .await
            .expect("resolved before close returned")
            .expect("delivered");
        assert!(d.offset >= 0);
    }
    assert_eq!(read_all(&client, &topic).await.len(), 100);
    match clone.to(&topic).value("late").send().await {
        Err(e @ Error::Closed(_)) => {
            assert!(e.to_string().contains("Producer::close"), "{e}")
        }
        other => panic!("expected Error::Closed, got {other:?}"),
    }
    assert!(
        producer.close(Duration::from_secs(1)).await.is_ok(),
        "twice is fine"
    );
}

/// A producer spread over 1,000 partitions (two topics of 500) sends each
/// partition's batch in requests shared with other partitions of the same
/// broker: far fewer produce requests than batches. Every record arrives
/// once, each partition's in the order sent.
#[tokio::test]
async fn batches_of_many_partitions_share_produce_requests() {
    let client = client().await;
    let partitions = 500;
    let topics = [
        new_topic(&client, "prod-wide-a", partitions).await,
        new_topic(&client, "prod-wide-b", partitions).await,
    ];
    // A linger long enough for every partition to have its batch open
    // before the first ones close, on a loaded machine too: their batches
    // are then ready together, as under steady load.
    let producer = client
        .producer()
        .linger(Duration::from_millis(50))
        .build()
        .unwrap();
    let per_partition = 20;
    let mut pending = Vec::new();
    for n in 0..per_partition {
        for topic in &topics {
            for p in 0..partitions {
                pending.push(
                    producer
                        .to(topic)
                        .partition(p)
                        .value(format!("{p:03}-{n:02}"))
                        .enqueue()
                        .await
                        .expect("enqueue"),
                );
            }
        }
    }
    for p in pending {
        p.await.expect("delivered");
    }
    let status = client.status();
    let per_request = status.produce_batches as f64 / status.produce_requests.max(1) as f64;
    println!(
        "{} produce requests carried {} batches ({per_request:.1} per request)",
        status.produce_requests, status.produce_batches
    );
    // One batch per request would be 1.0; sharing requests between
    // partitions gives far more, even on a loaded machine.
    assert!(
        per_request >= 4.0,
        "produce requests carry the batches of many partitions: {status:?}"
    );
    for topic in &topics {
        let records = read_all(&client, topic).await;
        let mut seen: HashMap<i32, Vec<String>> = HashMap::new();
        for r in &records {
            seen.entry(r.partition)
                .or_default()
                .push(r.value_str().expect("utf-8").to_string());
        }
        for p in 0..partitions {
            let expected: Vec<String> = (0..per_partition)
                .map(|n| format!("{p:03}-{n:02}"))
                .collect();
            let values = seen.get(&p).map_or(&[][..], Vec::as_slice);
            assert_eq!(values, expected, "{topic}/{p}: every record once, in order");
        }
        assert_eq!(records.len(), (partitions * per_partition) as usize);
    }
}
