#![no_main]

use kastellan::group::__fuzz::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = decode_subscription(data) {
        let bytes = encode_subscription(&s, 3).expect("a decoded subscription re-encodes");
        let again = decode_subscription(&bytes).expect("and decodes");
        assert_eq!(again.topics, s.topics);
        assert_eq!(again.user_data, s.user_data);
        assert_eq!(again.generation_id, s.generation_id);
        assert_eq!(again.rack_id, s.rack_id);
        let (mut a, mut b) = (again.owned_partitions, s.owned_partitions);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
    if let Ok(asg) = decode_assignment(data) {
        let bytes = encode_assignment(&asg, 0).expect("a decoded assignment re-encodes");
        let again = decode_assignment(&bytes).expect("and decodes");
        assert_eq!(again.user_data, asg.user_data);
        let (mut a, mut b) = (again.partitions, asg.partitions);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
});
