//! The idempotent producer under broker faults: a dedicated broker is
//! SIGKILLed and restarted while many tasks keep sending.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::testcontainers::{self, start_broker, Broker, BrokerOptions};
use common::{init_logging, new_topic, read_all, wait_for};
use kastellan::{Client, ClientConfig, Producer};

const TASKS: usize = 64;
/// Records per second over all tasks.
const RATE: u64 = 1_000;
const PARTITIONS: i32 = 3;
const RESTARTS: usize = 3;

/// Acknowledgements, counted and time-stamped, shared by the sending tasks.
#[derive(Default)]
struct Acks {
    count: AtomicU64,
    /// Milliseconds since the test's start of every acknowledgement.
    times: Mutex<Vec<u64>>,
}

impl Acks {
    fn record(&self, start: Instant) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let ms = start.elapsed().as_millis() as u64;
        self.times.lock().unwrap().push(ms);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Acknowledgements per second in `[from, to)` (milliseconds since start).
    fn rate(&self, from: u64, to: u64) -> f64 {
        let n = self
            .times
            .lock()
            .unwrap()
            .iter()
            .filter(|&&t| t >= from && t < to)
            .count();
        n as f64 * 1000.0 / (to.saturating_sub(from).max(1)) as f64
    }

    /// The first acknowledgement at or after `from` (ms since start).
    fn first_after(&self, from: u64) -> Option<u64> {
        self.times
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|&t| t >= from)
            .min()
    }
}

/// One sending task: a record every `interval`, each `send` awaited, until
/// `stop`. Returns (record id, outcome) of every send.
async fn sender(
    producer: Producer,
    topic: String,
    task: usize,
    interval: Duration,
    stop: Arc<AtomicBool>,
    acks: Arc<Acks>,
    start: Instant,
) -> Vec<(String, Result<i64, String>)> {
    let mut ticks = tokio::time::interval(interval);
    // Keep the rate steady after an outage instead of catching up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outcomes = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let id = format!("{task:02}-{n:06}");
        n += 1;
        let result = producer
            .to(&topic)
            .key(format!("task-{task:02}"))
            .value(id.clone())
            .send()
            .await;
        match result {
            Ok(d) => {
                acks.record(start);
                outcomes.push((id, Ok(d.offset)));
            }
            Err(e) => outcomes.push((id, Err(e.to_string()))),
        }
    }
    outcomes
}

/// Runs `Broker::restart` off the async threads (it blocks until the broker answers).
async fn restart(mut broker: Broker) -> Broker {
    tokio::task::spawn_blocking(move || {
        broker.restart().expect("broker restarts");
        broker
    })
    .await
    .expect("restart task")
}

/// Kafka's own view of the producers that wrote to a partition:
/// (producer id, epoch) per row of `TransactionsCommand describe-producers`.
fn producers_on(bootstrap: &str, topic: &str, partition: i32) -> Vec<(String, String)> {
    let out = testcontainers::run_kafka_class_checked(
        testcontainers::TRANSACTIONS_COMMAND,
        &[
            "--bootstrap-server",
            bootstrap,
            "describe-producers",
            "--topic",
            topic,
            "--partition",
            &partition.to_string(),
        ],
        Duration::from_secs(120),
    )
    .expect("describe-producers");
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| cols.len() >= 2)
        .map(|cols| (cols[0].to_string(), cols[1].to_string()))
        .collect()
}

/// 64 tasks send at a steady ~1,000 records/s while the broker is killed
/// and restarted three times. Every send must succeed (default settings),
/// every acknowledged record must be in the topic exactly once and in
/// order per key, and the broker must have seen one producer id per
/// partition at epoch 0: the producer never took the restarts for lost
/// sequence state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_recovers_after_broker_restarts() {
    init_logging();
    let test_start = Instant::now();
    let mut broker = start_broker(BrokerOptions::default()).expect("dedicated broker");
    let bootstrap = broker.bootstrap().to_string();
    let client = Client::connect(ClientConfig::new(&bootstrap))
        .await
        .expect("connect");
    let topic = new_topic(&client, "prod-faults", PARTITIONS).await;
    let producer = client.producer().build().expect("producer");

    let start = Instant::now();
    let acks = Arc::new(Acks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let interval = Duration::from_micros(1_000_000 * TASKS as u64 / RATE);
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            tokio::spawn(sender(
                producer.clone(),
                topic.clone(),
                task,
                interval,
                Arc::clone(&stop),
                Arc::clone(&acks),
                start,
            ))
        })
        .collect();

    // Steady state first: a few seconds of acknowledgements.
    let warm = 3 * RATE;
    wait_for(
        "acknowledgements before the first restart",
        Duration::from_secs(60),
        || acks.count() >= warm,
    )
    .await;

    let mut figures = Vec::new();
    for round in 1..=RESTARTS {
        let killed_at = start.elapsed().as_millis() as u64;
        let before = acks.rate(killed_at.saturating_sub(3_000), killed_at);
        broker = restart(broker).await;
        let back_at = start.elapsed().as_millis() as u64;
        // Acknowledgements resume: a full second's worth after the broker is back.
        let acked_at_back = acks.count();
        wait_for(
            &format!("acknowledgements to resume after restart {round}"),
            Duration::from_secs(60),
            || acks.count() >= acked_at_back + RATE,
        )
        .await;
        let resumed_at = acks.first_after(back_at).unwrap_or(back_at);
        // Then a steady stretch, to measure the rate after the restart.
        let steady_from = start.elapsed().as_millis() as u64;
        let acked = acks.count();
        wait_for(
            &format!("a steady stretch after restart {round}"),
            Duration::from_secs(60),
            || acks.count() >= acked + 3 * RATE,
        )
        .await;
        let steady_to = start.elapsed().as_millis() as u64;
        let after = acks.rate(steady_from, steady_to);
        figures.push((
            round,
            back_at - killed_at,
            resumed_at.saturating_sub(back_at),
            before,
            after,
        ));
    }
    stop.store(true, Ordering::Relaxed);

    // Every send resolves.
    let mut outcomes = Vec::new();
    for t in tasks {
        let joined = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("every send resolves within 120 s after the last restart");
        outcomes.extend(joined.expect("sending task"));
    }
    let sent = outcomes.len();
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|(id, r)| r.as_ref().err().map(|e| (id, e)))
        .collect();
    let acked: HashMap<&str, i64> = outcomes
        .iter()
        .filter_map(|(id, r)| r.as_ref().ok().map(|o| (id.as_str(), *o)))
        .collect();

    println!(
        "records sent {sent}, acknowledged {}, failed {}",
        acked.len(),
        failed.len()
    );
    for (round, outage, resume, before, after) in &figures {
        println!(
            "restart {round}: broker back after {outage} ms; acknowledgements resumed \
             {resume} ms later; rate before {before:.0}/s, after {after:.0}/s"
        );
    }
    assert!(
        failed.is_empty(),
        "with default settings every send succeeds; {} failed, first: {:?}",
        failed.len(),
        failed.first()
    );

    // Every acknowledged record is stored exactly once, at its offset, and
    // each task's records are stored in the order it sent them.
    let records = read_all(&client, &topic).await;
    let mut seen: HashSet<String> = HashSet::new();
    let mut last_per_key: HashMap<String, String> = HashMap::new();
    for r in &records {
        let id = r.value_str().expect("value").to_string();
        assert!(seen.insert(id.clone()), "record {id} stored twice");
        if let Some(offset) = acked.get(id.as_str()) {
            if *offset >= 0 {
                assert_eq!(
                    *offset, r.offset,
                    "record {id} acknowledged at another offset"
                );
            }
        }
        let key = r.key_str().expect("key").to_string();
        if let Some(prev) = last_per_key.insert(key.clone(), id.clone()) {
            assert!(prev < id, "{key}: {id} stored after {prev}");
        }
    }
    let missing: Vec<_> = acked.keys().filter(|id| !seen.contains(**id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records are missing, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    println!(
        "topic holds {} records, every acknowledged one once",
        records.len()
    );

    // The broker saw one producer id, at its first epoch, on every partition.
    let bootstrap_for_tool = bootstrap.clone();
    let topic_for_tool = topic.clone();
    let producers = tokio::task::spawn_blocking(move || {
        (0..PARTITIONS)
            .map(|p| producers_on(&bootstrap_for_tool, &topic_for_tool, p))
            .collect::<Vec<_>>()
    })
    .await
    .expect("describe-producers");
    println!("producers per partition (id, epoch): {producers:?}");
    let ids: HashSet<&String> = producers.iter().flatten().map(|(id, _)| id).collect();
    for (p, rows) in producers.iter().enumerate() {
        assert_eq!(
            rows.len(),
            1,
            "partition {p}: the producer switched producer ids: {rows:?}"
        );
        assert_eq!(
            rows[0].1, "0",
            "partition {p}: the producer bumped its epoch: {rows:?}"
        );
    }
    assert_eq!(
        ids.len(),
        1,
        "one producer id for the whole producer: {ids:?}"
    );
    println!("test took {:?}", test_start.elapsed());
}
