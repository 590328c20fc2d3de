//! The group consumer's application features against a real broker:
//! rebalance hooks, topic patterns, per-key concurrency, the consumer-wide
//! in-flight bound, the watchdog and the revocation signal.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, group_member, new_topic, testcontainers, unique_topic, wait_for};
use common::{recording, RunningConsumer};
use kastellan::admin::NewTopic;
use kastellan::group::{
    ConsumerError, ConsumerErrors, ConsumerRecord, HandlerError, RebalanceEvent, RebalanceListener,
    StuckReason,
};
use kastellan::{Client, TopicPartition};

/// Produces `values` to one partition of `topic`, each with its key.
async fn produce(client: &Client, topic: &str, partition: i32, records: &[(Option<&str>, &str)]) {
    let producer = client.producer().build().unwrap();
    for (key, value) in records {
        let mut record = producer
            .to(topic)
            .partition(partition)
            .value(value.to_string());
        if let Some(key) = key {
            record = record.key(key.to_string());
        }
        drop(record.enqueue().await.unwrap());
    }
    producer.flush().await;
}

/// Committed offsets of `group` on `topic`, as kafka-consumer-groups sees
/// them (blocks: run it on a blocking thread from async code).
fn committed(group: &str, topic: &str) -> BTreeMap<i32, i64> {
    testcontainers::describe_group(&testcontainers::bootstrap(), group, topic)
        .expect("kafka-consumer-groups runs")
        .partitions
        .into_iter()
        .filter_map(|(p, row)| Some((p, row.committed?)))
        .collect()
}

async fn committed_async(group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let (group, topic) = (group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || committed(&group, &topic))
        .await
        .unwrap()
}

/// Waits (up to `timeout`) for a reported problem that `matches`.
async fn wait_for_problem(
    errors: &mut ConsumerErrors,
    what: &str,
    timeout: Duration,
    matches: impl Fn(&ConsumerError) -> bool,
) -> ConsumerError {
    tokio::time::timeout(timeout, async {
        loop {
            match errors.recv().await {
                Some(p) if matches(&p) => return p,
                Some(other) => assert!(!other.is_fatal(), "{other}"),
                None => panic!("the consumer stopped before {what}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"))
}

fn tps(topic: &str, partitions: &[i32]) -> Vec<TopicPartition> {
    partitions
        .iter()
        .map(|p| TopicPartition::new(topic, *p))
        .collect()
}

// ---------------------------------------------------------------------------
// Rebalance hooks.

/// What a member saw, in order: hook calls and handled records.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Hook(RebalanceEvent, Vec<TopicPartition>),
    /// A handler call ended for this partition and offset.
    Handled(i32, i64),
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Records every hook call in its log; optionally checks, in `revoked`,
/// that the revoked partitions' offsets were not committed yet, and panics
/// in `assigned` if asked to.
struct Recorder {
    log: Log,
    panic_on_assign: bool,
    /// `(group, topic)`: in `revoked`, note the committed offsets (to check
    /// that the final commit comes after).
    check_uncommitted: Option<(String, String)>,
    uncommitted_seen: Arc<Mutex<Vec<BTreeMap<i32, i64>>>>,
}

impl RebalanceListener for Recorder {
    async fn assigned(&self, partitions: &[TopicPartition]) {
        self.log
            .lock()
            .unwrap()
            .push(Seen::Hook(RebalanceEvent::Assigned, partitions.to_vec()));
        if self.panic_on_assign {
            panic!("assigned hook fails on purpose");
        }
    }

    async fn revoked(&self, partitions: &[TopicPartition]) {
        self.log
            .lock()
            .unwrap()
            .push(Seen::Hook(RebalanceEvent::Revoked, partitions.to_vec()));
        if let Some((group, topic)) = &self.check_uncommitted {
            let now = committed_async(group, topic).await;
            self.uncommitted_seen.lock().unwrap().push(now);
        }
    }

    async fn lost(&self, partitions: &[TopicPartition]) {
        self.log
            .lock()
            .unwrap()
            .push(Seen::Hook(RebalanceEvent::Lost, partitions.to_vec()));
    }
}

fn recorder(log: &Log) -> Recorder {
    Recorder {
        log: Arc::clone(log),
        panic_on_assign: false,
        check_uncommitted: None,
        uncommitted_seen: Arc::default(),
    }
}

/// A handler that logs each record when its call ends; a record whose
/// value is "slow" takes three seconds first.
fn logging_handler(log: &Log) -> impl kastellan::group::Handler {
    let log = Arc::clone(log);
    move |r: ConsumerRecord| {
        let log = Arc::clone(&log);
        async move {
            if r.value_str() == Some("slow") {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            log.lock()
                .unwrap()
                .push(Seen::Handled(r.partition, r.offset));
            Ok::<(), HandlerError>(())
        }
    }
}

fn hooks(log: &Log) -> Vec<Seen> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| matches!(s, Seen::Hook(..)))
        .cloned()
        .collect()
}

/// Records of a partition are handled only between its `assigned` and
/// its `revoked` or `lost`.
fn assert_records_only_while_owned(log: &[Seen]) {
    let mut owned: BTreeSet<i32> = BTreeSet::new();
    for seen in log {
        match seen {
            Seen::Hook(RebalanceEvent::Assigned, ps) => {
                for tp in ps {
                    assert!(owned.insert(tp.partition()), "assigned twice: {log:?}");
                }
            }
            Seen::Hook(_, ps) => {
                for tp in ps {
                    assert!(owned.remove(&tp.partition()), "not owned: {log:?}");
                }
            }
            Seen::Handled(p, o) => assert!(
                owned.contains(p),
                "record {p}@{o} handled outside its assignment: {log:?}"
            ),
        }
    }
}

#[tokio::test]
async fn rebalance_hooks_follow_assignments_in_order() {
    let client = client().await;
    let topic = new_topic(&client, "app-hooks", 2).await;
    let group = unique_topic("group-hooks");
    let a_log: Log = Arc::default();
    let b_log: Log = Arc::default();
    let a_listener = Recorder {
        check_uncommitted: Some((group.clone(), topic.clone())),
        ..recorder(&a_log)
    };
    let uncommitted_seen = Arc::clone(&a_listener.uncommitted_seen);
    // Commits only on revocation and shutdown, so the revoked hook can see
    // the final commit has not happened yet.
    let a = RunningConsumer::spawn(
        group_member(&client, &group, &topic)
            .commit_interval(Duration::from_secs(3600))
            .on_rebalance(a_listener)
            .build()
            .unwrap(),
        logging_handler(&a_log),
    );
    wait_for("a to own both partitions", Duration::from_secs(60), || {
        a.assignment().len() == 2
    })
    .await;
    produce(&client, &topic, 0, &[(None, "one"), (None, "slow")]).await;
    produce(&client, &topic, 1, &[(None, "one")]).await;
    // Log end offsets, as records are produced.
    let mut ends = BTreeMap::from([(0, 2i64), (1, 1i64)]);
    wait_for(
        "a to start on the slow record",
        Duration::from_secs(60),
        || a_log.lock().unwrap().contains(&Seen::Handled(0, 0)),
    )
    .await;

    // b joins while a handles the slow record: a revokes both (eager
    // protocol) after the slow record finished, then gets one back; b's
    // assigned hook panics, which b reports and survives.
    let mut b_consumer = group_member(&client, &group, &topic)
        .on_rebalance(Recorder {
            panic_on_assign: true,
            ..recorder(&b_log)
        })
        .build()
        .unwrap();
    let mut b_errors = b_consumer.errors().unwrap();
    let b = RunningConsumer::spawn(b_consumer, logging_handler(&b_log));
    wait_for("a 1/1 split", Duration::from_secs(60), || {
        a.assignment().len() == 1 && b.assignment().len() == 1
    })
    .await;
    let (pa, pb) = (a.assignment()[0].partition(), b.assignment()[0].partition());
    let problem = wait_for_problem(
        &mut b_errors,
        "b's panicking hook",
        Duration::from_secs(30),
        |p| matches!(p, ConsumerError::RebalanceHook { .. }),
    )
    .await;
    let ConsumerError::RebalanceHook {
        event, partitions, ..
    } = &problem
    else {
        unreachable!()
    };
    assert_eq!(
        (*event, partitions.clone()),
        (RebalanceEvent::Assigned, tps(&topic, &[pb]))
    );
    assert!(
        problem.to_string().contains("fails on purpose"),
        "{problem}"
    );
    // b processes its partition all the same.
    produce(&client, &topic, pb, &[(None, "for b")]).await;
    *ends.entry(pb).or_default() += 1;
    wait_for("b to handle a record", Duration::from_secs(60), || {
        b_log
            .lock()
            .unwrap()
            .iter()
            .any(|s| matches!(s, Seen::Handled(p, _) if *p == pb))
    })
    .await;

    // b leaves: a revokes its partition and gets both.
    b.stop(Duration::from_secs(10)).await;
    wait_for("a to own both again", Duration::from_secs(60), || {
        a.assignment().len() == 2
    })
    .await;
    produce(&client, &topic, 0, &[(None, "late")]).await;
    produce(&client, &topic, 1, &[(None, "late")]).await;
    for end in ends.values_mut() {
        *end += 1;
    }
    wait_for(
        "a to handle the late records",
        Duration::from_secs(60),
        || {
            let log = a_log.lock().unwrap();
            ends.iter()
                .all(|(p, end)| log.contains(&Seen::Handled(*p, end - 1)))
        },
    )
    .await;
    // Its revoked hook asks kafka-consumer-groups, which takes a JVM start.
    a.stop(Duration::from_secs(30)).await;

    let both = tps(&topic, &[0, 1]);
    assert_eq!(
        hooks(&a_log),
        vec![
            Seen::Hook(RebalanceEvent::Assigned, both.clone()),
            Seen::Hook(RebalanceEvent::Revoked, both.clone()),
            Seen::Hook(RebalanceEvent::Assigned, tps(&topic, &[pa])),
            Seen::Hook(RebalanceEvent::Revoked, tps(&topic, &[pa])),
            Seen::Hook(RebalanceEvent::Assigned, both.clone()),
            Seen::Hook(RebalanceEvent::Revoked, both.clone()),
        ]
    );
    assert_eq!(
        hooks(&b_log),
        vec![
            Seen::Hook(RebalanceEvent::Assigned, tps(&topic, &[pb])),
            Seen::Hook(RebalanceEvent::Revoked, tps(&topic, &[pb])),
        ]
    );
    let a_seen = a_log.lock().unwrap().clone();
    assert_records_only_while_owned(&a_seen);
    assert_records_only_while_owned(&b_log.lock().unwrap());
    // The slow record was in flight when b joined: it finished before the
    // revocation was announced.
    let slow_done = a_seen.iter().position(|s| *s == Seen::Handled(0, 1));
    let first_revoke = a_seen
        .iter()
        .position(|s| matches!(s, Seen::Hook(RebalanceEvent::Revoked, _)));
    assert!(
        slow_done.is_some() && slow_done < first_revoke,
        "in-flight records finish before `revoked`: {a_seen:?}"
    );
    // At the last revocation (shutdown) the late records were handled but
    // not committed yet: `revoked` comes before the final commit, which
    // then covers them.
    let at_last_revoke = uncommitted_seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        ends.iter()
            .all(|(p, end)| at_last_revoke.get(p) < Some(end)),
        "{at_last_revoke:?} vs {ends:?}"
    );
    assert_eq!(committed_async(&group, &topic).await, ends);
}

#[tokio::test]
async fn a_member_whose_session_expires_hears_its_partitions_lost() {
    let client = client().await;
    let topic = new_topic(&client, "app-lost", 1).await;
    let group = unique_topic("group-lost");
    let log: Log = Arc::default();
    let freeze = Arc::new(AtomicBool::new(true));
    let group_name = group.clone();
    let frozen = Arc::clone(&freeze);
    let mut consumer = group_member(&client, &group, &topic)
        .session_timeout(Duration::from_secs(6))
        .on_rebalance(recorder(&log))
        .build()
        .unwrap();
    let mut errors = consumer.errors().unwrap();
    let handler_log = Arc::clone(&log);
    // The first record freezes this test's (single-threaded) runtime, as a
    // stopped process would: no heartbeats go out, the coordinator evicts
    // the member once its session expires. The handler blocks until the
    // group has no members any more.
    let member = RunningConsumer::spawn(consumer, move |r: ConsumerRecord| {
        let log = Arc::clone(&handler_log);
        let frozen = Arc::clone(&frozen);
        let group = group_name.clone();
        async move {
            if frozen.swap(false, Ordering::AcqRel) {
                let started = Instant::now();
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    let members =
                        testcontainers::describe_members(&testcontainers::bootstrap(), &group)
                            .expect("kafka-consumer-groups runs");
                    if members.contains("has no active members") {
                        break;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(90),
                        "the frozen member was not evicted"
                    );
                }
            }
            log.lock()
                .unwrap()
                .push(Seen::Handled(r.partition, r.offset));
            Ok::<(), HandlerError>(())
        }
    });
    wait_for("the assignment", Duration::from_secs(60), || {
        member.assignment().len() == 1
    })
    .await;
    produce(&client, &topic, 0, &[(None, "freeze")]).await;
    wait_for_problem(
        &mut errors,
        "the partitions lost",
        Duration::from_secs(120),
        |p| matches!(p, ConsumerError::PartitionsLost { .. }),
    )
    .await;
    wait_for("the member to rejoin", Duration::from_secs(60), || {
        member.assignment().len() == 1 && hooks(&log).len() == 3
    })
    .await;
    member.stop(Duration::from_secs(10)).await;
    let only = tps(&topic, &[0]);
    assert_eq!(
        hooks(&log),
        vec![
            Seen::Hook(RebalanceEvent::Assigned, only.clone()),
            Seen::Hook(RebalanceEvent::Lost, only.clone()),
            Seen::Hook(RebalanceEvent::Assigned, only.clone()),
            Seen::Hook(RebalanceEvent::Revoked, only.clone()),
        ]
    );
}

// ---------------------------------------------------------------------------
// Revocation signal.

#[tokio::test]
async fn in_flight_records_see_their_revocation_when_a_member_joins_and_at_shutdown() {
    let client = client().await;
    let topic = new_topic(&client, "app-revoked", 2).await;
    let group = unique_topic("group-revoked");
    // Offsets of records whose handler saw the signal, and of those waiting.
    let fired: Arc<Mutex<Vec<(i32, i64)>>> = Arc::default();
    let waiting: Arc<Mutex<Vec<(i32, i64)>>> = Arc::default();
    let handler = {
        let (fired, waiting) = (Arc::clone(&fired), Arc::clone(&waiting));
        move |r: ConsumerRecord| {
            let (fired, waiting) = (Arc::clone(&fired), Arc::clone(&waiting));
            async move {
                if r.value_str() == Some("wait") {
                    assert!(!r.is_revoked());
                    waiting.lock().unwrap().push((r.partition, r.offset));
                    if tokio::time::timeout(Duration::from_secs(120), r.revoked())
                        .await
                        .is_ok()
                    {
                        assert!(r.is_revoked());
                        fired.lock().unwrap().push((r.partition, r.offset));
                    }
                    return Err(HandlerError::retry("revoked while waiting"));
                }
                Ok::<(), HandlerError>(())
            }
        }
    };
    let a = RunningConsumer::spawn(
        group_member(&client, &group, &topic).build().unwrap(),
        handler,
    );
    wait_for("a to own both partitions", Duration::from_secs(60), || {
        a.assignment().len() == 2
    })
    .await;
    produce(&client, &topic, 0, &[(None, "wait")]).await;
    wait_for("the record in the handler", Duration::from_secs(60), || {
        waiting.lock().unwrap().len() == 1
    })
    .await;
    // A second member joins: a revokes everything (eager), and the record
    // in flight hears of it.
    let b = RunningConsumer::spawn(
        group_member(&client, &group, &topic).build().unwrap(),
        recording(|_| {}),
    );
    wait_for("the revocation signal", Duration::from_secs(60), || {
        fired.lock().unwrap().contains(&(0, 0))
    })
    .await;
    wait_for("a 1/1 split", Duration::from_secs(60), || {
        a.assignment().len() == 1 && b.assignment().len() == 1
    })
    .await;
    b.stop(Duration::from_secs(10)).await;
    wait_for("a to own both again", Duration::from_secs(60), || {
        a.assignment().len() == 2
    })
    .await;
    // A record in flight at shutdown hears of it too.
    produce(&client, &topic, 1, &[(None, "wait")]).await;
    wait_for(
        "the second record in the handler",
        Duration::from_secs(60),
        || waiting.lock().unwrap().contains(&(1, 0)),
    )
    .await;
    let deadline = Duration::from_secs(60);
    let stopping = Instant::now();
    a.stop(deadline).await;
    assert!(
        fired.lock().unwrap().contains(&(1, 0)),
        "shutdown fired the signal: {:?}",
        fired.lock().unwrap()
    );
    assert!(
        stopping.elapsed() < deadline,
        "the handler returned on the signal, not at the deadline"
    );
}

// ---------------------------------------------------------------------------
// Topic patterns.

#[tokio::test]
async fn a_topic_pattern_picks_up_topics_created_after_start() {
    let client = client().await;
    let prefix = unique_topic("app-pattern");
    let group = unique_topic("group-pattern");
    let seen: Arc<Mutex<BTreeSet<(String, i32, i64)>>> = Arc::default();
    let record = Arc::clone(&seen);
    // No topic matches yet: the member joins with an empty subscription.
    let member = RunningConsumer::spawn(
        client
            .group_consumer(&group)
            .topic_pattern(format!("{prefix}.*"))
            .start_with_earliest()
            .metadata_max_age(Duration::from_secs(1))
            .heartbeat_interval(Duration::from_millis(500))
            .commit_interval(Duration::from_millis(300))
            .max_wait(Duration::from_millis(100))
            .build()
            .unwrap(),
        recording(move |r| {
            record
                .lock()
                .unwrap()
                .insert((r.topic.to_string(), r.partition, r.offset));
        }),
    );
    wait_for("the first join", Duration::from_secs(60), || {
        member.status.get().joins >= 1
    })
    .await;
    assert!(member.status.get().subscribed.is_empty());

    // A topic that does not match is never consumed.
    let other = format!("{prefix}-other");
    client
        .admin()
        .create_topic(NewTopic::new(&other, 1, 1))
        .await
        .unwrap();
    produce(&client, &other, 0, &[(None, "not for us")]).await;

    let first = format!("{prefix}.first");
    client
        .admin()
        .create_topic(NewTopic::new(&first, 2, 1))
        .await
        .unwrap();
    produce(&client, &first, 0, &[(None, "a"), (None, "b")]).await;
    produce(&client, &first, 1, &[(None, "c")]).await;
    wait_for("the first topic's records", Duration::from_secs(60), || {
        seen.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(member.status.get().subscribed, vec![first.clone()]);

    let second = format!("{prefix}.second");
    client
        .admin()
        .create_topic(NewTopic::new(&second, 1, 1))
        .await
        .unwrap();
    produce(&client, &second, 0, &[(None, "d")]).await;
    wait_for("the second topic's record", Duration::from_secs(60), || {
        seen.lock().unwrap().len() == 4
    })
    .await;
    let status = member.status.get();
    assert_eq!(status.subscribed, vec![first.clone(), second.clone()]);
    assert_eq!(status.assignment.len(), 3, "{:?}", status.assignment);
    member.stop(Duration::from_secs(10)).await;
    assert_eq!(
        *seen.lock().unwrap(),
        BTreeSet::from([
            (first.clone(), 0, 0),
            (first.clone(), 0, 1),
            (first.clone(), 1, 0),
            (second.clone(), 0, 0),
        ])
    );
    assert_eq!(
        committed_async(&group, &first).await,
        BTreeMap::from([(0, 2), (1, 1)])
    );
}

// ---------------------------------------------------------------------------
// Per-key concurrency and the consumer-wide bound.

/// Watches handler calls: how many run at once, and which keys.
#[derive(Default)]
struct Overlap {
    now: AtomicUsize,
    max: AtomicUsize,
    /// Keys with a call under way.
    active: Mutex<BTreeSet<Option<String>>>,
    /// A key seen twice at once.
    same_key_overlap: AtomicBool,
    /// Offsets per key in the order their calls started.
    order: Mutex<HashMap<Option<String>, Vec<i64>>>,
    handled: AtomicUsize,
}

impl Overlap {
    async fn call(&self, r: &ConsumerRecord, pause: Duration) {
        let key = r
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        if !self.active.lock().unwrap().insert(key.clone()) {
            self.same_key_overlap.store(true, Ordering::Release);
        }
        self.order
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .push(r.offset);
        let now = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.max.fetch_max(now, Ordering::AcqRel);
        tokio::time::sleep(pause).await;
        self.now.fetch_sub(1, Ordering::AcqRel);
        self.active.lock().unwrap().remove(&key);
        self.handled.fetch_add(1, Ordering::AcqRel);
    }
}

#[tokio::test]
async fn per_key_concurrency_overlaps_keys_and_keeps_each_key_in_order() {
    let client = client().await;
    let topic = new_topic(&client, "app-keys", 1).await;
    let group = unique_topic("group-keys");
    // 70 records of keys k0..k3 in pairs (k0 k0 k1 k1 _ k2 k3 k3 k0 _ ..),
    // every fifth without a key: neighbours often share a key.
    let keys: Vec<Option<String>> = (0..70)
        .map(|i| (i % 5 != 4).then(|| format!("k{}", (i / 2) % 4)))
        .collect();
    let records: Vec<(Option<&str>, &str)> = keys.iter().map(|k| (k.as_deref(), "v")).collect();
    produce(&client, &topic, 0, &records).await;
    let overlap = Arc::new(Overlap::default());
    let watch = Arc::clone(&overlap);
    let member = RunningConsumer::spawn(
        group_member(&client, &group, &topic)
            .key_concurrency(4)
            .build()
            .unwrap(),
        move |r: ConsumerRecord| {
            let watch = Arc::clone(&watch);
            async move {
                watch.call(&r, Duration::from_millis(40)).await;
                Ok::<(), HandlerError>(())
            }
        },
    );
    wait_for("every record handled", Duration::from_secs(60), || {
        overlap.handled.load(Ordering::Acquire) == 70
    })
    .await;
    wait_for("commits to reach the end", Duration::from_secs(60), || {
        committed(&group, &topic).get(&0) == Some(&70)
    })
    .await;
    member.stop(Duration::from_secs(10)).await;

    assert!(
        !overlap.same_key_overlap.load(Ordering::Acquire),
        "two records of one key were in the handler at once"
    );
    let max = overlap.max.load(Ordering::Acquire);
    assert!(max > 1, "records of different keys overlap (max {max})");
    assert!(max <= 4, "at most key_concurrency at once (max {max})");
    let order = overlap.order.lock().unwrap();
    for (key, offsets) in order.iter() {
        let expected: Vec<i64> = (0..70)
            .filter(|i| keys[usize::try_from(*i).unwrap()] == *key)
            .collect();
        assert_eq!(offsets, &expected, "key {key:?} in offset order");
    }
}

#[tokio::test]
async fn max_in_flight_bounds_handler_calls_across_partitions() {
    let client = client().await;
    let topic = new_topic(&client, "app-inflight", 4).await;
    let group = unique_topic("group-inflight");
    for p in 0..4 {
        let records: Vec<(Option<String>, &str)> =
            (0..15).map(|i| (Some(format!("k{i}")), "v")).collect();
        let records: Vec<(Option<&str>, &str)> =
            records.iter().map(|(k, v)| (k.as_deref(), *v)).collect();
        produce(&client, &topic, p, &records).await;
    }
    let overlap = Arc::new(Overlap::default());
    let watch = Arc::clone(&overlap);
    let member = RunningConsumer::spawn(
        group_member(&client, &group, &topic)
            .key_concurrency(3)
            .max_in_flight(2)
            .build()
            .unwrap(),
        move |r: ConsumerRecord| {
            let watch = Arc::clone(&watch);
            async move {
                watch.call(&r, Duration::from_millis(30)).await;
                Ok::<(), HandlerError>(())
            }
        },
    );
    wait_for("every record handled", Duration::from_secs(90), || {
        overlap.handled.load(Ordering::Acquire) == 60
    })
    .await;
    wait_for("commits to reach the end", Duration::from_secs(60), || {
        committed(&group, &topic) == (0..4).map(|p| (p, 15)).collect()
    })
    .await;
    member.stop(Duration::from_secs(10)).await;
    let max = overlap.max.load(Ordering::Acquire);
    assert_eq!(
        max, 2,
        "4 partitions with a backlog reach the bound of 2 and never pass it"
    );
}

// ---------------------------------------------------------------------------
// Watchdog.

#[tokio::test]
async fn the_watchdog_reports_a_partition_whose_head_never_completes_but_not_an_idle_one() {
    let client = client().await;
    let topic = new_topic(&client, "app-watchdog", 2).await;
    let group = unique_topic("group-watchdog");
    // Partition 0: its first record never completes (its handler waits for
    // the revocation). Partition 1: one record, handled at once, then idle.
    produce(&client, &topic, 0, &[(None, "stuck"), (None, "behind")]).await;
    produce(&client, &topic, 1, &[(None, "fine")]).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&handled);
    let threshold = Duration::from_secs(2);
    let mut consumer = group_member(&client, &group, &topic)
        .watchdog_threshold(threshold)
        .build()
        .unwrap();
    let mut errors = consumer.errors().unwrap();
    let member = RunningConsumer::spawn(consumer, move |r: ConsumerRecord| {
        let count = Arc::clone(&count);
        async move {
            if r.value_str() == Some("stuck") {
                r.revoked().await;
                return Err(HandlerError::retry("revoked"));
            }
            count.fetch_add(1, Ordering::AcqRel);
            Ok::<(), HandlerError>(())
        }
    });
    let problem = wait_for_problem(
        &mut errors,
        "the stuck partition",
        Duration::from_secs(60),
        |p| matches!(p, ConsumerError::PartitionStuck(_)),
    )
    .await;
    let ConsumerError::PartitionStuck(stuck) = &problem else {
        unreachable!()
    };
    assert_eq!(stuck.partition, TopicPartition::new(topic.as_str(), 0));
    assert_eq!(stuck.offset, 0, "the commit point");
    assert!(
        // The head with its handler, the record behind it fetched and waiting.
        matches!(stuck.reason, StuckReason::CommitNotMoving { waiting } if waiting >= 2),
        "{stuck:?}"
    );
    assert!(stuck.duration > threshold);
    assert!(
        problem
            .to_string()
            .contains("commit point stuck at offset 0"),
        "{problem}"
    );
    wait_for("the status to show it", Duration::from_secs(30), || {
        member
            .status
            .get()
            .stuck
            .iter()
            .any(|s| s.partition.partition() == 0)
    })
    .await;
    // The idle partition (and the fetching of both, which succeeds with
    // empty answers) is never reported: watched over three thresholds.
    let observe = Instant::now();
    while observe.elapsed() < threshold * 3 {
        let status = member.status.get();
        assert!(
            status.stuck.iter().all(|s| s.partition.partition() == 0
                && matches!(s.reason, StuckReason::CommitNotMoving { .. })),
            "{:?}",
            status.stuck
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Some(p) = errors.try_recv() {
        if let ConsumerError::PartitionStuck(s) = &p {
            assert_eq!(s.partition.partition(), 0, "{p}");
        }
    }
    assert_eq!(
        handled.load(Ordering::Acquire),
        1,
        "partition 1's record; partition 0's second waits behind its head"
    );
    member.stop(Duration::from_secs(10)).await;
}
