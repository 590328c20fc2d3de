//! The `cooperative-sticky` assignor (Java `CooperativeStickyAssignor` over
//! `AbstractStickyAssignor`, KIP-54 stickiness, KIP-429 cooperative
//! rebalancing, KIP-792 generation in the subscription).
//!
//! The algorithm is Java's, step for step, over interned partitions: the
//! "constrained" builder when every member has the same subscription, the
//! "general" builder otherwise, then the cooperative adjustment that withholds
//! every partition changing owner. Where Java's result depends on `HashMap`
//! iteration order (which members keep their `maxQuota`, which partition a
//! reverse movement picks) that order is reproduced (see
//! `JavaHashOrder` in the parent module).
//!
//! Deliberate differences from Java, all on input a Java member never sends
//! or where Java's behaviour is unsafe:
//! - owned partitions outside a topic's range, negative, or listed twice by
//!   one member, and topics listed twice, are dropped first (Java keeps
//!   out-of-range ones, which corrupts its unassigned-partition scan);
//! - a member with an empty topic list makes the subscriptions unequal (Java
//!   skips it when it comes first and then gives it partitions);
//! - a conflicting claim is weighed by both members' generation as read for
//!   the assignor (Java reads the earlier claimant's from the v2+ field only,
//!   treating a v0/v1 member's user-data generation as -1, which can hand a
//!   partition to a stale claimant);
//! - the highest generation is computed per call (Java keeps it in the
//!   assignor instance across rebalances);
//! - the previous owner a partition is moved back to while balancing must
//!   still subscribe to its topic (Java does not check);
//! - a partition claimed by two members of one generation is withheld in the
//!   general path too (Java does so only in the constrained path);
//! - on top of Java's constrained-path bookkeeping, any partition given to
//!   a member that did not own it, while another member that lists it loses
//!   it, is withheld (the rule Java's
//!   `ConsumerCoordinator.validateCooperativeAssignment` enforces for other
//!   cooperative assignors), and a member whose claim lost to a later
//!   generation does not count as owning it;
//! - balancing stops after a bounded number of moves.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bytes::Bytes;

use super::{
    java_cmp, java_string_hash, members_in_java_order, Assignor, GroupAssignment, JavaHashOrder,
    MemberSubscription, RebalanceProtocol,
};
use crate::group::subscription::Subscription;
use crate::TopicPartition;

/// Java's `AbstractStickyAssignor.DEFAULT_GENERATION`.
const DEFAULT_GENERATION: i32 = -1;

/// Balanced, sticky and cooperative (KIP-429): members with the same
/// subscription get partition counts differing by at most one, keep what
/// they own as far as balance allows, and a partition moving from one member
/// to another is left unassigned in this rebalance (its owner revokes it and
/// rejoins, and the next rebalance gives it to the new owner). Claims of the
/// same partition by several members are settled by the highest generation
/// (KAFKA-12984); claims within one generation invalidate the partition.
#[derive(Debug, Clone, Copy, Default)]
pub struct CooperativeStickyAssignor;

impl Assignor for CooperativeStickyAssignor {
    fn name(&self) -> &'static str {
        "cooperative-sticky"
    }

    fn rebalance_protocol(&self) -> RebalanceProtocol {
        RebalanceProtocol::Cooperative
    }

    fn assign(
        &self,
        members: &[MemberSubscription],
        partitions: &BTreeMap<String, i32>,
    ) -> GroupAssignment {
        assign(members, partitions)
    }

    /// The generation as a big-endian `int32`, Java's
    /// `COOPERATIVE_STICKY_ASSIGNOR_USER_DATA_V0`, which Java leaders read
    /// when a subscription is older than v2 and so has no generation field.
    fn subscription_user_data(&self, generation: i32) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(&generation.to_be_bytes()))
    }
}

/// The generation the assignor attributes to a member's owned partitions
/// (Java `CooperativeStickyAssignor.memberData`): the v2+ field when present
/// (non-negative), else the user data's leading `int32`; user data too short
/// to hold one counts as the default generation, no user data as none.
pub(crate) fn member_generation(s: &Subscription) -> Option<i32> {
    if s.generation_id >= 0 {
        return Some(s.generation_id);
    }
    let data = s.user_data.as_ref()?;
    Some(
        data.get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(DEFAULT_GENERATION, i32::from_be_bytes),
    )
}

/// A partition as (index of its topic in Java name order, partition number),
/// so the derived order is Java's topic-then-partition order.
type Tp = (usize, i32);
/// A member, as its index in Java `HashMap` order.
type M = usize;

struct Member<'a> {
    id: &'a str,
    /// Subscribed topic names, deduplicated (for the equality check).
    topic_names: BTreeSet<&'a str>,
    /// Subscribed topics that exist, deduplicated.
    topics: Vec<usize>,
    /// Claimed partitions that exist, deduplicated, in claim order.
    owned: Vec<Tp>,
    generation: Option<i32>,
}

struct Input<'a> {
    topic_names: Vec<&'a str>,
    topic_hashes: Vec<i32>,
    counts: Vec<i32>,
    members: Vec<Member<'a>>,
}

impl Input<'_> {
    fn tp_hash(&self, tp: Tp) -> i32 {
        // Java TopicPartition.hashCode: 31 * (31 + partition) + topic.hashCode().
        let topic_hash = self.topic_hashes.get(tp.0).copied().unwrap_or(0);
        31i32
            .wrapping_mul(31i32.wrapping_add(tp.1))
            .wrapping_add(topic_hash)
    }

    fn all_partitions(&self, topics: impl IntoIterator<Item = usize>) -> Vec<Tp> {
        topics
            .into_iter()
            .flat_map(|t| (0..self.counts.get(t).copied().unwrap_or(0)).map(move |p| (t, p)))
            .collect()
    }

    fn id_cmp(&self, a: M, b: M) -> std::cmp::Ordering {
        java_cmp(self.id(a), self.id(b))
    }

    fn id(&self, m: M) -> &str {
        self.members.get(m).map_or("", |m| m.id)
    }
}

fn prepare<'a>(
    members: &[&'a MemberSubscription],
    partitions: &BTreeMap<String, i32>,
) -> Input<'a> {
    let mut names: Vec<&'a str> = super::subscribed_topics(members, partitions)
        .into_keys()
        .collect();
    names.sort_by(|a, b| java_cmp(a, b));
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, &t)| (t, i)).collect();
    let counts: Vec<i32> = names
        .iter()
        .map(|t| partitions.get(*t).copied().unwrap_or(0))
        .collect();
    let members = members
        .iter()
        .map(|m| {
            let topic_names: BTreeSet<&str> =
                m.subscription.topics.iter().map(String::as_str).collect();
            let topics = topic_names
                .iter()
                .filter_map(|t| index.get(t).copied())
                .collect();
            let mut seen = HashSet::new();
            let owned = m
                .subscription
                .owned_partitions
                .iter()
                .filter_map(|tp| {
                    let t = *index.get(tp.topic())?;
                    let count = counts.get(t).copied().unwrap_or(0);
                    (0..count)
                        .contains(&tp.partition)
                        .then_some((t, tp.partition))
                })
                .filter(|tp| seen.insert(*tp))
                .collect();
            Member {
                id: m.member_id.as_str(),
                topic_names,
                topics,
                owned,
                generation: member_generation(&m.subscription),
            }
        })
        .collect();
    Input {
        topic_hashes: names.iter().map(|t| java_string_hash(t)).collect(),
        topic_names: names,
        counts,
        members,
    }
}

fn assign(members: &[MemberSubscription], partitions: &BTreeMap<String, i32>) -> GroupAssignment {
    let ordered = members_in_java_order(members);
    let input = prepare(&ordered, partitions);
    let n = input.members.len();
    if n == 0 {
        return GroupAssignment::new();
    }

    let resolved = resolve_claims(&input);
    let (mut assignment, tracked) = if resolved.all_equal {
        ConstrainedBuilder::new(&input, &resolved).build()
    } else {
        let assignment = GeneralBuilder::new(&input, resolved.owned.clone()).build();
        // Java's general path may hand a partition claimed twice in one
        // generation to one of its claimants while the other still has it;
        // withhold it as the constrained path does.
        (assignment, resolved.multiple_owners.clone())
    };

    // KIP-429: a partition that changes owner is not handed over in the same
    // rebalance. Java's constrained builder tracks these as it goes; the
    // general one (and our extra check) compares against what members own.
    let added_and_revoked = transferring(&input, &resolved.owned, &assignment);
    for list in assignment.iter_mut() {
        list.retain(|tp| !tracked.contains(tp) && !added_and_revoked.contains(tp));
    }

    let mut out = GroupAssignment::new();
    for (m, mut list) in assignment.into_iter().enumerate() {
        list.sort_unstable();
        let partitions = list
            .into_iter()
            .filter_map(|(t, p)| {
                input
                    .topic_names
                    .get(t)
                    .map(|name| TopicPartition::new(*name, p))
            })
            .collect();
        out.insert(input.id(m).to_owned(), partitions);
    }
    out
}

/// Java `CooperativeStickyAssignor.computePartitionsTransferringOwnership`:
/// partitions newly given to a member that some member lists as owned and
/// loses. Java counts a partition as new to a member when the member does
/// not list it; here it is new unless the member's claim survived conflict
/// resolution (`resolved`), so a member holding a stale claim cannot take a
/// partition over from the member of a later generation that still has it.
fn transferring(input: &Input<'_>, resolved: &[Vec<Tp>], assignment: &[Vec<Tp>]) -> HashSet<Tp> {
    let mut added: HashSet<Tp> = HashSet::new();
    let mut revoked: HashSet<Tp> = HashSet::new();
    for (m, assigned) in assignment.iter().enumerate() {
        let owned: HashSet<Tp> = resolved.get(m).into_iter().flatten().copied().collect();
        added.extend(assigned.iter().filter(|tp| !owned.contains(tp)));
        let assigned_set: HashSet<Tp> = assigned.iter().copied().collect();
        if let Some(member) = input.members.get(m) {
            revoked.extend(member.owned.iter().filter(|tp| !assigned_set.contains(tp)));
        }
    }
    added.retain(|tp| revoked.contains(tp));
    added
}

struct Resolved {
    all_equal: bool,
    /// Each member's claims that survive conflict resolution.
    owned: Vec<Vec<Tp>>,
    /// Partitions claimed by two members of the same generation.
    multiple_owners: HashSet<Tp>,
}

/// Java `AbstractStickyAssignor.allSubscriptionsEqual` (as of KAFKA-12984 /
/// KAFKA-13406): checks whether all subscriptions are equal and settles
/// conflicting claims, visiting members in `HashMap` order. A claim by a
/// member of a higher generation wins; equal generations invalidate it.
fn resolve_claims(input: &Input<'_>) -> Resolved {
    let first = input.members.first().map(|m| &m.topic_names);
    let all_equal = input.members.iter().all(|m| Some(&m.topic_names) == first);
    let mut owned: Vec<Vec<Tp>> = vec![Vec::new(); input.members.len()];
    let mut multiple_owners = HashSet::new();
    let mut previous_owner: HashMap<Tp, M> = HashMap::new();
    for (m, member) in input.members.iter().enumerate() {
        let generation = member.generation.unwrap_or(DEFAULT_GENERATION);
        for &tp in &member.owned {
            let Some(&other) = previous_owner.get(&tp) else {
                if let Some(list) = owned.get_mut(m) {
                    list.push(tp);
                }
                previous_owner.insert(tp, m);
                continue;
            };
            let other_generation = input
                .members
                .get(other)
                .and_then(|o| o.generation)
                .unwrap_or(DEFAULT_GENERATION);
            if generation >= other_generation {
                if generation == other_generation {
                    multiple_owners.insert(tp);
                } else if let Some(list) = owned.get_mut(m) {
                    list.push(tp);
                }
                if let Some(list) = owned.get_mut(other) {
                    list.retain(|x| *x != tp);
                }
                previous_owner.insert(tp, m);
            }
        }
    }
    Resolved {
        all_equal,
        owned,
        multiple_owners,
    }
}

/// Java `AbstractStickyAssignor.ConstrainedAssignmentBuilder` (without rack
/// matching): used when all members subscribe to the same topics.
struct ConstrainedBuilder<'i> {
    input: &'i Input<'i>,
    owned: &'i [Vec<Tp>],
    multiple_owners: &'i HashSet<Tp>,
    min_quota: usize,
    max_quota: usize,
    expected_over_min: usize,
    current_over_min: usize,
    assignment: Vec<Vec<Tp>>,
    /// Owned partitions beyond a member's quota, with that member (Java's
    /// `maybeRevokedPartitions`).
    maybe_revoked: HashMap<Tp, M>,
    under_min: Vec<M>,
    exactly_min: VecDeque<M>,
    transferring: HashSet<Tp>,
}

impl<'i> ConstrainedBuilder<'i> {
    fn new(input: &'i Input<'i>, resolved: &'i Resolved) -> Self {
        let n = input.members.len().max(1);
        let total: usize = input
            .counts
            .iter()
            .map(|&c| usize::try_from(c).unwrap_or(0))
            .sum();
        Self {
            input,
            owned: &resolved.owned,
            multiple_owners: &resolved.multiple_owners,
            min_quota: total / n,
            max_quota: total.div_ceil(n),
            expected_over_min: total % n,
            current_over_min: 0,
            assignment: vec![Vec::new(); input.members.len()],
            maybe_revoked: HashMap::new(),
            under_min: Vec::new(),
            exactly_min: VecDeque::new(),
            transferring: HashSet::new(),
        }
    }

    fn build(mut self) -> (Vec<Vec<Tp>>, HashSet<Tp>) {
        let assigned = self.assign_owned_partitions();
        let unassigned: Vec<Tp> = self
            .input
            .all_partitions(0..self.input.counts.len())
            .into_iter()
            .filter(|tp| !assigned.contains(tp))
            .collect();
        let input = self.input;
        self.under_min.sort_by(|&a, &b| input.id_cmp(a, b));
        self.exactly_min
            .make_contiguous()
            .sort_by(|&a, &b| input.id_cmp(a, b));
        self.assign_round_robin(&unassigned);
        (self.assignment, self.transferring)
    }

    /// Keeps each member's owned partitions up to its quota, visiting members
    /// in `HashMap` order: the first members found owning `maxQuota` or more
    /// keep `maxQuota` while fewer than `expectedNumMembersWithOverMinQuota`
    /// have done so.
    fn assign_owned_partitions(&mut self) -> HashSet<Tp> {
        let mut assigned = HashSet::new();
        for m in 0..self.input.members.len() {
            let mut owned: Vec<Tp> = self.owned.get(m).cloned().unwrap_or_default();
            // Java sorts by partition, then topic.
            owned.sort_by_key(|&(t, p)| (p, t));
            owned.retain(|tp| !self.multiple_owners.contains(tp));
            let keep = if owned.len() < self.min_quota {
                self.under_min.push(m);
                owned.len()
            } else if owned.len() >= self.max_quota
                && self.current_over_min < self.expected_over_min
            {
                self.current_over_min += 1;
                if self.current_over_min == self.expected_over_min {
                    self.exactly_min.clear();
                }
                self.max_quota
            } else {
                if self.current_over_min < self.expected_over_min {
                    self.exactly_min.push_back(m);
                }
                self.min_quota
            };
            let (kept, revoked) = owned.split_at(keep.min(owned.len()));
            assigned.extend(kept.iter().copied());
            self.maybe_revoked.extend(revoked.iter().map(|&tp| (tp, m)));
            if let Some(list) = self.assignment.get_mut(m) {
                list.extend_from_slice(kept);
            }
        }
        assigned
    }

    /// Java `assignRoundRobin`: fills members under `minQuota` in turn (an
    /// iterator over them that restarts when exhausted), then tops up members
    /// at exactly `minQuota` to `maxQuota`.
    fn assign_round_robin(&mut self, unassigned: &[Tp]) {
        let mut cursor = 0usize;
        for &tp in unassigned {
            let (m, from_under) = if let Some(&m) = self.under_min.get(cursor) {
                cursor += 1;
                (m, true)
            } else if !self.under_min.is_empty() {
                cursor = 1;
                match self.under_min.first() {
                    Some(&m) => (m, true),
                    None => break,
                }
            } else if let Some(m) = self.exactly_min.pop_front() {
                (m, false)
            } else {
                // Java throws here; the quotas make it unreachable.
                tracing::warn!(partition = ?tp, "cooperative-sticky: no member left to fill");
                break;
            };
            let count = self.assign_new_partition(tp, m);
            if count == self.min_quota {
                if from_under && cursor > 0 {
                    cursor -= 1;
                    if cursor < self.under_min.len() {
                        self.under_min.remove(cursor);
                    }
                }
                self.exactly_min.push_back(m);
            } else if count == self.max_quota {
                self.current_over_min += 1;
            }
        }
    }

    fn assign_new_partition(&mut self, tp: Tp, m: M) -> usize {
        // A partition another member gave up beyond its quota, or one claimed
        // by several members, is changing owner (a member may get back one
        // of its own surplus partitions, which is no transfer).
        let from_other = self.maybe_revoked.get(&tp).is_some_and(|&owner| owner != m);
        if from_other || self.multiple_owners.contains(&tp) {
            self.transferring.insert(tp);
        }
        match self.assignment.get_mut(m) {
            Some(list) => {
                list.push(tp);
                list.len()
            }
            None => 0,
        }
    }
}

/// Java `AbstractStickyAssignor.PartitionMovements`: the moves made while
/// balancing, so that a partition moving back along a path another partition
/// of the same topic took is swapped for that one (keeping each topic's
/// movements free of two-way cycles).
struct Movements {
    by_partition: HashMap<Tp, (M, M)>,
    by_topic: HashMap<usize, HashMap<(M, M), JavaHashOrder<Tp>>>,
}

impl Movements {
    fn new() -> Self {
        Self {
            by_partition: HashMap::new(),
            by_topic: HashMap::new(),
        }
    }

    fn remove_record(&mut self, tp: Tp) -> Option<(M, M)> {
        let pair = self.by_partition.remove(&tp)?;
        if let Some(pairs) = self.by_topic.get_mut(&tp.0) {
            if let Some(set) = pairs.get_mut(&pair) {
                set.remove(&tp);
                if set.is_empty() {
                    pairs.remove(&pair);
                }
            }
            if pairs.is_empty() {
                self.by_topic.remove(&tp.0);
            }
        }
        Some(pair)
    }

    fn add_record(&mut self, tp: Tp, pair: (M, M), hash: i32) {
        self.by_partition.insert(tp, pair);
        self.by_topic
            .entry(tp.0)
            .or_default()
            .entry(pair)
            .or_insert_with(JavaHashOrder::new)
            .insert(tp, hash);
    }

    fn move_partition(&mut self, tp: Tp, old: M, new: M, hash: i32) {
        if self.by_partition.contains_key(&tp) {
            if let Some((src, _)) = self.remove_record(tp) {
                if src != new {
                    self.add_record(tp, (src, new), hash);
                }
            }
        } else {
            self.add_record(tp, (old, new), hash);
        }
    }

    fn actual_partition_to_move(&self, tp: Tp, old: M, new: M) -> Tp {
        let Some(pairs) = self.by_topic.get(&tp.0) else {
            return tp;
        };
        let old = self.by_partition.get(&tp).map_or(old, |&(src, _)| src);
        pairs
            .get(&(new, old))
            .and_then(|set| set.first().copied())
            .unwrap_or(tp)
    }
}

/// Java `AbstractStickyAssignor.GeneralAssignmentBuilder` (without rack
/// matching): used when subscriptions differ.
struct GeneralBuilder<'i> {
    input: &'i Input<'i>,
    topic_consumers: Vec<Vec<M>>,
    current: Vec<Vec<Tp>>,
    /// Members set aside because nothing of theirs can move.
    fixed: Vec<bool>,
    partition_consumer: HashMap<Tp, M>,
    sorted_all_partitions: Vec<Tp>,
    /// Java's `sortedCurrentSubscriptions`: members by assignment size, then
    /// member id.
    by_size: BTreeSet<(usize, MemberKey<'i>)>,
    revocation_required: bool,
    movements: Movements,
    prev_assignment: HashMap<Tp, (M, i32)>,
    /// Moves left before balancing stops. Each move Java's algorithm makes
    /// normally lowers the sum of squared assignment sizes, so it ends on its
    /// own well within this; the bound guarantees it ends on any input.
    move_budget: u64,
}

/// A member ordered by its id in Java order.
#[derive(Clone, Copy, PartialEq, Eq)]
struct MemberKey<'a> {
    id: &'a str,
    index: M,
}

impl Ord for MemberKey<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        java_cmp(self.id, other.id).then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for MemberKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<'i> GeneralBuilder<'i> {
    fn new(input: &'i Input<'i>, current: Vec<Vec<Tp>>) -> Self {
        let mut topic_consumers = vec![Vec::new(); input.counts.len()];
        for (m, member) in input.members.iter().enumerate() {
            for &t in &member.topics {
                if let Some(list) = topic_consumers.get_mut(t) {
                    list.push(m);
                }
            }
        }
        let mut partition_consumer = HashMap::new();
        for (m, list) in current.iter().enumerate() {
            for &tp in list {
                partition_consumer.insert(tp, m);
            }
        }
        // Topics with the fewest potential consumers first, then by name.
        let mut topics: Vec<usize> = (0..input.counts.len()).collect();
        topics.sort_by_key(|&t| (topic_consumers.get(t).map_or(0, Vec::len), t));
        let sorted_all_partitions = input.all_partitions(topics);
        let total = sorted_all_partitions.len() as u64;
        Self {
            move_budget: total
                .saturating_mul(total)
                .saturating_add(total)
                .saturating_add(64),
            input,
            fixed: vec![false; input.members.len()],
            topic_consumers,
            current,
            partition_consumer,
            sorted_all_partitions,
            by_size: BTreeSet::new(),
            revocation_required: false,
            movements: Movements::new(),
            prev_assignment: HashMap::new(),
        }
    }

    fn key(&self, m: M) -> (usize, MemberKey<'i>) {
        (
            self.size(m),
            MemberKey {
                id: self.input.id(m),
                index: m,
            },
        )
    }

    fn size(&self, m: M) -> usize {
        self.current.get(m).map_or(0, Vec::len)
    }

    fn subscribes(&self, m: M, topic: usize) -> bool {
        self.input
            .members
            .get(m)
            .is_some_and(|member| member.topics.contains(&topic))
    }

    fn build(mut self) -> Vec<Vec<Tp>> {
        self.prepopulate_previous_assignment();
        let assigned = self.assign_owned_partitions();
        let unassigned: Vec<Tp> = self
            .sorted_all_partitions
            .iter()
            .copied()
            .filter(|tp| !assigned.contains(tp))
            .collect();
        for m in 0..self.input.members.len() {
            self.by_size.insert(self.key(m));
        }
        self.balance(unassigned);
        self.current
    }

    /// Java `prepopulateCurrentAssignments`: for claims by members of older
    /// generations, the most recent such owner of each partition (the first
    /// member in `HashMap` order on ties), used to move a partition back
    /// there when balancing.
    fn prepopulate_previous_assignment(&mut self) {
        let max_generation = self
            .input
            .members
            .iter()
            .filter_map(|m| m.generation)
            .fold(DEFAULT_GENERATION, i32::max);
        for (m, member) in self.input.members.iter().enumerate() {
            let generation = match member.generation {
                Some(g) if g < max_generation => g,
                None if max_generation > DEFAULT_GENERATION => DEFAULT_GENERATION,
                _ => continue,
            };
            for &tp in &member.owned {
                match self.prev_assignment.get(&tp) {
                    Some(&(_, g)) if generation <= g => {}
                    _ => {
                        self.prev_assignment.insert(tp, (m, generation));
                    }
                }
            }
        }
    }

    /// Keeps owned partitions of topics the owner still subscribes to.
    fn assign_owned_partitions(&mut self) -> HashSet<Tp> {
        let mut assigned = HashSet::new();
        for m in 0..self.current.len() {
            let mut list = std::mem::take(&mut self.current[m]);
            list.retain(|&tp| {
                if self.subscribes(m, tp.0) {
                    assigned.insert(tp);
                    true
                } else {
                    self.revocation_required = true;
                    false
                }
            });
            self.current[m] = list;
        }
        assigned
    }

    fn max_assignment_size(&self, m: M) -> usize {
        self.input.members.get(m).map_or(0, |member| {
            member
                .topics
                .iter()
                .map(|&t| {
                    usize::try_from(self.input.counts.get(t).copied().unwrap_or(0)).unwrap_or(0)
                })
                .sum()
        })
    }

    fn topic_can_move(&self, topic: usize) -> bool {
        self.topic_consumers.get(topic).map_or(0, Vec::len) >= 2
    }

    fn consumer_can_move(&self, m: M) -> bool {
        let size = self.size(m);
        if size < self.max_assignment_size(m) {
            return true;
        }
        self.current
            .get(m)
            .is_some_and(|list| list.iter().any(|tp| self.topic_can_move(tp.0)))
    }

    fn place(&mut self, tp: Tp, m: M) {
        let key = self.key(m);
        self.by_size.remove(&key);
        if let Some(list) = self.current.get_mut(m) {
            list.push(tp);
        }
        self.partition_consumer.insert(tp, m);
        self.by_size.insert(self.key(m));
    }

    /// Java `maybeAssign`: each unassigned partition goes to the least loaded
    /// member subscribed to its topic.
    fn assign_unassigned(&mut self, unassigned: &[Tp]) {
        for &tp in unassigned {
            let target = self
                .by_size
                .iter()
                .map(|(_, k)| k.index)
                .find(|&m| self.subscribes(m, tp.0));
            if let Some(m) = target {
                self.place(tp, m);
            }
        }
    }

    fn balance(&mut self, mut unassigned: Vec<Tp>) {
        let initializing = self
            .by_size
            .last()
            .is_none_or(|&(_, k)| self.size(k.index) == 0);
        self.assign_unassigned(&unassigned);

        // Only partitions of topics with two or more potential consumers,
        // and only members that could gain or lose one, take part.
        let fixed_topics: HashSet<usize> = (0..self.input.counts.len())
            .filter(|&t| !self.topic_can_move(t))
            .collect();
        self.sorted_all_partitions
            .retain(|tp| !fixed_topics.contains(&tp.0));
        unassigned.retain(|tp| !fixed_topics.contains(&tp.0));
        for m in 0..self.input.members.len() {
            if !self.consumer_can_move(m) {
                let key = self.key(m);
                self.by_size.remove(&key);
                if let Some(f) = self.fixed.get_mut(m) {
                    *f = true;
                }
            }
        }

        let before = self.current.clone();
        let before_owners = self.partition_consumer.clone();
        let before_by_size = self.by_size.clone();

        if !self.revocation_required {
            self.perform_reassignments(&unassigned);
        }
        let all = std::mem::take(&mut self.sorted_all_partitions);
        let performed = self.perform_reassignments(&all);
        self.sorted_all_partitions = all;

        // Keep a rebalance of a non-empty assignment only if it improved the
        // balance score.
        if !initializing && performed && self.balance_score() >= self.score_of(&before) {
            self.current = before;
            self.partition_consumer = before_owners;
            self.by_size = before_by_size;
        }

        for m in 0..self.input.members.len() {
            if self.fixed.get(m).copied().unwrap_or(false) {
                self.by_size.insert(self.key(m));
                if let Some(f) = self.fixed.get_mut(m) {
                    *f = false;
                }
            }
        }
    }

    fn participating(&self) -> impl Iterator<Item = M> + '_ {
        (0..self.input.members.len()).filter(|&m| !self.fixed.get(m).copied().unwrap_or(false))
    }

    /// Sum over member pairs of the difference in assignment size.
    fn score_of(&self, assignment: &[Vec<Tp>]) -> i64 {
        let mut sizes: Vec<i64> = self
            .participating()
            .map(|m| assignment.get(m).map_or(0, |l| l.len() as i64))
            .collect();
        sizes.sort_unstable();
        let n = sizes.len() as i64;
        (0i64..).zip(sizes).map(|(i, s)| s * (2 * i - n + 1)).sum()
    }

    fn balance_score(&self) -> i64 {
        self.score_of(&self.current)
    }

    /// Java `isBalanced`: sizes differ by at most one, or no partition could
    /// move to a member with at least two fewer partitions.
    fn is_balanced(&self) -> bool {
        let (Some(&(min, _)), Some(&(max, _))) = (self.by_size.first(), self.by_size.last()) else {
            return true;
        };
        if min + 1 >= max {
            return true;
        }
        for &(size, key) in &self.by_size {
            let m = key.index;
            if size == self.max_assignment_size(m) {
                continue;
            }
            let Some(member) = self.input.members.get(m) else {
                continue;
            };
            for &t in &member.topics {
                for p in 0..self.input.counts.get(t).copied().unwrap_or(0) {
                    // Partitions of fixed members are out of the balancing.
                    let Some(&other) = self.partition_consumer.get(&(t, p)) else {
                        continue;
                    };
                    if other != m
                        && !self.fixed.get(other).copied().unwrap_or(false)
                        && size + 1 < self.size(other)
                    {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Java `performReassignments`: repeatedly walks `partitions`, moving a
    /// partition away from its member while that member has at least two
    /// more than another potential consumer (back to its previous owner if
    /// that one has at least two fewer), until balanced or nothing moves.
    fn perform_reassignments(&mut self, partitions: &[Tp]) -> bool {
        let mut performed = false;
        loop {
            let mut modified = false;
            for &tp in partitions {
                if self.move_budget == 0 || self.is_balanced() {
                    break;
                }
                let Some(&consumer) = self.partition_consumer.get(&tp) else {
                    continue;
                };
                let size = self.size(consumer);
                if let Some(&(previous, _)) = self.prev_assignment.get(&tp) {
                    // Java does not check that the previous owner still
                    // subscribes to the topic; we do, so nobody is given a
                    // topic it did not ask for.
                    if !self.fixed.get(previous).copied().unwrap_or(true)
                        && self.subscribes(previous, tp.0)
                        && size > self.size(previous) + 1
                    {
                        if self.reassign_to(tp, previous) {
                            performed = true;
                            modified = true;
                        }
                        continue;
                    }
                }
                let can_improve = self
                    .topic_consumers
                    .get(tp.0)
                    .is_some_and(|others| others.iter().any(|&o| size > self.size(o) + 1));
                if can_improve {
                    let target = self
                        .by_size
                        .iter()
                        .map(|(_, k)| k.index)
                        .find(|&m| self.subscribes(m, tp.0));
                    if let Some(target) = target {
                        if self.reassign_to(tp, target) {
                            performed = true;
                            modified = true;
                        }
                    }
                }
            }
            if !modified {
                return performed;
            }
        }
    }

    /// Moves `tp` (or the partition the movement history says to move
    /// instead) to `new`; false if nothing moved.
    fn reassign_to(&mut self, tp: Tp, new: M) -> bool {
        let Some(&old) = self.partition_consumer.get(&tp) else {
            return false;
        };
        let actual = self.movements.actual_partition_to_move(tp, old, new);
        self.process_movement(actual, new)
    }

    fn process_movement(&mut self, tp: Tp, new: M) -> bool {
        let Some(&old) = self.partition_consumer.get(&tp) else {
            return false;
        };
        if old == new || self.move_budget == 0 {
            return false;
        }
        self.move_budget -= 1;
        let old_key = self.key(old);
        let new_key = self.key(new);
        self.by_size.remove(&old_key);
        self.by_size.remove(&new_key);
        let hash = self.input.tp_hash(tp);
        self.movements.move_partition(tp, old, new, hash);
        if let Some(list) = self.current.get_mut(old) {
            list.retain(|x| *x != tp);
        }
        if let Some(list) = self.current.get_mut(new) {
            list.push(tp);
        }
        self.partition_consumer.insert(tp, new);
        self.by_size.insert(self.key(new));
        self.by_size.insert(self.key(old));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::assignor::test_support::{counts, subscriber, tps};

    fn member(
        id: &str,
        topics: &[&str],
        owned: &[(&str, i32)],
        generation: i32,
    ) -> MemberSubscription {
        subscriber(id, None, topics, owned, generation)
    }

    fn sizes(a: &GroupAssignment) -> Vec<usize> {
        a.values().map(Vec::len).collect()
    }

    #[test]
    fn user_data_is_the_generation_as_big_endian_int32() {
        assert_eq!(
            CooperativeStickyAssignor
                .subscription_user_data(5)
                .as_deref(),
            Some(&[0, 0, 0, 5][..])
        );
        assert_eq!(
            CooperativeStickyAssignor
                .subscription_user_data(-1)
                .as_deref(),
            Some(&[0xff, 0xff, 0xff, 0xff][..])
        );
    }

    #[test]
    fn generation_comes_from_the_field_then_the_user_data() {
        let mut s = Subscription {
            generation_id: 4,
            user_data: Some(Bytes::from_static(&[0, 0, 0, 9])),
            ..Default::default()
        };
        assert_eq!(member_generation(&s), Some(4));
        s.generation_id = -1;
        assert_eq!(member_generation(&s), Some(9));
        s.user_data = Some(Bytes::from_static(&[0, 0, 0, 9, 1, 2]));
        assert_eq!(member_generation(&s), Some(9));
        s.user_data = Some(Bytes::from_static(&[1]));
        assert_eq!(member_generation(&s), Some(-1));
        s.user_data = None;
        assert_eq!(member_generation(&s), None);
    }

    #[test]
    fn fresh_group_is_balanced() {
        // Java CooperativeStickyAssignorTest-style: 3 members, t0 (3) and t1 (4).
        let members = [
            member("c", &["t0", "t1"], &[], -1),
            member("a", &["t0", "t1"], &[], -1),
            member("b", &["t0", "t1"], &[], -1),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &counts(&[("t0", 3), ("t1", 4)]));
        let mut s = sizes(&a);
        s.sort();
        assert_eq!(s, vec![2, 2, 3]);
        // Members sorted by id take the sorted partitions in turn.
        assert_eq!(a["a"], tps(&[("t0", 0), ("t1", 0), ("t1", 3)]));
        assert_eq!(a["b"], tps(&[("t0", 1), ("t1", 1)]));
        assert_eq!(a["c"], tps(&[("t0", 2), ("t1", 2)]));
    }

    #[test]
    fn a_joining_member_waits_for_revoked_partitions() {
        // Two members own 2 partitions each of t (4); a third joins. Balance
        // needs one partition moved; it is taken from an owner and withheld,
        // so nobody gets a partition another still owns.
        let members = [
            member("a", &["t"], &[("t", 0), ("t", 1)], 3),
            member("b", &["t"], &[("t", 2), ("t", 3)], 3),
            member("c", &["t"], &[], -1),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &counts(&[("t", 4)]));
        let total: usize = sizes(&a).iter().sum();
        assert_eq!(total, 3, "one partition is in transit: {a:?}");
        assert!(a["c"].is_empty());
        assert_eq!(a["a"].len() + a["b"].len(), 3);

        // Second round: owners reflect the first round; c now gets the freed
        // partition.
        let owned = |id: &str| -> Vec<(String, i32)> {
            a[id]
                .iter()
                .map(|tp| (tp.topic().to_string(), tp.partition))
                .collect()
        };
        let round2: Vec<MemberSubscription> = ["a", "b", "c"]
            .iter()
            .map(|id| {
                let o = owned(id);
                let o: Vec<(&str, i32)> = o.iter().map(|(t, p)| (t.as_str(), *p)).collect();
                member(id, &["t"], &o, 4)
            })
            .collect();
        let b = CooperativeStickyAssignor.assign(&round2, &counts(&[("t", 4)]));
        let mut s = sizes(&b);
        s.sort();
        assert_eq!(s, vec![1, 1, 2]);
        for id in ["a", "b"] {
            for tp in &a[id] {
                assert!(b[id].contains(tp), "{id} keeps {tp}");
            }
        }
    }

    #[test]
    fn higher_generation_wins_a_conflicting_claim() {
        // KAFKA-12984: a and b both claim t-0; b's claim is from a later
        // generation, so b keeps it and nothing is withheld.
        let members = [
            member("a", &["t"], &[("t", 0), ("t", 1)], 1),
            member("b", &["t"], &[("t", 0), ("t", 2)], 2),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &counts(&[("t", 4)]));
        assert!(a["b"].contains(&TopicPartition::new("t", 0)));
        assert!(a["a"].contains(&TopicPartition::new("t", 1)));
        assert!(!a["a"].contains(&TopicPartition::new("t", 0)));
    }

    #[test]
    fn same_generation_claims_are_withheld() {
        let members = [
            member("a", &["t"], &[("t", 0)], 2),
            member("b", &["t"], &[("t", 0)], 2),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &counts(&[("t", 2)]));
        for list in a.values() {
            assert!(!list.contains(&TopicPartition::new("t", 0)));
        }
        assert_eq!(sizes(&a).iter().sum::<usize>(), 1);
    }

    #[test]
    fn general_path_respects_subscriptions() {
        // Java StickyAssignorTest.testAddRemoveTopicTwoConsumers-like:
        // different subscriptions force the general builder.
        let members = [
            member("a", &["t1"], &[], -1),
            member("b", &["t1", "t2"], &[], -1),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &counts(&[("t1", 3), ("t2", 3)]));
        assert!(a["a"].iter().all(|tp| tp.topic() == "t1"));
        assert_eq!(sizes(&a), vec![3, 3]);
        assert_eq!(a["b"].iter().filter(|tp| tp.topic() == "t2").count(), 3);
    }

    #[test]
    fn unsubscribed_owned_partitions_move_only_after_revocation() {
        // b dropped t2 from its subscription but still owns t2-0.
        let members = [
            member("a", &["t1", "t2"], &[("t1", 0)], 5),
            member("b", &["t1"], &[("t2", 0), ("t1", 1)], 5),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &counts(&[("t1", 2), ("t2", 1)]));
        assert!(!a["a"].contains(&TopicPartition::new("t2", 0)));
        assert!(!a["b"].contains(&TopicPartition::new("t2", 0)));
        assert!(a["b"].contains(&TopicPartition::new("t1", 1)));
    }

    #[test]
    fn a_stale_claim_does_not_take_over_from_a_later_generation() {
        // "b" won t-3 in generation 0 but no longer subscribes to t; "a"
        // claims t-3 from an older generation. "a" may only get it once "b"
        // has revoked it.
        let mut a_member = member("a", &["t"], &[("t", 3)], -1);
        a_member.subscription.user_data = Some(Bytes::new());
        let members = [a_member, member("b", &[], &[("t", 3)], 0)];
        let a = CooperativeStickyAssignor.assign(&members, &counts(&[("t", 4)]));
        assert_eq!(a["a"], tps(&[("t", 0), ("t", 1), ("t", 2)]));
        assert!(a["b"].is_empty());
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        assert!(CooperativeStickyAssignor
            .assign(&[], &counts(&[("t", 3)]))
            .is_empty());
        let members = [
            member("a", &[], &[("t", 0), ("gone", 3)], 7),
            member(
                "b",
                &["t", "t", "zero"],
                &[("t", 99), ("t", -1), ("t", 1), ("t", 1)],
                7,
            ),
            member("b", &["t"], &[("t", 1)], 7),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &counts(&[("t", 3), ("zero", 0)]));
        assert_eq!(a.len(), 2);
        assert!(a["a"].is_empty());
        // a still lists t-0, so it is withheld from b this round.
        assert_eq!(a["b"], tps(&[("t", 1), ("t", 2)]));

        let members = [member("a", &[], &[], -1), member("b", &[], &[], -1)];
        let a = CooperativeStickyAssignor.assign(&members, &counts(&[]));
        assert_eq!(sizes(&a), vec![0, 0]);
    }
}

/// Cases from Apache Kafka's `AbstractStickyAssignorTest` and
/// `CooperativeStickyAssignorTest` with exact expected assignments. Member
/// order is the order the Java tests put them into their `HashMap`; Java
/// then iterates consumer4, consumer3, consumer2, consumer1 (buckets 9..12),
/// which several expectations depend on.
#[cfg(test)]
mod java_cases {
    use super::*;
    use crate::group::assignor::test_support::{counts, subscriber};

    const GENERATION: i32 = 1;

    fn sub(
        id: &str,
        topics: &[&str],
        owned: &[(&str, i32)],
        generation: i32,
    ) -> MemberSubscription {
        subscriber(id, None, topics, owned, generation)
    }

    fn owning(id: &str, topics: &[&str], owned: &[TopicPartition]) -> MemberSubscription {
        let mut m = sub(id, topics, &[], GENERATION);
        m.subscription.owned_partitions = owned.to_vec();
        m
    }

    fn tps(list: &[(&str, i32)]) -> Vec<TopicPartition> {
        let mut v: Vec<TopicPartition> = list
            .iter()
            .map(|&(t, p)| TopicPartition::new(t, p))
            .collect();
        v.sort();
        v
    }

    /// Partitions of subscribed topics assigned to nobody (what Java's
    /// `partitionsTransferringOwnership` withheld).
    fn withheld(a: &GroupAssignment, partitions: &BTreeMap<String, i32>) -> Vec<TopicPartition> {
        let assigned: HashSet<&TopicPartition> = a.values().flatten().collect();
        let mut out: Vec<TopicPartition> = partitions
            .iter()
            .flat_map(|(t, &n)| (0..n).map(move |p| TopicPartition::new(t.clone(), p)))
            .filter(|tp| !assigned.contains(tp))
            .collect();
        out.sort();
        out
    }

    /// Java's cooperative `verifyValidityAndBalance`: while anything is
    /// revoked, rejoin with the assignment as owned partitions.
    fn converge(
        members: &[MemberSubscription],
        partitions: &BTreeMap<String, i32>,
        mut a: GroupAssignment,
    ) -> GroupAssignment {
        let mut members = members.to_vec();
        for _ in 0..4 {
            let revoking = members.iter().any(|m| {
                m.subscription
                    .owned_partitions
                    .iter()
                    .any(|tp| !a[&m.member_id].contains(tp))
            });
            if !revoking {
                return a;
            }
            for m in &mut members {
                m.subscription.owned_partitions = a[&m.member_id].clone();
                m.subscription.generation_id = GENERATION;
            }
            a = CooperativeStickyAssignor.assign(&members, partitions);
        }
        panic!("no convergence: {a:?}");
    }

    #[test]
    fn two_consumers_one_topic_two_partitions() {
        let p = counts(&[("topic", 2)]);
        let a = CooperativeStickyAssignor.assign(
            &[
                sub("consumer1", &["topic"], &[], -1),
                sub("consumer2", &["topic"], &[], -1),
            ],
            &p,
        );
        assert_eq!(a["consumer1"], tps(&[("topic", 0)]));
        assert_eq!(a["consumer2"], tps(&[("topic", 1)]));
    }

    #[test]
    fn multiple_consumers_mixed_topic_subscriptions() {
        let p = counts(&[("topic1", 3), ("topic2", 2)]);
        let a = CooperativeStickyAssignor.assign(
            &[
                sub("consumer1", &["topic1"], &[], -1),
                sub("consumer2", &["topic1", "topic2"], &[], -1),
                sub("consumer3", &["topic1"], &[], -1),
            ],
            &p,
        );
        assert_eq!(a["consumer1"], tps(&[("topic1", 0), ("topic1", 2)]));
        assert_eq!(a["consumer2"], tps(&[("topic2", 0), ("topic2", 1)]));
        assert_eq!(a["consumer3"], tps(&[("topic1", 1)]));
    }

    #[test]
    fn two_consumers_two_topics_six_partitions() {
        let p = counts(&[("topic1", 3), ("topic2", 3)]);
        let both = ["topic1", "topic2"];
        let a = CooperativeStickyAssignor.assign(
            &[
                sub("consumer1", &both, &[], -1),
                sub("consumer2", &both, &[], -1),
            ],
            &p,
        );
        assert_eq!(
            a["consumer1"],
            tps(&[("topic1", 0), ("topic1", 2), ("topic2", 1)])
        );
        assert_eq!(
            a["consumer2"],
            tps(&[("topic1", 1), ("topic2", 0), ("topic2", 2)])
        );
    }

    #[test]
    fn consumer_owning_min_quota_expected_max_quota() {
        let p = counts(&[("topic1", 2), ("topic2", 3)]);
        let both = ["topic1", "topic2"];
        let a = CooperativeStickyAssignor.assign(
            &[
                sub(
                    "consumer1",
                    &both,
                    &[("topic1", 0), ("topic2", 1)],
                    GENERATION,
                ),
                sub(
                    "consumer2",
                    &both,
                    &[("topic1", 1), ("topic2", 2)],
                    GENERATION,
                ),
            ],
            &p,
        );
        assert!(withheld(&a, &p).is_empty());
        assert_eq!(
            a["consumer1"],
            tps(&[("topic1", 0), ("topic2", 1), ("topic2", 0)])
        );
        assert_eq!(a["consumer2"], tps(&[("topic1", 1), ("topic2", 2)]));
    }

    #[test]
    fn max_quota_consumers_more_than_expected() {
        // Depends on HashMap order: consumer2 is visited before consumer1,
        // keeps maxQuota, and consumer1 gives up topic2-0.
        let p = counts(&[("topic1", 2), ("topic2", 2)]);
        let both = ["topic1", "topic2"];
        let members = [
            sub(
                "consumer1",
                &both,
                &[("topic1", 0), ("topic2", 0)],
                GENERATION,
            ),
            sub(
                "consumer2",
                &both,
                &[("topic1", 1), ("topic2", 1)],
                GENERATION,
            ),
            sub("consumer3", &both, &[], GENERATION),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &p);
        assert_eq!(withheld(&a, &p), tps(&[("topic2", 0)]));
        let a = converge(&members, &p, a);
        assert_eq!(a["consumer1"], tps(&[("topic1", 0)]));
        assert_eq!(a["consumer2"], tps(&[("topic1", 1), ("topic2", 1)]));
        assert_eq!(a["consumer3"], tps(&[("topic2", 0)]));
    }

    #[test]
    fn all_consumers_under_min_quota() {
        let p = counts(&[("topic1", 2), ("topic2", 3)]);
        let both = ["topic1", "topic2"];
        let members = [
            sub("consumer1", &both, &[("topic1", 0)], GENERATION),
            sub("consumer2", &both, &[("topic1", 1)], GENERATION),
            sub("consumer3", &both, &[], GENERATION),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &p);
        assert!(withheld(&a, &p).is_empty());
        assert_eq!(a["consumer1"], tps(&[("topic1", 0), ("topic2", 1)]));
        assert_eq!(a["consumer2"], tps(&[("topic1", 1), ("topic2", 2)]));
        assert_eq!(a["consumer3"], tps(&[("topic2", 0)]));
    }

    #[test]
    fn add_remove_consumer_one_topic() {
        let p = counts(&[("topic", 3)]);
        let a = CooperativeStickyAssignor.assign(&[sub("consumer1", &["topic"], &[], -1)], &p);
        assert_eq!(
            a["consumer1"],
            tps(&[("topic", 0), ("topic", 1), ("topic", 2)])
        );

        let owned1: Vec<(&str, i32)> = vec![("topic", 0), ("topic", 1), ("topic", 2)];
        let members = [
            sub("consumer1", &["topic"], &owned1, GENERATION),
            sub("consumer2", &["topic"], &[], GENERATION),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &p);
        assert_eq!(withheld(&a, &p), tps(&[("topic", 2)]));
        let a = converge(&members, &p, a);
        assert_eq!(a["consumer1"], tps(&[("topic", 0), ("topic", 1)]));
        assert_eq!(a["consumer2"], tps(&[("topic", 2)]));

        let a = CooperativeStickyAssignor.assign(
            &[sub("consumer2", &["topic"], &[("topic", 2)], GENERATION)],
            &p,
        );
        assert_eq!(
            a["consumer2"],
            tps(&[("topic", 0), ("topic", 1), ("topic", 2)])
        );
    }

    #[test]
    fn add_remove_two_consumers_two_topics() {
        let p = counts(&[("topic1", 3), ("topic2", 4)]);
        let all = ["topic1", "topic2"];
        let a = CooperativeStickyAssignor.assign(
            &[
                sub("consumer1", &all, &[], -1),
                sub("consumer2", &all, &[], -1),
            ],
            &p,
        );
        assert_eq!(
            a["consumer1"],
            tps(&[("topic1", 0), ("topic1", 2), ("topic2", 1), ("topic2", 3)])
        );
        assert_eq!(
            a["consumer2"],
            tps(&[("topic1", 1), ("topic2", 0), ("topic2", 2)])
        );

        let members = [
            owning("consumer1", &all, &a["consumer1"]),
            owning("consumer2", &all, &a["consumer2"]),
            sub("consumer3", &all, &[], GENERATION),
            sub("consumer4", &all, &[], GENERATION),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &p);
        // Members keep owned partitions by partition number first, so
        // consumer1 keeps topic1-0 and topic2-1.
        assert_eq!(
            withheld(&a, &p),
            tps(&[("topic1", 2), ("topic2", 2), ("topic2", 3)])
        );
        let a = converge(&members, &p, a);
        assert_eq!(a["consumer1"], tps(&[("topic1", 0), ("topic2", 1)]));
        assert_eq!(a["consumer2"], tps(&[("topic2", 0), ("topic1", 1)]));
        assert_eq!(a["consumer3"], tps(&[("topic1", 2), ("topic2", 3)]));
        assert_eq!(a["consumer4"], tps(&[("topic2", 2)]));

        let a = CooperativeStickyAssignor.assign(
            &[
                owning("consumer3", &all, &a["consumer3"]),
                owning("consumer4", &all, &a["consumer4"]),
            ],
            &p,
        );
        assert_eq!(
            a["consumer3"],
            tps(&[("topic1", 2), ("topic2", 3), ("topic1", 0), ("topic2", 1)])
        );
        assert_eq!(
            a["consumer4"],
            tps(&[("topic2", 2), ("topic1", 1), ("topic2", 0)])
        );
    }

    #[test]
    fn topic_balance_after_reassignment() {
        let p = counts(&[("topic1", 12), ("topic2", 12)]);
        let all = ["topic1", "topic2"];
        let per_topic = |a: &GroupAssignment, expected: usize| {
            for (id, list) in a {
                for topic in all {
                    let n = list.iter().filter(|tp| tp.topic() == topic).count();
                    assert_eq!(n, expected, "{id} {topic}: {a:?}");
                }
            }
        };
        let members = [sub("consumer1", &all, &[], -1)];
        let a = CooperativeStickyAssignor.assign(&members, &p);
        per_topic(&a, 12);

        let members = [
            owning("consumer1", &all, &a["consumer1"]),
            sub("consumer2", &all, &[], GENERATION),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &p);
        let a = converge(&members, &p, a);
        per_topic(&a, 6);

        let members = [
            owning("consumer1", &all, &a["consumer1"]),
            owning("consumer2", &all, &a["consumer2"]),
            sub("consumer3", &all, &[], GENERATION),
            sub("consumer4", &all, &[], GENERATION),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &p);
        let a = converge(&members, &p, a);
        per_topic(&a, 3);

        let members = [
            owning("consumer3", &all, &a["consumer3"]),
            owning("consumer4", &all, &a["consumer4"]),
        ];
        let a = CooperativeStickyAssignor.assign(&members, &p);
        assert!(withheld(&a, &p).is_empty());
        per_topic(&a, 6);
    }

    #[test]
    fn owned_partition_claimed_twice_in_one_generation() {
        // CooperativeStickyAssignorTest...WithEqualPartitionsPerConsumer and
        // ...WithUnequalPartitionsPerConsumer.
        let members = |n: i32| {
            (
                [
                    sub(
                        "consumer1",
                        &["topic"],
                        &[("topic", 0), ("topic", 1)],
                        GENERATION,
                    ),
                    sub(
                        "consumer2",
                        &["topic"],
                        &[("topic", 0), ("topic", 2)],
                        GENERATION,
                    ),
                    sub("consumer3", &["topic"], &[], GENERATION),
                ],
                counts(&[("topic", n)]),
            )
        };
        let (m, p) = members(3);
        let a = CooperativeStickyAssignor.assign(&m, &p);
        assert_eq!(a["consumer1"], tps(&[("topic", 1)]));
        assert_eq!(a["consumer2"], tps(&[("topic", 2)]));
        assert!(a["consumer3"].is_empty());

        let (m, p) = members(4);
        let a = CooperativeStickyAssignor.assign(&m, &p);
        assert_eq!(a["consumer1"], tps(&[("topic", 1), ("topic", 3)]));
        assert_eq!(a["consumer2"], tps(&[("topic", 2)]));
        assert!(a["consumer3"].is_empty());
    }

    #[test]
    fn old_version_subscriptions_carry_the_generation_in_user_data() {
        // CooperativeStickyAssignorTest.testAssignorWithOldVersionSubscriptions:
        // two v1 members (generation only in user data) and one v2 member.
        let v1 = |id: &str, owned: &[(&str, i32)]| {
            let mut m = sub(id, &["topic1"], owned, -1);
            m.subscription.user_data = CooperativeStickyAssignor.subscription_user_data(GENERATION);
            m
        };
        let a = CooperativeStickyAssignor.assign(
            &[
                v1("consumer1", &[("topic1", 0)]),
                v1("consumer2", &[("topic1", 1)]),
                sub("consumer3", &["topic1"], &[], GENERATION),
            ],
            &counts(&[("topic1", 3)]),
        );
        assert_eq!(a["consumer1"], tps(&[("topic1", 0)]));
        assert_eq!(a["consumer2"], tps(&[("topic1", 1)]));
        assert_eq!(a["consumer3"], tps(&[("topic1", 2)]));
    }
}
