//! Talking to the group coordinator: one function per API of the classic
//! group protocol (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetFetch, OffsetCommit), with each documented error mapped
//! to what the member must do next ([`GroupError`]). It holds the member's
//! identity (member id, generation) and its coordinator connection; the
//! state machine in `session.rs` decides when each request is sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::assignor::{Assignor, GroupAssignment, MemberSubscription};
use super::subscription::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription,
    MemberAssignment, Subscription, ASSIGNMENT_VERSION, SUBSCRIPTION_VERSION,
};
use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::protocol::connection::BrokerConnection;
use crate::TopicPartition;

// Error codes of the group APIs (Kafka's `Errors.java`).
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const REQUEST_TIMED_OUT: i16 = 7;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;

/// Error codes that no retry can fix and that need the user's action: the
/// only broker answers that end `run()`. Every other code is retried with
/// backoff (see the `group` module docs, "When `run()` ends").
const FATAL_CODES: [i16; 10] = [
    23, // INCONSISTENT_GROUP_PROTOCOL: no assignor in common with the group
    24, // INVALID_GROUP_ID
    26, // INVALID_SESSION_TIMEOUT: outside the broker's allowed range
    29, // TOPIC_AUTHORIZATION_FAILED
    30, // GROUP_AUTHORIZATION_FAILED
    31, // CLUSTER_AUTHORIZATION_FAILED
    35, // UNSUPPORTED_VERSION
    58, // SASL_AUTHENTICATION_FAILED
    81, // GROUP_MAX_SIZE_REACHED: the group is full (group.max.size)
    FENCED_INSTANCE_ID,
];

/// Whether an error ends the consumer: bad configuration, authentication or
/// authorization, a fenced static member, an unsupported broker.
pub(crate) fn is_fatal(e: &Error) -> bool {
    match e {
        Error::Config(_)
        | Error::Tls { .. }
        | Error::Authentication { .. }
        | Error::UnsupportedVersion { .. }
        | Error::Closed(_) => true,
        Error::Broker(b) => FATAL_CODES.contains(&b.code()),
        _ => false,
    }
}

/// Whether the coordinator answered that it is still loading the group's
/// state (COORDINATOR_LOAD_IN_PROGRESS): routine for a while after a broker
/// starts or takes over the group, and retried like any other answer.
pub(crate) fn is_coordinator_loading(e: &Error) -> bool {
    matches!(e, Error::Broker(b) if b.code() == COORDINATOR_LOAD_IN_PROGRESS)
}

/// What a group API error asks the member to do.
#[derive(Debug)]
pub(crate) enum GroupError {
    /// Find the coordinator again, then retry.
    Rediscover(Error),
    /// Try the same step again after a backoff.
    Retry(Error),
    /// A rebalance is under way: rejoin, keeping member id, generation and
    /// (cooperative) partitions.
    Rejoin(Error),
    /// The generation moved on without this member (ILLEGAL_GENERATION):
    /// its partitions are lost (not revoked: another member may own them),
    /// the member id stays; rejoin.
    Lost(Error),
    /// The member id is unknown (UNKNOWN_MEMBER_ID: evicted, or the group
    /// was emptied): partitions lost, forget the member id, rejoin.
    Reset(Error),
    /// Cannot go on: see [`is_fatal`].
    Fatal(Error),
}

impl GroupError {
    fn from_code(broker: &str, api: &'static str, code: i16, message: Option<String>) -> Self {
        let e: Error = BrokerError::new(broker, api, code, message).into();
        match code {
            NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE | REQUEST_TIMED_OUT => {
                GroupError::Rediscover(e)
            }
            REBALANCE_IN_PROGRESS => GroupError::Rejoin(e),
            ILLEGAL_GENERATION => GroupError::Lost(e),
            UNKNOWN_MEMBER_ID => GroupError::Reset(e),
            _ if is_fatal(&e) => GroupError::Fatal(e),
            // COORDINATOR_LOAD_IN_PROGRESS, UNSTABLE_OFFSET_COMMIT,
            // UNKNOWN_TOPIC_OR_PARTITION, UNKNOWN_SERVER_ERROR (a 4.x
            // coordinator's answer to every join while a member with
            // malformed metadata is in the group) and anything unexpected.
            _ => GroupError::Retry(e),
        }
    }

    /// Transport failures: the coordinator may have moved or died.
    fn from_transport(e: Error) -> Self {
        if is_fatal(&e) {
            GroupError::Fatal(e)
        } else {
            GroupError::Rediscover(e)
        }
    }

    /// The error inside.
    pub(super) fn error(&self) -> &Error {
        match self {
            GroupError::Rediscover(e)
            | GroupError::Retry(e)
            | GroupError::Rejoin(e)
            | GroupError::Lost(e)
            | GroupError::Reset(e)
            | GroupError::Fatal(e) => e,
        }
    }

    /// Take the error out.
    pub(super) fn into_error(self) -> Error {
        match self {
            GroupError::Rediscover(e)
            | GroupError::Retry(e)
            | GroupError::Rejoin(e)
            | GroupError::Lost(e)
            | GroupError::Reset(e)
            | GroupError::Fatal(e) => e,
        }
    }
}

impl std::fmt::Display for GroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error().fmt(f)
    }
}

/// Group settings that go on the wire.
#[derive(Debug, Clone)]
pub(crate) struct MemberSettings {
    pub group_id: String,
    pub instance_id: Option<String>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub rack: Option<String>,
}

/// A JoinGroup answer.
#[derive(Debug)]
pub(crate) struct JoinResponse {
    pub protocol: String,
    pub leader: bool,
    /// Every member's subscription, in the coordinator's order, when this
    /// member leads and must assign (empty for followers, and for a
    /// restarted static leader told to skip assignment, KIP-345).
    pub members: Vec<MemberSubscription>,
}

/// A SyncGroup answer: this member's assignment, or why the bytes the
/// leader sent for it could not be decoded.
pub(crate) type SyncResponse = std::result::Result<MemberAssignment, Error>;

/// One member's identity and connection to its group coordinator. Owned
/// by the session task alone; nothing here is shared.
pub(crate) struct Coordinator {
    client: Client,
    settings: MemberSettings,
    /// The coordinator connection, found with FindCoordinator; dedicated to
    /// this member (JoinGroup blocks its connection on the broker).
    coordinator: Option<Arc<BrokerConnection>>,
    /// Empty until the coordinator hands one out.
    pub member_id: String,
    /// -1 outside a generation.
    pub generation: i32,
}

impl Coordinator {
    pub(super) fn new(client: Client, settings: MemberSettings) -> Self {
        Self {
            client,
            settings,
            coordinator: None,
            member_id: String::new(),
            generation: -1,
        }
    }

    fn group_id(&self) -> GroupId {
        GroupId(StrBytes::from_string(self.settings.group_id.clone()))
    }

    fn instance_id(&self) -> Option<StrBytes> {
        self.settings
            .instance_id
            .as_ref()
            .map(|i| StrBytes::from_string(i.clone()))
    }

    /// Forget member id and generation (after UNKNOWN_MEMBER_ID).
    pub(super) fn reset(&mut self) {
        self.member_id.clear();
        self.generation = -1;
    }

    /// Leave the generation but keep the member id (after
    /// ILLEGAL_GENERATION).
    pub(super) fn forget_generation(&mut self) {
        self.generation = -1;
    }

    pub(super) fn forget_coordinator(&mut self) {
        self.coordinator = None;
    }

    /// The coordinator connection, found with FindCoordinator if needed.
    pub(super) async fn coordinator(&mut self) -> Result<Arc<BrokerConnection>, GroupError> {
        if let Some(c) = &self.coordinator {
            if !c.is_closed() {
                return Ok(Arc::clone(c));
            }
        }
        let conn = self
            .client
            .cluster()
            .any_broker()
            .await
            .map_err(GroupError::from_transport)?;
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(self.settings.group_id.clone()))
            .with_key_type(0);
        let response = conn
            .request(&request)
            .await
            .map_err(GroupError::from_transport)?;
        if response.error_code != 0 {
            return Err(GroupError::from_code(
                conn.addr(),
                "FindCoordinator",
                response.error_code,
                response.error_message.map(|m| m.to_string()),
            ));
        }
        let addr = format!("{}:{}", response.host.as_str(), response.port);
        let coordinator = self
            .client
            .cluster()
            .dedicated_connection(&addr)
            .await
            .map_err(GroupError::from_transport)?;
        tracing::debug!(group = %self.settings.group_id, coordinator = %addr, "found group coordinator");
        self.coordinator = Some(Arc::clone(&coordinator));
        Ok(coordinator)
    }

    /// How long JoinGroup and SyncGroup may take: the broker answers only
    /// once the rebalance completes, which may take the whole rebalance
    /// timeout (KAFKA-5570: a shorter client timeout causes re-send storms).
    fn rebalance_request_timeout(&self) -> Duration {
        self.settings.rebalance_timeout + Duration::from_secs(5)
    }

    /// JoinGroup, offering every assignor with this member's subscription.
    /// A new dynamic member is asked for a member id first (KIP-394) and
    /// rejoins at once with it; every other error goes back to the session.
    pub(super) async fn join_group(
        &mut self,
        topics: &[String],
        owned: &[TopicPartition],
        assignors: &[Arc<dyn Assignor>],
        reason: &str,
    ) -> Result<JoinResponse, GroupError> {
        let coordinator = self.coordinator().await?;
        let mut protocols = Vec::with_capacity(assignors.len());
        for a in assignors {
            let subscription = Subscription {
                topics: topics.to_vec(),
                user_data: a.subscription_user_data(self.generation),
                owned_partitions: owned.to_vec(),
                generation_id: self.generation,
                rack_id: self.settings.rack.clone(),
            };
            let metadata = encode_subscription(&subscription, SUBSCRIPTION_VERSION)
                .map_err(GroupError::Fatal)?;
            protocols.push(
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(a.name()))
                    .with_metadata(metadata),
            );
        }
        let version = coordinator
            .version_for::<JoinGroupRequest>()
            .map_err(GroupError::Fatal)?;
        let timeout = self.rebalance_request_timeout();
        let mut asked_for_id = false;
        let response = loop {
            let request = JoinGroupRequest::default()
                .with_group_id(self.group_id())
                .with_session_timeout_ms(millis(self.settings.session_timeout))
                .with_rebalance_timeout_ms(millis(self.settings.rebalance_timeout))
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_group_instance_id(self.instance_id())
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(protocols.clone())
                .with_reason(Some(StrBytes::from_string(reason.to_string())));
            let response = coordinator
                .request_with_timeout(&request, version, timeout)
                .await
                .map_err(GroupError::from_transport)?;
            match response.error_code {
                0 => break response,
                // KIP-394: a new dynamic member must rejoin at once with the
                // id it was given (once; a second demand is an error).
                MEMBER_ID_REQUIRED if !asked_for_id => {
                    asked_for_id = true;
                    self.member_id = response.member_id.to_string();
                    continue;
                }
                code => {
                    return Err(GroupError::from_code(
                        coordinator.addr(),
                        "JoinGroup",
                        code,
                        None,
                    ))
                }
            }
        };
        self.member_id = response.member_id.to_string();
        self.generation = response.generation_id;
        let protocol = response
            .protocol_name
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let leader = response.leader.as_str() == self.member_id;
        let members = if leader && !response.skip_assignment {
            response
                .members
                .iter()
                .map(|m| MemberSubscription {
                    member_id: m.member_id.to_string(),
                    group_instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
                    subscription: match decode_subscription(&m.metadata) {
                        Ok(s) => s,
                        Err(e) => {
                            // A member's bad metadata must not stop the group:
                            // it gets nothing and everyone else goes on.
                            tracing::warn!(
                                member = %m.member_id.as_str(),
                                error = %e,
                                "cannot decode a member's subscription; assigning it nothing"
                            );
                            Subscription::default()
                        }
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(JoinResponse {
            protocol,
            leader,
            members,
        })
    }

    /// SyncGroup: the leader sends every member's assignment, followers
    /// send none; everyone gets their own.
    pub(super) async fn sync_group(
        &mut self,
        protocol: &str,
        assignments: &GroupAssignment,
    ) -> Result<SyncResponse, GroupError> {
        let coordinator = self.coordinator().await?;
        let mut encoded = Vec::with_capacity(assignments.len());
        for (member, partitions) in assignments {
            let assignment = MemberAssignment {
                partitions: partitions.clone(),
                user_data: None,
            };
            encoded.push(
                SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member.clone()))
                    .with_assignment(
                        encode_assignment(&assignment, ASSIGNMENT_VERSION)
                            .map_err(GroupError::Fatal)?,
                    ),
            );
        }
        let request = SyncGroupRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_group_instance_id(self.instance_id())
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_string(protocol.to_string())))
            .with_assignments(encoded);
        let version = coordinator
            .version_for::<SyncGroupRequest>()
            .map_err(GroupError::Fatal)?;
        let response = coordinator
            .request_with_timeout(&request, version, self.rebalance_request_timeout())
            .await
            .map_err(GroupError::from_transport)?;
        if response.error_code != 0 {
            return Err(GroupError::from_code(
                coordinator.addr(),
                "SyncGroup",
                response.error_code,
                None,
            ));
        }
        if response.assignment.is_empty() {
            return Ok(Ok(MemberAssignment::default()));
        }
        Ok(
            decode_assignment(&response.assignment).map_err(|e| Error::Protocol {
                broker: coordinator.addr().to_string(),
                reason: format!("the group leader sent an assignment we cannot decode: {e}"),
            }),
        )
    }

    /// What the heartbeat task needs for the current generation.
    pub(super) async fn heartbeat_sender(&mut self) -> Result<Heartbeater, GroupError> {
        let coordinator = self.coordinator().await?;
        let request = HeartbeatRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_group_instance_id(self.instance_id());
        let version = coordinator
            .version_for::<HeartbeatRequest>()
            .map_err(GroupError::Fatal)?;
        // An answer later than the session timeout is worthless: by then
        // the coordinator has evicted the member.
        let timeout = self
            .client
            .config()
            .request_timeout
            .min(self.settings.session_timeout);
        Ok(Heartbeater {
            coordinator,
            request,
            version,
            timeout,
        })
    }

    /// Leave the group (dynamic members only: a static member's partitions
    /// stay with its instance id until the session times out, KIP-345).
    pub(super) async fn leave(&mut self, reason: &str) -> Result<(), GroupError> {
        if self.settings.instance_id.is_some() || self.member_id.is_empty() {
            return Ok(());
        }
        let coordinator = self.coordinator().await?;
        let version = coordinator
            .version_for::<LeaveGroupRequest>()
            .map_err(GroupError::Fatal)?;
        // v3 (KIP-345) moved the member id into a list of members.
        let request = if version >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(self.group_id())
                .with_members(vec![MemberIdentity::default()
                    .with_member_id(StrBytes::from_string(self.member_id.clone()))
                    .with_reason(Some(StrBytes::from_string(reason.to_string())))])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(self.group_id())
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
        };
        let response = coordinator
            .request_at(&request, version)
            .await
            .map_err(GroupError::from_transport)?;
        let code = if response.error_code != 0 {
            response.error_code
        } else {
            response
                .members
                .iter()
                .map(|m| m.error_code)
                .find(|c| *c != 0)
                .unwrap_or(0)
        };
        self.reset();
        match code {
            0 | UNKNOWN_MEMBER_ID => Ok(()),
            code => Err(GroupError::from_code(
                coordinator.addr(),
                "LeaveGroup",
                code,
                None,
            )),
        }
    }

    /// Committed offsets for `partitions`; `None` where nothing is committed.
    pub(super) async fn fetch_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, GroupError> {
        let coordinator = self.coordinator().await?;
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            by_topic.entry(tp.topic()).or_default().push(tp.partition);
        }
        let request = OffsetFetchRequest::default()
            .with_group_id(self.group_id())
            .with_require_stable(true)
            .with_topics(Some(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t.to_string())))
                            .with_partition_indexes(ps)
                    })
                    .collect(),
            ));
        let response = coordinator
            .request(&request)
            .await
            .map_err(GroupError::from_transport)?;
        if response.error_code != 0 {
            return Err(GroupError::from_code(
                coordinator.addr(),
                "OffsetFetch",
                response.error_code,
                None,
            ));
        }
        let mut out = BTreeMap::new();
        for t in response.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(GroupError::from_code(
                        coordinator.addr(),
                        "OffsetFetch",
                        p.error_code,
                        Some(format!("{}/{}", t.name.0.as_str(), p.partition_index)),
                    ));
                }
                out.insert(
                    TopicPartition::new(t.name.0.as_str(), p.partition_index),
                    (p.committed_offset >= 0).then_some(p.committed_offset),
                );
            }
        }
        Ok(out)
    }

    /// Commit offsets in the current generation, waiting at most
    /// `timeout` for the answer. Per-partition errors fail the whole commit.
    /// Called only by the committer (`commit.rs`).
    pub(super) async fn commit(
        &mut self,
        offsets: &[(TopicPartition, i64)],
        timeout: Duration,
    ) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let coordinator = self.coordinator().await?;
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (tp, offset) in offsets {
            by_topic.entry(tp.topic()).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(tp.partition)
                    .with_committed_offset(*offset)
                    .with_committed_leader_epoch(-1),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_group_instance_id(self.instance_id())
            .with_retention_time_ms(-1)
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t.to_string())))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let version = coordinator
            .version_for::<OffsetCommitRequest>()
            .map_err(GroupError::Fatal)?;
        let response = coordinator
            .request_with_timeout(&request, version, timeout)
            .await
            .map_err(GroupError::from_transport)?;
        for t in response.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(GroupError::from_code(
                        coordinator.addr(),
                        "OffsetCommit",
                        p.error_code,
                        Some(format!("{}/{}", t.name.0.as_str(), p.partition_index)),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Sends heartbeats for one generation; owned by the heartbeat task
/// (`heartbeat.rs`).
pub(crate) struct Heartbeater {
    coordinator: Arc<BrokerConnection>,
    request: HeartbeatRequest,
    version: i16,
    timeout: Duration,
}

impl Heartbeater {
    pub(super) async fn beat(&self) -> Result<(), GroupError> {
        let response = self
            .coordinator
            .request_with_timeout(&self.request, self.version, self.timeout)
            .await
            .map_err(GroupError::from_transport)?;
        match response.error_code {
            0 => Ok(()),
            code => Err(GroupError::from_code(
                self.coordinator.addr(),
                "Heartbeat",
                code,
                None,
            )),
        }
    }
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("group", &self.settings.group_id)
            .field("member_id", &self.member_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}
