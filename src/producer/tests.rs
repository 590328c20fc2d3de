//! The producer against a loopback stand-in leader ([`FakeBroker`]): what
//! it puts on the wire across resends, and how its workers fail, close and
//! hold back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::loopback::{Arrival, FakeBroker, Fault, Verdict};
use super::worker::TEST_PANIC_VALUE;
use super::{Producer, REPORT_OVERHEAD};
use crate::error::Error;
use crate::protocol::error_codes::NOT_LEADER_OR_FOLLOWER;
use crate::protocol::records::OutgoingRecord;
use crate::{Client, ClientConfig};

const TOPIC: &str = "loopback";

async fn client(broker: &FakeBroker) -> Client {
    Client::connect(
        ClientConfig::new(&broker.addr)
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .retry_deadline(Duration::from_secs(30)),
    )
    .await
    .expect("connect to the loopback broker")
}

/// Faults at the `at`-th produce requests: a crash (down 300 ms), a
/// refusal with NOT_LEADER_OR_FOLLOWER, another crash.
fn crash_refuse_crash(at: [usize; 3]) -> Vec<Fault> {
    vec![
        Fault::Crash {
            at: at[0],
            down: Duration::from_millis(300),
        },
        Fault::Refuse {
            at: at[1],
            code: NOT_LEADER_OR_FOLLOWER,
        },
        Fault::Crash {
            at: at[2],
            down: Duration::from_millis(300),
        },
    ]
}

/// A producer of small batches (three records of the tests' size each),
/// so that several are in flight when a fault hits.
fn small_batch_producer(client: &Client) -> Producer {
    client
        .producer()
        .linger(Duration::from_millis(2))
        .max_batch_bytes(1024)
        .build()
        .unwrap()
}

fn resets(producer: &Producer) -> u64 {
    producer.inner.ids.as_ref().map_or(0, |ids| ids.resets())
}

/// Values of the records of `producer` tasks, as the leader stored them.
fn stored_values(broker: &FakeBroker, partition: i32) -> Vec<String> {
    broker
        .log(partition)
        .into_iter()
        .map(|v| String::from_utf8(v.expect("value").to_vec()).expect("utf-8"))
        .collect()
}

/// What the leader saw of the wire: per producer id and epoch, each batch
/// either follows the one that arrived before it, or starts a resend at or
/// below the end of the leader's log (the oldest unacknowledged batch, or
/// one it stored whose answer was lost). No batch ever jumps ahead of both,
/// which is what a batch overtaking a resend looks like.
fn assert_in_sequence_order(arrivals: &[Arrival]) {
    // (end of the previous arrival, end of the log) per producer and epoch.
    let mut ends: HashMap<(i32, i64, i16), (i32, i32)> = HashMap::new();
    for (i, a) in arrivals.iter().enumerate() {
        let key = (a.partition, a.producer_id, a.epoch);
        let end = a.sequence + a.count;
        match ends.get_mut(&key) {
            None => {
                let log_end = if a.verdict == Verdict::Stored {
                    end
                } else {
                    a.sequence
                };
                ends.insert(key, (end, log_end));
            }
            Some((previous, log_end)) => {
                assert!(
                    a.sequence == *previous || a.sequence <= *log_end,
                    "arrival {i}: sequence {} written after a batch ending at {previous}, \
                     with the leader's log ending at {log_end}: {:?}",
                    a.sequence,
                    &arrivals[i.saturating_sub(6)..=i]
                );
                *previous = end;
                if a.verdict == Verdict::Stored {
                    *log_end = end;
                }
            }
        }
    }
}

/// Many tasks send while the leader crashes twice and refuses a request:
/// the pipelined batches behind each failure are resent after it, in
/// sequence order. Before, a resent batch waited for its backoff inside
/// its request while new batches were written at once and overtook it; the
/// leader answered those OUT_OF_ORDER_SEQUENCE_NUMBER and the producer
/// took that for lost state and switched producer ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_batches_reach_the_leader_in_sequence_order() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let broker = FakeBroker::start(
        TOPIC,
        1,
        Duration::from_millis(5),
        crash_refuse_crash([20, 60, 100]),
    )
    .await;
    let client = client(&broker).await;
    let producer = small_batch_producer(&client);
    let tasks = 16;
    let per_task = 200;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let producer = producer.clone();
        handles.push(tokio::spawn(async move {
            for n in 0..per_task {
                producer
                    .to(TOPIC)
                    .value(format!("{t:02}-{n:04}-{:300}", ""))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("record {t}-{n}: {e}"));
            }
        }));
    }
    for h in handles {
        tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .expect("all sends resolve")
            .expect("sender");
    }
    assert!(
        broker.produce_requests() > 100,
        "the faults happened: {} produce requests",
        broker.produce_requests()
    );
    let arrivals = broker.arrivals();
    let count = |v: fn(&Verdict) -> bool| arrivals.iter().filter(|a| v(&a.verdict)).count();
    println!(
        "{} produce requests: {} batches stored, {} duplicates, {} refused, {} lost",
        broker.produce_requests(),
        count(|v| *v == Verdict::Stored),
        count(|v| *v == Verdict::Duplicate),
        count(|v| matches!(v, Verdict::Refused(_))),
        count(|v| *v == Verdict::Lost)
    );
    assert_in_sequence_order(&arrivals);
    assert_eq!(broker.init_producer_ids(), 1, "one producer id");
    let bumped = arrivals.iter().position(|a| a.epoch != 0);
    assert!(
        bumped.is_none(),
        "no epoch bump: the leader never lost state: {:?}",
        bumped.map(|i| &arrivals[i.saturating_sub(12)..(i + 2).min(arrivals.len())])
    );
    assert_eq!(resets(&producer), 0);
    // Every record stored once, each task's in order.
    let values = stored_values(&broker, 0);
    assert_eq!(values.len(), tasks * per_task, "every record once");
    let mut last: HashMap<&str, &str> = HashMap::new();
    for v in &values {
        let mut parts = v.split('-');
        let (task, n) = (parts.next().expect("task"), parts.next().expect("n"));
        if let Some(prev) = last.insert(task, n) {
            assert!(prev < n, "task {task}: {n} stored after {prev}");
        }
    }
}

/// Two first sends to a topic race: each fetches metadata and makes a
/// topic state, the second while the first's worker is not started yet.
/// They must still share one worker per partition. Two workers would number
/// their batches from 0 each under the same producer id, and the leader
/// would take the second worker's batches for duplicates of the first's:
/// records acknowledged but never stored.
#[tokio::test]
async fn racing_first_sends_share_one_worker_per_partition() {
    let broker = FakeBroker::start(TOPIC, 1, Duration::ZERO, Vec::new()).await;
    let client = client(&broker).await;
    let mut builder = client.producer();
    // Every send fetches metadata again, as racing first sends all do.
    builder.settings.metadata_max_age = Duration::ZERO;
    let producer = builder.build().unwrap();
    let first = producer.topic_state(TOPIC).await.expect("first state");
    let second = producer.topic_state(TOPIC).await.expect("second state");
    let a = producer.worker(&first, 0);
    let b = producer.worker(&second, 0);
    assert!(a.tx.same_channel(&b.tx), "one worker for the partition");
    for n in 0..3 {
        producer
            .to(TOPIC)
            .value(format!("{n}"))
            .send()
            .await
            .expect("delivered");
    }
    assert_eq!(stored_values(&broker, 0), ["0", "1", "2"]);
    assert!(broker
        .arrivals()
        .iter()
        .all(|a| a.verdict == Verdict::Stored));
}

/// A leader that really lost the tail of this producer's sequence state
/// answers OUT_OF_ORDER_SEQUENCE_NUMBER for the oldest unacknowledged
/// batch: the partition goes on under the next epoch from sequence 0, with
/// the same producer id, and no record is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_sequence_state_continues_under_a_new_epoch() {
    let broker = FakeBroker::start(
        TOPIC,
        1,
        Duration::from_millis(1),
        vec![Fault::Rewind { at: 10, by: 3 }],
    )
    .await;
    let client = client(&broker).await;
    // One record per batch, one batch at a time: the rewound leader then
    // sees exactly one out-of-order batch, the oldest unacknowledged.
    let producer = client.producer().linger(Duration::ZERO).build().unwrap();
    for n in 0..20 {
        producer
            .to(TOPIC)
            .value(format!("{n:04}"))
            .send()
            .await
            .expect("delivered");
    }
    let arrivals = broker.arrivals();
    let refused: Vec<_> = arrivals
        .iter()
        .filter(|a| a.verdict != Verdict::Stored)
        .collect();
    assert_eq!(refused.len(), 1, "{arrivals:?}");
    assert_in_sequence_order(&arrivals);
    assert_eq!(broker.init_producer_ids(), 1, "same producer id");
    assert_eq!(resets(&producer), 1);
    let after: Vec<_> = arrivals.iter().filter(|a| a.epoch == 1).collect();
    assert_eq!(after.first().map(|a| a.sequence), Some(0), "{arrivals:?}");
    let values = stored_values(&broker, 0);
    let expected: Vec<String> = (0..20).map(|n| format!("{n:04}")).collect();
    assert_eq!(values, expected);
}

/// A `Write` into a shared buffer, to read what the producer logged.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A worker that panics is reported (an error log with the cause), the
/// records it held fail with an error carrying the cause, and the next
/// record to the partition is delivered by a new worker, under a new epoch
/// since the old worker's last batches may be stored.
#[tokio::test]
async fn a_panicking_worker_is_reported_and_replaced() {
    let log = LogBuffer::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let broker = FakeBroker::start(TOPIC, 1, Duration::ZERO, Vec::new()).await;
    let client = client(&broker).await;
    let producer = client
        .producer()
        .linger(Duration::from_millis(200))
        .build()
        .unwrap();
    producer
        .to(TOPIC)
        .value("before")
        .send()
        .await
        .expect("first record");

    let mut held = Vec::new();
    for n in 0..3 {
        held.push(
            producer
                .to(TOPIC)
                .value(format!("held {n}"))
                .enqueue()
                .await
                .unwrap(),
        );
    }
    held.push(
        producer
            .to(TOPIC)
            .value(TEST_PANIC_VALUE)
            .enqueue()
            .await
            .unwrap(),
    );
    for f in held {
        match tokio::time::timeout(Duration::from_secs(10), f).await {
            Ok(Err(e @ Error::WorkerFailed { .. })) => {
                let msg = e.to_string();
                assert!(msg.contains("panicked"), "{msg}");
                assert!(msg.contains("test hook"), "the cause: {msg}");
                assert!(msg.contains(&format!("{TOPIC}/0")), "{msg}");
            }
            other => panic!("expected WorkerFailed, got {other:?}"),
        }
    }
    let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("ERROR") && logged.contains("panicked") && logged.contains("test hook"),
        "the panic is logged with its cause: {logged}"
    );

    let d = tokio::time::timeout(
        Duration::from_secs(10),
        producer.to(TOPIC).value("after").send(),
    )
    .await
    .expect("the next record resolves")
    .expect("and is delivered by a new worker");
    assert_eq!(d.offset, 1);
    tokio::time::timeout(Duration::from_secs(5), producer.flush())
        .await
        .expect("flush does not wait for the failed records");
    assert_eq!(stored_values(&broker, 0), ["before", "after"]);
    let last = broker.arrivals().pop().expect("arrivals");
    assert_eq!(
        (last.epoch, last.sequence, last.verdict),
        (1, 0, Verdict::Stored),
        "the new worker starts a new epoch"
    );
    assert_eq!(broker.init_producer_ids(), 1);
}

/// `close` with the leader unreachable: buffered records fail at the
/// deadline with an error saying they may or may not be stored, `close`
/// says how many, and later sends fail at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_what_is_unacknowledged_at_its_deadline() {
    let broker = FakeBroker::start(
        TOPIC,
        1,
        Duration::ZERO,
        vec![Fault::Crash {
            at: 2,
            down: Duration::from_secs(600),
        }],
    )
    .await;
    let client = client(&broker).await;
    let producer = client
        .producer()
        .linger(Duration::from_millis(50))
        .build()
        .unwrap();
    producer.to(TOPIC).value("0").send().await.expect("first");
    let mut pending = Vec::new();
    for n in 1..=5 {
        pending.push(
            producer
                .to(TOPIC)
                .value(format!("{n}"))
                .enqueue()
                .await
                .unwrap(),
        );
    }
    let started = std::time::Instant::now();
    let closed = producer.close(Duration::from_millis(500)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "close keeps to its deadline: {:?}",
        started.elapsed()
    );
    match closed {
        Err(Error::CloseTimeout { unresolved: 5, .. }) => {}
        other => panic!("expected CloseTimeout for 5 records, got {other:?}"),
    }
    for p in pending {
        match p.await {
            Err(Error::Closed(msg)) => assert!(msg.contains("may or may not"), "{msg}"),
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    match producer.to(TOPIC).value("late").send().await {
        Err(e @ Error::Closed(_)) => assert!(e.to_string().contains("closed"), "{e}"),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(producer.close(Duration::from_secs(1)).await.is_ok());
}

/// The delivery-report stream holds back: unread reports keep their
/// records' buffer memory, so once `buffer_bytes` is taken `send` waits
/// until reports are read. Memory stays bounded and no report is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_delivery_reports_hold_back_new_records() {
    let broker = FakeBroker::start(TOPIC, 1, Duration::ZERO, Vec::new()).await;
    let client = client(&broker).await;
    let buffer = 64 * 1024;
    let producer = client
        .producer()
        .max_batch_bytes(16 * 1024)
        .buffer_bytes(buffer)
        .linger(Duration::from_millis(1))
        .with_delivery_reports()
        .build()
        .unwrap();
    let mut reports = producer.delivery_reports().expect("reports");
    let value = vec![7u8; 1000];
    let record = OutgoingRecord {
        key: None,
        value: Some(value.clone().into()),
        headers: Vec::new(),
        timestamp: 0,
    };
    // What one record holds until its report is dropped.
    let need = record.max_encoded_size() + REPORT_OVERHEAD;
    let memory = || producer.inner.memory.available_permits();
    let mut accepted = 0;
    while memory() >= need {
        let delivery = producer.to(TOPIC).value(value.clone()).enqueue().await;
        drop(delivery.expect("enqueue"));
        accepted += 1;
        assert!(
            accepted <= buffer / need,
            "unread reports must hold their memory: {accepted} records accepted"
        );
    }
    producer.flush().await;
    println!(
        "{accepted} records of 1000 bytes ({need} bytes each with the report) \
         fill {buffer} bytes of buffer while no report is read"
    );
    assert_eq!(
        accepted,
        buffer / need,
        "each record holds its size and its report's"
    );
    assert!(
        memory() < need,
        "delivered, but the unread reports hold the memory"
    );
    let blocked = tokio::spawn({
        let producer = producer.clone();
        let value = value.clone();
        async move { producer.to(TOPIC).value(value).send().await }
    });
    let mut read = 0;
    while read < accepted {
        let r = tokio::time::timeout(Duration::from_secs(10), reports.recv())
            .await
            .expect("a report")
            .expect("stream open");
        r.result.expect("delivered");
        read += 1;
    }
    assert!(
        reports.try_recv().is_err(),
        "one report per record, none dropped"
    );
    tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("with the reports read, the waiting send goes through")
        .expect("task")
        .expect("delivered");
}

/// One leader of many partitions: the producer's pipeline carries the
/// batches of many partitions in each produce request, and across two
/// crashes and a refused request (each hitting every partition of its
/// request) every partition's records are stored once and in order,
/// under the one producer id and epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_requests_keep_each_partitions_order_across_faults() {
    let partitions = 32;
    let broker = FakeBroker::start(
        TOPIC,
        partitions,
        Duration::from_millis(5),
        crash_refuse_crash([10, 30, 50]),
    )
    .await;
    let client = client(&broker).await;
    // Every partition has several batches to send, so requests fill up
    // behind the ones in flight.
    let producer = small_batch_producer(&client);
    let per_partition = 60;
    let mut pending = Vec::new();
    for n in 0..per_partition {
        for p in 0..partitions {
            pending.push(
                producer
                    .to(TOPIC)
                    .partition(p)
                    .value(format!("{p:02}-{n:04}-{:300}", ""))
                    .enqueue()
                    .await
                    .expect("enqueue"),
            );
        }
    }
    for (i, p) in pending.into_iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("every record resolves")
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
    }
    assert!(
        broker.produce_requests() > 50,
        "the faults happened: {} produce requests",
        broker.produce_requests()
    );
    let status = client.status();
    let per_request = status.produce_batches as f64 / status.produce_requests as f64;
    println!(
        "{} produce requests carried {} batches ({per_request:.1} per request)",
        status.produce_requests, status.produce_batches
    );
    assert!(
        per_request >= 4.0,
        "requests carry many partitions: {status:?}"
    );
    let arrivals = broker.arrivals();
    assert_in_sequence_order(&arrivals);
    assert_eq!(broker.init_producer_ids(), 1, "one producer id");
    assert!(
        arrivals.iter().all(|a| a.epoch == 0),
        "no epoch bump: the leader never lost state"
    );
    for p in 0..partitions {
        let expected: Vec<String> = (0..per_partition)
            .map(|n| format!("{p:02}-{n:04}-{:300}", ""))
            .collect();
        assert_eq!(stored_values(&broker, p), expected, "partition {p}");
    }
}
