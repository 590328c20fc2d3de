//! Membership in a classic consumer group: the request/response side of
//! FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetFetch
//! and OffsetCommit, with each documented error mapped to what the member
//! must do next ([`GroupError`]). The consumer's state machine drives it.

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
    MemberAssignment, Subscription, TopicPartition,
};
use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::protocol::connection::BrokerConnection;

// Error codes of the group APIs (Kafka's `Errors.java`).
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const REQUEST_TIMED_OUT: i16 = 7;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const UNSTABLE_OFFSET_COMMIT: i16 = 88;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// The subscription version we send: v3 carries owned partitions,
/// generation and rack (KIP-429, KIP-881).
const SUBSCRIPTION_VERSION: i16 = 3;
/// The assignment version we send.
const ASSIGNMENT_VERSION: i16 = 3;

/// What a group API error asks the member to do.
#[derive(Debug)]
pub(crate) enum GroupError {
    /// Find the coordinator again, then retry.
    Rediscover(Error),
    /// Try the same step again after a backoff.
    Retry(Error),
    /// A rebalance is under way: rejoin, keeping member id and generation.
    Rejoin(Error),
    /// The member id is unknown or the generation stale: forget them, the
    /// partitions are lost (not revoked), rejoin.
    Reset(Error),
    /// Cannot go on (fenced static member, authorization, bad config).
    Fatal(Error),
}

impl GroupError {
    fn from_code(broker: &str, api: &'static str, code: i16, message: Option<String>) -> Self {
        let e: Error = BrokerError::new(broker, api, code, message).into();
        match code {
            NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE | REQUEST_TIMED_OUT => {
                GroupError::Rediscover(e)
            }
            COORDINATOR_LOAD_IN_PROGRESS | UNSTABLE_OFFSET_COMMIT | UNKNOWN_TOPIC_OR_PARTITION => {
                GroupError::Retry(e)
            }
            REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => GroupError::Rejoin(e),
            UNKNOWN_MEMBER_ID => GroupError::Reset(e),
            FENCED_INSTANCE_ID => GroupError::Fatal(e),
            _ if crate::protocol::error_codes::is_retriable(code) => GroupError::Retry(e),
            _ => GroupError::Fatal(e),
        }
    }

    /// Transport failures: the coordinator may have moved or died.
    fn from_transport(e: Error) -> Self {
        if e.is_retriable() {
            GroupError::Rediscover(e)
        } else {
            GroupError::Fatal(e)
        }
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

/// Result of a completed join + sync.
#[derive(Debug)]
pub(crate) struct Joined {
    pub generation: i32,
    pub member_id: String,
    pub protocol: String,
    pub leader: bool,
    pub assignment: MemberAssignment,
}

/// One member's identity and connection to its group coordinator.
pub(crate) struct Membership {
    client: Client,
    settings: MemberSettings,
    coordinator: Option<Arc<BrokerConnection>>,
    /// Empty until the coordinator hands one out.
    pub member_id: String,
    /// -1 outside a generation.
    pub generation: i32,
}

impl Membership {
    pub fn new(client: Client, settings: MemberSettings) -> Self {
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

    /// Forget member id and generation (after UNKNOWN_MEMBER_ID and the like).
    pub fn reset(&mut self) {
        self.member_id.clear();
        self.generation = -1;
    }

    pub fn forget_coordinator(&mut self) {
        self.coordinator = None;
    }

    /// The coordinator connection, found with FindCoordinator if needed.
    pub async fn coordinator(&mut self) -> Result<Arc<BrokerConnection>, GroupError> {
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

    /// JoinGroup then SyncGroup. As leader, runs `assignors[protocol]` over
    /// the members' subscriptions (`partitions` gives partition counts and is
    /// fetched for the union of every member's topics).
    pub async fn join_and_sync(
        &mut self,
        topics: &[String],
        owned: &[TopicPartition],
        assignors: &[Arc<dyn Assignor>],
        reason: &str,
    ) -> Result<Joined, GroupError> {
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
        // The broker answers JoinGroup only once the rebalance completes, which
        // may take the whole rebalance timeout (KAFKA-5570: a shorter client
        // timeout causes re-send storms).
        let timeout = self.settings.rebalance_timeout + Duration::from_secs(5);
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
                // KIP-394: a new dynamic member must rejoin at once with the id it was given.
                MEMBER_ID_REQUIRED => {
                    self.member_id = response.member_id.to_string();
                    continue;
                }
                UNKNOWN_MEMBER_ID => {
                    self.reset();
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
        let assignor = assignors
            .iter()
            .find(|a| a.name() == protocol)
            .cloned()
            .ok_or_else(|| {
                GroupError::Fatal(Error::Protocol {
                    broker: coordinator.addr().to_string(),
                    reason: format!(
                        "coordinator chose protocol `{protocol}` that we did not offer"
                    ),
                })
            })?;

        // A restarted static leader is told to skip assignment (KIP-345,
        // JoinGroup v9): the group keeps its previous assignment.
        let assignments = if leader && !response.skip_assignment {
            let members: Vec<MemberSubscription> = response
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
                .collect();
            let partitions = self.partition_counts(&members).await?;
            let result: GroupAssignment = assignor.assign(&members, &partitions);
            let mut out = Vec::with_capacity(members.len());
            for m in &members {
                let assignment = MemberAssignment {
                    partitions: result.get(&m.member_id).cloned().unwrap_or_default(),
                    user_data: None,
                };
                out.push(
                    SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(m.member_id.clone()))
                        .with_assignment(
                            encode_assignment(&assignment, ASSIGNMENT_VERSION)
                                .map_err(GroupError::Fatal)?,
                        ),
                );
            }
            out
        } else {
            Vec::new()
        };

        let request = SyncGroupRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_group_instance_id(self.instance_id())
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_string(protocol.clone())))
            .with_assignments(assignments);
        let version = coordinator
            .version_for::<SyncGroupRequest>()
            .map_err(GroupError::Fatal)?;
        let response = coordinator
            .request_with_timeout(&request, version, timeout)
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
        let assignment = if response.assignment.is_empty() {
            MemberAssignment::default()
        } else {
            decode_assignment(&response.assignment).map_err(|e| {
                GroupError::Fatal(Error::Protocol {
                    broker: coordinator.addr().to_string(),
                    reason: format!("the group leader sent an assignment we cannot decode: {e}"),
                })
            })?
        };
        Ok(Joined {
            generation: self.generation,
            member_id: self.member_id.clone(),
            protocol,
            leader,
            assignment,
        })
    }

    /// Partition counts for every topic any member subscribed to (the leader
    /// must look beyond its own subscription).
    async fn partition_counts(
        &self,
        members: &[MemberSubscription],
    ) -> Result<BTreeMap<String, i32>, GroupError> {
        let mut topics: Vec<&str> = members
            .iter()
            .flat_map(|m| m.subscription.topics.iter().map(String::as_str))
            .collect();
        topics.sort_unstable();
        topics.dedup();
        if topics.is_empty() {
            return Ok(BTreeMap::new());
        }
        let found = self
            .client
            .cluster()
            .refresh_metadata(&topics)
            .await
            .map_err(GroupError::from_transport)?;
        Ok(found
            .iter()
            .map(|t| (t.name.clone(), t.partitions.len() as i32))
            .collect())
    }

    /// What the heartbeat task needs for the current generation.
    pub async fn heartbeat_sender(&mut self) -> Result<Heartbeater, GroupError> {
        let coordinator = self.coordinator().await?;
        let request = HeartbeatRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_group_instance_id(self.instance_id());
        Ok(Heartbeater {
            coordinator,
            request,
        })
    }

    /// Leave the group (dynamic members only: a static member's partitions
    /// stay with its instance id until the session times out, KIP-345).
    pub async fn leave(&mut self, reason: &str) -> Result<(), GroupError> {
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
    pub async fn fetch_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, GroupError> {
        let coordinator = self.coordinator().await?;
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
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
                    TopicPartition {
                        topic: t.name.0.to_string(),
                        partition: p.partition_index,
                    },
                    (p.committed_offset >= 0).then_some(p.committed_offset),
                );
            }
        }
        Ok(out)
    }

    /// Commit offsets in the current generation. Per-partition errors fail the whole commit.
    pub async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let coordinator = self.coordinator().await?;
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (tp, offset) in offsets {
            by_topic.entry(&tp.topic).or_default().push(
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
        let response = coordinator
            .request(&request)
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

/// Sends heartbeats for one generation; owned by the heartbeat task.
pub(crate) struct Heartbeater {
    coordinator: Arc<BrokerConnection>,
    request: HeartbeatRequest,
}

impl Heartbeater {
    pub async fn beat(&self) -> Result<(), GroupError> {
        let response = self
            .coordinator
            .request(&self.request)
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

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("group", &self.settings.group_id)
            .field("member_id", &self.member_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}
