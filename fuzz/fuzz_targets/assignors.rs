#![no_main]

use std::collections::{BTreeMap, HashMap, HashSet};

use kastellan::group::assignor::{assignor_by_name, MemberSubscription, Subscription};
use kastellan::TopicPartition;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const TOPICS: [&str; 6] = ["t0", "t1", "t2", "t3", "t4", "t5"];

fn group(u: &mut Unstructured<'_>) -> Result<(Vec<MemberSubscription>, BTreeMap<String, i32>)> {
    let mut counts = BTreeMap::new();
    for topic in &TOPICS[..5] {
        if u.arbitrary()? {
            counts.insert(topic.to_string(), u.int_in_range(-1..=40)?);
        }
    }
    let n = u.int_in_range(0..=24)?;
    let mut members = Vec::new();
    for _ in 0..n {
        let id = format!("m{}", u.int_in_range(0u8..=40)?);
        let topics = (0..u.int_in_range(0..=6)?)
            .map(|_| Ok(TOPICS[u.choose_index(TOPICS.len())?].to_string()))
            .collect::<Result<Vec<_>>>()?;
        let owned = (0..u.int_in_range(0..=12)?)
            .map(|_| {
                let topic = TOPICS[u.choose_index(TOPICS.len())?];
                Ok(TopicPartition::new(topic, u.int_in_range(-2..=44)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let user_data: Option<Vec<u8>> = u.arbitrary()?;
        members.push(MemberSubscription {
            member_id: id,
            group_instance_id: u.arbitrary::<Option<u8>>()?.map(|x| format!("i{x}")),
            subscription: Subscription {
                topics,
                user_data: user_data.map(Into::into),
                owned_partitions: owned,
                generation_id: u.int_in_range(-2..=6)?,
                rack_id: None,
            },
        });
    }
    Ok((members, counts))
}

fuzz_target!(|data: &[u8]| {
    let Ok((members, counts)) = group(&mut Unstructured::new(data)) else {
        return;
    };
    let by_id: HashMap<&str, &MemberSubscription> =
        members.iter().map(|m| (m.member_id.as_str(), m)).collect();
    for name in ["range", "roundrobin", "cooperative-sticky"] {
        let assignor = assignor_by_name(name).expect("built-in assignor");
        let a = assignor.assign(&members, &counts);
        assert_eq!(a.len(), by_id.len());
        let mut seen = HashSet::new();
        let (mut added, mut revoked) = (HashSet::new(), HashSet::new());
        for (id, list) in &a {
            let m = by_id[id.as_str()];
            for tp in list {
                assert!(seen.insert(tp.clone()), "{name}: {tp} twice");
                assert!(
                    m.subscription.topics.iter().any(|t| t == tp.topic()),
                    "{name}: {tp} unsubscribed"
                );
                let count = counts.get(tp.topic()).copied().unwrap_or(0);
                assert!((0..count).contains(&tp.partition()), "{name}: {tp} does not exist");
            }
            let owned = &m.subscription.owned_partitions;
            added.extend(list.iter().filter(|tp| !owned.contains(tp)).cloned());
            revoked.extend(owned.iter().filter(|tp| !list.contains(tp)).cloned());
        }
        if name == "cooperative-sticky" {
            assert!(added.is_disjoint(&revoked), "cooperative-sticky moved a partition directly");
        }
    }
});
