//! The `roundrobin` assignor (Java `RoundRobinAssignor`).

use std::collections::{BTreeMap, HashSet};

use super::{
    java_cmp, member_info_cmp, members_in_java_order, subscribed_topics, Assignor, GroupAssignment,
    MemberSubscription, RebalanceProtocol,
};
use crate::TopicPartition;

/// Lays out every partition of every subscribed topic, sorted by topic then
/// partition, and deals them to the members in turn (ordered as Java orders
/// them: static members by `group.instance.id` first, then by member id),
/// skipping a member whose subscription lacks the partition's topic.
///
/// Two members C0 and C1 subscribed to t0 and t1 of 3 partitions each get
/// C0: t0p0, t0p2, t1p1 and C1: t0p1, t1p0, t1p2 (the example in Java's
/// `RoundRobinAssignor` documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobinAssignor;

impl Assignor for RoundRobinAssignor {
    fn name(&self) -> &'static str {
        "roundrobin"
    }

    fn rebalance_protocol(&self) -> RebalanceProtocol {
        RebalanceProtocol::Eager
    }

    fn assign(
        &self,
        members: &[MemberSubscription],
        partitions: &BTreeMap<String, i32>,
    ) -> GroupAssignment {
        let mut members = members_in_java_order(members);
        let mut assignment: GroupAssignment = members
            .iter()
            .map(|m| (m.member_id.clone(), Vec::new()))
            .collect();
        members.sort_by(|a, b| member_info_cmp(a, b));
        let subscribed: Vec<HashSet<&str>> = members
            .iter()
            .map(|m| m.subscription.topics.iter().map(String::as_str).collect())
            .collect();
        let mut topics: Vec<(&str, i32)> = subscribed_topics(&members, partitions)
            .into_iter()
            .collect();
        topics.sort_by(|a, b| java_cmp(a.0, b.0));

        // A circular iterator over the sorted members, as Java's
        // `CircularIterator`: the position carries over between topics.
        let mut next = 0usize;
        for (topic, count) in topics {
            for partition in 0..count {
                // Every topic here is some member's, so this finds one within
                // a lap; the bound only guards against looping forever.
                let mut chosen = None;
                for _ in 0..members.len() {
                    let i = next % members.len();
                    next = i + 1;
                    if subscribed.get(i).is_some_and(|s| s.contains(topic)) {
                        chosen = members.get(i);
                        break;
                    }
                }
                let Some(m) = chosen else { break };
                if let Some(list) = assignment.get_mut(&m.member_id) {
                    list.push(TopicPartition::new(topic, partition));
                }
            }
        }
        assignment
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::assignor::test_support::{counts, subscriber, tps};

    fn member(id: &str, instance: Option<&str>, topics: &[&str]) -> MemberSubscription {
        subscriber(id, instance, topics, &[], -1)
    }

    #[test]
    fn java_documented_example() {
        let members = [
            member("C0", None, &["t0", "t1"]),
            member("C1", None, &["t0", "t1"]),
        ];
        let a = RoundRobinAssignor.assign(&members, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(a["C0"], tps(&[("t0", 0), ("t0", 2), ("t1", 1)]));
        assert_eq!(a["C1"], tps(&[("t0", 1), ("t1", 0), ("t1", 2)]));
    }

    #[test]
    fn java_documented_unequal_subscriptions() {
        // C0: t0; C1: t0, t1; C2: t0, t1, t2; t0/t1/t2 with 1/2/3 partitions.
        let members = [
            member("C2", None, &["t0", "t1", "t2"]),
            member("C0", None, &["t0"]),
            member("C1", None, &["t0", "t1"]),
        ];
        let a = RoundRobinAssignor.assign(&members, &counts(&[("t0", 1), ("t1", 2), ("t2", 3)]));
        assert_eq!(a["C0"], tps(&[("t0", 0)]));
        assert_eq!(a["C1"], tps(&[("t1", 0)]));
        assert_eq!(a["C2"], tps(&[("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)]));
    }

    #[test]
    fn static_members_first_by_instance_id() {
        // RoundRobinAssignorTest.testStaticMemberRoundRobinAssignmentPersistent
        // in spirit: the order follows instance ids, not member ids.
        let members = [
            member("m-1", Some("instance-2"), &["t"]),
            member("m-2", Some("instance-1"), &["t"]),
            member("m-0", None, &["t"]),
        ];
        let a = RoundRobinAssignor.assign(&members, &counts(&[("t", 4)]));
        assert_eq!(a["m-2"], tps(&[("t", 0), ("t", 3)]));
        assert_eq!(a["m-1"], tps(&[("t", 1)]));
        assert_eq!(a["m-0"], tps(&[("t", 2)]));
    }

    #[test]
    fn odd_inputs() {
        assert!(RoundRobinAssignor
            .assign(&[], &counts(&[("t", 3)]))
            .is_empty());
        let members = [
            member("a", None, &[]),
            member("b", None, &["t", "t", "missing", "zero"]),
        ];
        let a = RoundRobinAssignor.assign(&members, &counts(&[("t", 2), ("zero", 0)]));
        assert!(a["a"].is_empty());
        assert_eq!(a["b"], tps(&[("t", 0), ("t", 1)]));
    }
}
