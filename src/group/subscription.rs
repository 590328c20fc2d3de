//! The standard `consumer` protocol encodings carried in JoinGroup and
//! SyncGroup: `ConsumerProtocolSubscription` (a member's topics, owned
//! partitions, generation and rack) and `ConsumerProtocolAssignment` (the
//! partitions the leader gives a member).
//!
//! On the wire each is a big-endian `i16` version followed by the body at that
//! version (schemas `ConsumerProtocolSubscription.json` and
//! `ConsumerProtocolAssignment.json` in Apache Kafka; neither is flexible).
//! Encoding uses `kafka-protocol`'s generated codecs. Decoding does not: the
//! bytes come from other group members, and `kafka-protocol` 0.18 reserves
//! `Vec::with_capacity(n)` for an array length `n` read from the input before
//! checking it against the bytes left, so four hostile bytes can make it ask
//! for 64 GiB and abort the process. The decoder here checks every length
//! against the remaining input before allocating and never panics.
//!
//! Decoding follows the Java client (`ConsumerProtocol.deserializeSubscription`
//! / `deserializeAssignment`) where it is lenient, so that whatever a Java
//! leader accepts we accept too:
//! - a version newer than we know is read as our newest version (newer
//!   versions only append fields) and trailing bytes are ignored;
//! - a nullable field (user data, rack id) with any negative length is null;
//! - strings are decoded as UTF-8 with invalid sequences replaced (Java's
//!   `new String(bytes, UTF_8)`);
//! - an empty rack id means no rack.
//!
//! Internal to the crate: assignors see decoded [`Subscription`]s (public,
//! through [`assignor`](super::assignor)); the fuzz targets reach the codecs
//! through the unstable `group::__fuzz` module.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    consumer_protocol_assignment, consumer_protocol_subscription, ConsumerProtocolAssignment,
    ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::{Error, TopicPartition};

/// The newest `ConsumerProtocolSubscription` version this crate knows (v3 adds
/// the rack id, KIP-881). Newer versions decode as this one.
pub const SUBSCRIPTION_VERSION: i16 = 3;

/// The newest `ConsumerProtocolAssignment` version this crate knows. Versions
/// 1-3 have the same body as version 0.
pub const ASSIGNMENT_VERSION: i16 = 3;

/// Kafka's limit on topic name length (`Topic.MAX_NAME_LENGTH`). Entries of
/// owned or assigned partitions naming a longer topic are rejected: they can
/// name no real topic. (Each decoded partition shares its topic's name, so a
/// long name is not copied per partition; the limit still keeps garbage out.)
pub(super) const MAX_TOPIC_NAME_LEN: usize = 249;

const SUBSCRIPTION: &str = "ConsumerProtocolSubscription";
const ASSIGNMENT: &str = "ConsumerProtocolAssignment";

/// What a member sends in JoinGroup: the topics it wants, and (v1+) the
/// partitions it owns, (v2+) the generation they were assigned in and (v3+)
/// its rack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Topics the member subscribes to.
    pub topics: Vec<String>,
    /// Assignor-specific data (cooperative-sticky puts its generation here
    /// for leaders that read subscriptions older than v2).
    pub user_data: Option<Bytes>,
    /// Partitions the member owns now (v1+; empty when decoded from v0).
    pub owned_partitions: Vec<TopicPartition>,
    /// Generation in which `owned_partitions` were assigned (v2+); `-1` when
    /// absent. [`Default`] gives `-1`.
    pub generation_id: i32,
    /// The member's rack (v3+, KIP-881); `None` when absent or empty.
    pub rack_id: Option<String>,
}

impl Default for Subscription {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            user_data: None,
            owned_partitions: Vec::new(),
            generation_id: -1,
            rack_id: None,
        }
    }
}

/// What the leader gives a member in SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberAssignment {
    /// Partitions assigned to the member.
    pub partitions: Vec<TopicPartition>,
    /// Assignor-specific data (none of the built-in assignors sets it).
    pub user_data: Option<Bytes>,
}

/// Why bytes from another member could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No bytes at all, not even the version.
    #[error("{message}: empty input")]
    Empty {
        /// Which message was being decoded.
        message: &'static str,
    },
    /// The input ended inside a field.
    #[error("{message}: truncated reading {field} at byte {offset}: {needed} bytes needed, {available} left")]
    Truncated {
        /// Which message was being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the field in the input.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// The version prefix is negative.
    #[error("{message}: unsupported version {version}")]
    UnsupportedVersion {
        /// Which message was being decoded.
        message: &'static str,
        /// The version read.
        version: i16,
    },
    /// A non-nullable string or array has a negative length.
    #[error("{message}: {field} has negative length {length} at byte {offset}")]
    NegativeLength {
        /// Which message was being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the length in the input.
        offset: usize,
        /// The length read.
        length: i32,
    },
    /// An array claims more elements than the remaining bytes can hold.
    #[error("{message}: {field} claims {count} elements at byte {offset} but only {available} bytes are left")]
    TooManyElements {
        /// Which message was being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the count in the input.
        offset: usize,
        /// The element count read.
        count: i32,
        /// Bytes left after the count.
        available: usize,
    },
    /// A partition list names a topic longer than Kafka allows.
    #[error("{message}: {field} names a topic of {length} bytes at byte {offset}; Kafka topic names have at most 249")]
    TopicNameTooLong {
        /// Which message was being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the name in the input.
        offset: usize,
        /// The name's length in bytes.
        length: usize,
    },
}

fn encode_error(message: &str, version: i16, reason: impl std::fmt::Display) -> Error {
    Error::Protocol {
        broker: "local".into(),
        reason: format!("cannot encode {message} v{version}: {reason}"),
    }
}

fn check_encode_version(message: &str, version: i16, newest: i16) -> Result<(), Error> {
    if (0..=newest).contains(&version) {
        Ok(())
    } else {
        Err(encode_error(
            message,
            version,
            format_args!("versions 0..={newest} are supported"),
        ))
    }
}

/// Groups partitions by topic in order of each topic's first appearance, as
/// Java's `ConsumerProtocol` does (it looks each topic up in an insertion-ordered
/// collection), so that our bytes equal a Java member's for the same input.
fn group_by_topic(partitions: &[TopicPartition]) -> Vec<(&str, Vec<i32>)> {
    let mut groups: Vec<(&str, Vec<i32>)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for tp in partitions {
        match index.get(tp.topic()) {
            Some(&i) => {
                if let Some(group) = groups.get_mut(i) {
                    group.1.push(tp.partition);
                }
            }
            None => {
                index.insert(tp.topic(), groups.len());
                groups.push((tp.topic(), vec![tp.partition]));
            }
        }
    }
    groups
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// Encodes `s` as a version-prefixed `ConsumerProtocolSubscription` at
/// `version` (0..=3). Fields the version lacks are left out, as Kafka's
/// schema marks them ignorable.
pub fn encode_subscription(s: &Subscription, version: i16) -> Result<Bytes, Error> {
    check_encode_version(SUBSCRIPTION, version, SUBSCRIPTION_VERSION)?;
    let owned = group_by_topic(&s.owned_partitions)
        .into_iter()
        .map(|(topic, partitions)| {
            consumer_protocol_subscription::TopicPartition::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(partitions)
        })
        .collect();
    let message = ConsumerProtocolSubscription::default()
        .with_topics(s.topics.iter().map(|t| str_bytes(t)).collect())
        .with_user_data(s.user_data.clone())
        .with_owned_partitions(owned)
        .with_generation_id(s.generation_id)
        .with_rack_id(s.rack_id.as_deref().map(str_bytes));
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    message
        .encode(&mut buf, version)
        .map_err(|e| encode_error(SUBSCRIPTION, version, e))?;
    Ok(buf.freeze())
}

/// Encodes `a` as a version-prefixed `ConsumerProtocolAssignment` at
/// `version` (0..=3; all have the same body).
pub fn encode_assignment(a: &MemberAssignment, version: i16) -> Result<Bytes, Error> {
    check_encode_version(ASSIGNMENT, version, ASSIGNMENT_VERSION)?;
    let assigned = group_by_topic(&a.partitions)
        .into_iter()
        .map(|(topic, partitions)| {
            consumer_protocol_assignment::TopicPartition::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(partitions)
        })
        .collect();
    let message = ConsumerProtocolAssignment::default()
        .with_assigned_partitions(assigned)
        .with_user_data(a.user_data.clone());
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    message
        .encode(&mut buf, version)
        .map_err(|e| encode_error(ASSIGNMENT, version, e))?;
    Ok(buf.freeze())
}

/// Decodes a version-prefixed `ConsumerProtocolSubscription` sent by a group
/// member. Never panics; allocates at most in proportion to the input.
pub fn decode_subscription(bytes: &[u8]) -> Result<Subscription, DecodeError> {
    let mut r = Reader::new(bytes, SUBSCRIPTION);
    let version = r.version()?.min(SUBSCRIPTION_VERSION);
    let count = r.array_len("topics", 2)?;
    let mut topics = Vec::new();
    for _ in 0..count {
        topics.push(r.string("topics")?);
    }
    let user_data = r.nullable_bytes("user_data")?;
    let owned_partitions = if version >= 1 {
        r.topic_partitions("owned_partitions")?
    } else {
        Vec::new()
    };
    let generation_id = if version >= 2 {
        r.i32("generation_id")?
    } else {
        -1
    };
    let rack_id = if version >= 3 {
        r.nullable_string("rack_id")?
            .filter(|rack| !rack.is_empty())
    } else {
        None
    };
    Ok(Subscription {
        topics,
        user_data,
        owned_partitions,
        generation_id,
        rack_id,
    })
}

/// Decodes a version-prefixed `ConsumerProtocolAssignment` sent by the
/// leader. Never panics; allocates at most in proportion to the input.
pub fn decode_assignment(bytes: &[u8]) -> Result<MemberAssignment, DecodeError> {
    let mut r = Reader::new(bytes, ASSIGNMENT);
    r.version()?;
    let partitions = r.topic_partitions("assigned_partitions")?;
    let user_data = r.nullable_bytes("user_data")?;
    Ok(MemberAssignment {
        partitions,
        user_data,
    })
}

/// A bounds-checked big-endian reader over untrusted bytes.
struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8], message: &'static str) -> Self {
        Self {
            input,
            pos: 0,
            message,
        }
    }

    fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.pos)
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.input.get(self.pos..end))
            .ok_or(DecodeError::Truncated {
                message: self.message,
                field,
                offset: self.pos,
                needed: n,
                available,
            })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn version(&mut self) -> Result<i16, DecodeError> {
        if self.input.is_empty() {
            return Err(DecodeError::Empty {
                message: self.message,
            });
        }
        let version = self.i16("version")?;
        if version < 0 {
            return Err(DecodeError::UnsupportedVersion {
                message: self.message,
                version,
            });
        }
        Ok(version)
    }

    /// Reads a non-nullable array length and checks that the remaining bytes
    /// can hold that many elements of at least `min_size` bytes each, so the
    /// caller's loop is bounded by the input size.
    fn array_len(&mut self, field: &'static str, min_size: usize) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let count = self.i32(field)?;
        let Ok(n) = usize::try_from(count) else {
            return Err(DecodeError::NegativeLength {
                message: self.message,
                field,
                offset,
                length: count,
            });
        };
        let available = self.remaining();
        if n > available / min_size.max(1) {
            return Err(DecodeError::TooManyElements {
                message: self.message,
                field,
                offset,
                count,
                available,
            });
        }
        Ok(n)
    }

    fn string_body(&mut self, field: &'static str, len: usize) -> Result<String, DecodeError> {
        Ok(String::from_utf8_lossy(self.take(field, len)?).into_owned())
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let len = self.i16(field)?;
        match usize::try_from(len) {
            Ok(n) => self.string_body(field, n),
            Err(_) => Err(DecodeError::NegativeLength {
                message: self.message,
                field,
                offset,
                length: i32::from(len),
            }),
        }
    }

    fn nullable_string(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        let len = self.i16(field)?;
        match usize::try_from(len) {
            Ok(n) => self.string_body(field, n).map(Some),
            Err(_) => Ok(None),
        }
    }

    fn nullable_bytes(&mut self, field: &'static str) -> Result<Option<Bytes>, DecodeError> {
        let len = self.i32(field)?;
        match usize::try_from(len) {
            Ok(n) => Ok(Some(Bytes::copy_from_slice(self.take(field, n)?))),
            Err(_) => Ok(None),
        }
    }

    /// Reads `[{topic: string, partitions: [int32]}]` and flattens it.
    fn topic_partitions(
        &mut self,
        field: &'static str,
    ) -> Result<Vec<TopicPartition>, DecodeError> {
        // Each entry has at least a 2-byte name length and a 4-byte count.
        let topics = self.array_len(field, 6)?;
        let mut out = Vec::new();
        for _ in 0..topics {
            let offset = self.pos;
            let topic = self.string(field)?;
            if topic.len() > MAX_TOPIC_NAME_LEN {
                return Err(DecodeError::TopicNameTooLong {
                    message: self.message,
                    field,
                    offset,
                    length: topic.len(),
                });
            }
            let topic: std::sync::Arc<str> = topic.into();
            let partitions = self.array_len(field, 4)?;
            for _ in 0..partitions {
                let partition = self.i32(field)?;
                out.push(TopicPartition::new(
                    std::sync::Arc::clone(&topic),
                    partition,
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Decodable;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }

    fn full_subscription() -> Subscription {
        Subscription {
            topics: vec!["t0".into(), "t1".into()],
            user_data: Some(Bytes::from_static(&[0, 0, 0, 5])),
            owned_partitions: vec![tp("t0", 1), tp("t1", 0), tp("t0", 2)],
            generation_id: 5,
            rack_id: Some("rack-a".into()),
        }
    }

    /// What a subscription looks like after a trip through `version`.
    fn at_version(s: &Subscription, version: i16) -> Subscription {
        let mut expected = s.clone();
        if version < 1 {
            expected.owned_partitions.clear();
        } else {
            // Grouped by topic on the wire.
            let mut grouped = Vec::new();
            for (topic, ps) in group_by_topic(&s.owned_partitions) {
                grouped.extend(ps.into_iter().map(|p| tp(topic, p)));
            }
            expected.owned_partitions = grouped;
        }
        if version < 2 {
            expected.generation_id = -1;
        }
        if version < 3 {
            expected.rack_id = None;
        }
        expected
    }

    #[test]
    fn subscription_round_trips_at_every_version() {
        let s = full_subscription();
        for version in 0..=SUBSCRIPTION_VERSION {
            let bytes = encode_subscription(&s, version).unwrap();
            assert_eq!(&bytes[..2], &version.to_be_bytes());
            assert_eq!(
                decode_subscription(&bytes).unwrap(),
                at_version(&s, version),
                "v{version}"
            );
        }
        let empty = Subscription::default();
        for version in 0..=SUBSCRIPTION_VERSION {
            let bytes = encode_subscription(&empty, version).unwrap();
            assert_eq!(decode_subscription(&bytes).unwrap(), empty);
        }
    }

    #[test]
    fn assignment_round_trips_at_every_version() {
        let a = MemberAssignment {
            partitions: vec![tp("a", 0), tp("a", 3), tp("b", 1)],
            user_data: Some(Bytes::from_static(b"xyz")),
        };
        for version in 0..=ASSIGNMENT_VERSION {
            let bytes = encode_assignment(&a, version).unwrap();
            assert_eq!(decode_assignment(&bytes).unwrap(), a, "v{version}");
        }
        let bytes = encode_assignment(&MemberAssignment::default(), 0).unwrap();
        assert_eq!(
            decode_assignment(&bytes).unwrap(),
            MemberAssignment::default()
        );
    }

    /// Bytes written out by hand from ConsumerProtocolSubscription.json v3:
    /// topics [string], user_data nullable bytes, owned_partitions
    /// [{topic string, partitions [int32]}], generation_id int32, rack_id
    /// nullable string; strings are int16-length-prefixed, arrays and bytes
    /// int32-length-prefixed, all big-endian.
    #[test]
    fn subscription_bytes_match_the_schema() {
        let s = Subscription {
            topics: vec!["ab".into(), "c".into()],
            user_data: Some(Bytes::from_static(&[0xde, 0xad])),
            owned_partitions: vec![tp("ab", 1), tp("c", 0), tp("ab", 4)],
            generation_id: 7,
            rack_id: Some("r1".into()),
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x00, 0x03,                         // version 3
            0x00, 0x00, 0x00, 0x02,             // topics: 2
            0x00, 0x02, b'a', b'b',             //   "ab"
            0x00, 0x01, b'c',                   //   "c"
            0x00, 0x00, 0x00, 0x02, 0xde, 0xad, // user_data: 2 bytes
            0x00, 0x00, 0x00, 0x02,             // owned_partitions: 2 topics
            0x00, 0x02, b'a', b'b',             //   "ab"
            0x00, 0x00, 0x00, 0x02,             //   partitions: 2
            0x00, 0x00, 0x00, 0x01,             //     1
            0x00, 0x00, 0x00, 0x04,             //     4
            0x00, 0x01, b'c',                   //   "c"
            0x00, 0x00, 0x00, 0x01,             //   partitions: 1
            0x00, 0x00, 0x00, 0x00,             //     0
            0x00, 0x00, 0x00, 0x07,             // generation_id 7
            0x00, 0x02, b'r', b'1',             // rack_id "r1"
        ];
        assert_eq!(&encode_subscription(&s, 3).unwrap()[..], expected);
        let back = decode_subscription(expected).unwrap();
        assert_eq!(
            back.owned_partitions,
            vec![tp("ab", 1), tp("ab", 4), tp("c", 0)]
        );

        // v0 is topics and user_data only; a null user_data is length -1.
        let v0 = Subscription {
            topics: vec!["x".into()],
            ..Default::default()
        };
        #[rustfmt::skip]
        let expected_v0: &[u8] = &[
            0x00, 0x00,
            0x00, 0x00, 0x00, 0x01, 0x00, 0x01, b'x',
            0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(&encode_subscription(&v0, 0).unwrap()[..], expected_v0);
    }

    /// ConsumerProtocolAssignment.json: assigned_partitions [{topic string,
    /// partitions [int32]}], user_data nullable bytes.
    #[test]
    fn assignment_bytes_match_the_schema() {
        let a = MemberAssignment {
            partitions: vec![tp("t", 0), tp("u", 2), tp("t", 1)],
            user_data: None,
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x00, 0x03,                         // version 3
            0x00, 0x00, 0x00, 0x02,             // assigned_partitions: 2 topics
            0x00, 0x01, b't',                   //   "t"
            0x00, 0x00, 0x00, 0x02,             //   partitions: 2
            0x00, 0x00, 0x00, 0x00,             //     0
            0x00, 0x00, 0x00, 0x01,             //     1
            0x00, 0x01, b'u',                   //   "u"
            0x00, 0x00, 0x00, 0x01,             //   partitions: 1
            0x00, 0x00, 0x00, 0x02,             //     2
            0xff, 0xff, 0xff, 0xff,             // user_data: null
        ];
        assert_eq!(&encode_assignment(&a, 3).unwrap()[..], expected);
        assert_eq!(
            decode_assignment(expected).unwrap().partitions,
            vec![tp("t", 0), tp("t", 1), tp("u", 2)]
        );
    }

    #[test]
    fn our_decoder_agrees_with_kafka_protocol_on_valid_input() {
        let s = full_subscription();
        for version in 0..=SUBSCRIPTION_VERSION {
            let bytes = encode_subscription(&s, version).unwrap();
            let mut body = bytes.slice(2..);
            let theirs = ConsumerProtocolSubscription::decode(&mut body, version).unwrap();
            let ours = decode_subscription(&bytes).unwrap();
            let their_topics: Vec<String> = theirs.topics.iter().map(|t| t.to_string()).collect();
            assert_eq!(ours.topics, their_topics);
            assert_eq!(ours.user_data, theirs.user_data);
            assert_eq!(ours.generation_id, theirs.generation_id);
            assert_eq!(ours.rack_id, theirs.rack_id.map(|r| r.to_string()));
            let their_owned: Vec<TopicPartition> = theirs
                .owned_partitions
                .iter()
                .flat_map(|t| t.partitions.iter().map(|&p| tp(&t.topic.0, p)))
                .collect();
            assert_eq!(ours.owned_partitions, their_owned);
        }
    }

    #[test]
    fn newer_versions_decode_known_fields_and_ignore_the_rest() {
        let s = full_subscription();
        let mut bytes = encode_subscription(&s, 3).unwrap().to_vec();
        bytes[0..2].copy_from_slice(&9i16.to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4, 5]);
        assert_eq!(decode_subscription(&bytes).unwrap(), at_version(&s, 3));

        let a = MemberAssignment {
            partitions: vec![tp("t", 0)],
            user_data: None,
        };
        let mut bytes = encode_assignment(&a, 0).unwrap().to_vec();
        bytes[0..2].copy_from_slice(&i16::MAX.to_be_bytes());
        bytes.push(0xff);
        assert_eq!(decode_assignment(&bytes).unwrap(), a);
    }

    #[test]
    fn malformed_input_is_an_error_that_says_what_is_wrong() {
        assert_eq!(
            decode_subscription(&[]),
            Err(DecodeError::Empty {
                message: SUBSCRIPTION
            })
        );
        assert!(matches!(
            decode_subscription(&[0]),
            Err(DecodeError::Truncated {
                field: "version",
                ..
            })
        ));
        assert_eq!(
            decode_assignment(&[0xff, 0xfe, 0, 0, 0, 0]),
            Err(DecodeError::UnsupportedVersion {
                message: ASSIGNMENT,
                version: -2
            })
        );
        // topics: i32::MAX elements in 0 bytes.
        let err = decode_subscription(&[0, 3, 0x7f, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::TooManyElements {
                field: "topics",
                count: i32::MAX,
                ..
            }
        ));
        assert!(err
            .to_string()
            .contains("topics claims 2147483647 elements"));
        // topics: null is not allowed.
        assert!(matches!(
            decode_subscription(&[0, 0, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::NegativeLength {
                field: "topics",
                length: -1,
                ..
            })
        ));
        // a topic string of length -1.
        assert!(matches!(
            decode_subscription(&[0, 0, 0, 0, 0, 1, 0xff, 0xff]),
            Err(DecodeError::NegativeLength { length: -1, .. })
        ));
        // one topic of 5 bytes, only 1 present.
        assert!(matches!(
            decode_subscription(&[0, 0, 0, 0, 0, 1, 0, 5, b'a']),
            Err(DecodeError::Truncated {
                needed: 5,
                available: 1,
                ..
            })
        ));
        // user_data claiming 2 GiB.
        assert!(matches!(
            decode_subscription(&[0, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]),
            Err(DecodeError::Truncated {
                field: "user_data",
                ..
            })
        ));
        // owned partitions: "a" with i32::MAX partitions.
        let err = decode_subscription(&[
            0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 1, b'a', 0x7f, 0xff, 0xff,
            0xff,
        ])
        .unwrap_err();
        assert!(matches!(
            err,
            DecodeError::TooManyElements {
                field: "owned_partitions",
                ..
            }
        ));
    }

    #[test]
    fn long_topic_names_in_partition_lists_are_rejected() {
        let long = "x".repeat(MAX_TOPIC_NAME_LEN + 1);
        let a = MemberAssignment {
            partitions: vec![tp(&long, 0)],
            user_data: None,
        };
        let bytes = encode_assignment(&a, 0).unwrap();
        assert!(matches!(
            decode_assignment(&bytes),
            Err(DecodeError::TopicNameTooLong { length: 250, .. })
        ));
        let ok = "x".repeat(MAX_TOPIC_NAME_LEN);
        let a = MemberAssignment {
            partitions: vec![tp(&ok, 0)],
            user_data: None,
        };
        assert!(decode_assignment(&encode_assignment(&a, 0).unwrap()).is_ok());
    }

    #[test]
    fn lenient_where_java_is_lenient() {
        // user_data length -7 and rack id length -3 read as null; an empty
        // rack id is no rack; invalid UTF-8 is replaced.
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x00, 0x03,
            0x00, 0x00, 0x00, 0x01, 0x00, 0x02, b'a', 0xff,
            0xff, 0xff, 0xff, 0xf9,
            0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x03,
            0xff, 0xfd,
        ];
        let s = decode_subscription(bytes).unwrap();
        assert_eq!(s.topics, vec!["a\u{fffd}".to_string()]);
        assert_eq!(s.user_data, None);
        assert_eq!(s.rack_id, None);
        assert_eq!(s.generation_id, 3);

        let empty_rack = Subscription {
            rack_id: Some(String::new()),
            ..Default::default()
        };
        let back = decode_subscription(&encode_subscription(&empty_rack, 3).unwrap()).unwrap();
        assert_eq!(back.rack_id, None);
    }

    #[test]
    fn encoding_rejects_unknown_versions_and_oversized_strings() {
        let s = Subscription::default();
        assert!(encode_subscription(&s, 4).is_err());
        assert!(encode_subscription(&s, -1).is_err());
        assert!(encode_assignment(&MemberAssignment::default(), 4).is_err());
        let s = Subscription {
            topics: vec!["x".repeat(40_000)],
            ..Default::default()
        };
        let err = encode_subscription(&s, 0).unwrap_err();
        assert!(err.to_string().contains("ConsumerProtocolSubscription v0"));
    }
}
