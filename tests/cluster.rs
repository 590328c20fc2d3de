//! Kastellan against a three-broker KRaft cluster (replication factor 3,
//! `min.insync.replicas=2`): partition leaders killed and restarted, a group
//! coordinator killed, leaders moved by preferred election and by partition
//! reassignment, a dead bootstrap address, and a whole-cluster restart.
//!
//! Every test checks the outcome, not just survival: every acknowledged
//! record is in the log where its acknowledgement put it, none is stored
//! twice, every one reaches the group's handler, the group's commits reach
//! the end of the log, and the producer goes on with the producer id it
//! started with (a moved or restarted leader keeps its sequence state).
//!
//! One cluster serves the whole binary; the tests take turns (they kill
//! nodes) and each starts by healing it. What the cluster did is checked
//! with Kafka's own tools where that keeps the check independent of
//! kastellan. Each test prints how long recovery took (`--nocapture` shows
//! it); none asserts on timing. `RUST_LOG=kastellan=debug` shows the
//! library's logs.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::testcontainers::{self, Cluster, GroupPartition};
use common::{
    init_logging, new_replicated_topic, read_all, recording, unique_topic, wait_for,
    RunningConsumer,
};
use kastellan::{Client, ClientConfig, Producer};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// How long the client keeps retrying before it gives up on a request or a
/// record: longer than any outage these tests cause.
const RETRY_DEADLINE: Duration = Duration::from_secs(120);
/// Deadline of every wait for a recovery: the retry deadline and then some.
const RECOVERY: Duration = Duration::from_secs(180);
/// Records in flight at once in the background producer.
const WINDOW: usize = 50;
/// Pause between two records of the background producer (about 200/s).
const PACE: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------
// The cluster, one test at a time.

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this test's turn, then the shared cluster with all three nodes
/// running and every partition in sync.
async fn cluster_turn() -> (tokio::sync::MutexGuard<'static, ()>, &'static Cluster) {
    init_logging();
    let turn = TURN.lock().await;
    let cluster = blocking(testcontainers::shared_cluster)
        .await
        .unwrap_or_else(|e| panic!("no Kafka cluster for this test: {e}"));
    blocking(move || cluster.heal(RECOVERY))
        .await
        .unwrap_or_else(|e| panic!("the cluster did not come back to health: {e}"));
    (turn, cluster)
}

/// Runs a blocking fixture call (JVM starts, Kafka tools) off the async
/// workers, so the clients under test keep running meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("fixture call did not finish: {e}"),
        },
    }
}

async fn connect(bootstrap: &str) -> Client {
    Client::connect(
        ClientConfig::new(bootstrap)
            .client_id("kastellan-cluster-tests")
            .retry_deadline(RETRY_DEADLINE),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot connect to the cluster at {bootstrap}: {e}"))
}

/// A fresh topic with `partitions` partitions, three replicas each.
async fn new_topic(client: &Client, prefix: &str, partitions: i32) -> String {
    new_replicated_topic(client, prefix, partitions, 3).await
}

/// Polls a blocking check (a Kafka tool run) until it returns `Ok(true)`;
/// fails the test after `timeout` with the last reason it gave.
async fn wait_until_blocking(
    what: &str,
    timeout: Duration,
    check: impl Fn() -> Result<bool, String> + Send + Sync + 'static,
) {
    let check = Arc::new(check);
    let started = Instant::now();
    loop {
        let c = Arc::clone(&check);
        let last = match blocking(move || c()).await {
            Ok(true) => return,
            Ok(false) => "condition not met".to_string(),
            Err(e) => e,
        };
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; last check: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------
// A producer running in the background.

/// One acknowledged record.
#[derive(Debug, Clone)]
struct Ack {
    seq: u64,
    partition: i32,
    offset: i64,
    sent: Instant,
    acked: Instant,
}

#[derive(Debug, Default)]
struct ProduceLog {
    acked: Vec<Ack>,
    /// (sequence number, partition, error) of records that failed.
    failed: Vec<(u64, i32, String)>,
}

/// Sends records with values "0", "1", ... round-robin to every partition of
/// a topic, about one per `PACE`, with up to `WINDOW` in flight, through one
/// producer for its whole life. Failures are logged and sending goes on, as
/// an application would.
struct Load {
    stop: Arc<AtomicBool>,
    next_seq: Arc<AtomicU64>,
    log: Arc<Mutex<ProduceLog>>,
    task: JoinHandle<()>,
}

impl Load {
    fn start(producer: Producer, topic: &str, partitions: i32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let next_seq = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(ProduceLog::default()));
        let topic = topic.to_string();
        let task = tokio::spawn({
            let (stop, next_seq, log) = (stop.clone(), next_seq.clone(), log.clone());
            async move {
                let window = Arc::new(Semaphore::new(WINDOW));
                let mut seq = 0u64;
                while !stop.load(Ordering::Acquire) {
                    tokio::time::sleep(PACE).await;
                    // Full window (an outage): wait, but notice a stop.
                    let permit = match tokio::time::timeout(
                        Duration::from_millis(100),
                        Arc::clone(&window).acquire_owned(),
                    )
                    .await
                    {
                        Ok(permit) => permit.expect("window semaphore open"),
                        Err(_) => continue,
                    };
                    let partition = (seq % partitions as u64) as i32;
                    let sent = Instant::now();
                    let enqueued = producer
                        .to(&topic)
                        .partition(partition)
                        .value(seq.to_string())
                        .enqueue()
                        .await;
                    let this = seq;
                    seq += 1;
                    next_seq.store(seq, Ordering::Release);
                    let log = Arc::clone(&log);
                    match enqueued {
                        Ok(delivery) => {
                            tokio::spawn(async move {
                                let result = delivery.await;
                                let acked = Instant::now();
                                {
                                    let mut log = log.lock().unwrap();
                                    match result {
                                        Ok(d) => log.acked.push(Ack {
                                            seq: this,
                                            partition: d.partition,
                                            offset: d.offset,
                                            sent,
                                            acked,
                                        }),
                                        Err(e) => log.failed.push((this, partition, e.to_string())),
                                    }
                                }
                                // The log's handle goes before the permit:
                                // once the load holds every permit, no
                                // delivery task holds the log (`finish`
                                // takes it over).
                                drop(log);
                                drop(permit);
                            });
                        }
                        Err(e) => {
                            log.lock()
                                .unwrap()
                                .failed
                                .push((this, partition, e.to_string()));
                        }
                    }
                }
                // Every record handed over resolves (acknowledged or failed
                // within the retry deadline) before the load ends.
                let _all = window
                    .acquire_many(WINDOW as u32)
                    .await
                    .expect("window semaphore open");
            }
        });
        Load {
            stop,
            next_seq,
            log,
            task,
        }
    }

    /// Sequence number the next record will get.
    fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }

    fn acked_count(&self) -> usize {
        self.log.lock().unwrap().acked.len()
    }

    /// The first acknowledgement on `partition` of a record sent after `since`.
    fn first_ack_sent_after(&self, partition: Option<i32>, since: Instant) -> Option<Ack> {
        self.log
            .lock()
            .unwrap()
            .acked
            .iter()
            .filter(|a| a.sent > since && partition.is_none_or(|p| a.partition == p))
            .min_by_key(|a| a.acked)
            .cloned()
    }

    /// Stops sending, waits for every record in flight to resolve, and
    /// returns what happened to each.
    async fn finish(self) -> ProduceLog {
        self.stop.store(true, Ordering::Release);
        tokio::time::timeout(RETRY_DEADLINE + Duration::from_secs(60), self.task)
            .await
            .expect("records in flight resolve within the retry deadline")
            .expect("producer load did not panic");
        Arc::try_unwrap(self.log)
            .expect("no delivery task left")
            .into_inner()
            .unwrap()
    }
}

impl ProduceLog {
    /// Fails the test if any record failed.
    fn assert_no_failures(&self, context: &str) {
        assert!(
            self.failed.is_empty(),
            "{context}: {} of {} records failed although every outage was shorter than \
             the retry deadline ({RETRY_DEADLINE:?}); first failures: {:?}",
            self.failed.len(),
            self.failed.len() + self.acked.len(),
            &self.failed[..self.failed.len().min(5)]
        );
    }

    /// The longest pause between two consecutive acknowledgements on
    /// `partition` within [from, to].
    fn longest_ack_gap(&self, partition: i32, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .acked
            .iter()
            .filter(|a| a.partition == partition)
            .map(|a| a.acked)
            .collect();
        times.sort();
        let mut longest = Duration::ZERO;
        let mut previous = from;
        for t in times.into_iter().filter(|t| *t >= from && *t <= to) {
            longest = longest.max(t - previous);
            previous = t;
        }
        longest.max(to.saturating_duration_since(previous))
    }
}

// ---------------------------------------------------------------------------
// A group consumer running in the background.

/// One record the handler saw.
#[derive(Debug, Clone)]
struct Handled {
    partition: i32,
    offset: i64,
    seq: u64,
    at: Instant,
}

struct Consumer {
    run: RunningConsumer,
    handled: Arc<Mutex<Vec<Handled>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Consumer {
    fn start(client: &Client, group: &str, topic: &str) -> Consumer {
        let mut consumer = client
            .group_consumer(group)
            .topic(topic)
            .start_with_earliest()
            .session_timeout(Duration::from_secs(10))
            .heartbeat_interval(Duration::from_secs(1))
            .commit_interval(Duration::from_millis(500))
            .max_wait(Duration::from_millis(200))
            .build()
            .expect("consumer builds");
        let errors = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut stream) = consumer.errors() {
            let errors = Arc::clone(&errors);
            tokio::spawn(async move {
                while let Some(e) = stream.recv().await {
                    errors.lock().unwrap().push(e.to_string());
                }
            });
        }
        let handled = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&handled);
        let run = RunningConsumer::spawn(
            consumer,
            recording(move |r| {
                let seq = r
                    .value_str()
                    .and_then(|v| v.parse().ok())
                    .expect("every record's value is a sequence number");
                sink.lock().unwrap().push(Handled {
                    partition: r.partition,
                    offset: r.offset,
                    seq,
                    at: Instant::now(),
                });
            }),
        );
        Consumer {
            run,
            handled,
            errors,
        }
    }

    fn handled_count(&self) -> usize {
        self.handled.lock().unwrap().len()
    }

    /// The first record handled whose sequence number is `seq` or later.
    fn first_handled_from(&self, seq: u64) -> Option<Handled> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.seq >= seq)
            .min_by_key(|h| h.at)
            .cloned()
    }

    /// Fails the test if `run` has ended (it must never stop by itself here).
    fn assert_running(&self, context: &str) {
        assert!(
            !self.run.task.is_finished(),
            "{context}: the group consumer stopped by itself; errors it reported: {:?}",
            self.errors.lock().unwrap()
        );
    }

    /// Waits until every acknowledged record was handled at least once.
    async fn wait_for_all(&self, log: &ProduceLog, context: &str) {
        let missing = || {
            let seen: std::collections::HashSet<(i32, i64)> = self
                .handled
                .lock()
                .unwrap()
                .iter()
                .map(|h| (h.partition, h.offset))
                .collect();
            log.acked
                .iter()
                .filter(|a| !seen.contains(&(a.partition, a.offset)))
                .count()
        };
        let started = Instant::now();
        while missing() > 0 {
            self.assert_running(context);
            assert!(
                started.elapsed() < RECOVERY,
                "{context}: {} of {} acknowledged records never reached the handler \
                 within {RECOVERY:?}; status {:?}; errors {:?}",
                missing(),
                log.acked.len(),
                self.run.status.get(),
                self.errors.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks the consumer to stop and checks that `run` ends cleanly.
    async fn shut_down(self) -> Vec<Handled> {
        self.run.shutdown.shutdown(Duration::from_secs(30));
        tokio::time::timeout(Duration::from_secs(90), self.run.task)
            .await
            .expect("the group consumer stops in time")
            .expect("the group consumer task did not panic")
            .expect("the group consumer ends without an error");
        Arc::try_unwrap(self.handled)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|a| a.lock().unwrap().clone())
    }
}

// ---------------------------------------------------------------------------
// Checks with Kafka's own tools and a fresh reader.

/// Committed offset and log end of each partition of `topic` for `group`, as
/// Kafka's `kafka-consumer-groups --describe` reports them.
fn committed_by_kafka(
    cluster: &Cluster,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, GroupPartition>, String> {
    testcontainers::describe_group(cluster.bootstrap(), group, topic)
        .map(|described| described.partitions)
        .map_err(|e| e.to_string())
}

/// Waits until Kafka reports the group's committed offset at the log end on
/// every partition of the topic.
async fn wait_for_commits_at_end(
    cluster: &'static Cluster,
    group: &str,
    topic: &str,
    partitions: i32,
) {
    let (g, t) = (group.to_string(), topic.to_string());
    wait_until_blocking(
        "committed offsets to reach the log end (kafka-consumer-groups --describe)",
        RECOVERY,
        move || {
            let rows = committed_by_kafka(cluster, &g, &t)?;
            let done = rows.len() == partitions as usize
                && rows
                    .values()
                    .all(|r| r.committed.is_some() && r.committed == r.log_end);
            if done {
                Ok(true)
            } else {
                Err(format!("(committed, log end) by partition: {rows:?}"))
            }
        },
    )
    .await;
}

/// End offsets of every partition, as Kafka's `kafka-get-offsets` reports them.
fn end_offsets_by_kafka(cluster: &Cluster, topic: &str) -> BTreeMap<i32, i64> {
    let out = testcontainers::run_kafka_class_checked(
        testcontainers::GET_OFFSET_SHELL,
        &["--bootstrap-server", cluster.bootstrap(), "--topic", topic],
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("kafka-get-offsets --topic {topic}: {e}"));
    out.lines()
        .filter_map(|line| {
            let mut parts = line.trim().rsplitn(3, ':');
            let offset = parts.next()?.parse().ok()?;
            let partition = parts.next()?.parse().ok()?;
            (parts.next()? == topic).then_some((partition, offset))
        })
        .collect()
}

/// Producer ids with idempotence state on a partition, as Kafka's
/// `kafka-transactions describe-producers` reports them (asking the
/// partition's leader).
fn producer_ids_by_kafka(cluster: &Cluster, topic: &str, partition: i32) -> Vec<String> {
    let partition = partition.to_string();
    let out = testcontainers::run_kafka_class_checked(
        testcontainers::TRANSACTIONS_COMMAND,
        &[
            "--bootstrap-server",
            cluster.bootstrap(),
            "describe-producers",
            "--topic",
            topic,
            "--partition",
            &partition,
        ],
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("kafka-transactions describe-producers {topic}-{partition}: {e}"));
    // Columns: ProducerId ProducerEpoch LatestCoordinatorEpoch LastSequence ...
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// One producer wrote every partition with one producer id: a leader that
/// moves or restarts keeps the producer's sequence state (it is replicated
/// with the partition), so the producer never needs a fresh id to go on.
/// Kafka's own tool counts the ids each partition holds state for.
async fn assert_one_producer_id(
    cluster: &'static Cluster,
    topic: &str,
    partitions: i32,
    context: &str,
) {
    let t = topic.to_string();
    let ids: Vec<(i32, Vec<String>)> = blocking(move || {
        (0..partitions)
            .map(|p| (p, producer_ids_by_kafka(cluster, &t, p)))
            .collect()
    })
    .await;
    let counts: Vec<(i32, usize)> = ids.iter().map(|(p, i)| (*p, i.len())).collect();
    eprintln!("[{context}] producer ids per partition (kafka-transactions): {counts:?}");
    assert!(
        ids.iter().all(|(_, i)| i.len() == 1),
        "{context}: one producer wrote the topic, but partitions hold state for several \
         producer ids, so it gave up its sequence state and started over with fresh ids \
         although the brokers kept it: {ids:?}"
    );
}

/// Reads the whole topic back with a fresh client and checks the log
/// against what the producer was told: every acknowledged record is stored
/// at the offset its acknowledgement gave, no record is stored twice, and
/// the reader saw everything up to Kafka's own end offsets.
async fn assert_log_matches(
    cluster: &'static Cluster,
    topic: &str,
    log: &ProduceLog,
    context: &str,
) {
    let client = connect(cluster.bootstrap()).await;
    let records = read_all(&client, topic).await;
    let t = topic.to_string();
    let ends = blocking(move || end_offsets_by_kafka(cluster, &t)).await;
    let stored: usize = ends.values().map(|e| *e as usize).sum();
    assert_eq!(
        records.len(),
        stored,
        "{context}: the reader returned {} records, Kafka's end offsets add up to {stored} ({ends:?})",
        records.len()
    );

    let mut at: HashMap<(i32, i64), u64> = HashMap::new();
    let mut copies: HashMap<u64, Vec<(i32, i64)>> = HashMap::new();
    for r in &records {
        let seq: u64 = r
            .value_str()
            .and_then(|v| v.parse().ok())
            .expect("every record's value is a sequence number");
        at.insert((r.partition, r.offset), seq);
        copies.entry(seq).or_default().push((r.partition, r.offset));
    }
    let duplicates: Vec<(&u64, &Vec<(i32, i64)>)> = copies
        .iter()
        .filter(|(_, places)| places.len() > 1)
        .collect();
    assert!(
        duplicates.is_empty(),
        "{context}: {} records are stored more than once, e.g. {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(5)]
    );
    let lost: Vec<&Ack> = log
        .acked
        .iter()
        .filter(|a| at.get(&(a.partition, a.offset)) != Some(&a.seq))
        .collect();
    assert!(
        lost.is_empty(),
        "{context}: {} of {} acknowledged records are not in the log where their \
         acknowledgement put them, e.g. {:?}",
        lost.len(),
        log.acked.len(),
        lost.iter()
            .take(5)
            .map(|a| (
                a.seq,
                a.partition,
                a.offset,
                at.get(&(a.partition, a.offset))
            ))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// What the tests run.

/// Connects, creates a fresh topic of three partitions named after `name`,
/// and starts the background producer on it.
async fn start_load(cluster: &'static Cluster, name: &str) -> (Client, String, Load) {
    let client = connect(cluster.bootstrap()).await;
    let topic = new_topic(&client, name, 3).await;
    let producer = client.producer().build().expect("producer builds");
    let load = Load::start(producer, &topic, 3);
    (client, topic, load)
}

/// What the log must show at the end: every acknowledged record stored
/// once where its acknowledgement put it ([`assert_log_matches`]), all of
/// it written with one producer id ([`assert_one_producer_id`]).
async fn assert_stored(cluster: &'static Cluster, topic: &str, log: &ProduceLog, context: &str) {
    assert_log_matches(cluster, topic, log, context).await;
    assert_one_producer_id(cluster, topic, 3, context).await;
}

/// The background producer and a group consumer on one fresh topic.
struct Scenario {
    cluster: &'static Cluster,
    /// Kept for the whole test, as an application keeps its client.
    _client: Client,
    topic: String,
    group: String,
    load: Load,
    consumer: Consumer,
}

impl Scenario {
    /// Starts the load and the consumer (topic and group named after
    /// `name`), and waits until the handler has seen 200 records, `when`
    /// ("before the kill").
    async fn start(cluster: &'static Cluster, name: &str, when: &str) -> Scenario {
        let (client, topic, load) = start_load(cluster, name).await;
        let group = unique_topic(&format!("{name}-group"));
        let consumer = Consumer::start(&client, &group, &topic);
        wait_for(&format!("200 records handled {when}"), RECOVERY, || {
            consumer.handled_count() >= 200
        })
        .await;
        Scenario {
            cluster,
            _client: client,
            topic,
            group,
            load,
            consumer,
        }
    }

    /// Waits until Kafka reports a first commit of the group.
    async fn wait_for_first_commit(&self) {
        let (cluster, g, t) = (self.cluster, self.group.clone(), self.topic.clone());
        wait_until_blocking("a first commit of the group", RECOVERY, move || {
            let rows = committed_by_kafka(cluster, &g, &t)?;
            Ok(rows.values().any(|r| r.committed.is_some_and(|c| c > 0)))
        })
        .await;
    }

    /// Stops the load and shows what happened to `report`, then checks the
    /// outcome: no record failed, every acknowledged one reached the
    /// handler, the group's commits reach the end of the log, the consumer
    /// still runs and stops cleanly, and [`assert_stored`].
    async fn finish(self, context: &str, report: impl FnOnce(&ProduceLog)) {
        let log = self.load.finish().await;
        report(&log);
        log.assert_no_failures(context);
        self.consumer.wait_for_all(&log, context).await;
        wait_for_commits_at_end(self.cluster, &self.group, &self.topic, 3).await;
        self.consumer.assert_running(context);
        let errors = self.consumer.errors.lock().unwrap().clone();
        let handled = self.consumer.shut_down().await;
        eprintln!(
            "[{context}] {} records acknowledged, {} handlings (redeliveries included); \
             errors reported by the consumer: {errors:?}",
            log.acked.len(),
            handled.len()
        );
        assert_stored(self.cluster, &self.topic, &log, context).await;
    }
}

// ---------------------------------------------------------------------------
// The tests.

/// acks=all produce while the leader of a partition is SIGKILLed and
/// restarted: the same producer carries on with the new leader by itself,
/// with its producer id; every acknowledged record is stored, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_produce_survives_the_partition_leader_being_killed_and_restarted() {
    let (_turn, cluster) = cluster_turn().await;
    let (_client, topic, load) = start_load(cluster, "leader-kill").await;
    wait_for("300 acknowledgements before the kill", RECOVERY, || {
        load.acked_count() >= 300
    })
    .await;

    let t = topic.clone();
    let leader = blocking(move || cluster.partition_leader(&t, 0))
        .await
        .expect("kafka-topics --describe")
        .expect("partition 0 has a leader");
    let killed_at = Instant::now();
    blocking(move || cluster.node(leader).kill()).await;
    eprintln!("[leader kill] node {leader}, leader of {topic}-0, SIGKILLed");

    wait_for(
        "an acknowledgement on partition 0 of a record sent after the kill",
        RECOVERY,
        || load.first_ack_sent_after(Some(0), killed_at).is_some(),
    )
    .await;
    let first = load.first_ack_sent_after(Some(0), killed_at).unwrap();
    let t = topic.clone();
    let new_leader = blocking(move || cluster.partition_leader(&t, 0))
        .await
        .expect("kafka-topics --describe");
    eprintln!(
        "[leader kill] first acknowledgement on partition 0 after the kill: {} later \
         (new leader per kafka-topics: {new_leader:?})",
        secs(first.acked - killed_at)
    );

    let restart_started = Instant::now();
    blocking(move || cluster.node(leader).restart())
        .await
        .unwrap_or_else(|e| panic!("node {leader} restarts: {e}"));
    let restarted_at = Instant::now();
    eprintln!(
        "[leader kill] node {leader} restarted in {}",
        secs(restarted_at - restart_started)
    );
    let t = topic.clone();
    blocking(move || cluster.wait_until_in_sync(Some(&t), RECOVERY))
        .await
        .unwrap_or_else(|e| panic!("node {leader} rejoins the ISR: {e}"));
    let seq_after_restart = load.next_seq();
    wait_for(
        "300 more acknowledgements after the restart",
        RECOVERY,
        || {
            load.log
                .lock()
                .unwrap()
                .acked
                .iter()
                .filter(|a| a.seq >= seq_after_restart)
                .count()
                >= 300
        },
    )
    .await;

    let log = load.finish().await;
    let gap = log.longest_ack_gap(0, killed_at, restarted_at);
    eprintln!(
        "[leader kill] {} records acknowledged, {} failed; longest pause between \
         acknowledgements on partition 0: {}",
        log.acked.len(),
        log.failed.len(),
        secs(gap)
    );
    log.assert_no_failures("leader kill");
    assert_stored(cluster, &topic, &log, "leader kill").await;
}

/// A group consumer while the broker coordinating its group is SIGKILLed:
/// it finds the new coordinator by itself, every produced record reaches
/// the handler, and commits resume up to the end of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_consumer_survives_the_coordinator_being_killed() {
    let (_turn, cluster) = cluster_turn().await;
    let s = Scenario::start(cluster, "coordinator-kill", "before the kill").await;
    let (topic, group, load, consumer) = (&s.topic, &s.group, &s.load, &s.consumer);
    s.wait_for_first_commit().await;
    let g = group.clone();
    let coordinator = blocking(move || cluster.group_coordinator(&g))
        .await
        .expect("kafka-consumer-groups --describe --state")
        .expect("the group has a coordinator");
    let (g, t) = (group.clone(), topic.clone());
    let committed_before: i64 = blocking(move || committed_by_kafka(cluster, &g, &t))
        .await
        .expect("kafka-consumer-groups --describe")
        .values()
        .filter_map(|r| r.committed)
        .sum();

    let seq_at_kill = load.next_seq();
    let killed_at = Instant::now();
    blocking(move || cluster.node(coordinator).kill()).await;
    eprintln!("[coordinator kill] node {coordinator}, coordinator of {group}, SIGKILLed");

    wait_for(
        "the handler to see a record produced after the kill",
        RECOVERY,
        || consumer.first_handled_from(seq_at_kill).is_some(),
    )
    .await;
    let first = consumer.first_handled_from(seq_at_kill).unwrap();
    eprintln!(
        "[coordinator kill] first record produced after the kill handled {} after the kill",
        secs(first.at - killed_at)
    );
    consumer.assert_running("coordinator kill");

    // Commits resume on the new coordinator: Kafka reports them moving on.
    let (g, t) = (group.clone(), topic.clone());
    wait_until_blocking(
        "committed offsets to move on after the kill",
        RECOVERY,
        move || {
            let rows = committed_by_kafka(cluster, &g, &t)?;
            let now: i64 = rows.values().filter_map(|r| r.committed).sum();
            if now > committed_before {
                Ok(true)
            } else {
                Err(format!(
                    "committed {now} in total, {committed_before} at the kill: {rows:?}"
                ))
            }
        },
    )
    .await;
    let commits_resumed = killed_at.elapsed();
    let g = group.clone();
    let new_coordinator = blocking(move || cluster.group_coordinator(&g))
        .await
        .expect("kafka-consumer-groups --describe --state");
    eprintln!(
        "[coordinator kill] commits moved on within {} of the kill (at most; polled with \
         kafka-consumer-groups); new coordinator: {new_coordinator:?}",
        secs(commits_resumed)
    );
    assert_ne!(
        new_coordinator,
        Some(coordinator),
        "a dead node coordinates"
    );

    s.finish("coordinator kill", |_| {}).await;
}

/// Leaders moved by Kafka's own tools while a producer and a group consumer
/// run: a reassignment that takes the leader out of the replica set, one
/// that brings it back (copying its data) and reorders another partition's
/// replicas, and a preferred-leader election that moves both leaders. Nothing
/// is lost, nothing is stored twice, commits reach the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_moves_by_reassignment_and_preferred_election_lose_nothing() {
    let (_turn, cluster) = cluster_turn().await;
    let s = Scenario::start(cluster, "leader-moves", "before the moves").await;
    let (topic, load, consumer) = (&s.topic, &s.load, &s.consumer);

    let t = topic.clone();
    let before = blocking(move || cluster.describe_topic(&t))
        .await
        .expect("kafka-topics --describe");
    let p0 = before.iter().find(|p| p.partition == 0).unwrap().clone();
    let p1 = before.iter().find(|p| p.partition == 1).unwrap().clone();
    let leader0 = p0.leader.expect("partition 0 has a leader");
    eprintln!("[leader moves] before: {before:?}");

    // 1. Partition 0 loses its leader's replica: the leadership must move.
    let others: Vec<i32> = p0
        .replicas
        .iter()
        .copied()
        .filter(|r| *r != leader0)
        .collect();
    let step1 = Instant::now();
    let (t, moved) = (topic.clone(), others.clone());
    blocking(move || cluster.reassign_partitions(&[(t.as_str(), 0, moved)], RECOVERY))
        .await
        .unwrap_or_else(|e| panic!("reassigning {topic}-0 to {others:?}: {e}"));
    let step1_done = Instant::now();
    eprintln!(
        "[leader moves] {topic}-0 reassigned from {:?} to {others:?} in {}",
        p0.replicas,
        secs(step1_done - step1)
    );

    // 2. It gets the old leader back (preferred again, data copied over),
    //    and partition 1's replicas rotate so that another node is preferred.
    let mut back = vec![leader0];
    back.extend(&others);
    let mut rotated = p1.replicas.clone();
    rotated.rotate_left(1);
    let step2 = Instant::now();
    let (t, b, r) = (topic.clone(), back.clone(), rotated.clone());
    blocking(move || {
        cluster.reassign_partitions(&[(t.as_str(), 0, b), (t.as_str(), 1, r)], RECOVERY)
    })
    .await
    .unwrap_or_else(|e| panic!("reassigning {topic}-0 to {back:?}, -1 to {rotated:?}: {e}"));
    eprintln!(
        "[leader moves] {topic}-0 reassigned to {back:?}, {topic}-1 to {rotated:?} in {}",
        secs(step2.elapsed())
    );
    let t = topic.clone();
    blocking(move || cluster.wait_until_in_sync(Some(&t), RECOVERY))
        .await
        .unwrap_or_else(|e| panic!("replicas in sync after the reassignment: {e}"));

    // 3. Preferred-leader election: both partitions move to their new
    //    preferred leader.
    let step3 = Instant::now();
    let t = topic.clone();
    let out = blocking(move || {
        cluster.elect_preferred_leaders(&[(t.as_str(), 0), (t.as_str(), 1), (t.as_str(), 2)])
    })
    .await
    .unwrap_or_else(|e| panic!("kafka-leader-election: {e}"));
    eprintln!("[leader moves] kafka-leader-election: {}", out.trim());
    let (t, want0, want1) = (topic.clone(), back[0], rotated[0]);
    wait_until_blocking("the preferred leaders to lead", RECOVERY, move || {
        let states = cluster.describe_topic(&t).map_err(|e| e.to_string())?;
        let leader = |p: i32| {
            states
                .iter()
                .find(|s| s.partition == p)
                .and_then(|s| s.leader)
        };
        if leader(0) == Some(want0) && leader(1) == Some(want1) {
            Ok(true)
        } else {
            Err(format!("{states:?}"))
        }
    })
    .await;
    let elected = Instant::now();
    eprintln!(
        "[leader moves] preferred leaders lead {} after the election started",
        secs(elected - step3)
    );

    // Records sent after the election are acknowledged by the new leaders.
    wait_for(
        "acknowledgements on partitions 0 and 1 of records sent after the election",
        RECOVERY,
        || {
            load.first_ack_sent_after(Some(0), elected).is_some()
                && load.first_ack_sent_after(Some(1), elected).is_some()
        },
    )
    .await;
    let seq_after = load.next_seq();
    wait_for(
        "the handler to see records produced after the election",
        RECOVERY,
        || consumer.first_handled_from(seq_after).is_some(),
    )
    .await;
    consumer.assert_running("leader moves");

    s.finish("leader moves", |log| {
        let end = Instant::now();
        for (partition, from, to, what) in [
            (0, step1, step1_done, "reassignment off the leader"),
            (0, step2, elected, "reassignment back and election"),
            (1, step2, elected, "reassignment and election"),
        ] {
            eprintln!(
                "[leader moves] longest pause between acknowledgements on partition \
                 {partition} during the {what}: {}",
                secs(log.longest_ack_gap(partition, from, to.min(end)))
            );
        }
    })
    .await;
}

/// `Client::connect` with a bootstrap list whose first address is a dead
/// node: it connects through the others, and the client produces and
/// consumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_bootstrap_address_does_not_stop_the_client() {
    let (_turn, cluster) = cluster_turn().await;
    let client = connect(cluster.bootstrap()).await;
    let topic = new_topic(&client, "dead-bootstrap", 3).await;
    let group = unique_topic("dead-bootstrap-group");
    // The group's coordinator topic exists before a node goes (it needs
    // three live brokers to be created).
    let g = group.clone();
    blocking(move || cluster.group_coordinator(&g))
        .await
        .expect("kafka-consumer-groups --describe --state");
    drop(client);

    blocking(move || cluster.node(1).kill()).await;
    // Node 1 has been dead a while: the controllers fenced it and its
    // partitions have other leaders.
    let t = topic.clone();
    wait_until_blocking("every leadership to leave node 1", RECOVERY, move || {
        let mut states = cluster.describe_topic(&t).map_err(|e| e.to_string())?;
        states.extend(
            cluster
                .describe_topic("__consumer_offsets")
                .map_err(|e| e.to_string())?,
        );
        let stuck: Vec<_> = states
            .iter()
            .filter(|p| p.leader.is_none() || p.leader == Some(1))
            .collect();
        if stuck.is_empty() {
            Ok(true)
        } else {
            Err(format!("{stuck:?}"))
        }
    })
    .await;

    let dead_first = cluster.bootstrap().to_string();
    assert!(dead_first.starts_with(cluster.node(1).address()));
    let started = Instant::now();
    let client = connect(&dead_first).await;
    eprintln!(
        "[dead bootstrap] connected with {dead_first} (node 1 dead) in {}",
        secs(started.elapsed())
    );
    let listed: Vec<i32> = client.brokers().iter().map(|b| b.id).collect();
    assert_eq!(listed, vec![2, 3], "Metadata lists the live brokers");

    let producer = client.producer().build().expect("producer builds");
    let started = Instant::now();
    let mut deliveries = Vec::new();
    for seq in 0..300u64 {
        let partition = (seq % 3) as i32;
        let sent = Instant::now();
        let delivery = producer
            .to(&topic)
            .partition(partition)
            .value(seq.to_string())
            .enqueue()
            .await
            .expect("record buffered");
        deliveries.push((seq, partition, sent, delivery));
    }
    let mut log = ProduceLog::default();
    for (seq, partition, sent, delivery) in deliveries {
        match delivery.await {
            Ok(d) => log.acked.push(Ack {
                seq,
                partition: d.partition,
                offset: d.offset,
                sent,
                acked: Instant::now(),
            }),
            Err(e) => log.failed.push((seq, partition, e.to_string())),
        }
    }
    eprintln!(
        "[dead bootstrap] 300 records produced in {}",
        secs(started.elapsed())
    );
    log.assert_no_failures("dead bootstrap");

    let consumer = Consumer::start(&client, &group, &topic);
    let started = Instant::now();
    consumer.wait_for_all(&log, "dead bootstrap").await;
    eprintln!(
        "[dead bootstrap] the group consumer handled all 300 in {}",
        secs(started.elapsed())
    );
    wait_for_commits_at_end(cluster, &group, &topic, 3).await;
    consumer.shut_down().await;
    assert_log_matches(cluster, &topic, &log, "dead bootstrap").await;
}

/// Every node SIGKILLed at once and the cluster restarted while a producer
/// and a group consumer run: both carry on by themselves once the cluster is
/// back, nothing acknowledged is lost, nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_recover_from_a_whole_cluster_restart() {
    let (_turn, cluster) = cluster_turn().await;
    let s = Scenario::start(cluster, "cluster-restart", "before the restart").await;
    let (load, consumer) = (&s.load, &s.consumer);
    s.wait_for_first_commit().await;

    let seq_at_kill = load.next_seq();
    let killed_at = Instant::now();
    blocking(move || cluster.kill_all()).await;
    eprintln!("[cluster restart] all three nodes SIGKILLed");
    blocking(move || cluster.restart_all())
        .await
        .unwrap_or_else(|e| panic!("the cluster restarts: {e}"));
    let restarted_at = Instant::now();
    eprintln!(
        "[cluster restart] cluster back (every node lists all three) {} after the kill",
        secs(restarted_at - killed_at)
    );

    wait_for(
        "an acknowledgement of a record sent after the kill",
        RECOVERY,
        || load.first_ack_sent_after(None, killed_at).is_some(),
    )
    .await;
    let first_ack = load.first_ack_sent_after(None, killed_at).unwrap();
    eprintln!(
        "[cluster restart] producer: first acknowledgement of a record sent after the kill \
         {} after the kill ({} after the cluster was back)",
        secs(first_ack.acked - killed_at),
        secs(first_ack.acked.saturating_duration_since(restarted_at))
    );
    wait_for(
        "the handler to see a record produced after the kill",
        RECOVERY,
        || {
            consumer.assert_running("cluster restart");
            consumer.first_handled_from(seq_at_kill).is_some()
        },
    )
    .await;
    let first_handled = consumer.first_handled_from(seq_at_kill).unwrap();
    eprintln!(
        "[cluster restart] consumer: first record produced after the kill handled {} after \
         the kill ({} after the cluster was back)",
        secs(first_handled.at - killed_at),
        secs(first_handled.at.saturating_duration_since(restarted_at))
    );
    let seq_now = load.next_seq();
    wait_for(
        "300 more records handled after the recovery",
        RECOVERY,
        || {
            consumer
                .handled
                .lock()
                .unwrap()
                .iter()
                .filter(|h| h.seq >= seq_now)
                .count()
                >= 300
        },
    )
    .await;

    s.finish("cluster restart", |_| {}).await;
}

/// A member that names its rack is served by the replica in that rack
/// (KIP-392: the leader points it there), not by the leader, and still gets
/// every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_rack_fetches_from_the_replica_in_its_rack() {
    let (_turn, cluster) = cluster_turn().await;
    let client = connect(cluster.bootstrap()).await;
    let topic = new_topic(&client, "rack", 1).await;
    let producer = client.producer().build().expect("producer builds");
    for i in 0..100 {
        producer
            .to(topic.as_str())
            .partition(0)
            .value(format!("r{i}"))
            .send()
            .await
            .expect("acknowledged");
    }
    let meta = client
        .topic_metadata(&topic, true)
        .await
        .expect("metadata")
        .expect("the topic exists");
    let p0 = &meta.partitions[0];
    let follower = *p0
        .replicas
        .iter()
        .find(|r| **r != p0.leader)
        .expect("a replica besides the leader");

    let member_client = connect(cluster.bootstrap()).await;
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let consumer = member_client
        .group_consumer(unique_topic("rack-group"))
        .topic(topic.as_str())
        .start_with_earliest()
        .rack(format!("rack-{follower}"))
        .max_wait(Duration::from_millis(100))
        .build()
        .expect("member builds");
    let member = RunningConsumer::spawn(
        consumer,
        recording(move |r| sink.lock().unwrap().push(r.offset)),
    );
    wait_for("100 records", RECOVERY, || {
        seen.lock().unwrap().len() >= 100
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<i64>>());
    let status = member_client.status();
    assert!(
        status.follower_fetches > 0,
        "leader {}, rack of replica {follower}: no fetch went to the follower: {status:?}",
        p0.leader
    );
    member.stop(Duration::from_secs(10)).await;
}
