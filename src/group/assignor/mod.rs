//! Partition assignors for the classic consumer-group protocol: `range`,
//! `roundrobin` and `cooperative-sticky`, computing what the Java client's
//! assignors of the same names compute, so a mixed group gets the same
//! assignment whichever member is the leader.
//!
//! The leader calls [`Assignor::assign`] with every member's decoded
//! [`Subscription`] and the partition count
//! of each subscribed topic, and sends each member its share. Implement
//! [`Assignor`] for a custom strategy; everything it needs is in this module
//! (and [`TopicPartition`]).
//!
//! ```
//! use std::collections::BTreeMap;
//! use kastellan::group::assignor::*;
//! use kastellan::TopicPartition;
//!
//! let member = |id: &str| MemberSubscription {
//!     member_id: id.into(),
//!     group_instance_id: None,
//!     subscription: Subscription { topics: vec!["t0".into(), "t1".into()], ..Default::default() },
//! };
//! let partitions = BTreeMap::from([("t0".to_string(), 3), ("t1".to_string(), 3)]);
//! let assignment = RangeAssignor.assign(&[member("C0"), member("C1")], &partitions);
//! let tp = |t: &str, p| TopicPartition::new(t, p);
//! assert_eq!(assignment["C0"], [tp("t0", 0), tp("t0", 1), tp("t1", 0), tp("t1", 1)]);
//! assert_eq!(assignment["C1"], [tp("t0", 2), tp("t1", 2)]);
//! ```
//!
//! Where the Java client orders by hash-map iteration (the sticky assignor
//! visits members in `HashMap` order), the same order is reproduced from
//! Java's `String.hashCode`, taking the order of `members` as the order the
//! Java leader inserted them in: pass members in JoinGroup response order.
//! Strings are compared as Java compares them (UTF-16 code units).
//!
//! Not reproduced: Java's rack-aware variants (KIP-881), which need the racks
//! of partition replicas; they apply only when consumers set `client.rack`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

pub use super::subscription::Subscription;
use crate::TopicPartition;

mod range;
mod roundrobin;
mod sticky;

pub use range::RangeAssignor;
pub use roundrobin::RoundRobinAssignor;
pub use sticky::CooperativeStickyAssignor;

/// How members give up partitions during a rebalance (KIP-429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceProtocol {
    /// Every member revokes all its partitions before rejoining.
    Eager,
    /// Members keep their partitions and revoke only those the new assignment
    /// takes away, then rejoin so the freed partitions can be handed out.
    Cooperative,
}

/// One member's subscription, as the leader sees it in the JoinGroup response.
#[derive(Debug, Clone)]
pub struct MemberSubscription {
    /// The member id the coordinator gave the member.
    pub member_id: String,
    /// The static member's `group.instance.id` (KIP-345), if any.
    pub group_instance_id: Option<String>,
    /// The decoded subscription (a member whose metadata could not be decoded
    /// is passed with an empty topic list).
    pub subscription: Subscription,
}

/// member_id -> assigned partitions (every member present, possibly empty)
pub type GroupAssignment = BTreeMap<String, Vec<TopicPartition>>;

/// A partition assignment strategy, identified in JoinGroup by its name.
pub trait Assignor: Send + Sync + std::fmt::Debug {
    /// The protocol name sent in JoinGroup: `range`, `roundrobin` or
    /// `cooperative-sticky`.
    fn name(&self) -> &'static str;

    /// Whether this assignor needs the eager or allows the cooperative
    /// rebalance protocol.
    fn rebalance_protocol(&self) -> RebalanceProtocol;

    /// Computes the assignment of every member.
    ///
    /// `partitions`: partition count per topic, for every topic any member
    /// subscribed to that exists. Topics missing from it, or with a count
    /// below 1, are skipped. Members should come in JoinGroup response order
    /// (see the module documentation). Each member's partitions are sorted by
    /// topic, then partition.
    fn assign(
        &self,
        members: &[MemberSubscription],
        partitions: &BTreeMap<String, i32>,
    ) -> GroupAssignment;

    /// Subscription user_data this member sends (cooperative-sticky: its
    /// generation, Java-compatible encoding; others None).
    fn subscription_user_data(&self, generation: i32) -> Option<Bytes> {
        let _ = generation;
        None
    }
}

/// The built-in assignor with JoinGroup protocol name `name`.
///
/// ```
/// use kastellan::group::assignor::{assignor_by_name, RebalanceProtocol};
/// let a = assignor_by_name("cooperative-sticky").unwrap();
/// assert_eq!(a.rebalance_protocol(), RebalanceProtocol::Cooperative);
/// assert!(assignor_by_name("sticky").is_none());
/// ```
pub fn assignor_by_name(name: &str) -> Option<Arc<dyn Assignor>> {
    match name {
        "range" => Some(Arc::new(RangeAssignor)),
        "roundrobin" => Some(Arc::new(RoundRobinAssignor)),
        "cooperative-sticky" => Some(Arc::new(CooperativeStickyAssignor)),
        _ => None,
    }
}

/// Compares strings as Java's `String.compareTo` does: by UTF-16 code unit.
/// (Differs from Rust's byte order only when characters at or above U+E000
/// meet characters above U+FFFF.)
pub(crate) fn java_cmp(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Java's `String.hashCode`.
pub(crate) fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// The order of Java's `AbstractPartitionAssignor.MemberInfo.compareTo`
/// (KIP-345): static members first, by `group.instance.id`, then dynamic
/// members by member id.
pub(crate) fn member_info_cmp(a: &MemberSubscription, b: &MemberSubscription) -> Ordering {
    match (&a.group_instance_id, &b.group_instance_id) {
        (Some(x), Some(y)) => java_cmp(x, y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => java_cmp(&a.member_id, &b.member_id),
    }
}

/// Reproduces the iteration order of a `java.util.HashMap`/`HashSet`:
/// entries are visited by bucket (`(h ^ h >>> 16) & (capacity - 1)`), and
/// within a bucket in insertion order (appends go to the chain's tail and
/// resizing splits chains without reordering them). The table starts at 16
/// buckets and doubles when the size exceeds 3/4 of the capacity, or when a
/// chain grows past 8 entries while the table has fewer than 64 buckets
/// (where Java resizes instead of turning the chain into a tree). Tree bins
/// in larger tables, which need nine colliding keys, are not modelled.
#[derive(Debug, Clone)]
pub(crate) struct JavaHashOrder<K> {
    capacity: usize,
    next_seq: u64,
    entries: Vec<(u32, u64, K)>,
}

impl<K: PartialEq> JavaHashOrder<K> {
    pub(crate) fn new() -> Self {
        Self {
            capacity: 16,
            next_seq: 0,
            entries: Vec::new(),
        }
    }

    fn bucket(&self, spread: u32) -> usize {
        (spread as usize) & (self.capacity - 1)
    }

    /// Adds `key` with Java hash code `hash`; an existing key keeps its place.
    pub(crate) fn insert(&mut self, key: K, hash: i32) {
        if self.entries.iter().any(|(_, _, k)| *k == key) {
            return;
        }
        let h = hash as u32;
        let spread = h ^ (h >> 16);
        self.entries.push((spread, self.next_seq, key));
        self.next_seq += 1;
        let bucket = self.bucket(spread);
        let chain = self
            .entries
            .iter()
            .filter(|(s, _, _)| self.bucket(*s) == bucket)
            .count();
        if chain > 8 && self.capacity < 64 {
            self.capacity *= 2;
        }
        if self.entries.len() > self.capacity / 4 * 3 {
            self.capacity *= 2;
        }
    }

    pub(crate) fn remove(&mut self, key: &K) {
        self.entries.retain(|(_, _, k)| k != key);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn sort_key(&self, entry: &(u32, u64, K)) -> (usize, u64) {
        (self.bucket(entry.0), entry.1)
    }

    /// The entry Java's `iterator().next()` would return.
    pub(crate) fn first(&self) -> Option<&K> {
        self.entries
            .iter()
            .min_by_key(|e| self.sort_key(e))
            .map(|(_, _, k)| k)
    }

    /// All entries in Java iteration order.
    pub(crate) fn into_ordered(self) -> Vec<K> {
        let capacity = self.capacity;
        let mut entries = self.entries;
        entries.sort_by_key(|(s, seq, _)| ((*s as usize) & (capacity - 1), *seq));
        entries.into_iter().map(|(_, _, k)| k).collect()
    }
}

/// Members with duplicate ids collapsed as a Java `HashMap` keyed by member id
/// would (the first position, the last value), in Java `HashMap` iteration
/// order.
pub(crate) fn members_in_java_order(members: &[MemberSubscription]) -> Vec<&MemberSubscription> {
    let mut latest: std::collections::HashMap<&str, &MemberSubscription> =
        std::collections::HashMap::new();
    let mut order = JavaHashOrder::new();
    for m in members {
        latest.insert(m.member_id.as_str(), m);
        order.insert(m.member_id.as_str(), java_string_hash(&m.member_id));
    }
    order
        .into_ordered()
        .into_iter()
        .filter_map(|id| latest.get(id).copied())
        .collect()
}

/// The topics the assignors consider: those some member subscribes to that
/// have at least one partition, as Java's `AbstractPartitionAssignor` builds
/// `partitionsPerTopic`.
pub(crate) fn subscribed_topics<'a>(
    members: &[&'a MemberSubscription],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<&'a str, i32> {
    let mut topics = BTreeMap::new();
    for m in members {
        for topic in &m.subscription.topics {
            if let Some(&count) = partitions.get(topic) {
                if count > 0 {
                    topics.insert(topic.as_str(), count);
                }
            }
        }
    }
    topics
}

/// Sorts each member's partitions by topic (Java order), then partition.
pub(crate) fn sort_assignment(assignment: &mut GroupAssignment) {
    for partitions in assignment.values_mut() {
        partitions.sort_by(|a, b| {
            java_cmp(&a.topic, &b.topic).then_with(|| a.partition.cmp(&b.partition))
        });
    }
}

/// Builders shared by the assignors' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;

    use super::{MemberSubscription, TopicPartition};
    use crate::group::subscription::Subscription;

    /// A member subscribed to `topics`, owning `owned` from `generation`.
    pub(crate) fn subscriber(
        id: &str,
        instance: Option<&str>,
        topics: &[&str],
        owned: &[(&str, i32)],
        generation: i32,
    ) -> MemberSubscription {
        MemberSubscription {
            member_id: id.into(),
            group_instance_id: instance.map(Into::into),
            subscription: Subscription {
                topics: topics.iter().map(|t| t.to_string()).collect(),
                owned_partitions: tps(owned),
                generation_id: generation,
                ..Default::default()
            },
        }
    }

    /// Topic-partitions from `(topic, partition)` pairs, in the given order.
    pub(crate) fn tps(list: &[(&str, i32)]) -> Vec<TopicPartition> {
        list.iter()
            .map(|&(t, p)| TopicPartition::new(t, p))
            .collect()
    }

    /// Partition counts from `(topic, count)` pairs.
    pub(crate) fn counts(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|&(t, n)| (t.to_string(), n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_string_hash_matches_known_values() {
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        // Overflowing: "polygenelubricants".hashCode() == Integer.MIN_VALUE.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        // Supplementary characters hash as two UTF-16 units.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
    }

    #[test]
    fn java_cmp_orders_by_utf16_units() {
        assert_eq!(java_cmp("a", "b"), Ordering::Less);
        assert_eq!(java_cmp("ab", "a"), Ordering::Greater);
        // U+FFFD (one unit 0xFFFD) sorts after U+1F600 (0xD83D 0xDE00) in
        // Java, before it in UTF-8 byte order.
        assert_eq!(java_cmp("\u{FFFD}", "\u{1F600}"), Ordering::Greater);
        assert_eq!("\u{FFFD}".cmp("\u{1F600}"), Ordering::Less);
    }

    #[test]
    fn hash_order_follows_buckets_then_insertion() {
        // "a"=97 -> bucket 1, "b"=98 -> bucket 2, "Aa" and "BB" both hash to
        // 2112 -> bucket 0 (2112 & 15), in insertion order.
        let mut order = JavaHashOrder::new();
        for key in ["b", "a", "BB", "Aa"] {
            order.insert(key, java_string_hash(key));
        }
        assert_eq!(order.first(), Some(&"BB"));
        assert_eq!(order.into_ordered(), vec!["BB", "Aa", "a", "b"]);
    }

    #[test]
    fn hash_order_resizes_like_java() {
        // 13 keys exceed the threshold of 12 for 16 buckets: the table has 32
        // buckets, so "a" (97 -> bucket 1 of 32) precedes "Q" (81 -> 17).
        let mut order = JavaHashOrder::new();
        let keys: Vec<String> = ["Q", "a"]
            .iter()
            .map(|s| s.to_string())
            .chain((0..11).map(|i| format!("k{i}")))
            .collect();
        for k in &keys {
            order.insert(k.clone(), java_string_hash(k));
        }
        let ordered = order.into_ordered();
        let pos = |s: &str| ordered.iter().position(|k| k == s).unwrap();
        assert!(pos("a") < pos("Q"));

        // With 12 keys (16 buckets), "Q" (81 & 15 = 1) and "a" (97 & 15 = 1)
        // share a bucket and keep insertion order.
        let mut order = JavaHashOrder::new();
        for k in keys.iter().take(12) {
            order.insert(k.clone(), java_string_hash(k));
        }
        let ordered = order.into_ordered();
        let pos = |s: &str| ordered.iter().position(|k| k == s).unwrap();
        assert!(pos("Q") < pos("a"));
    }

    #[test]
    fn assignor_names() {
        for name in ["range", "roundrobin", "cooperative-sticky"] {
            assert_eq!(assignor_by_name(name).unwrap().name(), name);
        }
        assert_eq!(
            assignor_by_name("range").unwrap().rebalance_protocol(),
            RebalanceProtocol::Eager
        );
    }
}
