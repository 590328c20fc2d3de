//! Which topics this member subscribes to, which of them exist, and when a
//! change calls for a rebalance.
//!
//! The subscription is the exact topics plus every existing, non-internal
//! topic whose name matches one of the glob patterns (`*` any run of
//! characters, `?` one character). With patterns, every refresh lists all
//! topics (a Metadata request for all topics, as Java's pattern
//! subscription does); when the matching set changes, the member rejoins
//! with its new subscription, which its JoinGroup metadata carries, and the
//! leader assigns the union of the group's subscriptions. A topic created
//! later that matches is therefore consumed within `metadata_max_age`; one
//! deleted, or no longer matching, leaves the subscription the same way.
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
//! - any member: one of its own topics that was missing now exists, or the
//!   topics its patterns match changed (its interests changed; the leader
//!   may not know the topic yet);
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

/// A glob pattern of topic names: `*` matches any run of characters
/// (also none), `?` exactly one; everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    pattern: Vec<char>,
}

impl Glob {
    pub(crate) fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.chars().collect(),
        }
    }

    /// Whether `name` matches the whole pattern. Linear backtracking over
    /// the last `*` only, so O(pattern × name) at worst.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let p = &self.pattern;
        let (mut pi, mut ni) = (0, 0);
        // Where the last `*` was, and the name position it matched up to.
        let mut star: Option<(usize, usize)> = None;
        while ni < name.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi, ni));
                    pi += 1;
                }
                Some(&c) if c == '?' || c == name[ni] => {
                    pi += 1;
                    ni += 1;
                }
                _ => match star {
                    // Let the last `*` take one more character.
                    Some((sp, sn)) => {
                        pi = sp + 1;
                        ni = sn + 1;
                        star = Some((sp, sn + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi.min(p.len())..].iter().all(|&c| c == '*')
    }
}

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
    /// Topics subscribed by name, sorted.
    exact: Vec<String>,
    /// Glob patterns of topic names subscribed to.
    patterns: Vec<Glob>,
    /// This member's subscription, sorted: `exact` and the existing topics
    /// `patterns` match (as of the last refresh). What JoinGroup sends.
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
    pub(super) fn new(
        client: Client,
        exact: Vec<String>,
        patterns: &[String],
        max_age: Duration,
    ) -> Self {
        let error_backoff = Backoff::for_client(client.config());
        Self {
            client,
            own: exact.clone(),
            exact,
            patterns: patterns.iter().map(|p| Glob::new(p)).collect(),
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

    /// This member's subscription now, sorted: what it joins with.
    pub(super) fn subscription(&self) -> &[String] {
        &self.own
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

    /// The topics whose metadata is watched: this member's own and every
    /// topic of the group's subscription.
    fn watched(&self) -> BTreeSet<&str> {
        self.own
            .iter()
            .chain(self.group_topics.iter())
            .map(String::as_str)
            .collect()
    }

    /// Refresh metadata of the watched topics, update what is missing and
    /// schedule the next refresh. On error, the next attempt is scheduled
    /// after a backoff and the error returned for reporting.
    pub(super) async fn refresh(&mut self) -> Result<Refresh> {
        let fetched = if self.patterns.is_empty() {
            let watched: Vec<&str> = self.watched().into_iter().collect();
            self.counts(&watched).await.map(|c| (c, None))
        } else {
            self.all_topics().await.map(|(c, m)| (c, Some(m)))
        };
        let (counts, matched) = match fetched {
            Ok(found) => found,
            Err(e) => {
                self.next = Instant::now() + self.error_backoff.next_delay();
                return Err(e);
            }
        };
        self.error_backoff.reset();
        let mut resubscribed = None;
        if let Some(matched) = matched {
            let own: BTreeSet<String> = self.exact.iter().cloned().chain(matched).collect();
            let own: Vec<String> = own.into_iter().collect();
            if own != self.own {
                let added: Vec<&String> = own.iter().filter(|t| !self.own.contains(t)).collect();
                let removed: Vec<&String> = self.own.iter().filter(|t| !own.contains(t)).collect();
                resubscribed = Some(format!(
                    "the subscription changed (topics added {added:?}, removed {removed:?})"
                ));
                self.own = own;
            }
        }
        let any_watched_missing = self.watched().iter().any(|t| !counts.contains_key(*t));
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
        .or(resubscribed)
        .or_else(|| {
            appeared
                .first()
                .map(|t| format!("subscribed topic `{t}` now exists"))
        });

        let watched_missing = !self.missing.is_empty() || any_watched_missing;
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

    /// Partition counts of every topic (one all-topics Metadata request),
    /// and the non-internal ones the patterns match.
    async fn all_topics(&self) -> Result<(BTreeMap<String, i32>, BTreeSet<String>)> {
        let found = self.client.cluster().refresh_metadata(&[]).await?;
        let mut counts = BTreeMap::new();
        let mut matched = BTreeSet::new();
        for t in found {
            let count = i32::try_from(t.partitions.len()).unwrap_or(i32::MAX);
            counts.insert(t.name.clone(), count);
            if !t.internal && self.patterns.iter().any(|p| p.matches(&t.name)) {
                matched.insert(t.name.clone());
            }
        }
        Ok((counts, matched))
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn globs_match_whole_names() {
        let cases = [
            ("content.*", "content.orders", true),
            ("content.*", "content.", true),
            ("content.*", "contents.orders", false),
            ("content.*", "xcontent.orders", false),
            ("*", "anything", true),
            ("*", "", true),
            ("orders", "orders", true),
            ("orders", "orders2", false),
            ("orders-?", "orders-1", true),
            ("orders-?", "orders-12", false),
            ("*-dlq", "billing-dlq", true),
            ("*-dlq", "billing-dlq-2", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a*b*c", "abcbc", true),
            ("*.*.retry", "a.b.retry", true),
            ("*.*.retry", "a.retry", false),
            ("**x", "yx", true),
            ("", "", true),
            ("", "a", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                Glob::new(pattern).matches(name),
                expected,
                "`{pattern}` against `{name}`"
            );
        }
    }
}
