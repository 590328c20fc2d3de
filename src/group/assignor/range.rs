//! The `range` assignor (Java `RangeAssignor`).

use std::collections::BTreeMap;

use super::{
    member_info_cmp, members_in_java_order, sort_assignment, subscribed_topics, Assignor,
    GroupAssignment, MemberSubscription, RebalanceProtocol,
};
use crate::TopicPartition;

/// Assigns each topic on its own: the members subscribed to it, ordered as
/// Java orders them (static members by `group.instance.id` first, then the
/// others by member id), get contiguous ranges of its partitions, and the
/// first `partitions % members` of them one partition more.
///
/// Two members C0 and C1 subscribed to t0 and t1 of 3 partitions each get
/// C0: t0p0, t0p1, t1p0, t1p1 and C1: t0p2, t1p2 (the example in Java's
/// `RangeAssignor` documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeAssignor;

impl Assignor for RangeAssignor {
    fn name(&self) -> &'static str {
        "range"
    }

    fn rebalance_protocol(&self) -> RebalanceProtocol {
        RebalanceProtocol::Eager
    }

    fn assign(
        &self,
        members: &[MemberSubscription],
        partitions: &BTreeMap<String, i32>,
    ) -> GroupAssignment {
        // Java collects each topic's consumers from a HashMap and then sorts
        // them stably; starting from the same order keeps ties (two static
        // members with one instance id) where Java puts them.
        let members = members_in_java_order(members);
        let mut assignment: GroupAssignment = members
            .iter()
            .map(|m| (m.member_id.clone(), Vec::new()))
            .collect();
        for (topic, count) in subscribed_topics(&members, partitions) {
            // Java keys the per-topic consumers by member id, so a member
            // listing a topic twice counts once.
            let mut consumers: Vec<&MemberSubscription> = members
                .iter()
                .copied()
                .filter(|m| m.subscription.topics.iter().any(|t| t == topic))
                .collect();
            consumers.sort_by(|a, b| member_info_cmp(a, b));
            let n = consumers.len() as i64;
            if n == 0 {
                continue;
            }
            let count = i64::from(count);
            let per_member = count / n;
            let with_extra = count % n;
            for (i, m) in (0i64..).zip(consumers) {
                let start = per_member * i + i.min(with_extra);
                let len = per_member + i64::from(i < with_extra);
                if let Some(list) = assignment.get_mut(&m.member_id) {
                    list.extend((start..start + len).filter_map(|p| {
                        i32::try_from(p).ok().map(|p| TopicPartition::new(topic, p))
                    }));
                }
            }
        }
        sort_assignment(&mut assignment);
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
            member("C1", None, &["t0", "t1"]),
            member("C0", None, &["t0", "t1"]),
        ];
        let a = RangeAssignor.assign(&members, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(a["C0"], tps(&[("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)]));
        assert_eq!(a["C1"], tps(&[("t0", 2), ("t1", 2)]));
    }

    #[test]
    fn per_topic_consumers_and_extras() {
        // RangeAssignorTest.testTwoConsumersOneTopicOnePartition /
        // testMultipleConsumersMixedTopics: 3 consumers, t1 with 3
        // partitions (all three), t2 with 2 partitions (consumer1 and 2 only).
        let members = [
            member("consumer1", None, &["t1"]),
            member("consumer2", None, &["t1", "t2"]),
            member("consumer3", None, &["t1"]),
        ];
        let a = RangeAssignor.assign(&members, &counts(&[("t1", 3), ("t2", 2)]));
        assert_eq!(a["consumer1"], tps(&[("t1", 0)]));
        assert_eq!(a["consumer2"], tps(&[("t1", 1), ("t2", 0), ("t2", 1)]));
        assert_eq!(a["consumer3"], tps(&[("t1", 2)]));

        let members = [member("a", None, &["t"]), member("b", None, &["t"])];
        let a = RangeAssignor.assign(&members, &counts(&[("t", 1)]));
        assert_eq!(a["a"], tps(&[("t", 0)]));
        assert!(a["b"].is_empty());
    }

    #[test]
    fn static_members_sort_by_instance_id_before_dynamic_members() {
        // Member ids say z < y < x, instance ids say b < c; the dynamic
        // member "a" comes last despite the smallest member id.
        let members = [
            member("z", Some("c"), &["t"]),
            member("y", Some("b"), &["t"]),
            member("a", None, &["t"]),
        ];
        let a = RangeAssignor.assign(&members, &counts(&[("t", 5)]));
        assert_eq!(a["y"], tps(&[("t", 0), ("t", 1)]));
        assert_eq!(a["z"], tps(&[("t", 2), ("t", 3)]));
        assert_eq!(a["a"], tps(&[("t", 4)]));
    }

    #[test]
    fn odd_inputs() {
        assert!(RangeAssignor.assign(&[], &counts(&[("t", 3)])).is_empty());
        let members = [
            member("a", None, &[]),
            member("b", None, &["t", "t", "gone", "empty", "neg"]),
        ];
        let a = RangeAssignor.assign(
            &members,
            &counts(&[("t", 2), ("empty", 0), ("neg", -4), ("unsubscribed", 9)]),
        );
        assert!(a["a"].is_empty());
        assert_eq!(a["b"], tps(&[("t", 0), ("t", 1)]));
        assert_eq!(a.len(), 2);
    }
}
