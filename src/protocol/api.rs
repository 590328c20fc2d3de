//! The Kafka APIs our wire layer speaks, with the names our errors print.

use kafka_protocol::messages::{
    ApiVersionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    FetchRequest, FindCoordinatorRequest, HeartbeatRequest, InitProducerIdRequest,
    JoinGroupRequest, LeaveGroupRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
    SyncGroupRequest,
};
use kafka_protocol::protocol::Request;

/// A request type the wire layer can send.
pub(crate) trait KafkaApi {
    /// The API's name as Kafka documents it (`Metadata`, `CreateTopics`).
    const NAME: &'static str;
    /// The highest version we use, even if codecs and broker know newer ones:
    /// newer versions can change semantics (for example topic ids replacing
    /// names), so we only move up after testing.
    const MAX_VERSION: i16;
}

/// Something done once per API of the wire layer ([`for_each_api`]).
#[cfg_attr(not(any(test, feature = "unstable-fuzz")), allow(dead_code))]
pub(crate) trait ApiVisitor {
    /// Called with each request type in turn.
    fn visit<R: Request + KafkaApi>(&mut self);
}

macro_rules! kafka_api {
    ($($request:ty => $name:literal, $max:literal;)*) => {
        $(impl KafkaApi for $request {
            const NAME: &'static str = $name;
            const MAX_VERSION: i16 = $max;
        })*

        /// Call `visitor` with every API the wire layer speaks.
        #[cfg_attr(not(any(test, feature = "unstable-fuzz")), allow(dead_code))]
        pub(crate) fn for_each_api(visitor: &mut impl ApiVisitor) {
            $(visitor.visit::<$request>();)*
        }
    };
}

kafka_api! {
    MetadataRequest => "Metadata", 12;
    // v13 switches to topic ids; names are what we have everywhere.
    FetchRequest => "Fetch", 12;
    ProduceRequest => "Produce", 12;
    CreateTopicsRequest => "CreateTopics", 7;
    DeleteTopicsRequest => "DeleteTopics", 5;
    ListOffsetsRequest => "ListOffsets", 8;
    FindCoordinatorRequest => "FindCoordinator", 3;
    JoinGroupRequest => "JoinGroup", 9;
    SyncGroupRequest => "SyncGroup", 5;
    HeartbeatRequest => "Heartbeat", 4;
    LeaveGroupRequest => "LeaveGroup", 5;
    OffsetFetchRequest => "OffsetFetch", 7;
    OffsetCommitRequest => "OffsetCommit", 8;
    ApiVersionsRequest => "ApiVersions", 3;
    InitProducerIdRequest => "InitProducerId", 5;
    DescribeConfigsRequest => "DescribeConfigs", 4;
    SaslHandshakeRequest => "SaslHandshake", 1;
    SaslAuthenticateRequest => "SaslAuthenticate", 2;
}
