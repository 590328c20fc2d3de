//! A structural check of every response body before `kafka-protocol`
//! decodes it.
//!
//! `kafka-protocol` 0.18 (the newest release) pre-allocates each array from
//! the count it reads off the wire (`Vec::with_capacity(n)` in its `Array`
//! and `CompactArray` decoders), so a corrupt or hostile frame that claims
//! billions of elements makes the decoder ask for tens of gigabytes, and a
//! failed allocation aborts the process: no caller can catch that. So before
//! the decoder sees a response, this module walks the body by the response's
//! schema at the negotiated version and rejects it unless
//!
//! - every array count fits the bytes that remain after it (the count times
//!   the smallest encoding of one element),
//! - every string and byte-string length fits the bytes that remain,
//! - every tagged-field section of a flexible version fits (an unsigned
//!   varint count, then per field a tag, a size and that many bytes), and a
//!   known tagged field's content uses exactly its stated size,
//! - the body is long enough for every fixed-width field.
//!
//! A structurally valid response therefore has arrays of at most as many
//! elements as there are bytes left after their count, so what the decoder
//! allocates is proportional to the bytes that arrived. The check can be
//! dropped once `kafka-protocol` releases a decoder that bounds its own
//! allocations (fixes are open upstream as kafka-protocol-rs #152, #161 and
//! #200, none released).
//!
//! # Never stricter than the decoder
//!
//! A false rejection would break a working client, so for input the decoder
//! accepts the check accepts too: varints are read exactly as the decoder
//! reads them (at most five bytes, bits past 32 dropped), a length of -1 (or
//! compact 0) is accepted as null on every string, byte string and array,
//! nullable or not (the decoder rejects nulls where they are not allowed, and
//! a null allocates nothing), tagged fields the schema does not know are
//! skipped by their size, and bytes after the body are ignored, as the
//! decoder ignores them. Strings are not checked for UTF-8; the decoder does
//! that. The one case the check refuses and the decoder would take is a
//! known tagged field whose content does not use exactly its stated size
//! (the decoder reads a known field's content and ignores the size): no
//! well-formed message has that, and the decoder would then read the
//! following fields from the wrong place.
//!
//! # Schemas
//!
//! One table per response, written from the message structure Kafka
//! documents: for each field its name, type and the versions that carry it,
//! and for flexible versions (KIP-482) the tagged fields each struct knows.
//! Each table covers every version from the lowest `kafka-protocol` decodes
//! to the highest we use ([`KafkaApi::MAX_VERSION`](super::api::KafkaApi)).
//! The tests check each table against `kafka-protocol` in both directions:
//! everything its encoder writes passes the check, and bytes generated at
//! random from the table decode without error and to the last byte.

use std::fmt;

use Ty::{Bool, Bytes, Int16, Int32, Int64, Int8, NullableBytes, NullableString, Uuid};

/// How one field is encoded. Strings, byte strings and arrays use the
/// compact encoding (unsigned varint length plus one) in flexible versions
/// and a fixed-width length (`i16` for strings, `i32` otherwise) before.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    /// One byte.
    Bool,
    /// One byte.
    Int8,
    /// Two bytes, big-endian.
    Int16,
    /// Four bytes, big-endian.
    Int32,
    /// Eight bytes, big-endian.
    Int64,
    /// Sixteen bytes.
    Uuid,
    /// A string that may not be null.
    String,
    /// A string that may be null.
    NullableString,
    /// A byte string that may not be null.
    Bytes,
    /// A byte string that may be null (record sets are these).
    NullableBytes,
    /// An array that may not be null.
    Array(&'static Ty),
    /// An array that may be null.
    NullableArray(&'static Ty),
    /// A nested struct: its fields, then in flexible versions its own
    /// tagged-field section.
    Struct(&'static [Field]),
}

/// One field of a struct.
#[derive(Debug)]
pub(crate) struct Field {
    /// The field's name, as the error path prints it.
    pub name: &'static str,
    /// Its encoding.
    pub ty: Ty,
    /// Lowest version that carries it.
    pub since: i16,
    /// Highest version that carries it.
    pub until: i16,
    /// Set for a tagged field: it is only ever sent in the struct's
    /// tagged-field section, under this tag.
    pub tag: Option<u32>,
}

impl Field {
    /// Whether `version` carries this field.
    pub(crate) fn in_version(&self, version: i16) -> bool {
        (self.since..=self.until).contains(&version)
    }
}

/// A field in every version.
const fn f(name: &'static str, ty: Ty) -> Field {
    since(name, ty, 0)
}

/// A field from version `from` on.
const fn since(name: &'static str, ty: Ty, from: i16) -> Field {
    between(name, ty, from, i16::MAX)
}

/// A field in versions `from..=to`.
const fn between(name: &'static str, ty: Ty, from: i16, to: i16) -> Field {
    Field {
        name,
        ty,
        since: from,
        until: to,
        tag: None,
    }
}

/// A tagged field under `tag`, from version `from` on.
const fn tagged(name: &'static str, tag: u32, ty: Ty, from: i16) -> Field {
    Field {
        name,
        ty,
        since: from,
        until: i16::MAX,
        tag: Some(tag),
    }
}

/// The body of one API's response.
#[derive(Debug)]
pub(crate) struct Schema {
    /// The API key.
    pub api_key: i16,
    /// The API's name as errors print it.
    pub name: &'static str,
    /// The versions this table covers: from the lowest `kafka-protocol`
    /// decodes to the highest we send.
    pub min_version: i16,
    /// See `min_version`.
    pub max_version: i16,
    /// First flexible version (compact lengths, tagged fields).
    pub flexible_since: i16,
    /// The top-level fields.
    pub fields: &'static [Field],
}

/// Never flexible.
const NEVER: i16 = i16::MAX;

// --- Metadata (3) -----------------------------------------------------------

const METADATA_BROKER: &[Field] = &[
    f("node_id", Int32),
    f("host", Ty::String),
    f("port", Int32),
    since("rack", NullableString, 1),
];

const METADATA_PARTITION: &[Field] = &[
    f("error_code", Int16),
    f("partition_index", Int32),
    f("leader_id", Int32),
    since("leader_epoch", Int32, 7),
    f("replica_nodes", Ty::Array(&Int32)),
    f("isr_nodes", Ty::Array(&Int32)),
    since("offline_replicas", Ty::Array(&Int32), 5),
];

const METADATA_TOPIC: &[Field] = &[
    f("error_code", Int16),
    f("name", NullableString),
    since("topic_id", Uuid, 10),
    since("is_internal", Bool, 1),
    f("partitions", Ty::Array(&Ty::Struct(METADATA_PARTITION))),
    since("topic_authorized_operations", Int32, 8),
];

const METADATA: &[Field] = &[
    since("throttle_time_ms", Int32, 3),
    f("brokers", Ty::Array(&Ty::Struct(METADATA_BROKER))),
    since("cluster_id", NullableString, 2),
    since("controller_id", Int32, 1),
    f("topics", Ty::Array(&Ty::Struct(METADATA_TOPIC))),
    between("cluster_authorized_operations", Int32, 8, 10),
];

// --- Fetch (1) --------------------------------------------------------------

const FETCH_ABORTED: &[Field] = &[f("producer_id", Int64), f("first_offset", Int64)];

const FETCH_EPOCH_END: &[Field] = &[f("epoch", Int32), f("end_offset", Int64)];

const FETCH_LEADER: &[Field] = &[f("leader_id", Int32), f("leader_epoch", Int32)];

const FETCH_SNAPSHOT: &[Field] = &[f("end_offset", Int64), f("epoch", Int32)];

const FETCH_PARTITION: &[Field] = &[
    f("partition_index", Int32),
    f("error_code", Int16),
    f("high_watermark", Int64),
    f("last_stable_offset", Int64),
    since("log_start_offset", Int64, 5),
    f(
        "aborted_transactions",
        Ty::NullableArray(&Ty::Struct(FETCH_ABORTED)),
    ),
    since("preferred_read_replica", Int32, 11),
    f("records", NullableBytes),
    tagged("diverging_epoch", 0, Ty::Struct(FETCH_EPOCH_END), 12),
    tagged("current_leader", 1, Ty::Struct(FETCH_LEADER), 12),
    tagged("snapshot_id", 2, Ty::Struct(FETCH_SNAPSHOT), 12),
];

const FETCH_TOPIC: &[Field] = &[
    between("topic", Ty::String, 0, 12),
    f("partitions", Ty::Array(&Ty::Struct(FETCH_PARTITION))),
];

const FETCH: &[Field] = &[
    f("throttle_time_ms", Int32),
    since("error_code", Int16, 7),
    since("session_id", Int32, 7),
    f("responses", Ty::Array(&Ty::Struct(FETCH_TOPIC))),
];

// --- Produce (0) ------------------------------------------------------------

const PRODUCE_RECORD_ERROR: &[Field] = &[
    f("batch_index", Int32),
    f("batch_index_error_message", NullableString),
];

const PRODUCE_LEADER: &[Field] = &[f("leader_id", Int32), f("leader_epoch", Int32)];

const PRODUCE_NODE: &[Field] = &[
    f("node_id", Int32),
    f("host", Ty::String),
    f("port", Int32),
    f("rack", NullableString),
];

const PRODUCE_PARTITION: &[Field] = &[
    f("index", Int32),
    f("error_code", Int16),
    f("base_offset", Int64),
    f("log_append_time_ms", Int64),
    since("log_start_offset", Int64, 5),
    since(
        "record_errors",
        Ty::Array(&Ty::Struct(PRODUCE_RECORD_ERROR)),
        8,
    ),
    since("error_message", NullableString, 8),
    tagged("current_leader", 0, Ty::Struct(PRODUCE_LEADER), 10),
];

const PRODUCE_TOPIC: &[Field] = &[
    between("name", Ty::String, 0, 12),
    f(
        "partition_responses",
        Ty::Array(&Ty::Struct(PRODUCE_PARTITION)),
    ),
];

const PRODUCE: &[Field] = &[
    f("responses", Ty::Array(&Ty::Struct(PRODUCE_TOPIC))),
    f("throttle_time_ms", Int32),
    tagged(
        "node_endpoints",
        0,
        Ty::Array(&Ty::Struct(PRODUCE_NODE)),
        10,
    ),
];

// --- CreateTopics (19) ------------------------------------------------------

const CREATE_TOPICS_CONFIG: &[Field] = &[
    f("name", Ty::String),
    f("value", NullableString),
    f("read_only", Bool),
    f("config_source", Int8),
    f("is_sensitive", Bool),
];

const CREATE_TOPICS_RESULT: &[Field] = &[
    f("name", Ty::String),
    since("topic_id", Uuid, 7),
    f("error_code", Int16),
    since("error_message", NullableString, 1),
    tagged("topic_config_error_code", 0, Int16, 5),
    since("num_partitions", Int32, 5),
    since("replication_factor", Int16, 5),
    since(
        "configs",
        Ty::NullableArray(&Ty::Struct(CREATE_TOPICS_CONFIG)),
        5,
    ),
];

const CREATE_TOPICS: &[Field] = &[
    since("throttle_time_ms", Int32, 2),
    f("topics", Ty::Array(&Ty::Struct(CREATE_TOPICS_RESULT))),
];

// --- DeleteTopics (20) ------------------------------------------------------

const DELETE_TOPICS_RESULT: &[Field] = &[
    f("name", NullableString),
    since("topic_id", Uuid, 6),
    f("error_code", Int16),
    since("error_message", NullableString, 5),
];

const DELETE_TOPICS: &[Field] = &[
    since("throttle_time_ms", Int32, 1),
    f("responses", Ty::Array(&Ty::Struct(DELETE_TOPICS_RESULT))),
];

// --- ListOffsets (2) --------------------------------------------------------

const LIST_OFFSETS_PARTITION: &[Field] = &[
    f("partition_index", Int32),
    f("error_code", Int16),
    since("timestamp", Int64, 1),
    since("offset", Int64, 1),
    since("leader_epoch", Int32, 4),
];

const LIST_OFFSETS_TOPIC: &[Field] = &[
    f("name", Ty::String),
    f("partitions", Ty::Array(&Ty::Struct(LIST_OFFSETS_PARTITION))),
];

const LIST_OFFSETS: &[Field] = &[
    since("throttle_time_ms", Int32, 2),
    f("topics", Ty::Array(&Ty::Struct(LIST_OFFSETS_TOPIC))),
];

// --- FindCoordinator (10) ---------------------------------------------------

const FIND_COORDINATOR: &[Field] = &[
    since("throttle_time_ms", Int32, 1),
    between("error_code", Int16, 0, 3),
    between("error_message", NullableString, 1, 3),
    between("node_id", Int32, 0, 3),
    between("host", Ty::String, 0, 3),
    between("port", Int32, 0, 3),
];

// --- JoinGroup (11) ---------------------------------------------------------

const JOIN_GROUP_MEMBER: &[Field] = &[
    f("member_id", Ty::String),
    since("group_instance_id", NullableString, 5),
    f("metadata", Bytes),
];

const JOIN_GROUP: &[Field] = &[
    since("throttle_time_ms", Int32, 2),
    f("error_code", Int16),
    f("generation_id", Int32),
    since("protocol_type", NullableString, 7),
    f("protocol_name", NullableString),
    f("leader", Ty::String),
    since("skip_assignment", Bool, 9),
    f("member_id", Ty::String),
    f("members", Ty::Array(&Ty::Struct(JOIN_GROUP_MEMBER))),
];

// --- SyncGroup (14) ---------------------------------------------------------

const SYNC_GROUP: &[Field] = &[
    since("throttle_time_ms", Int32, 1),
    f("error_code", Int16),
    since("protocol_type", NullableString, 5),
    since("protocol_name", NullableString, 5),
    f("assignment", Bytes),
];

// --- Heartbeat (12) ---------------------------------------------------------

const HEARTBEAT: &[Field] = &[since("throttle_time_ms", Int32, 1), f("error_code", Int16)];

// --- LeaveGroup (13) --------------------------------------------------------

const LEAVE_GROUP_MEMBER: &[Field] = &[
    f("member_id", Ty::String),
    f("group_instance_id", NullableString),
    f("error_code", Int16),
];

const LEAVE_GROUP: &[Field] = &[
    since("throttle_time_ms", Int32, 1),
    f("error_code", Int16),
    since("members", Ty::Array(&Ty::Struct(LEAVE_GROUP_MEMBER)), 3),
];

// --- OffsetFetch (9) --------------------------------------------------------

const OFFSET_FETCH_PARTITION: &[Field] = &[
    f("partition_index", Int32),
    f("committed_offset", Int64),
    since("committed_leader_epoch", Int32, 5),
    f("metadata", NullableString),
    f("error_code", Int16),
];

const OFFSET_FETCH_TOPIC: &[Field] = &[
    f("name", Ty::String),
    f("partitions", Ty::Array(&Ty::Struct(OFFSET_FETCH_PARTITION))),
];

const OFFSET_FETCH: &[Field] = &[
    since("throttle_time_ms", Int32, 3),
    between("topics", Ty::Array(&Ty::Struct(OFFSET_FETCH_TOPIC)), 0, 7),
    between("error_code", Int16, 2, 7),
];

// --- OffsetCommit (8) -------------------------------------------------------

const OFFSET_COMMIT_PARTITION: &[Field] = &[f("partition_index", Int32), f("error_code", Int16)];

const OFFSET_COMMIT_TOPIC: &[Field] = &[
    between("name", Ty::String, 0, 9),
    f(
        "partitions",
        Ty::Array(&Ty::Struct(OFFSET_COMMIT_PARTITION)),
    ),
];

const OFFSET_COMMIT: &[Field] = &[
    since("throttle_time_ms", Int32, 3),
    f("topics", Ty::Array(&Ty::Struct(OFFSET_COMMIT_TOPIC))),
];

// --- ApiVersions (18) -------------------------------------------------------

const API_VERSIONS_KEY: &[Field] = &[
    f("api_key", Int16),
    f("min_version", Int16),
    f("max_version", Int16),
];

const API_VERSIONS_SUPPORTED: &[Field] = &[
    f("name", Ty::String),
    f("min_version", Int16),
    f("max_version", Int16),
];

const API_VERSIONS_FINALIZED: &[Field] = &[
    f("name", Ty::String),
    f("max_version_level", Int16),
    f("min_version_level", Int16),
];

const API_VERSIONS: &[Field] = &[
    f("error_code", Int16),
    f("api_keys", Ty::Array(&Ty::Struct(API_VERSIONS_KEY))),
    since("throttle_time_ms", Int32, 1),
    tagged(
        "supported_features",
        0,
        Ty::Array(&Ty::Struct(API_VERSIONS_SUPPORTED)),
        3,
    ),
    tagged("finalized_features_epoch", 1, Int64, 3),
    tagged(
        "finalized_features",
        2,
        Ty::Array(&Ty::Struct(API_VERSIONS_FINALIZED)),
        3,
    ),
    tagged("zk_migration_ready", 3, Bool, 3),
];

// --- InitProducerId (22) ----------------------------------------------------

const INIT_PRODUCER_ID: &[Field] = &[
    f("throttle_time_ms", Int32),
    f("error_code", Int16),
    f("producer_id", Int64),
    f("producer_epoch", Int16),
];

// --- DescribeConfigs (32) ---------------------------------------------------

const DESCRIBE_CONFIGS_SYNONYM: &[Field] = &[
    f("name", Ty::String),
    f("value", NullableString),
    f("source", Int8),
];

const DESCRIBE_CONFIGS_ENTRY: &[Field] = &[
    f("name", Ty::String),
    f("value", NullableString),
    f("read_only", Bool),
    f("config_source", Int8),
    f("is_sensitive", Bool),
    f("synonyms", Ty::Array(&Ty::Struct(DESCRIBE_CONFIGS_SYNONYM))),
    since("config_type", Int8, 3),
    since("documentation", NullableString, 3),
];

const DESCRIBE_CONFIGS_RESULT: &[Field] = &[
    f("error_code", Int16),
    f("error_message", NullableString),
    f("resource_type", Int8),
    f("resource_name", Ty::String),
    f("configs", Ty::Array(&Ty::Struct(DESCRIBE_CONFIGS_ENTRY))),
];

const DESCRIBE_CONFIGS: &[Field] = &[
    f("throttle_time_ms", Int32),
    f("results", Ty::Array(&Ty::Struct(DESCRIBE_CONFIGS_RESULT))),
];

// --- SaslHandshake (17) and SaslAuthenticate (36) ---------------------------

const SASL_HANDSHAKE: &[Field] = &[
    f("error_code", Int16),
    f("mechanisms", Ty::Array(&Ty::String)),
];

const SASL_AUTHENTICATE: &[Field] = &[
    f("error_code", Int16),
    f("error_message", NullableString),
    f("auth_bytes", Bytes),
    since("session_lifetime_ms", Int64, 1),
];

/// Every response the wire layer decodes.
pub(crate) const SCHEMAS: &[Schema] = &[
    schema(0, "Produce", 3, 12, 9, PRODUCE),
    schema(1, "Fetch", 4, 12, 12, FETCH),
    schema(2, "ListOffsets", 1, 8, 6, LIST_OFFSETS),
    schema(3, "Metadata", 0, 12, 9, METADATA),
    schema(8, "OffsetCommit", 2, 8, 8, OFFSET_COMMIT),
    schema(9, "OffsetFetch", 1, 7, 6, OFFSET_FETCH),
    schema(10, "FindCoordinator", 0, 3, 3, FIND_COORDINATOR),
    schema(11, "JoinGroup", 0, 9, 6, JOIN_GROUP),
    schema(12, "Heartbeat", 0, 4, 4, HEARTBEAT),
    schema(13, "LeaveGroup", 0, 5, 4, LEAVE_GROUP),
    schema(14, "SyncGroup", 0, 5, 4, SYNC_GROUP),
    schema(17, "SaslHandshake", 0, 1, NEVER, SASL_HANDSHAKE),
    schema(18, "ApiVersions", 0, 3, 3, API_VERSIONS),
    schema(19, "CreateTopics", 2, 7, 5, CREATE_TOPICS),
    schema(20, "DeleteTopics", 1, 5, 4, DELETE_TOPICS),
    schema(22, "InitProducerId", 0, 5, 2, INIT_PRODUCER_ID),
    schema(32, "DescribeConfigs", 1, 4, 4, DESCRIBE_CONFIGS),
    schema(36, "SaslAuthenticate", 0, 2, 2, SASL_AUTHENTICATE),
];

const fn schema(
    api_key: i16,
    name: &'static str,
    min_version: i16,
    max_version: i16,
    flexible_since: i16,
    fields: &'static [Field],
) -> Schema {
    Schema {
        api_key,
        name,
        min_version,
        max_version,
        flexible_since,
        fields,
    }
}

/// The response header: version 0 is the correlation id, version 1 adds a
/// tagged-field section (no tags are defined).
pub(crate) const RESPONSE_HEADER: Schema = schema(-1, "response header", 0, 1, 1, HEADER);

const HEADER: &[Field] = &[f("correlation_id", Int32)];

/// The table for `api_key`, if the wire layer decodes that API.
pub(crate) fn schema_for(api_key: i16) -> Option<&'static Schema> {
    SCHEMAS.iter().find(|s| s.api_key == api_key)
}

/// What is wrong with a rejected frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// A fixed-width field or a length-prefixed value runs past the end.
    Truncated {
        /// Bytes the field needs.
        needed: u64,
        /// Bytes that remain.
        remaining: usize,
    },
    /// An array count that the remaining bytes cannot hold.
    ArrayTooLong {
        /// The count on the wire.
        count: u64,
        /// Smallest encoding of one element at this version.
        element: usize,
        /// Bytes that remain after the count.
        remaining: usize,
    },
    /// A length below -1.
    NegativeLength(i32),
    /// A tagged-field count that the remaining bytes cannot hold (each
    /// tagged field takes at least two bytes).
    TooManyTaggedFields {
        /// The count on the wire.
        count: u32,
        /// Bytes that remain after the count.
        remaining: usize,
    },
    /// A known tagged field whose content does not use its stated size.
    TaggedSizeMismatch {
        /// The size on the wire.
        size: usize,
        /// Bytes the content used.
        used: usize,
    },
    /// The API is not one the wire layer decodes.
    UnknownApi,
    /// The version is outside the schema's range.
    UnknownVersion,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Truncated { needed, remaining } => {
                write!(f, "needs {needed} bytes, {remaining} remain")
            }
            Problem::ArrayTooLong {
                count,
                element,
                remaining,
            } => write!(
                f,
                "array count {count} needs at least {count} x {element} bytes, {remaining} remain"
            ),
            Problem::NegativeLength(n) => write!(f, "negative length {n}"),
            Problem::TooManyTaggedFields { count, remaining } => write!(
                f,
                "{count} tagged fields need at least {} bytes, {remaining} remain",
                2 * u64::from(*count)
            ),
            Problem::TaggedSizeMismatch { size, used } => {
                write!(
                    f,
                    "tagged field of size {size} whose content is {used} bytes"
                )
            }
            Problem::UnknownApi => write!(f, "no schema for this API"),
            Problem::UnknownVersion => write!(f, "no schema for this version"),
        }
    }
}

/// One step of the path to a rejected field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(&'static str),
    Index(u64),
    Tag(u32),
    TaggedFields,
}

/// Why a frame was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    /// The API whose response it is.
    pub api: &'static str,
    /// The version the frame was checked at.
    pub version: i16,
    /// Where in the message, as `topics[2].partitions[0].isr_nodes`.
    pub path: String,
    /// Byte offset in the checked buffer.
    pub offset: usize,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed {} v{} response at {} (byte {}): {}",
            self.api,
            self.version,
            if self.path.is_empty() {
                "the start"
            } else {
                &self.path
            },
            self.offset,
            self.problem
        )
    }
}

/// A problem on its way up the walk, collecting the path (innermost first).
#[derive(Debug)]
struct Fault {
    problem: Problem,
    offset: usize,
    path: Vec<Step>,
}

impl Fault {
    fn within(mut self, step: Step) -> Self {
        self.path.push(step);
        self
    }

    fn into_rejected(self, schema: &Schema, version: i16) -> Rejected {
        let mut path = String::new();
        for step in self.path.iter().rev() {
            match step {
                Step::Index(i) => path.push_str(&format!("[{i}]")),
                named => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    match named {
                        Step::Field(name) => path.push_str(name),
                        Step::Tag(t) => path.push_str(&format!("<tag {t}>")),
                        _ => path.push_str("<tagged fields>"),
                    }
                }
            }
        }
        Rejected {
            api: schema.name,
            version,
            path,
            offset: self.offset,
            problem: self.problem,
        }
    }
}

/// A cursor over the checked bytes.
struct Walk<'a> {
    buf: &'a [u8],
    pos: usize,
    version: i16,
    flexible: bool,
}

impl Walk<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn fault(&self, problem: Problem) -> Fault {
        Fault {
            problem,
            offset: self.pos,
            path: Vec::new(),
        }
    }

    fn skip(&mut self, n: u64) -> Result<(), Fault> {
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => {
                self.pos += n;
                Ok(())
            }
            _ => Err(self.fault(Problem::Truncated {
                needed: n,
                remaining: self.remaining(),
            })),
        }
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Fault> {
        let mut out = [0u8; N];
        match self.buf.get(self.pos..self.pos + N) {
            Some(bytes) => {
                out.copy_from_slice(bytes);
                self.pos += N;
                Ok(out)
            }
            None => Err(self.fault(Problem::Truncated {
                needed: N as u64,
                remaining: self.remaining(),
            })),
        }
    }

    /// An unsigned varint exactly as `kafka-protocol` reads it: at most five
    /// bytes (the fifth ends it whatever its high bit), bits past 32 dropped.
    fn uvarint(&mut self) -> Result<u32, Fault> {
        let mut value = 0u32;
        for i in 0..5 {
            let [byte] = self.fixed::<1>()?;
            value |= u32::from(byte & 0x7f) << (i * 7);
            if byte < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    /// A length or count: `None` for null. `wide` picks `i32` over `i16`
    /// in non-flexible versions.
    fn length(&mut self, wide: bool) -> Result<Option<u64>, Fault> {
        if self.flexible {
            return Ok(self.uvarint()?.checked_sub(1).map(u64::from));
        }
        let start = self.pos;
        let n = if wide {
            i32::from_be_bytes(self.fixed::<4>()?)
        } else {
            i32::from(i16::from_be_bytes(self.fixed::<2>()?))
        };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(Fault {
                problem: Problem::NegativeLength(n),
                offset: start,
                path: Vec::new(),
            }),
            n => Ok(Some(n as u64)),
        }
    }

    fn value(&mut self, ty: &Ty) -> Result<(), Fault> {
        match ty {
            Ty::Bool | Ty::Int8 => self.skip(1),
            Ty::Int16 => self.skip(2),
            Ty::Int32 => self.skip(4),
            Ty::Int64 => self.skip(8),
            Ty::Uuid => self.skip(16),
            Ty::String | Ty::NullableString => match self.length(false)? {
                Some(n) => self.skip(n),
                None => Ok(()),
            },
            Ty::Bytes | Ty::NullableBytes => match self.length(true)? {
                Some(n) => self.skip(n),
                None => Ok(()),
            },
            Ty::Array(element) | Ty::NullableArray(element) => {
                let Some(count) = self.length(true)? else {
                    return Ok(());
                };
                // An element needs at least one byte in every schema here
                // (the tests check that); `max(1)` keeps the bound even so.
                let element_size = min_size(element, self.version, self.flexible).max(1);
                if count.saturating_mul(element_size as u64) > self.remaining() as u64 {
                    return Err(self.fault(Problem::ArrayTooLong {
                        count,
                        element: element_size,
                        remaining: self.remaining(),
                    }));
                }
                for i in 0..count {
                    self.value(element).map_err(|e| e.within(Step::Index(i)))?;
                }
                Ok(())
            }
            Ty::Struct(fields) => self.fields(fields),
        }
    }

    fn fields(&mut self, fields: &[Field]) -> Result<(), Fault> {
        for field in fields {
            if field.tag.is_none() && field.in_version(self.version) {
                self.value(&field.ty)
                    .map_err(|e| e.within(Step::Field(field.name)))?;
            }
        }
        if self.flexible {
            self.tagged_fields(fields)?;
        }
        Ok(())
    }

    fn tagged_fields(&mut self, fields: &[Field]) -> Result<(), Fault> {
        let in_section = |e: Fault| e.within(Step::TaggedFields);
        let count = self.uvarint().map_err(in_section)?;
        if u64::from(count) * 2 > self.remaining() as u64 {
            return Err(in_section(self.fault(Problem::TooManyTaggedFields {
                count,
                remaining: self.remaining(),
            })));
        }
        for _ in 0..count {
            let tag = self.uvarint().map_err(in_section)?;
            let size = self.uvarint().map_err(|e| e.within(Step::Tag(tag)))?;
            let known = fields
                .iter()
                .find(|f| f.tag == Some(tag) && f.in_version(self.version));
            let Some(field) = known else {
                self.skip(u64::from(size))
                    .map_err(|e| e.within(Step::Tag(tag)))?;
                continue;
            };
            // Read the content the way the decoder does (which does not look
            // at the size), then insist that it used exactly the size.
            let within = |e: Fault| e.within(Step::Field(field.name));
            let start = self.pos;
            self.value(&field.ty).map_err(within)?;
            let used = self.pos - start;
            if used as u64 != u64::from(size) {
                return Err(within(Fault {
                    problem: Problem::TaggedSizeMismatch {
                        size: size as usize,
                        used,
                    },
                    offset: start,
                    path: Vec::new(),
                }));
            }
        }
        Ok(())
    }
}

/// The fewest bytes `ty` can take at `version`.
pub(crate) fn min_size(ty: &Ty, version: i16, flexible: bool) -> usize {
    match ty {
        Ty::Bool | Ty::Int8 => 1,
        Ty::Int16 => 2,
        Ty::Int32 => 4,
        Ty::Int64 => 8,
        Ty::Uuid => 16,
        Ty::String | Ty::NullableString if !flexible => 2,
        Ty::Bytes | Ty::NullableBytes | Ty::Array(_) | Ty::NullableArray(_) if !flexible => 4,
        Ty::String | Ty::NullableString | Ty::Bytes | Ty::NullableBytes => 1,
        Ty::Array(_) | Ty::NullableArray(_) => 1,
        Ty::Struct(fields) => {
            let own: usize = fields
                .iter()
                .filter(|f| f.tag.is_none() && f.in_version(version))
                .map(|f| min_size(&f.ty, version, flexible))
                .sum();
            own + usize::from(flexible)
        }
    }
}

/// Check `buf[start..]` as a `schema` message at `version`; returns where
/// the message ends.
fn check(schema: &Schema, version: i16, buf: &[u8], start: usize) -> Result<usize, Rejected> {
    if !(schema.min_version..=schema.max_version).contains(&version) {
        return Err(Rejected {
            api: schema.name,
            version,
            path: String::new(),
            offset: start,
            problem: Problem::UnknownVersion,
        });
    }
    let mut walk = Walk {
        buf,
        pos: start,
        version,
        flexible: version >= schema.flexible_since,
    };
    walk.fields(schema.fields)
        .map_err(|e| e.into_rejected(schema, version))?;
    Ok(walk.pos)
}

/// Check `frame[start..]` as the body of `api_key`'s response at `version`.
/// Returns the offset just past the body; bytes after it are not looked at
/// (the decoder ignores them too).
pub(crate) fn check_body(
    api_key: i16,
    version: i16,
    frame: &[u8],
    start: usize,
) -> Result<usize, Rejected> {
    let Some(schema) = schema_for(api_key) else {
        return Err(Rejected {
            api: "unknown API",
            version,
            path: format!("api key {api_key}"),
            offset: start,
            problem: Problem::UnknownApi,
        });
    };
    check(schema, version, frame, start)
}

/// Check the response header (at `header_version`) at the start of
/// `frame`, the answer to an `api_key` request at `version`; returns the
/// header's length. A rejection names the API and a path under `header`.
pub(crate) fn check_header(
    api_key: i16,
    version: i16,
    header_version: i16,
    frame: &[u8],
) -> Result<usize, Rejected> {
    check(&RESPONSE_HEADER, header_version, frame, 0).map_err(|mut e| {
        e.api = schema_for(api_key).map_or("unknown API", |s| s.name);
        e.version = version;
        e.path = if e.path.is_empty() {
            "header".into()
        } else {
            format!("header.{}", e.path)
        };
        e
    })
}

/// Check a whole response frame (after the size prefix): the header at
/// `header_version`, then the body of `api_key`'s response at `version`.
pub(crate) fn check_response(
    api_key: i16,
    version: i16,
    header_version: i16,
    frame: &[u8],
) -> Result<(), Rejected> {
    let body = check_header(api_key, version, header_version, frame)?;
    check_body(api_key, version, frame, body).map(drop)
}

#[cfg(test)]
mod tests;
