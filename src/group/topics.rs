//! Which subscribed topics exist, and when that change calls for a
//! rebalance.
//!
//! Every member refreshes metadata of its own topics every
//! `metadata_max_age` (Java's `metadata.max.age.ms`, 5 minutes by default),
//! and every few seconds (with backoff) while one of them is missing, so a
//! topic created after the consumer started is consumed within seconds. A
//! missing topic is reported (a warning, [`ConsumerError::MissingTopic`],
//! [`ConsumerStatus::missing_topics`]) when it goes missing, not on every
//! refresh; in strict mode it ends `run()`.
//!
//! What triggers a rejoin (as in the Java client and franz-go):
//! - any member: one of its own topics that was missing now exists (its
//!   interests changed; the leader may not know the topic yet);
//! - the leader: the partition count of any topic some member of the group
//!   subscribes to differs from the count the current assignment was
//!   computed with (a topic appeared, disappeared, or got more partitions).
//!   The leader must watch the whole group's topics, not just its own
//!   (KAFKA-2172, <https://github.com/apache/kafka/pull/165>).
//!
//! [`ConsumerError::MissingTopic`]: super::ConsumerError::MissingTopic
//! [`ConsumerStatus::missing_topics`]: super::ConsumerStatus::missing_topics

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::Result;

/// First and largest pause between refreshes while a topic is missing.
const MISSING_REFRESH_FIRST: Duration = Duration::from_secs(1);
const MISSING_REFRESH_MAX: Duration = Duration::from_secs(8);

/// What a refresh found.
#[derive(Debug, Default)]
pub(crate) struct Refresh {
    /// Own topics missing now that were not missing before.
    pub newly_missing: Vec<String>,
    /// Own topics missing now.
    pub missing: Vec<String>,
    /// Why the member should rejoin, if it should.
    pub rejoin: Option<String>,
}

/// Metadata watch of the subscribed topics. Owned by the session task.
#[derive(Debug)]
pub(crate) struct TopicWatch {
    client: Client,
    /// This member's subscription, sorted.
    own: Vec<String>,
    /// Partition counts the current assignment was computed with, for every
    /// topic of the group's subscription (missing topics absent); `Some`
    /// only while this member led the last rebalance.
    baseline: Option<BTreeMap<String, i32>>,
    /// Topics of the group's subscription, while this member leads.
    group_topics: BTreeSet<String>,
    /// Own topics missing at the last refresh.
    missing: BTreeSet<String>,
    /// `metadata_max_age`.
    max_age: Duration,
    /// Pauses between refreshes while a topic is missing.
    missing_backoff: Backoff,
    /// Pauses after failed refreshes.
    error_backoff: Backoff,
    /// When the next refresh is due.
    next: Instant,
}

impl TopicWatch {
    pub(super) fn new(client: Client, own: Vec<String>, max_age: Duration) -> Self {
        let error_backoff = Backoff::for_client(client.config());
        Self {
            client,
            own,
            baseline: None,
            group_topics: BTreeSet::new(),
            missing: BTreeSet::new(),
            max_age,
            missing_backoff: Backoff::between(
                MISSING_REFRESH_FIRST.min(max_age),
                MISSING_REFRESH_MAX.min(max_age),
            ),
            error_backoff,
            next: Instant::now(),
        }
    }

    /// Partition counts of `topics`, fresh from a broker; topics that do not
    /// exist are absent.
    pub(super) async fn counts(&self, topics: &[&str]) -> Result<BTreeMap<String, i32>> {
        if topics.is_empty() {
            return Ok(BTreeMap::new());
        }
        let found = self.client.cluster().refresh_metadata(topics).await?;
        Ok(found
            .iter()
            .map(|t| {
                let count = i32::try_from(t.partitions.len()).unwrap_or(i32::MAX);
                (t.name.clone(), count)
            })
            .collect())
    }

    /// The assignment was computed by this member as leader, for the group's
    /// `topics` with `counts` (`None`: another member led).
    pub(super) fn assigned(&mut self, leader: Option<(BTreeSet<String>, BTreeMap<String, i32>)>) {
        match leader {
            Some((topics, counts)) => {
                self.group_topics = topics;
                self.baseline = Some(counts);
            }
            None => {
                self.group_topics.clear();
                self.baseline = None;
            }
        }
    }

    /// Own topics missing at the last refresh, sorted.
    pub(super) fn missing(&self) -> Vec<String> {
        self.missing.iter().cloned().collect()
    }

    /// When the next refresh is due.
    pub(super) fn due(&self) -> Instant {
        self.next
    }

    /// Refresh at once (an error hinted that metadata changed).
    pub(super) fn refresh_soon(&mut self) {
        self.next = Instant::now();
    }

    /// Refresh metadata of the watched topics, update what is missing and
    /// schedule the next refresh. On error, the next attempt is scheduled
    /// after a backoff and the error returned for reporting.
    pub(super) async fn refresh(&mut self) -> Result<Refresh> {
        let watched: BTreeSet<&str> = self
            .own
            .iter()
            .chain(self.group_topics.iter())
            .map(String::as_str)
            .collect();
        let watched: Vec<&str> = watched.into_iter().collect();
        let counts = match self.counts(&watched).await {
            Ok(c) => c,
            Err(e) => {
                self.next = Instant::now() + self.error_backoff.next_delay();
                return Err(e);
            }
        };
        self.error_backoff.reset();
        let missing: BTreeSet<String> = self
            .own
            .iter()
            .filter(|t| !counts.contains_key(*t))
            .cloned()
            .collect();
        let newly_missing: Vec<String> = missing.difference(&self.missing).cloned().collect();
        let appeared: Vec<String> = self.missing.difference(&missing).cloned().collect();
        self.missing = missing;

        let rejoin = match &self.baseline {
            Some(baseline) => {
                self.group_topics
                    .iter()
                    .find_map(|t| match (baseline.get(t), counts.get(t)) {
                        (None, Some(n)) => Some(format!("topic `{t}` now exists ({n} partitions)")),
                        (Some(_), None) => Some(format!("topic `{t}` no longer exists")),
                        (Some(a), Some(b)) if a != b => {
                            Some(format!("topic `{t}` now has {b} partitions (had {a})"))
                        }
                        _ => None,
                    })
            }
            None => None,
        }
        .or_else(|| {
            appeared
                .first()
                .map(|t| format!("subscribed topic `{t}` now exists"))
        });

        let watched_missing =
            !self.missing.is_empty() || watched.iter().any(|t| !counts.contains_key(*t));
        self.next = Instant::now()
            + if watched_missing {
                self.missing_backoff.next_delay()
            } else {
                self.missing_backoff.reset();
                self.max_age
            };
        Ok(Refresh {
            newly_missing,
            missing: self.missing(),
            rejoin,
        })
    }
}
