//! Many partitions against the real broker: a group member that owns 1,000
//! partitions fetches them over one connection per broker, in a fetch
//! session, and consumes every record once.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, group_member, new_topic, recording, unique_topic, wait_for, RunningConsumer};
use kastellan::ProducerRecord;

const TOPICS: usize = 4;
const PARTITIONS_PER_TOPIC: i32 = 250;
const RECORDS_PER_PARTITION: i64 = 4;

/// Offsets handled, per topic and partition.
type Seen = Arc<Mutex<HashMap<(String, i32), Vec<i64>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_1000_partitions_fetches_them_in_one_session_per_broker() {
    let admin_client = client().await;
    let mut topics = Vec::new();
    for _ in 0..TOPICS {
        topics.push(new_topic(&admin_client, "scale", PARTITIONS_PER_TOPIC).await);
    }

    // Records first, from a client of their own, so the member's client
    // counts only the member's connections.
    let producer = admin_client.producer().build().expect("producer builds");
    let mut deliveries = Vec::new();
    for topic in &topics {
        for p in 0..PARTITIONS_PER_TOPIC {
            for i in 0..RECORDS_PER_PARTITION {
                let record = ProducerRecord::to(topic.as_str())
                    .partition(p)
                    .value(format!("{topic}/{p}/{i}"));
                deliveries.push(producer.enqueue(record).await.expect("enqueued"));
            }
        }
    }
    for d in deliveries {
        d.await.expect("delivered");
    }
    let total = TOPICS as i64 * i64::from(PARTITIONS_PER_TOPIC) * RECORDS_PER_PARTITION;

    let member_client = client().await;
    let seen: Seen = Arc::default();
    let group = unique_topic("scale-group");
    let mut builder = group_member(&member_client, &group, &topics[0]);
    for topic in &topics[1..] {
        builder = builder.topic(topic.as_str());
    }
    let consumer = builder.build().expect("member builds");
    let sink = Arc::clone(&seen);
    let member = RunningConsumer::spawn(
        consumer,
        recording(move |r| {
            sink.lock()
                .unwrap()
                .entry((r.topic.to_string(), r.partition))
                .or_default()
                .push(r.offset);
        }),
    );
    let count = || {
        seen.lock()
            .unwrap()
            .values()
            .map(|v| v.len() as i64)
            .sum::<i64>()
    };
    wait_for(
        &format!("{total} records over 1,000 partitions"),
        Duration::from_secs(180),
        || count() >= total,
    )
    .await;
    assert_eq!(
        member.assignment().len(),
        TOPICS * PARTITIONS_PER_TOPIC as usize
    );

    // Every record once, in offset order per partition.
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), TOPICS * PARTITIONS_PER_TOPIC as usize);
        for ((topic, p), offsets) in seen.iter() {
            let expected: Vec<i64> = (0..RECORDS_PER_PARTITION).collect();
            assert_eq!(
                offsets, &expected,
                "{topic}/{p}: each offset once, in order"
            );
        }
    }

    // One broker: the member holds its metadata connection, its coordinator
    // connection and one fetch connection, not one per partition.
    let status = member_client.status();
    assert!(
        status.open_connections <= 4,
        "a member of 1,000 partitions on one broker holds {} connections",
        status.open_connections
    );
    assert!(
        status.connections_opened <= 8,
        "{} connections opened",
        status.connections_opened
    );

    // Idle now: requests go on in the session and list (almost) nothing.
    let before = member_client.status();
    wait_for("three more fetches", Duration::from_secs(60), || {
        member_client.status().fetch_requests >= before.fetch_requests + 3
    })
    .await;
    let after = member_client.status();
    let requests = after.fetch_requests - before.fetch_requests;
    let incremental = after.incremental_fetches - before.incremental_fetches;
    let listed = after.fetch_partitions - before.fetch_partitions;
    assert_eq!(
        incremental, requests,
        "idle fetches use the session: {after:?} after {before:?}"
    );
    assert!(
        listed < requests * 10,
        "idle session fetches list {listed} partitions over {requests} requests"
    );
    member.stop(Duration::from_secs(10)).await;
}

/// The first fetch after an assignment carries every assigned partition.
/// A request for the first few alone long-polls for `max_wait` when they
/// have nothing, while the rest (here the one partition with a record)
/// wait behind it: the record would only come with a later request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_fetch_of_an_assignment_carries_every_partition() {
    let admin_client = client().await;
    let topic = new_topic(&admin_client, "scale-first", 1000).await;
    let producer = admin_client.producer().build().expect("producer builds");
    producer
        .send(
            ProducerRecord::to(topic.as_str())
                .partition(999)
                .value("only"),
        )
        .await
        .expect("delivered");

    let member_client = client().await;
    // Fetch requests sent when the record reached the handler.
    let requests_then: Arc<Mutex<Option<u64>>> = Arc::default();
    let (sink, status_client) = (Arc::clone(&requests_then), member_client.clone());
    let consumer = group_member(&member_client, &unique_topic("scale-first"), &topic)
        .max_wait(Duration::from_secs(20))
        .build()
        .expect("member builds");
    let member = RunningConsumer::spawn(
        consumer,
        recording(move |_| {
            sink.lock()
                .unwrap()
                .get_or_insert(status_client.status().fetch_requests);
        }),
    );
    wait_for("the record", Duration::from_secs(90), || {
        requests_then.lock().unwrap().is_some()
    })
    .await;
    let requests = requests_then.lock().unwrap().unwrap_or(0);
    // The first request's answer brings it; the next request may already
    // be on its way.
    assert!(
        requests <= 2,
        "the record came after {requests} fetch requests: the first one left partitions out"
    );
    member.stop(Duration::from_secs(10)).await;
}
