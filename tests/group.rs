//! Consumer groups against a real broker.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    client, group_member, new_topic, recording, testcontainers, unique_topic, wait_for,
    RunningConsumer,
};
use kastellan::group::{
    AckHandle, ConsumerError, ConsumerErrors, ConsumerRecord, GroupConsumer, GroupConsumerBuilder,
    GroupState, HandlerError, PauseReason,
};
use kastellan::{Client, Error};

type Seen = Arc<Mutex<Vec<(String, i32, i64)>>>;

/// A member named `name` with the shared group settings (changed by
/// `configure`), recording every record it handles into `seen`.
fn start(
    client: &Client,
    group: &str,
    topic: &str,
    name: &str,
    seen: &Seen,
    configure: impl FnOnce(GroupConsumerBuilder) -> GroupConsumerBuilder,
) -> RunningConsumer {
    let consumer = configure(group_member(client, group, topic))
        .build()
        .expect("consumer builds");
    let seen = Arc::clone(seen);
    let me = name.to_string();
    RunningConsumer::spawn(
        consumer,
        recording(move |r| {
            seen.lock()
                .unwrap()
                .push((me.clone(), r.partition, r.offset))
        }),
    )
}

async fn fill(client: &Client, topic: &str, partitions: i32, per_partition: usize) {
    let producer = client.producer().build().unwrap();
    for p in 0..partitions {
        for i in 0..per_partition {
            drop(
                producer
                    .to(topic)
                    .partition(p)
                    .value(format!("{p}-{i}"))
                    .enqueue()
                    .await
                    .unwrap(),
            );
        }
    }
    producer.flush().await;
}

/// Distinct (partition, offset) pairs seen.
fn distinct(seen: &Seen) -> BTreeSet<(i32, i64)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(_, p, o)| (*p, *o))
        .collect()
}

/// Committed offsets of a group on `topic`, as Kafka's own
/// kafka-consumer-groups tool reports them.
fn committed_by_kafka_tool(group: &str, topic: &str) -> BTreeMap<i32, i64> {
    testcontainers::describe_group(&testcontainers::bootstrap(), group, topic)
        .expect("kafka-consumer-groups runs")
        .partitions
        .into_iter()
        .filter_map(|(p, row)| Some((p, row.committed?)))
        .collect()
}

/// Runs `consumer` until `run` ends by itself, which it must do fast
/// (within 30 s). Returns how it ended, and its error stream.
async fn run_until_it_ends(mut consumer: GroupConsumer) -> (kastellan::Result<()>, ConsumerErrors) {
    let errors = consumer.errors().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), consumer.run(recording(|_| {})))
        .await
        .expect("run fails fast");
    (result, errors)
}

#[tokio::test]
async fn two_members_split_partitions_and_process_everything() {
    let client = client().await;
    let topic = new_topic(&client, "grp-split", 6).await;
    fill(&client, &topic, 6, 100).await;
    let group = unique_topic("group-split");
    let seen: Seen = Arc::default();

    let a = start(&client, &group, &topic, "a", &seen, |b| b);
    let b = start(&client, &group, &topic, "b", &seen, |b| b);
    wait_for(
        "both members to own partitions",
        Duration::from_secs(60),
        || {
            let (pa, pb) = (a.assignment(), b.assignment());
            !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 6
        },
    )
    .await;
    let (pa, pb) = (a.assignment(), b.assignment());
    assert!(
        pa.iter().all(|p| !pb.contains(p)),
        "no overlap: {pa:?} vs {pb:?}"
    );
    assert_eq!(pa.len(), 3, "range splits 6 partitions 3/3");

    wait_for("all 600 records", Duration::from_secs(60), || {
        distinct(&seen).len() == 600
    })
    .await;
    a.stop(Duration::from_secs(10)).await;
    b.stop(Duration::from_secs(10)).await;

    // Every record handled; the final commits cover everything.
    assert_eq!(
        distinct(&seen),
        (0..6).flat_map(|p| (0..100).map(move |o| (p, o))).collect()
    );
    let committed = committed_by_kafka_tool(&group, &topic);
    assert_eq!(
        committed,
        (0..6).map(|p| (p, 100)).collect(),
        "kafka-consumer-groups sees every offset committed"
    );
}

#[tokio::test]
async fn graceful_leave_and_crash_hand_partitions_over_without_loss() {
    let client = client().await;
    let topic = new_topic(&client, "grp-leave", 4).await;
    let group = unique_topic("group-leave");
    let seen: Seen = Arc::default();
    let a = start(&client, &group, &topic, "a", &seen, |b| b);
    let b = start(&client, &group, &topic, "b", &seen, |b| b);
    wait_for("assignment", Duration::from_secs(60), || {
        a.assignment().len() + b.assignment().len() == 4 && !a.assignment().is_empty()
    })
    .await;
    fill(&client, &topic, 4, 50).await;
    wait_for("first 200", Duration::from_secs(60), || {
        distinct(&seen).len() == 200
    })
    .await;

    // a leaves gracefully: b takes everything at once (no session timeout wait).
    let left = Instant::now();
    a.stop(Duration::from_secs(10)).await;
    wait_for("b to own all partitions", Duration::from_secs(8), || {
        b.assignment().len() == 4
    })
    .await;
    assert!(
        left.elapsed() < Duration::from_secs(8),
        "handover after a LeaveGroup is quick"
    );
    fill(&client, &topic, 4, 50).await;
    wait_for("next 200", Duration::from_secs(60), || {
        distinct(&seen).len() == 400
    })
    .await;

    // c joins, then vanishes without leaving (task aborted: no LeaveGroup, no
    // more heartbeats). After the session timeout b owns everything again.
    let c = start(&client, &group, &topic, "c", &seen, |b| b);
    wait_for("c to own partitions", Duration::from_secs(60), || {
        !c.assignment().is_empty()
    })
    .await;
    c.task.abort();
    fill(&client, &topic, 4, 50).await;
    wait_for(
        "b to take over after c's session timeout",
        Duration::from_secs(60),
        || b.assignment().len() == 4,
    )
    .await;
    wait_for("all 600", Duration::from_secs(60), || {
        distinct(&seen).len() == 600
    })
    .await;
    b.stop(Duration::from_secs(10)).await;
    assert_eq!(
        distinct(&seen),
        (0..4).flat_map(|p| (0..150).map(move |o| (p, o))).collect()
    );
}

#[tokio::test]
async fn restart_resumes_from_committed_offsets_and_commits_stop_at_the_lowest_incomplete() {
    let client = client().await;
    let topic = new_topic(&client, "grp-resume", 1).await;
    fill(&client, &topic, 1, 20).await;
    let group = unique_topic("group-resume");

    // Defer every record; ack all but offsets 7 and 12 (out of order).
    let deferred: Arc<Mutex<Vec<AckHandle>>> = Arc::default();
    let consumer = client
        .group_consumer(&group)
        .topic(&topic)
        .start_with_earliest()
        .commit_interval(Duration::from_millis(200))
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let held = Arc::clone(&deferred);
    let member = RunningConsumer::spawn(
        consumer,
        recording(move |r| held.lock().unwrap().push(r.defer())),
    );
    wait_for("20 deferred", Duration::from_secs(60), || {
        deferred.lock().unwrap().len() == 20
    })
    .await;
    let mut handles: Vec<AckHandle> = std::mem::take(&mut *deferred.lock().unwrap());
    handles.reverse(); // complete out of order: newest first
    let mut kept = Vec::new();
    for h in handles {
        let offset = h.position().unwrap().1;
        if offset == 7 || offset == 12 {
            kept.push(h);
        } else {
            h.ack();
        }
    }
    // The commit point is the lowest incomplete offset: 7.
    wait_for("commit of offset 7", Duration::from_secs(30), || {
        committed_by_kafka_tool(&group, &topic).get(&0) == Some(&7)
    })
    .await;
    let stalled = {
        let s = member.status.get();
        s.stalled.clone()
    };
    let _ = stalled; // reported only after the stall threshold; see the status test below
                     // Ack 7: the commit moves to 12 (still incomplete).
    let at = kept
        .iter()
        .position(|h| h.position().unwrap().1 == 7)
        .unwrap();
    kept.remove(at).ack();
    wait_for("commit of offset 12", Duration::from_secs(30), || {
        committed_by_kafka_tool(&group, &topic).get(&0) == Some(&12)
    })
    .await;
    // Shut down with 12 never completed: it is not committed past.
    member.shutdown.shutdown(Duration::from_millis(500));
    drop(kept); // dropping an AckHandle marks the record failed
    tokio::time::timeout(Duration::from_secs(30), member.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(committed_by_kafka_tool(&group, &topic).get(&0), Some(&12));

    // A restarted member resumes at 12: records 12..20 are redelivered, nothing earlier.
    let seen: Seen = Arc::default();
    let again = start(&client, &group, &topic, "again", &seen, |b| b);
    wait_for("redelivery", Duration::from_secs(60), || {
        distinct(&seen).len() == 8
    })
    .await;
    again.stop(Duration::from_secs(10)).await;
    assert_eq!(distinct(&seen), (12..20).map(|o| (0, o)).collect());
    assert_eq!(committed_by_kafka_tool(&group, &topic).get(&0), Some(&20));
}

#[tokio::test]
async fn failed_records_stall_the_partition_visibly() {
    let client = client().await;
    let topic = new_topic(&client, "grp-stall", 1).await;
    fill(&client, &topic, 1, 10).await;
    let group = unique_topic("group-stall");
    let consumer = client
        .group_consumer(&group)
        .topic(&topic)
        .start_with_earliest()
        .commit_interval(Duration::from_millis(200))
        .stall_threshold(Duration::from_millis(500))
        .build()
        .unwrap();
    let member = RunningConsumer::spawn(consumer, |r: ConsumerRecord| async move {
        if r.offset == 4 {
            Err::<(), HandlerError>(HandlerError::retry("cannot handle record 4"))
        } else {
            Ok(())
        }
    });
    wait_for("stall report", Duration::from_secs(30), || {
        member.status.get().stalled.iter().any(|s| s.offset == 4)
    })
    .await;
    let report = member
        .status
        .get()
        .stalled
        .into_iter()
        .find(|s| s.offset == 4)
        .unwrap();
    assert_eq!(
        (report.partition.topic(), report.partition.partition()),
        (topic.as_str(), 0)
    );
    assert_eq!(report.failed.as_deref(), Some("cannot handle record 4"));
    wait_for("commit up to 4", Duration::from_secs(30), || {
        committed_by_kafka_tool(&group, &topic).get(&0) == Some(&4)
    })
    .await;
    member.shutdown.shutdown(Duration::from_millis(200));
    member.task.await.unwrap().unwrap();
    assert_eq!(
        committed_by_kafka_tool(&group, &topic).get(&0),
        Some(&4),
        "never commits past a failed record"
    );
}

#[tokio::test]
async fn static_member_restart_keeps_its_assignment_without_a_rebalance() {
    let client = client().await;
    let topic = new_topic(&client, "grp-static", 4).await;
    let group = unique_topic("group-static");
    let seen: Seen = Arc::default();
    let a = start(&client, &group, &topic, "a", &seen, |b| {
        b.instance_id("instance-a")
    });
    let b = start(&client, &group, &topic, "b", &seen, |b| {
        b.instance_id("instance-b")
    });
    wait_for("assignment", Duration::from_secs(60), || {
        a.assignment().len() == 2 && b.assignment().len() == 2
    })
    .await;
    let before = a.assignment();
    let b_status = b.status.get();

    // a restarts (static members do not leave on shutdown).
    a.stop(Duration::from_secs(5)).await;
    let a2 = start(&client, &group, &topic, "a2", &seen, |b| {
        b.instance_id("instance-a")
    });
    wait_for("a2 assignment", Duration::from_secs(30), || {
        !a2.assignment().is_empty()
    })
    .await;
    assert_eq!(a2.assignment(), before, "same partitions after the restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b_after = b.status.get();
    assert_eq!(
        b_after.generation, b_status.generation,
        "b saw no rebalance"
    );
    assert_eq!(b_after.joins, b_status.joins);
    a2.stop(Duration::from_secs(5)).await;
    b.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_configuration_is_refused_before_joining() {
    let client = client().await;
    assert!(matches!(
        client.group_consumer("g").build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        client
            .group_consumer("g")
            .topic("t")
            .session_timeout(Duration::from_secs(1))
            .heartbeat_interval(Duration::from_secs(3))
            .build(),
        Err(Error::Config(_))
    ));
    // The broker refuses a session timeout below group.min.session.timeout.ms (6 s): fatal, clear.
    let topic = new_topic(&client, "grp-badsession", 1).await;
    let consumer = client
        .group_consumer(unique_topic("group-bad"))
        .topic(&topic)
        .session_timeout(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(500))
        .build()
        .unwrap();
    let (result, mut errors) = run_until_it_ends(consumer).await;
    match result {
        Err(Error::Broker(b)) => assert_eq!(b.name(), "INVALID_SESSION_TIMEOUT"),
        other => panic!("expected INVALID_SESSION_TIMEOUT, got {other:?}"),
    }
    let reported = errors.try_recv().expect("the error stream reports it too");
    assert!(reported.is_fatal(), "{reported:?}");
    assert!(errors.recv().await.is_none(), "and ends after it");
}

#[tokio::test]
async fn cooperative_rebalance_keeps_retained_partitions_and_takes_two_generations() {
    use kastellan::group::assignor::CooperativeStickyAssignor;
    let client = client().await;
    let topic = new_topic(&client, "grp-coop", 4).await;
    fill(&client, &topic, 4, 25).await;
    let group = unique_topic("group-coop");
    let seen: Seen = Arc::default();
    let coop = |b: kastellan::group::GroupConsumerBuilder| {
        b.assignors(vec![Arc::new(CooperativeStickyAssignor)])
    };
    let a = start(&client, &group, &topic, "a", &seen, coop);
    wait_for("a owns everything", Duration::from_secs(60), || {
        a.assignment().len() == 4
    })
    .await;
    wait_for("first 100", Duration::from_secs(60), || {
        distinct(&seen).len() == 100
    })
    .await;
    let before = a.status.get();
    assert_eq!(before.protocol, "cooperative-sticky");

    let b = start(&client, &group, &topic, "b", &seen, coop);
    // b can own its two partitions (generation G+2) a moment before a has
    // applied G+2 itself (a still shows G+1, where it already gave two up):
    // wait for a's own view of the final generation.
    wait_for(
        "2/2 split, with a in its final generation",
        Duration::from_secs(60),
        || {
            let a_now = a.status.get();
            a_now.generation >= before.generation + 2
                && a_now.state == GroupState::Stable
                && a_now.assignment.len() == 2
                && b.assignment().len() == 2
        },
    )
    .await;
    let after = a.status.get();
    // KIP-429: revoke in one rebalance, assign in the next (G -> G+2), and
    // the member keeps its id.
    assert_eq!(
        after.generation,
        before.generation + 2,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.member_id, before.member_id);
    let kept: Vec<_> = after.assignment.clone();
    assert!(
        kept.iter().all(|p| before.assignment.contains(p)),
        "a keeps a subset of what it had"
    );

    fill(&client, &topic, 4, 25).await;
    wait_for("all 200", Duration::from_secs(60), || {
        distinct(&seen).len() == 200
    })
    .await;
    a.stop(Duration::from_secs(5)).await;
    b.stop(Duration::from_secs(5)).await;
    assert_eq!(
        distinct(&seen),
        (0..4).flat_map(|p| (0..50).map(move |o| (p, o))).collect()
    );
}

#[tokio::test]
async fn a_missing_topic_is_consumed_once_created() {
    let client = client().await;
    let topic = unique_topic("grp-later");
    let group = unique_topic("group-later");
    let seen: Seen = Arc::default();
    let a = start(&client, &group, &topic, "a", &seen, |b| b);
    wait_for("a to join", Duration::from_secs(60), || {
        a.status.get().state == GroupState::Stable
    })
    .await;
    client
        .admin()
        .create_topic(kastellan::admin::NewTopic::new(&topic, 2, 1))
        .await
        .unwrap();
    fill(&client, &topic, 2, 10).await;
    wait_for(
        "the records of the topic created later",
        Duration::from_secs(60),
        || distinct(&seen).len() == 20,
    )
    .await;
    assert!(a.status.get().missing_topics.is_empty());
    a.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_missing_topic_is_reported_in_status_and_on_the_error_stream() {
    let client = client().await;
    let topic = unique_topic("grp-missing");
    let mut consumer = client
        .group_consumer(unique_topic("group-missing"))
        .topic(&topic)
        .build()
        .unwrap();
    let mut errors = consumer.errors().unwrap();
    let member = RunningConsumer::spawn(consumer, recording(|_| {}));
    let first = tokio::time::timeout(Duration::from_secs(30), errors.recv())
        .await
        .expect("a report within 30 s")
        .expect("the stream is open");
    match &first {
        ConsumerError::MissingTopic { topic: t } => assert_eq!(t, &topic),
        other => panic!("expected MissingTopic, got {other:?}"),
    }
    assert!(!first.is_fatal());
    wait_for(
        "the status to list the topic",
        Duration::from_secs(30),
        || member.status.get().missing_topics == [topic.clone()],
    )
    .await;
    wait_for("a to join anyway", Duration::from_secs(60), || {
        member.status.get().state == GroupState::Stable
    })
    .await;
    // Reported once, not on every refresh (every second or so).
    let refreshes_later = Instant::now();
    while refreshes_later.elapsed() < Duration::from_secs(3) {
        if let Some(p) = errors.try_recv() {
            panic!("reported again: {p:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    member.shutdown.shutdown(Duration::from_secs(5));
    member.task.await.unwrap().unwrap();
    assert!(errors.recv().await.is_none(), "the stream ends with run()");
}

#[tokio::test]
async fn strict_mode_ends_run_when_a_topic_is_missing() {
    let client = client().await;
    let topic = unique_topic("grp-strict");
    let consumer = client
        .group_consumer(unique_topic("group-strict"))
        .topic(&topic)
        .require_topics()
        .build()
        .unwrap();
    let (result, mut errors) = run_until_it_ends(consumer).await;
    match result {
        Err(Error::UnknownTopic(t)) => assert_eq!(t, topic),
        other => panic!("expected UnknownTopic, got {other:?}"),
    }
    let mut last = None;
    while let Some(p) = errors.recv().await {
        last = Some(p);
    }
    assert!(
        matches!(&last, Some(ConsumerError::Fatal(Error::UnknownTopic(t))) if *t == topic),
        "{last:?}"
    );
}

/// Runs a consumer on a one-partition topic of `records` records whose
/// handler fails every 25th record (4%), with the given limits, until the
/// partition pauses, and checks the pause: reported on the error stream
/// with the commit point at offset 0 and `reason`, and the only one the
/// status shows. Returns the pause reported, the status then, and how many
/// records the handler saw.
async fn run_until_paused(
    max_pending: usize,
    max_window: usize,
    records: usize,
    reason: PauseReason,
) -> (ConsumerError, kastellan::group::ConsumerStatus, usize) {
    let client = client().await;
    let topic = new_topic(&client, "grp-blocked", 1).await;
    fill(&client, &topic, 1, records).await;
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&handled);
    let mut consumer = client
        .group_consumer(unique_topic("group-blocked"))
        .topic(&topic)
        .start_with_earliest()
        .max_pending_per_partition(max_pending)
        .max_window_per_partition(max_window)
        .build()
        .unwrap();
    let mut errors = consumer.errors().unwrap();
    let member = RunningConsumer::spawn(consumer, move |r: ConsumerRecord| {
        let count = Arc::clone(&count);
        async move {
            count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            if r.offset % 25 == 0 {
                Err::<(), HandlerError>(HandlerError::retry(format!("cannot handle {}", r.offset)))
            } else {
                Ok(())
            }
        }
    });
    let paused = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match errors.recv().await {
                Some(p @ ConsumerError::PartitionPaused { .. }) => return p,
                Some(other) => assert!(!other.is_fatal(), "{other:?}"),
                None => panic!("the consumer stopped"),
            }
        }
    })
    .await
    .expect("the pause is reported");
    wait_for(
        "the status to show the pause",
        Duration::from_secs(10),
        || !member.status.get().paused.is_empty(),
    )
    .await;
    let now = member.status.get();
    // Nothing more is dispatched while paused (checked over a few commit
    // intervals of the handler's view).
    let at_pause = handled.load(std::sync::atomic::Ordering::Acquire);
    let observe = Instant::now();
    while observe.elapsed() < Duration::from_secs(2) {
        assert_eq!(handled.load(std::sync::atomic::Ordering::Acquire), at_pause);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !member.task.is_finished(),
        "a paused partition does not stop the consumer"
    );
    member.shutdown.shutdown(Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(30), member.task)
        .await
        .expect("shutdown does not wait for failed records")
        .unwrap()
        .unwrap();
    match &paused {
        ConsumerError::PartitionPaused {
            partition,
            offset,
            reason: reported,
            ..
        } => {
            assert_eq!(partition.partition(), 0);
            assert_eq!(*offset, 0, "the commit point");
            assert_eq!(reported, &reason);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(now.paused.len(), 1);
    assert_eq!(now.paused[0].reason, reason);
    (paused, now, at_pause)
}

#[tokio::test]
async fn a_partition_whose_in_flight_records_all_failed_pauses_visibly() {
    // 20 in flight, all failed: offsets 0, 25, .., 475; 476 waits.
    let reason = PauseReason::FailedRecords {
        failed: 20,
        limit: 20,
    };
    let (paused, _, handled) = run_until_paused(20, 10_000, 1000, reason).await;
    let ConsumerError::PartitionPaused { failed, .. } = &paused else {
        panic!("{paused:?}")
    };
    assert_eq!(failed.as_deref(), Some("cannot handle 0"));
    assert_eq!(handled, 476, "records 0..=475 were handled, then it paused");
    assert!(paused.to_string().contains("no more progress"), "{paused}");
}

#[tokio::test]
async fn a_failed_record_at_the_head_bounds_the_window() {
    // The head (offset 0) failed; later records complete, so the window
    // grows until its limit of 200 records, then the partition pauses.
    let reason = PauseReason::Window {
        window: 200,
        limit: 200,
    };
    let (_, status, handled) = run_until_paused(100, 200, 1000, reason).await;
    assert_eq!(handled, 200, "dispatching stops at the window limit");
    assert_eq!(status.stalled.len(), 0, "not yet past the stall threshold");
}

#[tokio::test]
async fn partitions_added_later_are_consumed() {
    let client = client().await;
    let topic = new_topic(&client, "grp-grow", 1).await;
    let group = unique_topic("group-grow");
    let seen: Seen = Arc::default();
    let a = start(&client, &group, &topic, "a", &seen, |b| {
        b.metadata_max_age(Duration::from_secs(2))
    });
    fill(&client, &topic, 1, 5).await;
    wait_for("the first records", Duration::from_secs(60), || {
        distinct(&seen).len() == 5
    })
    .await;
    let out = testcontainers::run_kafka_class_checked(
        testcontainers::TOPICS_COMMAND,
        &[
            "--bootstrap-server",
            &testcontainers::bootstrap(),
            "--alter",
            "--topic",
            &topic,
            "--partitions",
            "3",
        ],
        Duration::from_secs(60),
    );
    out.expect("TopicCommand --alter adds partitions");
    // Five more on partition 0, five each on the new partitions 1 and 2.
    fill(&client, &topic, 3, 5).await;
    wait_for(
        "the records of the new partitions",
        Duration::from_secs(60),
        || distinct(&seen).len() == 20,
    )
    .await;
    a.stop(Duration::from_secs(5)).await;
}

/// Runs of records handled back to back without another task getting the
/// thread, for a handler that never waits: the longest such run.
async fn longest_run_without_yielding(key_concurrency: usize) -> u64 {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const RECORDS: usize = 30_000;
    let client = client().await;
    let topic = new_topic(&client, "grp-fair", 1).await;
    // 100-byte values: a 1 MiB fetch brings about 8,000 records at once.
    let producer = client.producer().build().unwrap();
    for i in 0..RECORDS {
        drop(
            producer
                .to(&topic)
                .key(format!("k{}", i % 100))
                .value(vec![b'x'; 100])
                .enqueue()
                .await
                .unwrap(),
        );
    }
    producer.flush().await;

    // Another task, on the same thread: counts its turns.
    let turns = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let side = {
        let (turns, done) = (Arc::clone(&turns), Arc::clone(&done));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                turns.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    // (turns seen at the last record, records since the turn count moved,
    // longest such run, records handled)
    let runs = Arc::new(Mutex::new((u64::MAX, 0u64, 0u64, 0usize)));
    let consumer = group_member(&client, &unique_topic("group-fair"), &topic)
        .key_concurrency(key_concurrency)
        .build()
        .unwrap();
    let member = RunningConsumer::spawn(consumer, {
        let (turns, runs) = (Arc::clone(&turns), Arc::clone(&runs));
        recording(move |_r| {
            let now = turns.load(Ordering::Relaxed);
            let mut r = runs.lock().unwrap();
            if r.0 == now {
                r.1 += 1;
            } else {
                (r.0, r.1) = (now, 1);
            }
            r.2 = r.2.max(r.1);
            r.3 += 1;
        })
    });
    wait_for("every record handled", Duration::from_secs(120), || {
        runs.lock().unwrap().3 >= RECORDS
    })
    .await;
    done.store(true, Ordering::Relaxed);
    member.stop(Duration::from_secs(10)).await;
    side.await.unwrap();
    let longest = runs.lock().unwrap().2;
    longest
}

// A handler that completes at once never makes the partition's worker
// wait; the worker must still give the thread up now and then, or a whole
// fetched batch runs in one go while heartbeats, other partitions and a
// service's hand-offs wait (measured before: a whole fetch, thousands of
// records; a service's dead-letter produce then waited up to 28 ms just to
// start).
#[tokio::test]
async fn a_handler_that_never_waits_still_lets_other_tasks_run() {
    for key_concurrency in [1, 8] {
        let longest = longest_run_without_yielding(key_concurrency).await;
        assert!(
            longest <= 1_000,
            "key_concurrency({key_concurrency}): {longest} records were handled back to back \
             while no other task ran"
        );
    }
}
