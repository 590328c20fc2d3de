//! Mixed consumer groups against a real broker: kastellan members together
//! with Kafka's own Java consumer (`VerifiableConsumer`, classic protocol),
//! with either of them leading the group.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::testcontainers::{self, GroupPartition};
use common::{client, group_member, new_topic, recording, unique_topic, RunningConsumer};
use kastellan::group::assignor::{
    Assignor, CooperativeStickyAssignor, RangeAssignor, RoundRobinAssignor,
};
use kastellan::group::{ConsumerStatus, ShutdownHandle, StatusHandle};
use kastellan::Client;
use serde_json::Value;
use tokio::task::JoinHandle;

const PARTITIONS: i32 = 6;
/// Records per partition written before any member starts.
const PREFILL: i64 = 30;
/// Records per partition written once both members share the partitions.
const MORE: i64 = 20;
/// Bound on one join or rebalance.
const REBALANCE_WITHIN: Duration = Duration::from_secs(20);
/// Bound on consuming records already written.
const CONSUME_WITHIN: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Range,
    RoundRobin,
    CooperativeSticky,
}

impl Strategy {
    fn protocol(self) -> &'static str {
        match self {
            Strategy::Range => "range",
            Strategy::RoundRobin => "roundrobin",
            Strategy::CooperativeSticky => "cooperative-sticky",
        }
    }

    fn java_class(self) -> &'static str {
        match self {
            Strategy::Range => "org.apache.kafka.clients.consumer.RangeAssignor",
            Strategy::RoundRobin => "org.apache.kafka.clients.consumer.RoundRobinAssignor",
            Strategy::CooperativeSticky => {
                "org.apache.kafka.clients.consumer.CooperativeStickyAssignor"
            }
        }
    }

    fn assignor(self) -> Arc<dyn Assignor> {
        match self {
            Strategy::Range => Arc::new(RangeAssignor),
            Strategy::RoundRobin => Arc::new(RoundRobinAssignor),
            Strategy::CooperativeSticky => Arc::new(CooperativeStickyAssignor),
        }
    }

    fn cooperative(self) -> bool {
        self == Strategy::CooperativeSticky
    }
}

/// Which member joins the empty group first (and so leads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    Java,
    Kastellan,
}

impl First {
    fn label(self) -> &'static str {
        match self {
            First::Java => "java-first",
            First::Kastellan => "kastellan-first",
        }
    }
}

fn all_partitions() -> BTreeSet<i32> {
    (0..PARTITIONS).collect()
}

/// Every (partition, offset) in `partitions` × `offsets`.
fn records(partitions: &BTreeSet<i32>, offsets: std::ops::Range<i64>) -> BTreeSet<(i32, i64)> {
    partitions
        .iter()
        .flat_map(|&p| offsets.clone().map(move |o| (p, o)))
        .collect()
}

/// Writes offsets `offsets` to every partition and checks where they landed.
async fn fill(client: &Client, topic: &str, offsets: std::ops::Range<i64>) {
    let producer = client.producer().build().expect("producer builds");
    let mut deliveries = Vec::new();
    for p in 0..PARTITIONS {
        for o in offsets.clone() {
            let delivery = producer
                .to(topic)
                .partition(p)
                .value(format!("{p}-{o}"))
                .enqueue()
                .await
                .unwrap_or_else(|e| panic!("enqueue record {p}-{o}: {e}"));
            deliveries.push((p, o, delivery));
        }
    }
    producer.flush().await;
    for (p, o, delivery) in deliveries {
        let d = tokio::time::timeout(Duration::from_secs(30), delivery)
            .await
            .unwrap_or_else(|_| panic!("record {p}-{o} not acknowledged within 30 s"))
            .unwrap_or_else(|e| panic!("record {p}-{o} not delivered: {e}"));
        assert_eq!(
            (d.partition, d.offset),
            (p, o),
            "record {p}-{o} landed at partition {} offset {}",
            d.partition,
            d.offset
        );
    }
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let started = Instant::now();
    loop {
        if done() {
            return;
        }
        if started.elapsed() >= timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                state()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// The Java member.

/// What the Java member reported on stdout, one JSON object per line.
#[derive(Debug, Default)]
struct JavaEvents {
    lines: Vec<String>,
    shutdown_complete: bool,
    /// Assigned minus revoked.
    owned: BTreeSet<i32>,
    /// Every partition ever reported revoked.
    revoked: BTreeSet<i32>,
    /// Every consumed (partition, offset), in report order.
    consumed: Vec<(i32, i64)>,
    /// Latest successfully committed offset per partition.
    committed: BTreeMap<i32, i64>,
    /// Lines that break the tool's own contract.
    problems: Vec<String>,
    /// `offsets_committed` events reporting a failure.
    failed_commits: Vec<String>,
}

impl JavaEvents {
    fn apply(&mut self, topic: &str, line: String) {
        match serde_json::from_str::<Value>(&line) {
            Ok(event) => self.apply_event(topic, &event, &line),
            Err(_) if line.trim_start().starts_with('{') => {
                self.problems.push(format!("unparsable event: {line}"));
            }
            Err(_) => {}
        }
        self.lines.push(line);
    }

    fn apply_event(&mut self, topic: &str, event: &Value, line: &str) {
        let listed = |key: &str| event[key].as_array().cloned().unwrap_or_default();
        let partition = |tp: &Value| -> Option<i32> {
            if tp["topic"].as_str() != Some(topic) {
                return None;
            }
            tp["partition"].as_i64().and_then(|p| i32::try_from(p).ok())
        };
        match event["name"].as_str().unwrap_or_default() {
            "shutdown_complete" => self.shutdown_complete = true,
            "partitions_assigned" => {
                for tp in listed("partitions") {
                    match partition(&tp) {
                        Some(p) => {
                            self.owned.insert(p);
                        }
                        None => self.problems.push(format!("foreign partition: {line}")),
                    }
                }
            }
            "partitions_revoked" | "partitions_lost" => {
                for tp in listed("partitions") {
                    if let Some(p) = partition(&tp) {
                        self.owned.remove(&p);
                        self.revoked.insert(p);
                    }
                }
            }
            "records_consumed" => {
                for tp in listed("partitions") {
                    let (Some(p), Some(min), Some(max), Some(count)) = (
                        partition(&tp),
                        tp["minOffset"].as_i64(),
                        tp["maxOffset"].as_i64(),
                        tp["count"].as_i64(),
                    ) else {
                        self.problems.push(format!("odd records_consumed: {line}"));
                        continue;
                    };
                    if count != max - min + 1 {
                        self.problems
                            .push(format!("gap in a consumed range ({count} records): {line}"));
                    }
                    self.consumed.extend((min..=max).map(|o| (p, o)));
                }
            }
            "offsets_committed" => {
                if event["success"].as_bool() != Some(true) {
                    self.failed_commits.push(line.to_string());
                    return;
                }
                for tp in listed("offsets") {
                    if let (Some(p), Some(o)) = (partition(&tp), tp["offset"].as_i64()) {
                        self.committed.insert(p, o);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Kafka's `VerifiableConsumer`, killed when dropped.
struct JavaMember {
    child: Child,
    events: Arc<Mutex<JavaEvents>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
    config: PathBuf,
}

impl JavaMember {
    fn start(group: &str, topic: &str, strategy: Strategy) -> JavaMember {
        let bootstrap = testcontainers::bootstrap();
        // Heartbeats as often as the kastellan members', so rebalances
        // complete quickly.
        let config = std::env::temp_dir().join(format!("{}.properties", unique_topic("vc")));
        std::fs::write(&config, "heartbeat.interval.ms=500\n")
            .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let mut cmd = testcontainers::kafka_class_command(testcontainers::VERIFIABLE_CONSUMER)
            .unwrap_or_else(|e| panic!("no Java VerifiableConsumer: {e}"));
        cmd.args([
            "--bootstrap-server",
            &bootstrap,
            "--group-id",
            group,
            "--topic",
            topic,
            "--group-protocol",
            "classic",
            "--assignment-strategy",
            strategy.java_class(),
            "--reset-policy",
            "earliest",
            "--session-timeout",
            "10000",
            "--command-config",
        ])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let parent = std::process::id();
        // SAFETY: runs between fork and exec and calls only async-signal-safe
        // functions (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                // The JVM dies with this thread, even if this process is killed.
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Java VerifiableConsumer: {e}"));
        let events = Arc::new(Mutex::new(JavaEvents::default()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let readers = vec![
            {
                let events = Arc::clone(&events);
                let topic = topic.to_string();
                thread::spawn(move || {
                    for line in read_lines(out) {
                        events.lock().unwrap().apply(&topic, line);
                    }
                })
            },
            {
                let stderr = Arc::clone(&stderr);
                thread::spawn(move || {
                    for line in read_lines(err) {
                        stderr.lock().unwrap().push(line);
                    }
                })
            },
        ];
        JavaMember {
            child,
            events,
            stderr,
            readers,
            config,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&JavaEvents) -> R) -> R {
        f(&self.events.lock().unwrap())
    }

    fn owned(&self) -> BTreeSet<i32> {
        self.with(|e| e.owned.clone())
    }

    fn consumed(&self) -> BTreeSet<(i32, i64)> {
        self.with(|e| e.consumed.iter().copied().collect())
    }

    /// What it reported: the last lines of stdout and stderr.
    fn report(&self) -> String {
        let (lines, problems) = self.with(|e| {
            let mut problems = e.problems.clone();
            problems.extend(
                e.failed_commits
                    .iter()
                    .map(|l| format!("failed commit: {l}")),
            );
            (tail(&e.lines, 25), problems.join("\n"))
        });
        let stderr = tail(&self.stderr.lock().unwrap(), 25);
        format!(
            "--- Java member stdout (end) ---\n{lines}\n--- Java member problems ---\n{problems}\n\
             --- Java member stderr (end) ---\n{stderr}"
        )
    }

    /// SIGTERM (the tool then closes its consumer, leaving the group) and
    /// wait for the exit.
    async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        // SAFETY: plain syscall on our own child, not yet reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to the Java member failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the Java member") {
                // Everything it printed is parsed once the pipes are drained.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            if started.elapsed() >= within {
                panic!(
                    "the Java member did not exit within {within:?} of SIGTERM\n{}",
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for JavaMember {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

fn read_lines(pipe: impl Read) -> impl Iterator<Item = String> {
    BufReader::new(pipe).lines().map_while(Result::ok)
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// The kastellan member.

struct RustMember {
    topic: String,
    task: Option<JoinHandle<kastellan::Result<()>>>,
    stop: ShutdownHandle,
    status: StatusHandle,
    seen: Arc<Mutex<Vec<(i32, i64)>>>,
}

impl RustMember {
    fn start(client: &Client, group: &str, topic: &str, strategy: Strategy) -> RustMember {
        let consumer = group_member(client, group, topic)
            .assignors(vec![strategy.assignor()])
            .build()
            .expect("consumer builds");
        let seen: Arc<Mutex<Vec<(i32, i64)>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let RunningConsumer {
            task,
            shutdown,
            status,
        } = RunningConsumer::spawn(
            consumer,
            recording(move |r| sink.lock().unwrap().push((r.partition, r.offset))),
        );
        RustMember {
            topic: topic.to_string(),
            task: Some(task),
            stop: shutdown,
            status,
            seen,
        }
    }

    fn status(&self) -> ConsumerStatus {
        self.status.get()
    }

    fn owned(&self) -> BTreeSet<i32> {
        partitions_of(&self.status(), &self.topic)
    }

    fn seen(&self) -> BTreeSet<(i32, i64)> {
        self.seen.lock().unwrap().iter().copied().collect()
    }

    fn report(&self) -> String {
        let s = self.status();
        format!(
            "kastellan member: generation {} protocol {:?} leader {} joins {} member {} owns {:?}",
            s.generation,
            s.protocol,
            s.leader,
            s.joins,
            s.member_id,
            partitions_of(&s, &self.topic)
        )
    }

    async fn stop(&mut self) {
        self.stop.shutdown(Duration::from_secs(5));
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("kastellan member stops within 30 s")
            .expect("kastellan member task did not panic")
            .expect("kastellan member stopped cleanly");
    }
}

impl Drop for RustMember {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn partitions_of(status: &ConsumerStatus, topic: &str) -> BTreeSet<i32> {
    status
        .assignment
        .iter()
        .filter(|tp| tp.topic() == topic)
        .map(|tp| tp.partition())
        .collect()
}

fn views(rust: &RustMember, java: &JavaMember) -> String {
    format!(
        "{}\nJava member owns {:?}\n{}",
        rust.report(),
        java.owned(),
        java.report()
    )
}

/// Both own something, together everything, and nothing twice.
fn split_complete(rust: &RustMember, java: &JavaMember) -> bool {
    let (r, j) = (rust.owned(), java.owned());
    !r.is_empty() && !j.is_empty() && r.is_disjoint(&j) && r.union(&j).count() == 6
}

// ---------------------------------------------------------------------------
// kafka-consumer-groups.

/// `kafka-consumer-groups --describe`: the coordinator's view of each
/// partition of `topic` (committed offset, log end, owning member id).
fn describe_group(group: &str, topic: &str) -> BTreeMap<i32, GroupPartition> {
    let described = testcontainers::describe_group(&testcontainers::bootstrap(), group, topic)
        .unwrap_or_else(|e| panic!("kafka-consumer-groups --describe --group {group}: {e}"));
    assert!(
        !described.partitions.is_empty(),
        "kafka-consumer-groups lists no partition of {topic} for {group}:\n{}",
        described.output
    );
    described.partitions
}

// ---------------------------------------------------------------------------
// Scenarios.

/// A kastellan member and a Java member sharing one group and topic.
struct Mixed {
    client: Client,
    group: String,
    topic: String,
    strategy: Strategy,
    rust: RustMember,
    java: JavaMember,
}

/// Forms a group with `first` alone, adds the other member, and checks the
/// split (owners, leader, assignment) and that every record is consumed
/// once, by the owner of its partition.
async fn form_mixed_group(strategy: Strategy, first: First) -> Mixed {
    let client = client().await;
    let topic = new_topic(
        &client,
        &format!("interop-{}", strategy.protocol()),
        PARTITIONS,
    )
    .await;
    let group = unique_topic(&format!(
        "interop-{}-{}",
        strategy.protocol(),
        first.label()
    ));
    fill(&client, &topic, 0..PREFILL).await;

    let (rust, java, alone) = match first {
        First::Java => {
            let java = JavaMember::start(&group, &topic, strategy);
            wait_until(
                "the Java member, alone in the group, to own all 6 partitions",
                REBALANCE_WITHIN,
                || java.owned().len() == 6,
                || java.report(),
            )
            .await;
            wait_until(
                "the Java member to consume and commit the first records",
                CONSUME_WITHIN,
                || {
                    java.with(|e| {
                        e.committed == all_partitions().iter().map(|&p| (p, PREFILL)).collect()
                    })
                },
                || java.report(),
            )
            .await;
            let rust = RustMember::start(&client, &group, &topic, strategy);
            (rust, java, None)
        }
        First::Kastellan => {
            let rust = RustMember::start(&client, &group, &topic, strategy);
            wait_until(
                "the kastellan member, alone in the group, to own all 6 partitions",
                REBALANCE_WITHIN,
                || rust.owned().len() == 6,
                || rust.report(),
            )
            .await;
            let prefilled = records(&all_partitions(), 0..PREFILL);
            wait_until(
                "the kastellan member to consume the first records",
                CONSUME_WITHIN,
                || prefilled.is_subset(&rust.seen()),
                || rust.report(),
            )
            .await;
            let alone = rust.status();
            assert!(
                alone.leader,
                "the first member to join an empty group leads it: {alone:?}"
            );
            let java = JavaMember::start(&group, &topic, strategy);
            (rust, java, Some(alone))
        }
    };
    wait_until(
        "both members to own a share of the 6 partitions, without overlap",
        REBALANCE_WITHIN,
        || split_complete(&rust, &java),
        || views(&rust, &java),
    )
    .await;

    let status = rust.status();
    let (rust_owned, java_owned) = (rust.owned(), java.owned());
    let state = views(&rust, &java);
    assert_eq!(status.protocol, strategy.protocol(), "{state}");
    assert_eq!(
        status.leader,
        first == First::Kastellan,
        "the member that formed the group leads it ({first:?} first)\n{state}"
    );

    // The coordinator's view agrees with both members'.
    let rows = describe_group(&group, &topic);
    let owner = |p: i32| rows.get(&p).and_then(|r| r.consumer.clone());
    for p in &rust_owned {
        assert_eq!(
            owner(*p).as_deref(),
            Some(status.member_id.as_str()),
            "coordinator's owner of partition {p}: {rows:?}\n{state}"
        );
    }
    let java_ids: BTreeSet<String> = java_owned.iter().filter_map(|&p| owner(p)).collect();
    assert_eq!(
        java_ids.len(),
        1,
        "one Java member owns {java_owned:?} at the coordinator: {rows:?}"
    );
    let java_id = java_ids.into_iter().next().unwrap_or_default();
    assert_ne!(java_id, status.member_id, "{rows:?}");
    assert_eq!(
        rows.len(),
        6,
        "the coordinator lists all 6 partitions: {rows:?}"
    );

    // Whoever leads computes the assignment Java's assignors compute. Range
    // and roundrobin order members by member id; cooperative-sticky lets the
    // old owner keep its lowest partitions and hands the rest over.
    let expected_rust: BTreeSet<i32> = match strategy {
        Strategy::Range | Strategy::RoundRobin => {
            let first_share: BTreeSet<i32> = if strategy == Strategy::Range {
                [0, 1, 2].into()
            } else {
                [0, 2, 4].into()
            };
            if status.member_id < java_id {
                first_share
            } else {
                all_partitions().difference(&first_share).copied().collect()
            }
        }
        Strategy::CooperativeSticky => match first {
            First::Kastellan => [0, 1, 2].into(),
            First::Java => [3, 4, 5].into(),
        },
    };
    assert_eq!(
        rust_owned,
        expected_rust,
        "{} assignment with kastellan {} and Java {java_id}\n{state}",
        strategy.protocol(),
        status.member_id
    );

    match alone {
        None => {
            // Eager: the Java member gave everything up before rejoining;
            // cooperative: only what moved to kastellan.
            let revoked = java.with(|e| e.revoked.clone());
            let expected = if strategy.cooperative() {
                rust_owned.clone()
            } else {
                all_partitions()
            };
            assert_eq!(
                revoked, expected,
                "partitions the Java member revoked\n{state}"
            );
        }
        Some(alone) => {
            // Eager: one rebalance; cooperative: revoke, then reassign.
            let rebalances = if strategy.cooperative() { 2 } else { 1 };
            assert_eq!(
                status.generation,
                alone.generation + rebalances,
                "kastellan's generations as the Java member joined: {alone:?} -> {status:?}"
            );
        }
    }

    // New records go to whoever owns their partition, and to no one else.
    fill(&client, &topic, PREFILL..PREFILL + MORE).await;
    let everything = records(&all_partitions(), 0..PREFILL + MORE);
    wait_until(
        "every record to be consumed by one of the members",
        CONSUME_WITHIN,
        || {
            let mut all = rust.seen();
            all.extend(java.consumed());
            everything.is_subset(&all)
        },
        || views(&rust, &java),
    )
    .await;
    let state = views(&rust, &java);
    let after = rust.status();
    assert_eq!(
        (after.generation, rust.owned(), java.owned()),
        (status.generation, rust_owned.clone(), java_owned.clone()),
        "no rebalance while the group consumes\n{state}"
    );
    // Each record exactly once: the second member starts where the first
    // committed (its commits on revocation included).
    let (first_owned, second_owned) = match first {
        First::Java => (&java_owned, &rust_owned),
        First::Kastellan => (&rust_owned, &java_owned),
    };
    let mut by_first = records(&all_partitions(), 0..PREFILL);
    by_first.extend(records(first_owned, PREFILL..PREFILL + MORE));
    let by_second = records(second_owned, PREFILL..PREFILL + MORE);
    let (expected_rust, expected_java) = match first {
        First::Java => (by_second, by_first),
        First::Kastellan => (by_first, by_second),
    };
    assert_eq!(
        rust.seen(),
        expected_rust,
        "records kastellan consumed ({first:?} first)\n{state}"
    );
    assert_eq!(
        java.consumed(),
        expected_java,
        "records the Java member consumed ({first:?} first)\n{state}"
    );
    let rust_deliveries = rust.seen.lock().unwrap().len();
    assert_eq!(
        rust_deliveries,
        expected_rust.len(),
        "kastellan handled no record twice\n{state}"
    );
    assert_eq!(
        java.with(|e| e.consumed.len()),
        expected_java.len(),
        "the Java member consumed no record twice\n{state}"
    );
    assert_eq!(
        java.with(|e| e.problems.clone()),
        Vec::<String>::new(),
        "the Java member's events\n{state}"
    );
    Mixed {
        client,
        group,
        topic,
        strategy,
        rust,
        java,
    }
}

/// Stops the kastellan member gracefully: kafka-consumer-groups sees its
/// partitions committed at their end, and the Java member, taking them over,
/// resumes exactly there.
async fn kastellan_leaves_with_its_work_committed(mut m: Mixed) {
    let end = PREFILL + MORE;
    let rust_owned = m.rust.owned();
    let processed: BTreeMap<i32, i64> =
        m.rust
            .seen()
            .into_iter()
            .fold(BTreeMap::new(), |mut max, (p, o)| {
                let e = max.entry(p).or_insert(o);
                *e = (*e).max(o);
                max
            });
    let mark = m.java.with(|e| e.consumed.len());
    m.rust.stop().await;

    let rows = describe_group(&m.group, &m.topic);
    for p in &rust_owned {
        assert_eq!(
            processed.get(p).map(|o| o + 1),
            Some(end),
            "kastellan processed partition {p} to its end"
        );
        assert_eq!(
            rows.get(p).and_then(|r| r.committed),
            Some(end),
            "committed offset of kastellan's partition {p} after it stopped ({} protocol): {rows:?}",
            m.strategy.protocol()
        );
        assert_eq!(rows.get(p).and_then(|r| r.log_end), Some(end), "{rows:?}");
    }

    wait_until(
        "the Java member to take over kastellan's partitions",
        REBALANCE_WITHIN,
        || m.java.owned().len() == 6,
        || m.java.report(),
    )
    .await;
    fill(&m.client, &m.topic, end..end + 1).await;
    let marker = records(&all_partitions(), end..end + 1);
    wait_until(
        "the Java member to consume the record written after kastellan left",
        CONSUME_WITHIN,
        || marker.is_subset(&m.java.consumed()),
        || m.java.report(),
    )
    .await;
    let resumed: BTreeSet<(i32, i64)> = m.java.with(|e| {
        e.consumed[mark..]
            .iter()
            .copied()
            .filter(|(p, _)| rust_owned.contains(p))
            .collect()
    });
    assert_eq!(
        resumed,
        records(&rust_owned, end..end + 1),
        "the Java member resumes kastellan's partitions at kastellan's commits, \
         redelivering nothing\n{}",
        m.java.report()
    );
}

async fn mixed_group_case(strategy: Strategy, first: First) {
    let mixed = form_mixed_group(strategy, first).await;
    kastellan_leaves_with_its_work_committed(mixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_java_leads_kastellan_follows() {
    mixed_group_case(Strategy::Range, First::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_kastellan_leads_java_follows() {
    mixed_group_case(Strategy::Range, First::Kastellan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_java_leads_kastellan_follows() {
    mixed_group_case(Strategy::RoundRobin, First::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_kastellan_leads_java_follows() {
    mixed_group_case(Strategy::RoundRobin, First::Kastellan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_java_leads_kastellan_follows() {
    mixed_group_case(Strategy::CooperativeSticky, First::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_kastellan_leads_java_follows() {
    mixed_group_case(Strategy::CooperativeSticky, First::Kastellan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_leader_leaving_hands_its_partitions_to_kastellan() {
    let mut m = form_mixed_group(Strategy::CooperativeSticky, First::Java).await;
    let end = PREFILL + MORE;
    let java_owned = m.java.owned();
    wait_until(
        "the Java member to commit everything it consumed",
        CONSUME_WITHIN,
        || {
            m.java
                .with(|e| java_owned.iter().all(|p| e.committed.get(p) == Some(&end)))
        },
        || m.java.report(),
    )
    .await;
    let before = m.rust.status();
    assert!(!before.leader, "the Java member leads: {before:?}");

    // SIGTERM: the tool closes its consumer, which leaves the group.
    let sigterm = Instant::now();
    let exit = m.java.terminate(Duration::from_secs(15)).await;
    assert!(
        m.java.with(|e| e.shutdown_complete),
        "the Java member shut down cleanly (exit {exit:?})\n{}",
        m.java.report()
    );
    // Faster than the 10 s session timeout: the LeaveGroup moved them.
    let handover = Duration::from_secs(8);
    wait_until(
        "kastellan to own all 6 partitions after the Java leader left",
        handover.saturating_sub(sigterm.elapsed()),
        || m.rust.owned().len() == 6,
        || views(&m.rust, &m.java),
    )
    .await;
    let after = m.rust.status();
    assert!(after.leader, "the remaining member leads: {after:?}");
    assert_eq!(
        after.generation,
        before.generation + 1,
        "one rebalance, nothing to revoke: {before:?} -> {after:?}"
    );

    let more = end..end + MORE;
    fill(&m.client, &m.topic, more.clone()).await;
    let expected = records(&all_partitions(), more.clone());
    wait_until(
        "kastellan to consume the records written after the Java member left",
        CONSUME_WITHIN,
        || expected.is_subset(&m.rust.seen()),
        || views(&m.rust, &m.java),
    )
    .await;
    let taken_over: BTreeSet<(i32, i64)> = m
        .rust
        .seen()
        .into_iter()
        .filter(|(p, _)| java_owned.contains(p))
        .collect();
    assert_eq!(
        taken_over,
        records(&java_owned, more.clone()),
        "kastellan resumes the Java member's partitions at the Java member's commits"
    );
    let mut everyone = m.rust.seen();
    everyone.extend(m.java.consumed());
    assert_eq!(
        everyone,
        records(&all_partitions(), 0..more.end),
        "every record consumed by someone, nothing else"
    );
    m.rust.stop().await;
    let rows = describe_group(&m.group, &m.topic);
    let committed: BTreeMap<i32, Option<i64>> =
        rows.iter().map(|(p, r)| (*p, r.committed)).collect();
    assert_eq!(
        committed,
        (0..PARTITIONS).map(|p| (p, Some(more.end))).collect(),
        "kastellan committed every partition to its end"
    );
}
