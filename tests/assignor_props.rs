//! Property tests for the consumer-protocol decoders and the assignors.
//!
//! Decoders: no panic, bounded time and allocation on random and mutated
//! input. Assignors: valid, complete (eager), balanced, sticky and
//! cooperative-safe assignments for random groups.
//!
//! The decoders are internal; this test reaches them through the unstable
//! `unstable-fuzz` feature (on in the README's test command,
//! `cargo test --features tls,unstable-fuzz`), like the fuzz targets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kastellan::group::__fuzz::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription,
    MemberAssignment, Subscription,
};
use kastellan::group::assignor::{
    Assignor, CooperativeStickyAssignor, GroupAssignment, MemberSubscription, RangeAssignor,
    RoundRobinAssignor,
};
use kastellan::TopicPartition;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Allocation accounting for the decoder tests (per thread, only while
// measuring).

struct CountingAllocator;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            let _ = TOTAL.try_with(|t| t.set(t.get().saturating_add(size)));
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping only touches const-initialised thread-locals, which never
// allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

struct Cost {
    total: usize,
    largest: usize,
    elapsed: Duration,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    TOTAL.with(|t| t.set(0));
    LARGEST.with(|l| l.set(0));
    let start = Instant::now();
    MEASURING.with(|m| m.set(true));
    let out = f();
    MEASURING.with(|m| m.set(false));
    let cost = Cost {
        total: TOTAL.with(Cell::get),
        largest: LARGEST.with(Cell::get),
        elapsed: start.elapsed(),
    };
    (out, cost)
}

/// Decoding `input` stays linear: no single allocation or total beyond a
/// small multiple of the input (the flattened partition lists copy topic
/// names of at most 249 bytes per 4-byte partition number), and no
/// noticeable time.
fn check_decoders(input: &[u8]) -> Result<(), TestCaseError> {
    let n = input.len();
    let (sub, cost) = measure(|| decode_subscription(input));
    prop_assert!(
        cost.largest <= 32 * n + 4096,
        "largest {} for {n} bytes",
        cost.largest
    );
    prop_assert!(
        cost.total <= 160 * n + 8192,
        "total {} for {n} bytes",
        cost.total
    );
    prop_assert!(cost.elapsed < Duration::from_secs(1));
    let (asg, cost) = measure(|| decode_assignment(input));
    prop_assert!(
        cost.largest <= 32 * n + 4096,
        "largest {} for {n} bytes",
        cost.largest
    );
    prop_assert!(
        cost.total <= 160 * n + 8192,
        "total {} for {n} bytes",
        cost.total
    );
    prop_assert!(cost.elapsed < Duration::from_secs(1));

    // What decodes re-encodes and decodes to the same content.
    if let Ok(s) = sub {
        let again = decode_subscription(&encode_subscription(&s, 3).unwrap()).unwrap();
        prop_assert_eq!(&again.topics, &s.topics);
        prop_assert_eq!(&again.user_data, &s.user_data);
        prop_assert_eq!(again.generation_id, s.generation_id);
        prop_assert_eq!(&again.rack_id, &s.rack_id);
        prop_assert_eq!(sorted(again.owned_partitions), sorted(s.owned_partitions));
    }
    if let Ok(a) = asg {
        let again = decode_assignment(&encode_assignment(&a, 0).unwrap()).unwrap();
        prop_assert_eq!(&again.user_data, &a.user_data);
        prop_assert_eq!(sorted(again.partitions), sorted(a.partitions));
    }
    Ok(())
}

fn sorted(mut v: Vec<TopicPartition>) -> Vec<TopicPartition> {
    v.sort();
    v
}

fn arb_topic_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-c]{1,3}",
        1 => "\\PC{0,8}",
        1 => "[x]{240,260}",
    ]
}

fn arb_tp() -> impl Strategy<Value = TopicPartition> {
    (arb_topic_name(), -2i32..6)
        .prop_map(|(topic, partition)| TopicPartition::new(topic, partition))
}

fn arb_subscription() -> impl Strategy<Value = Subscription> {
    (
        prop::collection::vec(arb_topic_name(), 0..4),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        prop::collection::vec(arb_tp(), 0..6),
        -2i32..10,
        prop::option::of("[a-z]{1,4}"),
    )
        .prop_map(
            |(topics, user_data, owned_partitions, generation_id, rack_id)| Subscription {
                topics,
                user_data: user_data.map(Bytes::from),
                owned_partitions,
                generation_id,
                rack_id,
            },
        )
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    /// Overwrite four bytes with a hostile length.
    Length(usize, i32),
    /// Overwrite two bytes with a hostile string length / version.
    Short(usize, i16),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            prop_oneof![
                Just(i32::MAX),
                Just(i32::MIN),
                Just(-1),
                Just(-2),
                Just(0x0100_0000),
                0i32..64
            ]
        )
            .prop_map(|(i, v)| Mutation::Length(i, v)),
        (
            any::<usize>(),
            prop_oneof![Just(i16::MAX), Just(i16::MIN), Just(-1), Just(4), 0i16..8]
        )
            .prop_map(|(i, v)| Mutation::Short(i, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match *m {
        Mutation::Flip(i, x) if len > 0 => bytes[i % len] ^= x,
        Mutation::Insert(i, x) => bytes.insert(i % (len + 1), x),
        Mutation::Delete(i) if len > 0 => {
            bytes.remove(i % len);
        }
        Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
        Mutation::Length(i, v) if len >= 4 => {
            let at = i % (len - 3);
            bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        Mutation::Short(i, v) if len >= 2 => {
            let at = i % (len - 1);
            bytes[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn decoders_survive_random_bytes(input in prop::collection::vec(any::<u8>(), 0..300)) {
        check_decoders(&input)?;
    }

    #[test]
    fn decoders_survive_mutated_encodings(
        s in arb_subscription(),
        version in 0i16..=3,
        mutations in prop::collection::vec(arb_mutation(), 1..5),
    ) {
        let mut bytes = encode_subscription(&s, version).unwrap().to_vec();
        let assignment = MemberAssignment {
            partitions: s.owned_partitions.clone(),
            user_data: s.user_data.clone(),
        };
        let mut asg_bytes = encode_assignment(&assignment, version).unwrap().to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
            apply(&mut asg_bytes, m);
        }
        check_decoders(&bytes)?;
        check_decoders(&asg_bytes)?;
    }

    #[test]
    fn valid_encodings_round_trip(s in arb_subscription(), version in 0i16..=3) {
        let bytes = encode_subscription(&s, version).unwrap();
        let back = decode_subscription(&bytes);
        // Topic names in partition lists longer than Kafka allows are
        // refused; everything else comes back.
        if s.owned_partitions.iter().any(|tp| tp.topic().len() > 249) && version >= 1 {
            prop_assert!(back.is_err());
        } else {
            let back = back.unwrap();
            prop_assert_eq!(&back.topics, &s.topics);
            prop_assert_eq!(&back.user_data, &s.user_data);
            if version >= 1 {
                prop_assert_eq!(sorted(back.owned_partitions), sorted(s.owned_partitions.clone()));
            }
            prop_assert_eq!(back.generation_id, if version >= 2 { s.generation_id } else { -1 });
            prop_assert_eq!(back.rack_id, if version >= 3 { s.rack_id.clone() } else { None });
        }
    }
}

// ---------------------------------------------------------------------------
// Assignors.

const TOPICS: [&str; 6] = ["t0", "t1", "t2", "t3", "t4", "t5"];

/// Partition counts: some topics missing, some with 0 or negative counts.
fn arb_counts() -> impl Strategy<Value = BTreeMap<String, i32>> {
    prop::collection::btree_map(0usize..5, prop_oneof![1 => -1i32..=0, 6 => 1i32..8], 0..5)
        .prop_map(|m| {
            m.into_iter()
                .map(|(t, n)| (TOPICS[t].to_string(), n))
                .collect()
        })
}

fn arb_topics() -> impl Strategy<Value = Vec<String>> {
    // Index 5 is never in the counts (a topic that does not exist); repeats
    // happen.
    prop::collection::vec(0usize..6, 0..5)
        .prop_map(|v| v.into_iter().map(|t| TOPICS[t].to_string()).collect())
}

fn arb_owned() -> impl Strategy<Value = Vec<TopicPartition>> {
    prop::collection::vec((0usize..6, -1i32..9), 0..8).prop_map(|v| {
        v.into_iter()
            .map(|(t, p)| TopicPartition::new(TOPICS[t], p))
            .collect()
    })
}

fn arb_generation_data() -> impl Strategy<Value = (i32, Option<Bytes>)> {
    prop_oneof![
        4 => (-1i32..4).prop_map(|g| (g, None)),
        // A v0/v1 member: generation only in the user data.
        1 => (-1i32..4).prop_map(|g| (-1, Some(Bytes::copy_from_slice(&g.to_be_bytes())))),
        // Garbage user data.
        1 => prop::collection::vec(any::<u8>(), 0..3).prop_map(|b| (-1, Some(Bytes::from(b)))),
    ]
}

fn arb_members() -> impl Strategy<Value = Vec<MemberSubscription>> {
    prop::collection::vec(
        (
            arb_topics(),
            arb_owned(),
            arb_generation_data(),
            prop::option::weighted(0.2, 0u8..4),
        ),
        0..7,
    )
    .prop_shuffle()
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(
                |(i, (topics, owned, (generation, user_data), instance))| MemberSubscription {
                    member_id: format!("member-{}", (i * 7919) % 97),
                    group_instance_id: instance.map(|x| format!("instance-{x}-{i}")),
                    subscription: Subscription {
                        topics,
                        user_data,
                        owned_partitions: owned,
                        generation_id: generation,
                        rack_id: None,
                    },
                },
            )
            .collect()
    })
}

/// Members that all subscribe to the same topics, with no owned partitions.
fn arb_fresh_homogeneous() -> impl Strategy<Value = (Vec<MemberSubscription>, BTreeMap<String, i32>)>
{
    (arb_topics(), 1usize..9, arb_counts()).prop_map(|(topics, n, counts)| {
        let members = (0..n)
            .map(|i| MemberSubscription {
                member_id: format!("c-{i}"),
                group_instance_id: None,
                subscription: Subscription {
                    topics: topics.clone(),
                    ..Default::default()
                },
            })
            .collect();
        (members, counts)
    })
}

fn effective_topics(m: &MemberSubscription, counts: &BTreeMap<String, i32>) -> BTreeSet<String> {
    m.subscription
        .topics
        .iter()
        .filter(|t| counts.get(*t).is_some_and(|&n| n > 0))
        .cloned()
        .collect()
}

/// The member's generation as the cooperative-sticky assignor reads it.
fn generation(s: &Subscription) -> i32 {
    if s.generation_id >= 0 {
        return s.generation_id;
    }
    match &s.user_data {
        None => -1,
        Some(b) if b.len() >= 4 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        Some(_) => -1,
    }
}

/// Unique members, the last of a repeated id winning.
fn unique(members: &[MemberSubscription]) -> HashMap<&str, &MemberSubscription> {
    members.iter().map(|m| (m.member_id.as_str(), m)).collect()
}

fn all_partitions(
    members: &[MemberSubscription],
    counts: &BTreeMap<String, i32>,
) -> BTreeSet<TopicPartition> {
    unique(members)
        .values()
        .flat_map(|m| effective_topics(m, counts))
        .flat_map(|t| (0..counts[&t]).map(move |p| TopicPartition::new(t.clone(), p)))
        .collect()
}

/// Holds for every assignor: every member present, every partition at most
/// once, only to a member subscribed to its topic, and only partitions that
/// exist.
fn check_valid(
    members: &[MemberSubscription],
    counts: &BTreeMap<String, i32>,
    a: &GroupAssignment,
) -> Result<(), TestCaseError> {
    let by_id = unique(members);
    let ids: BTreeSet<&str> = by_id.keys().copied().collect();
    let assigned_ids: BTreeSet<&str> = a.keys().map(String::as_str).collect();
    prop_assert_eq!(ids, assigned_ids);
    let mut seen = HashSet::new();
    for (id, list) in a {
        let member = by_id[id.as_str()];
        for tp in list {
            prop_assert!(seen.insert(tp.clone()), "{} assigned twice: {:?}", tp, a);
            prop_assert!(
                member.subscription.topics.iter().any(|t| t == tp.topic()),
                "{} given to {} which does not subscribe to it",
                tp,
                id
            );
            let count = counts.get(tp.topic()).copied().unwrap_or(0);
            prop_assert!(
                (0..count).contains(&tp.partition()),
                "{} does not exist",
                tp
            );
        }
    }
    Ok(())
}

fn check_complete(
    members: &[MemberSubscription],
    counts: &BTreeMap<String, i32>,
    a: &GroupAssignment,
) -> Result<(), TestCaseError> {
    let assigned: BTreeSet<TopicPartition> = a.values().flatten().cloned().collect();
    prop_assert_eq!(assigned, all_partitions(members, counts), "{:?}", a);
    Ok(())
}

/// Members with the same effective subscription get counts differing by at
/// most one.
fn check_balanced(
    members: &[MemberSubscription],
    counts: &BTreeMap<String, i32>,
    a: &GroupAssignment,
) -> Result<(), TestCaseError> {
    let mut by_subscription: BTreeMap<BTreeSet<String>, Vec<usize>> = BTreeMap::new();
    for (id, m) in unique(members) {
        by_subscription
            .entry(effective_topics(m, counts))
            .or_default()
            .push(a[id].len());
    }
    for (topics, sizes) in by_subscription {
        let (min, max) = (sizes.iter().min(), sizes.iter().max());
        if let (Some(min), Some(max)) = (min, max) {
            prop_assert!(
                max - min <= 1,
                "unbalanced for {:?}: {:?} in {:?}",
                topics,
                sizes,
                a
            );
        }
    }
    Ok(())
}

/// Cooperative safety. (1) Java's `validateCooperativeAssignment`: no
/// partition is newly given to one member while another member that lists it
/// as owned loses it. (2) No partition goes to a member while another member
/// of the current (highest) generation lists it as owned.
fn check_cooperative(
    members: &[MemberSubscription],
    a: &GroupAssignment,
) -> Result<(), TestCaseError> {
    let by_id = unique(members);
    let mut added = HashSet::new();
    let mut revoked = HashSet::new();
    for (id, list) in a {
        let owned = &by_id[id.as_str()].subscription.owned_partitions;
        added.extend(list.iter().filter(|tp| !owned.contains(tp)).cloned());
        revoked.extend(owned.iter().filter(|tp| !list.contains(tp)).cloned());
    }
    let both: Vec<_> = added.intersection(&revoked).collect();
    prop_assert!(both.is_empty(), "moved directly: {:?} in {:?}", both, a);

    let current = by_id
        .values()
        .map(|m| generation(&m.subscription))
        .max()
        .unwrap_or(-1);
    for (id, list) in a {
        for tp in list {
            for (other, m) in &by_id {
                if other != id && generation(&m.subscription) == current {
                    prop_assert!(
                        !m.subscription.owned_partitions.contains(tp),
                        "{} given to {} while {} (generation {}) owns it: {:?}",
                        tp,
                        id,
                        other,
                        current,
                        a
                    );
                }
            }
        }
    }
    Ok(())
}

/// Rejoins with the assignment as owned partitions at `generation`.
fn rejoin(
    members: &[MemberSubscription],
    a: &GroupAssignment,
    generation: i32,
) -> Vec<MemberSubscription> {
    let mut seen = HashSet::new();
    let mut out: Vec<MemberSubscription> = members
        .iter()
        .rev()
        .filter(|m| seen.insert(m.member_id.clone()))
        .cloned()
        .collect();
    out.reverse();
    for m in &mut out {
        m.subscription.owned_partitions = a[&m.member_id].clone();
        m.subscription.generation_id = generation;
        m.subscription.user_data = None;
    }
    out
}

fn revoking(members: &[MemberSubscription], a: &GroupAssignment) -> bool {
    members.iter().any(|m| {
        m.subscription
            .owned_partitions
            .iter()
            .any(|tp| !a[&m.member_id].contains(tp))
    })
}

/// Runs the cooperative protocol to a stable assignment: rejoining while
/// anyone revokes. Returns the final members (owning their last assignment)
/// and assignment.
fn converge(
    mut members: Vec<MemberSubscription>,
    counts: &BTreeMap<String, i32>,
    mut a: GroupAssignment,
    mut generation: i32,
) -> Result<(Vec<MemberSubscription>, GroupAssignment), TestCaseError> {
    for _ in 0..4 {
        generation += 1;
        members = rejoin(&members, &a, generation);
        a = CooperativeStickyAssignor.assign(&members, counts);
        check_valid(&members, counts, &a)?;
        check_cooperative(&members, &a)?;
        if !revoking(&members, &a) {
            return Ok((members, a));
        }
    }
    Err(TestCaseError::fail(format!("no stable assignment: {a:?}")))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn eager_assignors_are_valid_and_complete(members in arb_members(), counts in arb_counts()) {
        for assignor in [&RangeAssignor as &dyn Assignor, &RoundRobinAssignor] {
            let a = assignor.assign(&members, &counts);
            check_valid(&members, &counts, &a)?;
            check_complete(&members, &counts, &a)?;
            // Deterministic, and independent of member order (instance ids
            // are unique here).
            prop_assert_eq!(&assignor.assign(&members, &counts), &a);
            let mut reversed = members.clone();
            reversed.reverse();
            if unique(&members).len() == members.len() {
                prop_assert_eq!(&assignor.assign(&reversed, &counts), &a);
            }
        }
    }

    #[test]
    fn eager_assignors_balance_identical_subscriptions((members, counts) in arb_fresh_homogeneous()) {
        for assignor in [&RangeAssignor as &dyn Assignor, &RoundRobinAssignor] {
            let a = assignor.assign(&members, &counts);
            check_valid(&members, &counts, &a)?;
            check_complete(&members, &counts, &a)?;
        }
        // Round robin balances the whole subscription; range each topic.
        check_balanced(&members, &counts, &RoundRobinAssignor.assign(&members, &counts))?;
    }

    #[test]
    fn cooperative_sticky_is_valid_and_safe_on_any_input(members in arb_members(), counts in arb_counts()) {
        let a = CooperativeStickyAssignor.assign(&members, &counts);
        check_valid(&members, &counts, &a)?;
        check_cooperative(&members, &a)?;
        prop_assert_eq!(&CooperativeStickyAssignor.assign(&members, &counts), &a);
    }

    #[test]
    fn cooperative_sticky_fresh_groups_are_complete_and_balanced(
        members in arb_members(),
        counts in arb_counts(),
    ) {
        let fresh: Vec<MemberSubscription> = members
            .into_iter()
            .map(|mut m| {
                m.subscription.owned_partitions.clear();
                m.subscription.generation_id = -1;
                m.subscription.user_data = None;
                m
            })
            .collect();
        let a = CooperativeStickyAssignor.assign(&fresh, &counts);
        check_valid(&fresh, &counts, &a)?;
        check_complete(&fresh, &counts, &a)?;
        check_balanced(&fresh, &counts, &a)?;
    }

    #[test]
    fn cooperative_sticky_converges_to_complete_balanced_and_stable(
        members in arb_members(),
        counts in arb_counts(),
    ) {
        // From arbitrary (even conflicting) ownership, the rounds of the
        // cooperative protocol end in a complete, balanced assignment that a
        // further rebalance leaves alone.
        let a = CooperativeStickyAssignor.assign(&members, &counts);
        check_cooperative(&members, &a)?;
        let (members, a) = converge(members, &counts, a, 10)?;
        check_complete(&members, &counts, &a)?;
        check_balanced(&members, &counts, &a)?;
        let again = CooperativeStickyAssignor.assign(&rejoin(&members, &a, 20), &counts);
        prop_assert_eq!(again, a);
    }

    #[test]
    fn cooperative_sticky_keeps_owned_partitions_within_quota(
        (members, counts) in arb_fresh_homogeneous(),
        leave in prop::collection::vec(any::<bool>(), 9),
        joiners in 0usize..3,
        more in prop::collection::btree_map(0usize..5, 1i32..8, 0..2),
    ) {
        // A stable group changes (members leave and join, topics appear or
        // grow). Each remaining member keeps min(owned, minQuota) of what it
        // had, and no partition moves directly between members.
        let a = CooperativeStickyAssignor.assign(&members, &counts);
        let (members, a) = converge(members, &counts, a, 0)?;
        let mut next: Vec<MemberSubscription> = rejoin(&members, &a, 5)
            .into_iter()
            .zip(&leave)
            .filter(|(_, gone)| !**gone)
            .map(|(m, _)| m)
            .collect();
        let topics = members.first().map(|m| m.subscription.topics.clone()).unwrap_or_default();
        for j in 0..joiners {
            next.push(MemberSubscription {
                member_id: format!("new-{j}"),
                group_instance_id: None,
                subscription: Subscription { topics: topics.clone(), ..Default::default() },
            });
        }
        let mut counts = counts;
        for (t, n) in more {
            let entry = counts.entry(TOPICS[t].to_string()).or_insert(0);
            *entry = (*entry).max(n);
        }
        let b = CooperativeStickyAssignor.assign(&next, &counts);
        check_valid(&next, &counts, &b)?;
        check_cooperative(&next, &b)?;
        if next.is_empty() {
            return Ok(());
        }
        let total = all_partitions(&next, &counts).len();
        let min_quota = total / next.len();
        for m in &next {
            let owned = &m.subscription.owned_partitions;
            let kept = b[&m.member_id].iter().filter(|tp| owned.contains(tp)).count();
            prop_assert!(
                kept >= owned.len().min(min_quota),
                "{} kept {} of {} (minQuota {}): {:?}",
                m.member_id, kept, owned.len(), min_quota, b
            );
        }
        let (next, b) = converge(next, &counts, b, 5)?;
        check_complete(&next, &counts, &b)?;
        check_balanced(&next, &counts, &b)?;
    }
}

#[test]
fn duplicate_member_ids_collapse_to_the_last_subscription() {
    let member = |topics: &[&str]| MemberSubscription {
        member_id: "same".into(),
        group_instance_id: None,
        subscription: Subscription {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        },
    };
    let counts = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 1)]);
    let members = [member(&["a"]), member(&["b"])];
    for assignor in [
        &RangeAssignor as &dyn Assignor,
        &RoundRobinAssignor,
        &CooperativeStickyAssignor,
    ] {
        let a = assignor.assign(&members, &counts);
        assert_eq!(a.len(), 1, "{}", assignor.name());
        assert_eq!(
            a["same"],
            vec![TopicPartition::new("b", 0)],
            "{}",
            assignor.name()
        );
    }
}

#[test]
fn a_larger_group_is_assigned_quickly() {
    // 60 members over 30 topics of 1..=40 partitions (about 600 partitions),
    // half with a different subscription, then one member leaves.
    let counts: BTreeMap<String, i32> = (0..30)
        .map(|t| (format!("topic-{t}"), 1 + (t * 7) % 40))
        .collect();
    let all: Vec<String> = counts.keys().cloned().collect();
    let members: Vec<MemberSubscription> = (0u32..60)
        .map(|i| MemberSubscription {
            member_id: format!("consumer-{i}-{:08x}", i.wrapping_mul(2_654_435_761u32)),
            group_instance_id: None,
            subscription: Subscription {
                topics: if i % 2 == 0 {
                    all.clone()
                } else {
                    all[..20].to_vec()
                },
                ..Default::default()
            },
        })
        .collect();
    let start = Instant::now();
    for assignor in [
        &RangeAssignor as &dyn Assignor,
        &RoundRobinAssignor,
        &CooperativeStickyAssignor,
    ] {
        let a = assignor.assign(&members, &counts);
        assert_eq!(
            a.values().map(Vec::len).sum::<usize>(),
            counts.values().sum::<i32>() as usize
        );
    }
    let a = CooperativeStickyAssignor.assign(&members, &counts);
    let mut next = rejoin(&members, &a, 1);
    next.remove(17);
    let b = CooperativeStickyAssignor.assign(&next, &counts);
    let kept = next.iter().all(|m| {
        m.subscription
            .owned_partitions
            .iter()
            .all(|tp| b[&m.member_id].contains(tp))
    });
    assert!(kept, "a departure moves nobody's partitions away");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
