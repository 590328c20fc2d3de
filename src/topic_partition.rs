//! [`TopicPartition`]: the one name for "partition P of topic T", used by
//! the group consumer, its status and events, assignors and the ack tracker.

use std::fmt;
use std::sync::Arc;

/// One partition of one topic.
///
/// The topic name is shared (`Arc<str>`), so cloning is cheap: a pointer
/// copy and a reference count, no string copy. Ordered by topic, then
/// partition. Displays as `topic/partition`.
///
/// ```
/// use kastellan::TopicPartition;
///
/// let tp = TopicPartition::new("orders", 3);
/// assert_eq!(tp.topic(), "orders");
/// assert_eq!(tp.partition(), 3);
/// assert_eq!(tp.to_string(), "orders/3");
/// assert!(TopicPartition::new("orders", 2) < tp);
/// assert_eq!(TopicPartition::from(("orders", 3)), tp);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    // Field order matters: the derived `Ord` sorts by topic, then partition.
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
}

impl TopicPartition {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition number.
    pub fn partition(&self) -> i32 {
        self.partition
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

impl<T: Into<Arc<str>>> From<(T, i32)> for TopicPartition {
    fn from((topic, partition): (T, i32)) -> Self {
        Self::new(topic, partition)
    }
}
