//! Choosing a partition for a record.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A user-supplied partition function: `(topic, key, partition_count) -> partition`.
pub type PartitionFn = dyn Fn(&str, Option<&[u8]>, i32) -> i32 + Send + Sync;

/// How the producer picks a partition for records that do not name one.
///
/// ```
/// use kastellan::Partitioner;
/// // Keyed records go where the Java client would put them.
/// let p = Partitioner::default();
/// assert_eq!(p.pick("t", Some(b"user-1"), 6, 0), kastellan::producer::java_partition(b"user-1", 6));
/// // A custom rule: everything to the last partition.
/// let last = Partitioner::custom(|_topic, _key, n| n - 1);
/// assert_eq!(last.pick("t", None, 6, 0), 5);
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Partitioner {
    /// Keyed records: murmur2 of the key, as the Java client's default
    /// partitioner does, so a key lands on the same partition whichever
    /// client produced it. Unkeyed records: round robin.
    #[default]
    KeyHash,
    /// Every record round robin, keys ignored (Kaffe's `:round_robin`).
    RoundRobin,
    /// Every record to a random partition (Kaffe's `:random`).
    Random,
    /// A function of topic, key and partition count.
    Custom(Arc<PartitionFn>),
}

impl Partitioner {
    /// Wrap a partition function.
    pub fn custom(f: impl Fn(&str, Option<&[u8]>, i32) -> i32 + Send + Sync + 'static) -> Self {
        Partitioner::Custom(Arc::new(f))
    }

    /// The partition for a record; `counter` is the per-topic round-robin position.
    /// Custom functions may return an out-of-range value; the producer checks it.
    pub fn pick(&self, topic: &str, key: Option<&[u8]>, partitions: i32, counter: u32) -> i32 {
        let n = partitions.max(1);
        let round_robin = (counter % n as u32) as i32;
        match self {
            Partitioner::KeyHash => match key {
                Some(k) => java_partition(k, n),
                None => round_robin,
            },
            Partitioner::RoundRobin => round_robin,
            Partitioner::Random => rand::random_range(0..n),
            Partitioner::Custom(f) => f(topic, key, n),
        }
    }
}

impl fmt::Debug for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partitioner::KeyHash => f.write_str("KeyHash"),
            Partitioner::RoundRobin => f.write_str("RoundRobin"),
            Partitioner::Random => f.write_str("Random"),
            Partitioner::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Per-topic round-robin counter.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin(AtomicU32);

impl RoundRobin {
    pub(super) fn starting_at(position: u32) -> Self {
        RoundRobin(AtomicU32::new(position))
    }

    pub(super) fn next(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// The partition the Java client's default partitioner picks for a key:
/// `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as i32) % partitions.max(1)
}

/// Kafka's variant of MurmurHash2 (32-bit, seed `0x9747b28c`), as used by the
/// Java client to hash record keys.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    // The tail bytes are mixed in from the highest index down, then multiplied once.
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values of the Java client's `Utils.murmur2` (as signed ints).
    #[test]
    fn murmur2_matches_java_reference_values() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input) as i32,
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn round_robin_cycles_and_custom_is_called() {
        let p = Partitioner::RoundRobin;
        let picks: Vec<i32> = (0..6).map(|c| p.pick("t", Some(b"k"), 3, c)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let c = Partitioner::custom(|t, k, n| (t.len() + k.map_or(0, |k| k.len())) as i32 % n);
        assert_eq!(c.pick("abc", Some(b"xy"), 4, 0), 1);
    }

    #[test]
    fn random_stays_in_range() {
        let p = Partitioner::Random;
        for c in 0..1000 {
            let x = p.pick("t", None, 7, c);
            assert!((0..7).contains(&x));
        }
    }
}
