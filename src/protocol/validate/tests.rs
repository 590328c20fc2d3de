//! The schemas against `kafka-protocol`, in both directions:
//!
//! - what its encoder writes (each response's `Default` and a populated
//!   value with one to three elements per array, non-empty strings and
//!   unknown tagged fields) passes the check and is consumed to the last
//!   byte;
//! - bytes generated at random from our schema (small counts, random
//!   strings, random known and unknown tagged fields) decode with
//!   `kafka-protocol` without error and to the last byte, so the schema and
//!   the real decoder agree on every field;
//! - mutations of those bytes that the decoder still accepts pass the check
//!   (the check is never stricter than the decoder).
//!
//! Every API in `api.rs`, every version from the lowest `kafka-protocol`
//! decodes to our `MAX_VERSION`.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
    SnapshotId,
};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Message, Request, StrBytes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::protocol::api::{for_each_api, ApiVisitor, KafkaApi};
use crate::protocol::connection::decode_frame;

/// Versions a connection may decode `R`'s response at.
fn versions<R: Request + KafkaApi>() -> RangeInclusive<i16> {
    let min = R::VERSIONS.min.max(<R::Response as Message>::VERSIONS.min);
    min..=R::MAX_VERSION
}

/// Runs `$check::<Request>()` for every API and sums what they return.
macro_rules! each_api {
    ($check:ident) => {
        $check::<ProduceRequest>()
            + $check::<FetchRequest>()
            + $check::<ListOffsetsRequest>()
            + $check::<MetadataRequest>()
            + $check::<OffsetCommitRequest>()
            + $check::<OffsetFetchRequest>()
            + $check::<FindCoordinatorRequest>()
            + $check::<JoinGroupRequest>()
            + $check::<HeartbeatRequest>()
            + $check::<LeaveGroupRequest>()
            + $check::<SyncGroupRequest>()
            + $check::<SaslHandshakeRequest>()
            + $check::<ApiVersionsRequest>()
            + $check::<CreateTopicsRequest>()
            + $check::<DeleteTopicsRequest>()
            + $check::<InitProducerIdRequest>()
            + $check::<DescribeConfigsRequest>()
            + $check::<SaslAuthenticateRequest>()
    };
}

#[test]
fn every_api_has_a_schema_for_exactly_its_versions() {
    struct Coverage(Vec<i16>);
    impl ApiVisitor for Coverage {
        fn visit<R: Request + KafkaApi>(&mut self) {
            let schema = schema_for(R::KEY).unwrap_or_else(|| panic!("no schema for {}", R::NAME));
            assert_eq!(schema.name, R::NAME);
            assert_eq!(
                schema.min_version..=schema.max_version,
                versions::<R>(),
                "{}",
                R::NAME
            );
            self.0.push(R::KEY);
        }
    }
    let mut coverage = Coverage(Vec::new());
    for_each_api(&mut coverage);
    let mut keys: Vec<i16> = SCHEMAS.iter().map(|s| s.api_key).collect();
    keys.sort();
    coverage.0.sort();
    assert_eq!(keys, coverage.0, "one schema per API, no more");
    fn count<R: Request + KafkaApi>() -> usize {
        1
    }
    assert_eq!(each_api!(count), SCHEMAS.len(), "the tests cover every API");
}

#[test]
fn every_array_element_takes_at_least_one_byte() {
    fn walk(name: &str, fields: &[Field], version: i16, flexible: bool) {
        for f in fields.iter().filter(|f| f.in_version(version)) {
            let mut ty = &f.ty;
            while let Ty::Array(e) | Ty::NullableArray(e) = ty {
                assert!(
                    min_size(e, version, flexible) >= 1,
                    "{name}.{} v{version}",
                    f.name
                );
                ty = e;
            }
            if let Ty::Struct(inner) = ty {
                walk(&format!("{name}.{}", f.name), inner, version, flexible);
            }
        }
    }
    for s in SCHEMAS {
        for v in s.min_version..=s.max_version {
            walk(s.name, s.fields, v, v >= s.flexible_since);
        }
    }
}

// --- kafka-protocol's encoder -> our check ----------------------------------

fn s(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

fn topic(text: &'static str) -> TopicName {
    TopicName(s(text))
}

/// Unknown tagged fields (tags no response here defines).
fn unknown() -> BTreeMap<i32, Bytes> {
    BTreeMap::from([
        (21, Bytes::from_static(b"\x01\x02\x03")),
        (300, Bytes::new()),
    ])
}

/// A value with every field of `version` set, arrays of one to three
/// elements, non-empty strings and unknown tagged fields.
trait Populated: Sized {
    fn populated(version: i16) -> Self;
}

impl Populated for MetadataResponse {
    fn populated(v: i16) -> Self {
        let partition = |i: i32| {
            MetadataResponsePartition::default()
                .with_error_code(9)
                .with_partition_index(i)
                .with_leader_id(BrokerId(1))
                .with_leader_epoch(4)
                .with_replica_nodes(vec![BrokerId(1), BrokerId(2), BrokerId(3)])
                .with_isr_nodes(vec![BrokerId(1)])
                .with_offline_replicas(vec![BrokerId(3)])
                .with_unknown_tagged_fields(unknown())
        };
        let mut topic_a = MetadataResponseTopic::default()
            .with_name(Some(topic("orders")))
            .with_is_internal(true)
            .with_partitions(vec![partition(0), partition(1), partition(2)])
            .with_unknown_tagged_fields(unknown());
        if v >= 8 {
            topic_a = topic_a.with_topic_authorized_operations(0x0ff8);
        }
        let topic_b = MetadataResponseTopic::default()
            .with_error_code(3)
            .with_name(Some(topic("ärger")))
            .with_partitions(vec![partition(7)]);
        let broker = |id: i32, rack: Option<&'static str>| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(s("broker.example"))
                .with_port(9092)
                .with_rack(rack.map(s))
                .with_unknown_tagged_fields(unknown())
        };
        let mut r = MetadataResponse::default()
            .with_throttle_time_ms(12)
            .with_brokers(vec![broker(1, Some("rack-a")), broker(2, None)])
            .with_cluster_id(Some(s("cluster-7")))
            .with_controller_id(BrokerId(2))
            .with_topics(vec![topic_a, topic_b])
            .with_unknown_tagged_fields(unknown());
        if (8..=10).contains(&v) {
            r = r.with_cluster_authorized_operations(0x0f);
        }
        r
    }
}

impl Populated for FetchResponse {
    fn populated(v: i16) -> Self {
        let partition = |i: i32| {
            let mut p = PartitionData::default()
                .with_partition_index(i)
                .with_error_code(0)
                .with_high_watermark(100)
                .with_last_stable_offset(90)
                .with_log_start_offset(3)
                .with_aborted_transactions(Some(vec![
                    AbortedTransaction::default()
                        .with_producer_id(ProducerId(7))
                        .with_first_offset(12)
                        .with_unknown_tagged_fields(unknown()),
                    AbortedTransaction::default()
                        .with_producer_id(ProducerId(8))
                        .with_first_offset(13),
                ]))
                .with_records(Some(Bytes::from_static(b"not really records")))
                .with_unknown_tagged_fields(unknown());
            if v >= 11 {
                p = p.with_preferred_read_replica(BrokerId(2));
            }
            if v >= 12 {
                p = p
                    .with_diverging_epoch(
                        EpochEndOffset::default()
                            .with_epoch(3)
                            .with_end_offset(77)
                            .with_unknown_tagged_fields(unknown()),
                    )
                    .with_current_leader(
                        LeaderIdAndEpoch::default()
                            .with_leader_id(BrokerId(1))
                            .with_leader_epoch(5),
                    )
                    .with_snapshot_id(SnapshotId::default().with_end_offset(50).with_epoch(2));
            }
            p
        };
        let mut r = FetchResponse::default()
            .with_throttle_time_ms(1)
            .with_error_code(0)
            .with_responses(vec![
                FetchableTopicResponse::default()
                    .with_topic(topic("orders"))
                    .with_partitions(vec![partition(0), partition(1), partition(2)])
                    .with_unknown_tagged_fields(unknown()),
                FetchableTopicResponse::default()
                    .with_topic(topic("payments"))
                    .with_partitions(vec![partition(4)
                        .with_aborted_transactions(None)
                        .with_records(None)]),
            ])
            .with_unknown_tagged_fields(unknown());
        if v >= 7 {
            r = r.with_session_id(99);
        }
        r
    }
}

impl Populated for ProduceResponse {
    fn populated(v: i16) -> Self {
        let partition = |i: i32| {
            let mut p = PartitionProduceResponse::default()
                .with_index(i)
                .with_error_code(0)
                .with_base_offset(1000)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(0)
                .with_error_message(Some(s("all good")))
                .with_unknown_tagged_fields(unknown());
            if v >= 8 {
                p = p.with_record_errors(vec![
                    BatchIndexAndErrorMessage::default()
                        .with_batch_index(2)
                        .with_batch_index_error_message(Some(s("bad record")))
                        .with_unknown_tagged_fields(unknown()),
                    BatchIndexAndErrorMessage::default().with_batch_index(3),
                ]);
            }
            if v >= 10 {
                p = p.with_current_leader(
                    kafka_protocol::messages::produce_response::LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(3))
                        .with_leader_epoch(9),
                );
            }
            p
        };
        let mut r = ProduceResponse::default()
            .with_responses(vec![
                TopicProduceResponse::default()
                    .with_name(topic("orders"))
                    .with_partition_responses(vec![partition(0), partition(1)])
                    .with_unknown_tagged_fields(unknown()),
                TopicProduceResponse::default()
                    .with_name(topic("audit"))
                    .with_partition_responses(vec![partition(5)]),
            ])
            .with_throttle_time_ms(4)
            .with_unknown_tagged_fields(unknown());
        if v >= 10 {
            r = r.with_node_endpoints(vec![
                NodeEndpoint::default()
                    .with_node_id(BrokerId(3))
                    .with_host(s("b3.example"))
                    .with_port(9093)
                    .with_rack(Some(s("r1"))),
                NodeEndpoint::default()
                    .with_node_id(BrokerId(4))
                    .with_host(s("b4.example"))
                    .with_port(9094),
            ]);
        }
        r
    }
}

impl Populated for CreateTopicsResponse {
    fn populated(v: i16) -> Self {
        let mut result = CreatableTopicResult::default()
            .with_name(topic("orders"))
            .with_error_code(36)
            .with_error_message(Some(s("exists")))
            .with_topic_config_error_code(5)
            .with_num_partitions(3)
            .with_replication_factor(1)
            .with_unknown_tagged_fields(unknown());
        if v >= 5 {
            result = result.with_configs(Some(vec![
                CreatableTopicConfigs::default()
                    .with_name(s("cleanup.policy"))
                    .with_value(Some(s("compact")))
                    .with_read_only(true)
                    .with_config_source(5)
                    .with_is_sensitive(false)
                    .with_unknown_tagged_fields(unknown()),
                CreatableTopicConfigs::default()
                    .with_name(s("secret"))
                    .with_value(None)
                    .with_is_sensitive(true),
            ]));
        }
        CreateTopicsResponse::default()
            .with_throttle_time_ms(3)
            .with_topics(vec![
                result,
                CreatableTopicResult::default().with_name(topic("b")),
            ])
            .with_unknown_tagged_fields(unknown())
    }
}

impl Populated for DeleteTopicsResponse {
    fn populated(_: i16) -> Self {
        DeleteTopicsResponse::default()
            .with_throttle_time_ms(3)
            .with_responses(vec![
                DeletableTopicResult::default()
                    .with_name(Some(topic("orders")))
                    .with_error_code(3)
                    .with_error_message(Some(s("unknown topic")))
                    .with_unknown_tagged_fields(unknown()),
                DeletableTopicResult::default().with_name(Some(topic("b"))),
            ])
            .with_unknown_tagged_fields(unknown())
    }
}

impl Populated for ListOffsetsResponse {
    fn populated(v: i16) -> Self {
        let partition = |i: i32| {
            let p = ListOffsetsPartitionResponse::default()
                .with_partition_index(i)
                .with_error_code(0)
                .with_timestamp(1_700_000_000_000)
                .with_offset(42)
                .with_unknown_tagged_fields(unknown());
            if v >= 4 {
                p.with_leader_epoch(6)
            } else {
                p
            }
        };
        ListOffsetsResponse::default()
            .with_throttle_time_ms(2)
            .with_topics(vec![ListOffsetsTopicResponse::default()
                .with_name(topic("orders"))
                .with_partitions(vec![partition(0), partition(1), partition(2)])
                .with_unknown_tagged_fields(unknown())])
            .with_unknown_tagged_fields(unknown())
    }
}

impl Populated for FindCoordinatorResponse {
    fn populated(_: i16) -> Self {
        FindCoordinatorResponse::default()
            .with_throttle_time_ms(1)
            .with_error_code(15)
            .with_error_message(Some(s("not available")))
            .with_node_id(BrokerId(2))
            .with_host(s("coordinator.example"))
            .with_port(9092)
            .with_unknown_tagged_fields(unknown())
    }
}

impl Populated for JoinGroupResponse {
    fn populated(v: i16) -> Self {
        let member = |id: &'static str, instance: Option<&'static str>| {
            JoinGroupResponseMember::default()
                .with_member_id(s(id))
                .with_group_instance_id(instance.map(s))
                .with_metadata(Bytes::from_static(b"\x00\x03subscription"))
                .with_unknown_tagged_fields(unknown())
        };
        let r = JoinGroupResponse::default()
            .with_throttle_time_ms(1)
            .with_error_code(0)
            .with_generation_id(5)
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range")))
            .with_leader(s("member-1"))
            .with_member_id(s("member-2"))
            .with_members(vec![
                member("member-1", Some("static-1")),
                member("member-2", None),
            ])
            .with_unknown_tagged_fields(unknown());
        if v >= 9 {
            r.with_skip_assignment(true)
        } else {
            r
        }
    }
}

impl Populated for SyncGroupResponse {
    fn populated(_: i16) -> Self {
        SyncGroupResponse::default()
            .with_throttle_time_ms(1)
            .with_error_code(0)
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range")))
            .with_assignment(Bytes::from_static(b"\x00\x00assignment"))
            .with_unknown_tagged_fields(unknown())
    }
}

impl Populated for HeartbeatResponse {
    fn populated(_: i16) -> Self {
        HeartbeatResponse::default()
            .with_throttle_time_ms(1)
            .with_error_code(27)
            .with_unknown_tagged_fields(unknown())
    }
}

impl Populated for LeaveGroupResponse {
    fn populated(v: i16) -> Self {
        let r = LeaveGroupResponse::default()
            .with_throttle_time_ms(1)
            .with_error_code(0)
            .with_unknown_tagged_fields(unknown());
        if v < 3 {
            return r;
        }
        r.with_members(vec![
            MemberResponse::default()
                .with_member_id(s("member-1"))
                .with_group_instance_id(Some(s("static-1")))
                .with_error_code(0)
                .with_unknown_tagged_fields(unknown()),
            MemberResponse::default()
                .with_member_id(s("member-2"))
                .with_error_code(25),
        ])
    }
}

impl Populated for OffsetFetchResponse {
    fn populated(_: i16) -> Self {
        let partition = |i: i32, metadata: Option<&'static str>| {
            OffsetFetchResponsePartition::default()
                .with_partition_index(i)
                .with_committed_offset(77)
                .with_committed_leader_epoch(2)
                .with_metadata(metadata.map(s))
                .with_error_code(0)
                .with_unknown_tagged_fields(unknown())
        };
        OffsetFetchResponse::default()
            .with_throttle_time_ms(1)
            .with_topics(vec![
                OffsetFetchResponseTopic::default()
                    .with_name(topic("orders"))
                    .with_partitions(vec![partition(0, Some("m")), partition(1, None)])
                    .with_unknown_tagged_fields(unknown()),
                OffsetFetchResponseTopic::default()
                    .with_name(topic("b"))
                    .with_partitions(vec![partition(0, Some(""))]),
            ])
            .with_error_code(0)
            .with_unknown_tagged_fields(unknown())
    }
}

impl Populated for OffsetCommitResponse {
    fn populated(_: i16) -> Self {
        let partition = |i: i32| {
            OffsetCommitResponsePartition::default()
                .with_partition_index(i)
                .with_error_code(0)
                .with_unknown_tagged_fields(unknown())
        };
        OffsetCommitResponse::default()
            .with_throttle_time_ms(1)
            .with_topics(vec![
                OffsetCommitResponseTopic::default()
                    .with_name(topic("orders"))
                    .with_partitions(vec![partition(0), partition(1), partition(2)])
                    .with_unknown_tagged_fields(unknown()),
                OffsetCommitResponseTopic::default()
                    .with_name(topic("b"))
                    .with_partitions(vec![partition(3)]),
            ])
            .with_unknown_tagged_fields(unknown())
    }
}

impl Populated for ApiVersionsResponse {
    fn populated(v: i16) -> Self {
        let key = |k: i16, max: i16| {
            ApiVersion::default()
                .with_api_key(k)
                .with_min_version(0)
                .with_max_version(max)
                .with_unknown_tagged_fields(unknown())
        };
        let r = ApiVersionsResponse::default()
            .with_error_code(0)
            .with_api_keys(vec![key(0, 11), key(1, 17), key(3, 12)])
            .with_throttle_time_ms(1)
            .with_unknown_tagged_fields(unknown());
        if v < 3 {
            return r;
        }
        r.with_supported_features(vec![
            SupportedFeatureKey::default()
                .with_name(s("metadata.version"))
                .with_min_version(1)
                .with_max_version(25)
                .with_unknown_tagged_fields(unknown()),
            SupportedFeatureKey::default()
                .with_name(s("kraft.version"))
                .with_max_version(1),
        ])
        .with_finalized_features_epoch(12)
        .with_finalized_features(vec![FinalizedFeatureKey::default()
            .with_name(s("metadata.version"))
            .with_max_version_level(25)
            .with_min_version_level(25)])
        .with_zk_migration_ready(true)
    }
}

impl Populated for InitProducerIdResponse {
    fn populated(_: i16) -> Self {
        InitProducerIdResponse::default()
            .with_throttle_time_ms(1)
            .with_error_code(0)
            .with_producer_id(ProducerId(4000))
            .with_producer_epoch(3)
            .with_unknown_tagged_fields(unknown())
    }
}

impl Populated for DescribeConfigsResponse {
    fn populated(_: i16) -> Self {
        use kafka_protocol::messages::describe_configs_response::{
            DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
        };
        let entry = |name: &'static str, value: Option<&'static str>| {
            DescribeConfigsResourceResult::default()
                .with_name(s(name))
                .with_value(value.map(s))
                .with_read_only(false)
                .with_config_source(1)
                .with_is_sensitive(false)
                .with_synonyms(vec![DescribeConfigsSynonym::default()
                    .with_name(s(name))
                    .with_value(value.map(s))
                    .with_source(5)
                    .with_unknown_tagged_fields(unknown())])
                .with_config_type(3)
                .with_documentation(Some(s("the largest record batch")))
                .with_unknown_tagged_fields(unknown())
        };
        DescribeConfigsResponse::default()
            .with_throttle_time_ms(1)
            .with_results(vec![
                DescribeConfigsResult::default()
                    .with_error_code(0)
                    .with_error_message(None)
                    .with_resource_type(2)
                    .with_resource_name(s("orders"))
                    .with_configs(vec![
                        entry("max.message.bytes", Some("1048588")),
                        entry("secret", None),
                    ])
                    .with_unknown_tagged_fields(unknown()),
                DescribeConfigsResult::default()
                    .with_error_code(3)
                    .with_error_message(Some(s("unknown topic")))
                    .with_resource_type(2)
                    .with_resource_name(s("missing")),
            ])
            .with_unknown_tagged_fields(unknown())
    }
}

impl Populated for SaslHandshakeResponse {
    fn populated(_: i16) -> Self {
        SaslHandshakeResponse::default()
            .with_error_code(0)
            .with_mechanisms(vec![s("PLAIN"), s("SCRAM-SHA-256"), s("SCRAM-SHA-512")])
    }
}

impl Populated for SaslAuthenticateResponse {
    fn populated(_: i16) -> Self {
        SaslAuthenticateResponse::default()
            .with_error_code(58)
            .with_error_message(Some(s("wrong password")))
            .with_auth_bytes(Bytes::from_static(b"r=nonce,s=salt,i=4096"))
            .with_session_lifetime_ms(60_000)
            .with_unknown_tagged_fields(unknown())
    }
}

/// `body` behind a response header (correlation id 7, and at header v1 an
/// unknown tagged field).
fn frame_with_header<R: Request>(body: &[u8], version: i16) -> Bytes {
    let header_version = ApiKey::try_from(R::KEY)
        .expect("known key")
        .response_header_version(version);
    let mut frame = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(7)
        .with_unknown_tagged_fields(unknown())
        .encode(&mut frame, header_version)
        .expect("header encodes");
    frame.put_slice(body);
    frame.freeze()
}

fn encoded_responses_pass<R>() -> usize
where
    R: Request + KafkaApi,
    R::Response: Default + Populated,
{
    let mut cases = 0;
    for v in versions::<R>() {
        for (what, response) in [
            ("default", R::Response::default()),
            ("populated", R::Response::populated(v)),
        ] {
            let mut body = BytesMut::new();
            response
                .encode(&mut body, v)
                .unwrap_or_else(|e| panic!("{} v{v} {what} does not encode: {e}", R::NAME));
            let end = check_body(R::KEY, v, &body, 0)
                .unwrap_or_else(|e| panic!("{what} rejected: {e}\n{body:02x?}"));
            assert_eq!(
                end,
                body.len(),
                "{} v{v} {what}: body not consumed",
                R::NAME
            );
            // The path a connection takes: header, check, decode.
            let frame = frame_with_header::<R>(&body, v);
            let decoded = decode_frame::<R>(frame, v)
                .unwrap_or_else(|e| panic!("{} v{v} {what}: {e}", R::NAME));
            let mut again = BytesMut::new();
            decoded.encode(&mut again, v).expect("re-encodes");
            assert_eq!(again, body, "{} v{v} {what}: round trip", R::NAME);
            cases += 1;
        }
    }
    cases
}

#[test]
fn what_kafka_protocol_encodes_passes_the_check() {
    let cases = each_api!(encoded_responses_pass);
    // Two values per version of every API.
    assert!(cases > 200, "{cases} cases");
    eprintln!("{cases} encoded responses checked");
}

// --- our schema -> kafka-protocol's decoder ---------------------------------

/// Writes random messages that follow a schema.
struct Generator<'a> {
    rng: &'a mut StdRng,
    version: i16,
    flexible: bool,
}

impl Generator<'_> {
    fn uvarint(out: &mut Vec<u8>, mut v: u32) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A length prefix for `n` items or bytes; `None` is null.
    fn length(&self, out: &mut Vec<u8>, n: Option<usize>, wide: bool) {
        match (self.flexible, n, wide) {
            (true, None, _) => out.push(0),
            (true, Some(n), _) => Self::uvarint(out, n as u32 + 1),
            (false, None, true) => out.extend_from_slice(&(-1i32).to_be_bytes()),
            (false, None, false) => out.extend_from_slice(&(-1i16).to_be_bytes()),
            (false, Some(n), true) => out.extend_from_slice(&(n as i32).to_be_bytes()),
            (false, Some(n), false) => out.extend_from_slice(&(n as i16).to_be_bytes()),
        }
    }

    fn text(&mut self) -> String {
        const CHARS: &[char] = &['a', 'z', '0', '-', '.', '_', 'é', 'ß', '€', '語', '🦀'];
        let len = self.rng.random_range(0..12);
        (0..len)
            .map(|_| CHARS[self.rng.random_range(0..CHARS.len())])
            .collect()
    }

    fn null(&mut self, nullable: bool) -> bool {
        nullable && self.rng.random_ratio(1, 5)
    }

    fn value(&mut self, ty: &Ty, out: &mut Vec<u8>) {
        match ty {
            Ty::Bool => out.push(self.rng.random_range(0..2)),
            Ty::Int8 => out.push(self.rng.random()),
            Ty::Int16 => out.extend_from_slice(&self.rng.random::<i16>().to_be_bytes()),
            Ty::Int32 => out.extend_from_slice(&self.rng.random::<i32>().to_be_bytes()),
            Ty::Int64 => out.extend_from_slice(&self.rng.random::<i64>().to_be_bytes()),
            Ty::Uuid => out.extend_from_slice(&self.rng.random::<[u8; 16]>()),
            Ty::String | Ty::NullableString => {
                if self.null(matches!(ty, Ty::NullableString)) {
                    self.length(out, None, false);
                } else {
                    let text = self.text();
                    self.length(out, Some(text.len()), false);
                    out.extend_from_slice(text.as_bytes());
                }
            }
            Ty::Bytes | Ty::NullableBytes => {
                if self.null(matches!(ty, Ty::NullableBytes)) {
                    self.length(out, None, true);
                } else {
                    let len = self.rng.random_range(0..24);
                    self.length(out, Some(len), true);
                    out.extend((0..len).map(|_| self.rng.random::<u8>()));
                }
            }
            Ty::Array(element) | Ty::NullableArray(element) => {
                if self.null(matches!(ty, Ty::NullableArray(_))) {
                    self.length(out, None, true);
                } else {
                    let count = self.rng.random_range(0..4);
                    self.length(out, Some(count), true);
                    for _ in 0..count {
                        self.value(element, out);
                    }
                }
            }
            Ty::Struct(fields) => self.fields(fields, out),
        }
    }

    fn fields(&mut self, fields: &[Field], out: &mut Vec<u8>) {
        for field in fields {
            if field.tag.is_none() && field.in_version(self.version) {
                self.value(&field.ty, out);
            }
        }
        if !self.flexible {
            return;
        }
        // Some of the known tagged fields, some unknown ones, in tag order.
        let mut tags: Vec<(u32, Vec<u8>)> = Vec::new();
        for field in fields {
            if let Some(tag) = field.tag {
                if field.in_version(self.version) && self.rng.random_bool(0.5) {
                    let mut content = Vec::new();
                    self.value(&field.ty, &mut content);
                    tags.push((tag, content));
                }
            }
        }
        for _ in 0..self.rng.random_range(0..3) {
            // Tags no response here defines.
            let tag = self.rng.random_range(10..400);
            if tags.iter().all(|(t, _)| *t != tag) {
                let len = self.rng.random_range(0..6);
                tags.push((tag, (0..len).map(|_| self.rng.random()).collect()));
            }
        }
        tags.sort_by_key(|(t, _)| *t);
        Self::uvarint(out, tags.len() as u32);
        for (tag, content) in tags {
            Self::uvarint(out, tag);
            Self::uvarint(out, content.len() as u32);
            out.extend_from_slice(&content);
        }
    }
}

/// Rejected mutations the decoder was run on ([`never_stricter`]).
static MUTATIONS_DECODED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Random bodies per API and version.
const GENERATED_PER_VERSION: usize = 300;

fn generated_bodies_decode<R>() -> usize
where
    R: Request + KafkaApi,
{
    let schema = schema_for(R::KEY).expect("schema");
    let mut rng = StdRng::seed_from_u64(0x5eed_0000 + R::KEY as u64);
    let mut cases = 0;
    for v in versions::<R>() {
        for case in 0..GENERATED_PER_VERSION {
            let mut body = Vec::new();
            Generator {
                rng: &mut rng,
                version: v,
                flexible: v >= schema.flexible_since,
            }
            .fields(schema.fields, &mut body);
            let mut buf = Bytes::from(body.clone());
            if let Err(e) = R::Response::decode(&mut buf, v) {
                panic!(
                    "{} v{v} case {case}: kafka-protocol rejects a body our schema generated: \
                     {e}\n{body:02x?}",
                    R::NAME
                );
            }
            assert!(
                buf.is_empty(),
                "{} v{v} case {case}: kafka-protocol left {} of {} bytes\n{body:02x?}",
                R::NAME,
                buf.len(),
                body.len()
            );
            assert_eq!(check_body(R::KEY, v, &body, 0), Ok(body.len()));
            let frame = frame_with_header::<R>(&body, v);
            decode_frame::<R>(frame, v).expect("decodes through the connection's path");
            cases += 1;
            MUTATIONS_DECODED.fetch_add(
                never_stricter::<R>(&mut rng, v, &body),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
    cases
}

/// Mutations of a well-formed body (truncated, a bit flipped, a byte
/// replaced or inserted): where the check rejects one because a length runs
/// past the end or is negative, the decoder must reject it too. Up to that
/// point both read the same bytes the same way, and there the decoder needs
/// the same bytes, so running the decoder is safe.
///
/// Rejections for a count (array, tagged fields) are not run through the
/// decoder: it would pre-allocate from that count and then read on through
/// garbage, which is the very abort the check exists to prevent. Those counts
/// exceed what the remaining bytes can hold, so the decoder cannot succeed.
fn never_stricter<R: Request + KafkaApi>(rng: &mut StdRng, version: i16, body: &[u8]) -> usize {
    let mut decoded = 0;
    for _ in 0..4 {
        let mut m = body.to_vec();
        match rng.random_range(0..4) {
            0 if !m.is_empty() => m.truncate(rng.random_range(0..m.len())),
            1 if !m.is_empty() => {
                let i = rng.random_range(0..m.len());
                m[i] ^= 1 << rng.random_range(0..8);
            }
            2 if !m.is_empty() => {
                let i = rng.random_range(0..m.len());
                m[i] = rng.random();
            }
            _ => {
                let i = rng.random_range(0..=m.len());
                m.insert(i, rng.random());
            }
        }
        let Err(rejected) = check_body(R::KEY, version, &m, 0) else {
            continue;
        };
        if !matches!(
            rejected.problem,
            Problem::Truncated { .. } | Problem::NegativeLength(_)
        ) {
            continue;
        }
        decoded += 1;
        assert!(
            R::Response::decode(&mut Bytes::from(m.clone()), version).is_err(),
            "{} v{version}: the decoder accepts what the check rejects: {rejected}\n{m:02x?}",
            R::NAME
        );
    }
    decoded
}

#[test]
fn bodies_generated_from_the_schemas_decode_with_kafka_protocol() {
    let cases = each_api!(generated_bodies_decode);
    assert!(cases > 30_000, "{cases} cases");
    let mutations = MUTATIONS_DECODED.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{cases} generated bodies decoded; {mutations} rejected mutations also rejected by the decoder"
    );
}

// --- rejections --------------------------------------------------------------

#[test]
fn a_huge_array_count_is_rejected_with_its_path() {
    // Metadata v12: no throttle... (v3+ has it), brokers compact count huge.
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let e = check_body(3, 12, &body, 0).unwrap_err();
    assert!(matches!(e.problem, Problem::ArrayTooLong { .. }), "{e}");
    assert_eq!(e.path, "brokers");
    let text = e.to_string();
    assert!(
        text.contains("Metadata v12") && text.contains("brokers"),
        "{text}"
    );

    // Fetch v11: one topic, one partition whose aborted transactions claim
    // i32::MAX entries of 16 bytes.
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_be_bytes()); // throttle
    body.extend_from_slice(&0i16.to_be_bytes()); // error
    body.extend_from_slice(&0i32.to_be_bytes()); // session
    body.extend_from_slice(&1i32.to_be_bytes()); // one topic
    body.extend_from_slice(&1i16.to_be_bytes());
    body.push(b't');
    body.extend_from_slice(&1i32.to_be_bytes()); // one partition
    body.extend_from_slice(&[0; 4 + 2 + 8 + 8 + 8]);
    body.extend_from_slice(&i32::MAX.to_be_bytes());
    body.extend_from_slice(&[0; 64]);
    let e = check_body(1, 11, &body, 0).unwrap_err();
    assert_eq!(e.path, "responses[0].partitions[0].aborted_transactions");
    assert_eq!(
        e.problem,
        Problem::ArrayTooLong {
            count: i32::MAX as u64,
            element: 16,
            remaining: 64
        }
    );
}

#[test]
fn lengths_past_the_end_and_negative_lengths_are_rejected() {
    // SaslHandshake v1: one mechanism whose string claims 300 bytes.
    let mut body = vec![0, 0, 0, 0, 0, 1, 0x01, 0x2c];
    body.extend_from_slice(b"PLAIN");
    let e = check_body(17, 1, &body, 0).unwrap_err();
    assert_eq!(e.path, "mechanisms[0]");
    assert!(
        matches!(e.problem, Problem::Truncated { needed: 300, .. }),
        "{e}"
    );
    // A length of -2.
    let body = vec![0, 0, 0, 0, 0, 1, 0xff, 0xfe];
    let e = check_body(17, 1, &body, 0).unwrap_err();
    assert_eq!(e.problem, Problem::NegativeLength(-2));
    // Null (-1) is accepted: the decoder decides whether null is allowed.
    let body = vec![0, 0, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(check_body(17, 1, &body, 0), Ok(6));
}

#[test]
fn tagged_sections_must_fit() {
    // Heartbeat v4: throttle, error, then the tagged-field section.
    let base = [0u8, 0, 0, 0, 0, 0];
    let with = |tail: &[u8]| [&base[..], tail].concat();
    assert_eq!(check_body(12, 4, &with(&[0]), 0), Ok(7));
    // One unknown tag of 3 bytes.
    assert_eq!(check_body(12, 4, &with(&[1, 40, 3, 1, 2, 3]), 0), Ok(12));
    // Its size runs past the end.
    let e = check_body(12, 4, &with(&[1, 40, 9, 1, 2, 3]), 0).unwrap_err();
    assert_eq!(e.path, "<tag 40>");
    // A count that cannot fit.
    let e = check_body(12, 4, &with(&[0xff, 0xff, 0xff, 0xff, 0x0f]), 0).unwrap_err();
    assert!(
        matches!(e.problem, Problem::TooManyTaggedFields { .. }),
        "{e}"
    );
    assert_eq!(e.path, "<tagged fields>");
    // A known tagged field (CreateTopics v5 topic_config_error_code, an
    // int16) whose size says 3.
    let mut body = vec![0, 0, 0, 0, 2, 2, b't', 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&[1, 0, 3, 0, 5, 9, 0]);
    let e = check_body(19, 5, &body, 0).unwrap_err();
    assert_eq!(e.path, "topics[0].topic_config_error_code");
    assert_eq!(e.problem, Problem::TaggedSizeMismatch { size: 3, used: 2 });
}

#[test]
fn a_short_header_is_rejected_naming_the_api() {
    let e = check_response(3, 12, 1, &[0, 0, 0]).unwrap_err();
    assert_eq!(e.to_string(), "malformed Metadata v12 response at header.correlation_id (byte 0): needs 4 bytes, 3 remain");
    // Header v1: correlation id, then tagged fields.
    let e = check_response(3, 12, 1, &[0, 0, 0, 1, 5]).unwrap_err();
    assert_eq!(e.path, "header.<tagged fields>");
    assert_eq!(
        check_response(3, 12, 1, &[0, 0, 0, 1, 0]).unwrap_err().path,
        "throttle_time_ms"
    );
}

#[test]
fn varints_are_read_as_the_decoder_reads_them() {
    // A fifth byte with its high bit set still ends the varint.
    let mut w = Walk {
        buf: &[0x80, 0x80, 0x80, 0x80, 0xff, 0x05],
        pos: 0,
        version: 0,
        flexible: true,
    };
    assert_eq!(w.uvarint().ok(), Some(0xf000_0000));
    assert_eq!(w.pos, 5);
}

#[test]
fn unknown_apis_and_versions_are_rejected() {
    assert_eq!(
        check_body(1000, 0, &[], 0).unwrap_err().problem,
        Problem::UnknownApi
    );
    assert_eq!(
        check_body(3, 13, &[], 0).unwrap_err().problem,
        Problem::UnknownVersion
    );
}

#[test]
fn api_versions_falls_back_to_the_v0_layout_and_rejects_huge_counts() {
    // The v0 layout answer of an old broker to a v3 request: error 35,
    // one api key.
    let mut frame = 1i32.to_be_bytes().to_vec();
    frame.extend_from_slice(&35i16.to_be_bytes());
    frame.extend_from_slice(&1i32.to_be_bytes());
    frame.extend_from_slice(&[0, 18, 0, 0, 0, 2]);
    let r =
        crate::protocol::connection::decode_api_versions(Bytes::from(frame), 3).expect("v0 layout");
    assert_eq!(r.error_code, 35);
    assert_eq!(r.api_keys.len(), 1);
    // The same with a count of i32::MAX: rejected, not allocated.
    let mut frame = 1i32.to_be_bytes().to_vec();
    frame.extend_from_slice(&35i16.to_be_bytes());
    frame.extend_from_slice(&i32::MAX.to_be_bytes());
    frame.extend_from_slice(&[0, 18, 0, 0, 0, 2]);
    let e = crate::protocol::connection::decode_api_versions(Bytes::from(frame), 3).unwrap_err();
    assert!(
        e.contains("api_keys") && e.contains("ApiVersions v0"),
        "{e}"
    );
}

/// Writes a seed corpus for the `response_decode` fuzz target (see
/// fuzz/README.md) into the directory `FUZZ_SEEDS` names (a temporary one
/// otherwise): one generated frame per API and version, in the target's
/// input layout.
#[test]
fn write_response_seeds() {
    let dir = crate::protocol::seed_dir("response_decode");
    let mut written = 0;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for (i, schema) in SCHEMAS.iter().enumerate() {
        let key = ApiKey::try_from(schema.api_key).expect("known key");
        for v in schema.min_version..=schema.max_version {
            let mut file = vec![i as u8, (v - schema.min_version) as u8];
            file.extend_from_slice(&7i32.to_be_bytes());
            if key.response_header_version(v) >= 1 {
                file.push(0);
            }
            Generator {
                rng: &mut rng,
                version: v,
                flexible: v >= schema.flexible_since,
            }
            .fields(schema.fields, &mut file);
            let path = dir.join(format!("{}-v{v}", schema.name));
            std::fs::write(path, file).expect("seed written");
            written += 1;
        }
    }
    let expected: usize = SCHEMAS
        .iter()
        .map(|s| usize::from((s.max_version - s.min_version) as u16) + 1)
        .sum();
    assert_eq!(written, expected, "one seed per API version");
    crate::protocol::drop_seed_dir(&dir);
}
