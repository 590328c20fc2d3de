//! Consumer groups with misbehaving peers, against a real broker: members
//! that speak the group protocol themselves (over a plain TCP socket, with
//! `kafka-protocol` message types) and send what no well-behaved client
//! sends.

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    consumer_protocol_assignment, ApiKey, ConsumerProtocolAssignment, ConsumerProtocolSubscription,
    GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    RequestHeader, ResponseHeader, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A group member that speaks JoinGroup, SyncGroup, Heartbeat and
/// LeaveGroup itself, one request at a time on its own connection.
struct RawMember {
    stream: TcpStream,
    next_correlation: i32,
    group: String,
    member_id: String,
    generation: i32,
}

const JOIN_VERSION: i16 = 7;
const SYNC_VERSION: i16 = 5;
const HEARTBEAT_VERSION: i16 = 4;
const LEAVE_VERSION: i16 = 4;

impl RawMember {
    async fn connect(bootstrap: &str, group: &str) -> RawMember {
        let stream = TcpStream::connect(bootstrap)
            .await
            .unwrap_or_else(|e| panic!("raw member cannot connect to {bootstrap}: {e}"));
        RawMember {
            stream,
            next_correlation: 1,
            group: group.to_string(),
            member_id: String::new(),
            generation: -1,
        }
    }

    async fn call<R>(&mut self, request: &R, version: i16) -> R::Response
    where
        R: Request + Encodable,
        R::Response: Decodable,
    {
        let key = ApiKey::try_from(R::KEY).expect("known API");
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("raw-member")))
            .encode(&mut frame, key.request_header_version(version))
            .expect("header encodes");
        request
            .encode(&mut frame, version)
            .expect("request encodes");
        let size = (frame.len() - 4) as i32;
        frame[0..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&frame).await.expect("request sent");
        let size = self.stream.read_i32().await.expect("response size") as usize;
        let mut body = vec![0u8; size];
        self.stream
            .read_exact(&mut body)
            .await
            .expect("response body");
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, key.response_header_version(version))
            .expect("response header decodes");
        assert_eq!(header.correlation_id, correlation);
        let response = R::Response::decode(&mut body, version).expect("response decodes");
        assert!(!body.has_remaining() || body.remaining() < 8);
        response
    }

    /// One JoinGroup offering `protocol` with `metadata`, with the member id
    /// it has.
    async fn join_once(&mut self, protocol: &str, metadata: Bytes) -> JoinGroupResponse {
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_string(protocol.to_string()))
                .with_metadata(metadata)]);
        self.call(&request, JOIN_VERSION).await
    }

    /// JoinGroup offering `protocol` with `metadata`, rejoining once with
    /// the member id the coordinator asks for (KIP-394).
    async fn join(&mut self, protocol: &str, metadata: Bytes) -> JoinGroupResponse {
        loop {
            let response = self.join_once(protocol, metadata.clone()).await;
            if response.error_code == 79 {
                self.member_id = response.member_id.to_string();
                continue;
            }
            if response.error_code == 0 {
                self.member_id = response.member_id.to_string();
                self.generation = response.generation_id;
            }
            return response;
        }
    }

    async fn sync(
        &mut self,
        protocol: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncGroupResponse {
        let request = SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_string(protocol.to_string())))
            .with_assignments(
                assignments
                    .into_iter()
                    .map(|(member, bytes)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(StrBytes::from_string(member))
                            .with_assignment(bytes)
                    })
                    .collect(),
            );
        self.call(&request, SYNC_VERSION).await
    }

    async fn heartbeat(&mut self) -> i16 {
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        self.call(&request, HEARTBEAT_VERSION).await.error_code
    }

    async fn leave(&mut self) -> i16 {
        let request = LeaveGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_members(vec![MemberIdentity::default()
                .with_member_id(StrBytes::from_string(self.member_id.clone()))]);
        self.call(&request, LEAVE_VERSION).await.error_code
    }
}

/// A version-0 `ConsumerProtocolSubscription` for `topics`.
fn subscription(topics: &[&str]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    ConsumerProtocolSubscription::default()
        .with_topics(
            topics
                .iter()
                .map(|t| StrBytes::from_string(t.to_string()))
                .collect(),
        )
        .encode(&mut buf, 0)
        .expect("subscription encodes");
    buf.freeze()
}

/// A version-0 `ConsumerProtocolAssignment` of `partitions` of `topic`.
fn assignment(topic: &str, partitions: &[i32]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    ConsumerProtocolAssignment::default()
        .with_assigned_partitions(vec![consumer_protocol_assignment::TopicPartition::default(
        )
        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partitions(partitions.to_vec())])
        .encode(&mut buf, 0)
        .expect("assignment encodes");
    buf.freeze()
}

/// Bytes no consumer can decode as an assignment: version 0, then an
/// array claiming two billion topics.
fn undecodable_assignment() -> Bytes {
    Bytes::from_static(&[0x00, 0x00, 0x7f, 0xff, 0xff, 0xff])
}

/// Subscription metadata the Kafka 4.x coordinator itself chokes on:
/// version 0 and a null topic array. While a member with it is registered,
/// the coordinator answers every JoinGroup of the group with
/// UNKNOWN_SERVER_ERROR.
fn poisonous_subscription() -> Bytes {
    Bytes::from_static(&[0x00, 0x00, 0xff, 0xff, 0xff, 0xff])
}

/// A raw member that leads the group: it joins first, heartbeats, and on
/// every rebalance assigns with `assign` (member id -> assignment bytes),
/// until told to leave.
struct RawLeader {
    stop: tokio::sync::watch::Sender<bool>,
    /// Ends with how many rebalances it led.
    task: tokio::task::JoinHandle<u32>,
}

impl RawLeader {
    /// Starts it, and waits until it is a member of `group`: it leads the
    /// group the members started after it join.
    async fn start(
        group: &str,
        topic: &str,
        assign: impl Fn(&str) -> Bytes + Send + 'static,
    ) -> RawLeader {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = raw_leader(
            testcontainers::bootstrap(),
            group.to_string(),
            topic.to_string(),
            assign,
            stop_rx,
        );
        wait_for_group_member(group).await;
        RawLeader { stop, task }
    }

    /// Tells it to leave the group, and waits up to 30 s for it to end:
    /// how many rebalances it led, if it ended in time and did not panic.
    async fn leave(
        self,
    ) -> Result<Result<u32, tokio::task::JoinError>, tokio::time::error::Elapsed> {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task).await
    }
}

/// The task of a [`RawLeader`]: ends, leaving the group, when `stop` turns
/// true, and returns how many rebalances it led.
fn raw_leader(
    bootstrap: String,
    group: String,
    topic: String,
    assign: impl Fn(&str) -> Bytes + Send + 'static,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut raw = RawMember::connect(&bootstrap, &group).await;
        let metadata = subscription(&[&topic]);
        let mut led = 0;
        'rejoin: loop {
            let joined = raw.join("range", metadata.clone()).await;
            assert_eq!(joined.error_code, 0, "raw leader joins");
            assert_eq!(
                joined.leader.as_str(),
                raw.member_id,
                "the raw member leads the group"
            );
            let assignments = joined
                .members
                .iter()
                .filter(|m| m.member_id.as_str() != raw.member_id)
                .map(|m| (m.member_id.to_string(), assign(m.member_id.as_str())))
                .collect();
            led += 1;
            let synced = raw.sync("range", assignments).await;
            if synced.error_code == 27 {
                continue 'rejoin;
            }
            assert_eq!(synced.error_code, 0, "raw leader syncs");
            loop {
                if *stop.borrow() {
                    raw.leave().await;
                    return led;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                match raw.heartbeat().await {
                    0 => {}
                    27 => continue 'rejoin,
                    code => panic!("raw leader heartbeat failed with {code}"),
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------
// Our members.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{
    client, group_member, new_topic, recording, testcontainers, unique_topic, wait_for,
    RunningConsumer,
};
use kastellan::group::{
    ConsumerError, ConsumerErrors, ConsumerRecord, GroupConsumerBuilder, GroupStep, HandlerError,
};
use kastellan::{Client, TopicPartition};

type Seen = Arc<Mutex<BTreeSet<(i32, i64)>>>;

struct Member {
    run: RunningConsumer,
    seen: Seen,
    errors: ConsumerErrors,
    /// Problems read from `errors` so far.
    problems: Vec<ConsumerError>,
}

/// A member with the shared group settings (changed by `configure`) that
/// records every record it handles and keeps its error stream.
fn start(
    client: &Client,
    group: &str,
    topic: &str,
    configure: impl FnOnce(GroupConsumerBuilder) -> GroupConsumerBuilder,
) -> Member {
    let mut consumer = configure(group_member(client, group, topic))
        .build()
        .expect("consumer builds");
    let errors = consumer.errors().expect("error stream");
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let run = RunningConsumer::spawn(
        consumer,
        recording(move |r| {
            sink.lock().unwrap().insert((r.partition, r.offset));
        }),
    );
    Member {
        run,
        seen,
        errors,
        problems: Vec::new(),
    }
}

impl Member {
    fn seen(&self) -> BTreeSet<(i32, i64)> {
        self.seen.lock().unwrap().clone()
    }

    fn owned(&self) -> Vec<i32> {
        self.run
            .assignment()
            .iter()
            .map(TopicPartition::partition)
            .collect()
    }

    /// Every problem reported so far.
    fn problems(&mut self) -> &[ConsumerError] {
        while let Some(p) = self.errors.try_recv() {
            self.problems.push(p);
        }
        &self.problems
    }

    /// Wait until a reported problem matches `what`.
    async fn wait_for_problem(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&ConsumerError) -> bool,
    ) {
        let started = Instant::now();
        while !self.problems().iter().any(&mut matches) {
            assert!(
                started.elapsed() < timeout,
                "timed out waiting for {what}; reported: {:?}",
                self.problems
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.run.stop(Duration::from_secs(5)).await;
    }
}

async fn produce(client: &Client, topic: &str, partitions: &[i32], offsets: std::ops::Range<i64>) {
    let producer = client.producer().build().unwrap();
    for p in partitions {
        for i in offsets.clone() {
            producer
                .to(topic)
                .partition(*p)
                .value(format!("{p}-{i}"))
                .send()
                .await
                .unwrap();
        }
    }
}

fn records(partitions: &[i32], offsets: std::ops::Range<i64>) -> BTreeSet<(i32, i64)> {
    partitions
        .iter()
        .flat_map(|p| offsets.clone().map(move |o| (*p, o)))
        .collect()
}

fn cooperative(b: GroupConsumerBuilder) -> GroupConsumerBuilder {
    b.assignors(vec![Arc::new(
        kastellan::group::assignor::CooperativeStickyAssignor,
    )])
}

/// A client, a fresh topic of two partitions holding offsets 0..5 on
/// each, and a fresh group name: `grp-<name>-…` and `group-<name>-…`.
async fn filled_topic(name: &str) -> (Client, String, String) {
    let client = client().await;
    let topic = new_topic(&client, &format!("grp-{name}"), 2).await;
    let group = unique_topic(&format!("group-{name}"));
    produce(&client, &topic, &[0, 1], 0..5).await;
    (client, topic, group)
}

fn broker_code(problem: &ConsumerError) -> Option<i16> {
    problem.error().and_then(kastellan::Error::broker_code)
}

#[tokio::test]
async fn unknown_server_error_on_join_is_retried_and_the_member_recovers() {
    let (client, topic, group) = filled_topic("use").await;
    let mut member = start(&client, &group, &topic, cooperative);
    wait_for("the first records", Duration::from_secs(60), || {
        member.seen() == records(&[0, 1], 0..5)
    })
    .await;

    // A member with subscription metadata the coordinator cannot parse
    // joins; its JoinGroup stays pending, and every other join of the
    // group fails with UNKNOWN_SERVER_ERROR while it is registered.
    let bootstrap = testcontainers::bootstrap();
    let mut raw = RawMember::connect(&bootstrap, &group).await;
    let first = raw
        .join_once("cooperative-sticky", poisonous_subscription())
        .await;
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED first");
    raw.member_id = first.member_id.to_string();
    let raw_id = raw.member_id.clone();
    let pending = tokio::spawn(async move {
        raw.join_once("cooperative-sticky", poisonous_subscription())
            .await
            .error_code
    });

    // Our member reports the failed joins and retries them; meanwhile it
    // keeps its partitions (cooperative) and keeps consuming.
    member
        .wait_for_problem(
            "UNKNOWN_SERVER_ERROR on JoinGroup",
            Duration::from_secs(60),
            |p| {
                matches!(
                    p,
                    ConsumerError::Group {
                        step: GroupStep::Join,
                        ..
                    }
                ) && broker_code(p) == Some(-1)
            },
        )
        .await;
    let poisoned = Instant::now();
    produce(&client, &topic, &[0, 1], 5..10).await;
    wait_for(
        "records produced meanwhile",
        Duration::from_secs(60),
        || member.seen() == records(&[0, 1], 0..10),
    )
    .await;
    // For longer than the session timeout (10 s): the coordinator does not
    // evict a member whose joins it fails.
    while poisoned.elapsed() < Duration::from_secs(15) {
        assert!(!member.run.task.is_finished(), "the member keeps running");
        assert_eq!(member.owned(), [0, 1], "and keeps its partitions");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !member.problems().iter().any(ConsumerError::is_fatal),
        "nothing fatal: {:?}",
        member.problems
    );

    // The poisonous member leaves (from another connection): the group
    // forms again and our member consumes on.
    let mut other = RawMember::connect(&bootstrap, &group).await;
    other.member_id = raw_id;
    assert_eq!(other.leave().await, 0);
    let _ = tokio::time::timeout(Duration::from_secs(30), pending).await;
    let joins = member.run.status.get().joins;
    wait_for("a new generation", Duration::from_secs(60), || {
        let s = member.run.status.get();
        s.joins > joins && s.state == kastellan::group::GroupState::Stable
    })
    .await;
    produce(&client, &topic, &[0, 1], 10..15).await;
    wait_for("records after recovery", Duration::from_secs(60), || {
        member.seen() == records(&[0, 1], 0..15)
    })
    .await;
    assert_eq!(member.owned(), [0, 1]);
    member.stop().await;
}

#[tokio::test]
async fn undecodable_assignment_from_the_leader_is_a_rejoin_not_the_end() {
    let (client, topic, group) = filled_topic("badasg").await;
    let raw = RawLeader::start(&group, &topic, |_member| undecodable_assignment()).await;
    let mut member = start(&client, &group, &topic, |b| b);
    // The raw leader hands out garbage: our member reports it and rejoins,
    // round after round.
    member
        .wait_for_problem("the undecodable assignment", Duration::from_secs(60), |p| {
            matches!(
                p,
                ConsumerError::Group {
                    step: GroupStep::Sync,
                    error: kastellan::Error::Protocol { .. }
                }
            )
        })
        .await;
    let rounds = |m: &mut Member| {
        m.problems()
            .iter()
            .filter(|p| {
                matches!(
                    p,
                    ConsumerError::Group {
                        step: GroupStep::Sync,
                        ..
                    }
                )
            })
            .count()
    };
    let started = Instant::now();
    while rounds(&mut member) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a second round"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!member.run.task.is_finished(), "the member keeps running");
    assert!(member.owned().is_empty(), "nothing owned from garbage");
    let led = raw
        .leave()
        .await
        .expect("raw leader leaves")
        .expect("raw leader ran");
    assert!(led >= 2, "the raw leader led the rebalances");
    // Once the raw leader is gone our member leads and consumes everything.
    wait_for("all records", Duration::from_secs(60), || {
        member.seen() == records(&[0, 1], 0..5)
    })
    .await;
    assert_eq!(member.owned(), [0, 1]);
    assert!(!member.problems().iter().any(ConsumerError::is_fatal));
    member.stop().await;
}

#[tokio::test]
async fn assigned_partitions_that_do_not_exist_are_ignored() {
    let (client, topic, group) = filled_topic("ghost").await;
    let t = topic.clone();
    let raw = RawLeader::start(&group, &topic, move |_member| {
        assignment(&t, &[0, 1, 999, -1])
    })
    .await;
    let mut member = start(&client, &group, &topic, |b| b);
    wait_for(
        "records of the real partitions",
        Duration::from_secs(60),
        || member.seen() == records(&[0, 1], 0..5),
    )
    .await;
    let status = member.run.status.get();
    assert_eq!(
        member.owned(),
        [0, 1],
        "partitions 999 and -1 are not taken as owned: {status:?}"
    );
    let ghosts = vec![
        TopicPartition::new(topic.as_str(), -1),
        TopicPartition::new(topic.as_str(), 999),
    ];
    assert_eq!(status.ignored_partitions, ghosts);
    member
        .wait_for_problem("the ignored partitions", Duration::from_secs(10), |p| {
            matches!(p, ConsumerError::AssignmentIgnored { partitions, .. } if *partitions == [TopicPartition::new(topic.as_str(), 999), TopicPartition::new(topic.as_str(), -1)])
        })
        .await;
    produce(&client, &topic, &[0, 1], 5..10).await;
    wait_for("more records", Duration::from_secs(60), || {
        member.seen() == records(&[0, 1], 0..10)
    })
    .await;
    let _ = raw.leave().await;
    member.stop().await;
}

/// Waits until the group has a member (the raw leader joined first, so it
/// leads the group our member joins).
async fn wait_for_group_member(group: &str) {
    let started = Instant::now();
    loop {
        let members = testcontainers::describe_members(&testcontainers::bootstrap(), group)
            .expect("kafka-consumer-groups runs");
        if members.contains("raw-member") {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the raw member did not join the group"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_revocation_longer_than_the_session_timeout_keeps_the_membership() {
    let client = client().await;
    let topic = new_topic(&client, "grp-slowrevoke", 2).await;
    let group = unique_topic("group-slowrevoke");
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&slow);
    let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slow_entries = Arc::clone(&entered);
    let consumer = cooperative(client.group_consumer(&group))
        .topic(&topic)
        .start_with_earliest()
        .session_timeout(Duration::from_secs(6))
        .heartbeat_interval(Duration::from_millis(500))
        .revoke_timeout(Duration::from_secs(25))
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let a = RunningConsumer::spawn(consumer, move |_r: ConsumerRecord| {
        let flag = Arc::clone(&flag);
        let slow_entries = Arc::clone(&slow_entries);
        async move {
            if flag.load(std::sync::atomic::Ordering::Acquire) {
                slow_entries.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                // Twice the session timeout.
                tokio::time::sleep(Duration::from_secs(12)).await;
            }
            Ok::<(), HandlerError>(())
        }
    });
    wait_for("a owns both partitions", Duration::from_secs(60), || {
        a.status.get().assignment.len() == 2
    })
    .await;
    let before = a.status.get();
    // Both partitions get a record whose handling outlasts the session.
    slow.store(true, std::sync::atomic::Ordering::Release);
    produce(&client, &topic, &[0, 1], 0..1).await;
    wait_for(
        "both slow records in a handler",
        Duration::from_secs(30),
        || entered.load(std::sync::atomic::Ordering::Acquire) == 2,
    )
    .await;
    let b = start(&client, &group, &topic, cooperative);
    wait_for("1/1 split", Duration::from_secs(90), || {
        a.status.get().assignment.len() == 1 && b.run.status.get().assignment.len() == 1
    })
    .await;
    let after = a.status.get();
    assert_eq!(
        after.member_id, before.member_id,
        "a kept its membership through the slow revocation: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.generation,
        before.generation + 2,
        "{before:?} -> {after:?}"
    );
    slow.store(false, std::sync::atomic::Ordering::Release);
    a.stop(Duration::from_secs(20)).await;
    b.stop().await;
}

#[tokio::test]
async fn build_rejects_a_revoke_timeout_that_cannot_fit_the_rebalance_timeout() {
    let client = client().await;
    let result = client
        .group_consumer("g")
        .topic("t")
        .rebalance_timeout(Duration::from_secs(20))
        .revoke_timeout(Duration::from_secs(30))
        .build();
    match result {
        Err(kastellan::Error::Config(message)) => {
            assert!(message.contains("revoke_timeout"), "{message}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    // Equal is refused too: the commit after the revocation needs time.
    assert!(client
        .group_consumer("g")
        .topic("t")
        .rebalance_timeout(Duration::from_secs(30))
        .revoke_timeout(Duration::from_secs(30))
        .build()
        .is_err());
    assert!(client
        .group_consumer("g")
        .topic("t")
        .rebalance_timeout(Duration::from_secs(31))
        .revoke_timeout(Duration::from_secs(30))
        .build()
        .is_ok());
}
