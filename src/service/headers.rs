//! The headers kastellan writes on a record it hands to a retry topic or a
//! dead-letter topic. Their names are public and stable: tools, dashboards
//! and other clients may rely on them.
//!
//! | constant | header | value |
//! |---|---|---|
//! | [`ORIGIN_TOPIC`] | `kastellan-origin-topic` | topic the record was first consumed from |
//! | [`ORIGIN_PARTITION`] | `kastellan-origin-partition` | its partition, decimal |
//! | [`ORIGIN_OFFSET`] | `kastellan-origin-offset` | its offset, decimal |
//! | [`ORIGIN_TIMESTAMP`] | `kastellan-origin-timestamp` | its timestamp, ms since the Unix epoch, decimal |
//! | [`GROUP`] | `kastellan-group` | consumer group that failed it (absent when a bare [`DeadLetter`](crate::middleware::DeadLetter) was given none) |
//! | [`ATTEMPT`] | `kastellan-attempt` | how many times it was handled and failed so far, decimal (`1` after the first failure; `0` for a record that only [follows its key](crate::service::Route::order_guard)) |
//! | [`REASON`] | `kastellan-reason` | the last failure's reason (UTF-8, at most 4 KiB) |
//! | [`FAILURE_KIND`] | `kastellan-failure-kind` | `retry` or `dead-letter`: the last failure's [`FailureKind`] |
//! | [`FIRST_FAILURE`] | `kastellan-first-failure` | when it first failed, ms since the Unix epoch, decimal |
//! | [`NOT_BEFORE`] | `kastellan-not-before` | when it may be handled again, ms since the Unix epoch, decimal (in a dead-letter topic: when it was dead-lettered) |
//!
//! Numbers are written as decimal ASCII text so that
//! `kafka-console-consumer --property print.headers=true` shows them as
//! they are. A copy keeps the original's key, value and other headers; its
//! own timestamp is the time of the hand-off (so the retry and dead-letter
//! topics' retention counts from then), the original's is in
//! [`ORIGIN_TIMESTAMP`]. Records moved back by a
//! [`Replay`](crate::service::Replay) lose these headers and get
//! [`REPLAYED_FROM`] instead.
//!
//! Read them with [`FailureInfo::of`]:
//!
//! ```
//! use kastellan::service::headers::{self, FailureInfo};
//! use kastellan::Record;
//!
//! let record = Record::new("billing.retry", 0, 17)
//!     .with_header(headers::ORIGIN_TOPIC, "orders")
//!     .with_header(headers::ORIGIN_PARTITION, "2")
//!     .with_header(headers::ORIGIN_OFFSET, "41")
//!     .with_header(headers::GROUP, "billing")
//!     .with_header(headers::ATTEMPT, "1")
//!     .with_header(headers::REASON, "ledger busy")
//!     .with_header(headers::FIRST_FAILURE, "1700000000000")
//!     .with_header(headers::NOT_BEFORE, "1700000001000");
//! let info = FailureInfo::of(&record).expect("failure headers");
//! assert_eq!((info.origin_topic.as_str(), info.origin_partition, info.origin_offset), ("orders", 2, 41));
//! assert_eq!(info.group.as_deref(), Some("billing"));
//! assert_eq!(info.attempt, 1);
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::group::FailureKind;
use crate::producer::ProducerRecord;
use crate::record::Record;

/// Topic the record was first consumed from.
pub const ORIGIN_TOPIC: &str = "kastellan-origin-topic";
/// Partition the record was first consumed from (decimal).
pub const ORIGIN_PARTITION: &str = "kastellan-origin-partition";
/// Offset of the record in its origin partition (decimal).
pub const ORIGIN_OFFSET: &str = "kastellan-origin-offset";
/// Timestamp of the original record, ms since the Unix epoch (decimal).
pub const ORIGIN_TIMESTAMP: &str = "kastellan-origin-timestamp";
/// Consumer group that failed the record.
pub const GROUP: &str = "kastellan-group";
/// How many times the record was handled and failed so far (decimal).
pub const ATTEMPT: &str = "kastellan-attempt";
/// The last failure's reason (UTF-8 text, at most 4 KiB).
pub const REASON: &str = "kastellan-reason";
/// `retry` or `dead-letter`: the kind of the last failure.
pub const FAILURE_KIND: &str = "kastellan-failure-kind";
/// When the record first failed, ms since the Unix epoch (decimal).
pub const FIRST_FAILURE: &str = "kastellan-first-failure";
/// When the record may be handled again, ms since the Unix epoch (decimal).
pub const NOT_BEFORE: &str = "kastellan-not-before";
/// On a record a [`Replay`](crate::service::Replay) moved back to its origin
/// topic: `topic/partition@offset` of its dead-letter copy.
pub const REPLAYED_FROM: &str = "kastellan-replayed-from";

/// Every header kastellan writes; a copy drops these before writing its own.
pub const ALL: [&str; 11] = [
    ORIGIN_TOPIC,
    ORIGIN_PARTITION,
    ORIGIN_OFFSET,
    ORIGIN_TIMESTAMP,
    GROUP,
    ATTEMPT,
    REASON,
    FAILURE_KIND,
    FIRST_FAILURE,
    NOT_BEFORE,
    REPLAYED_FROM,
];

/// Longest reason written, in bytes.
const MAX_REASON: usize = 4096;

/// What the failure headers of a retry or dead-letter record say.
///
/// ```
/// use kastellan::service::headers::FailureInfo;
/// use kastellan::Record;
///
/// // A record on its first delivery carries none.
/// assert!(FailureInfo::of(&Record::new("orders", 0, 1)).is_none());
/// ```
///
/// See the [module docs](self) for a record that carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureInfo {
    /// Topic the record was first consumed from.
    pub origin_topic: String,
    /// Its partition there.
    pub origin_partition: i32,
    /// Its offset there.
    pub origin_offset: i64,
    /// Its original timestamp (ms since the Unix epoch), if known.
    pub origin_timestamp: Option<i64>,
    /// The consumer group that failed it, if known.
    pub group: Option<String>,
    /// How many times it was handled and failed so far.
    pub attempt: u32,
    /// The last failure's reason.
    pub reason: String,
    /// The last failure's kind, if known.
    pub kind: Option<FailureKind>,
    /// When it first failed (ms since the Unix epoch).
    pub first_failure_ms: i64,
    /// When it may be handled again (ms since the Unix epoch).
    pub not_before_ms: i64,
}

impl FailureInfo {
    /// The failure headers of `record`; `None` when it has none, or they
    /// are malformed.
    pub fn of(record: &Record) -> Option<FailureInfo> {
        Self::parse(record).ok().flatten()
    }

    /// The failure headers of `record`: `Ok(None)` when it carries no
    /// origin, an error naming the bad header when one is malformed.
    pub(crate) fn parse(record: &Record) -> Result<Option<FailureInfo>, String> {
        let Some(origin_topic) = record.header(ORIGIN_TOPIC) else {
            return Ok(None);
        };
        let text = |name: &str| -> Result<Option<String>, String> {
            record
                .header(name)
                .map(|v| {
                    std::str::from_utf8(v)
                        .map(str::to_string)
                        .map_err(|_| format!("header {name} is not UTF-8"))
                })
                .transpose()
        };
        fn number<T: std::str::FromStr>(name: &str, v: Option<String>) -> Result<T, String> {
            let v = v.ok_or_else(|| format!("header {name} is missing"))?;
            v.trim()
                .parse()
                .map_err(|_| format!("header {name} is not a number: `{v}`"))
        }
        let origin_topic = std::str::from_utf8(origin_topic)
            .map_err(|_| format!("header {ORIGIN_TOPIC} is not UTF-8"))?
            .to_string();
        if origin_topic.is_empty() {
            return Err(format!("header {ORIGIN_TOPIC} is empty"));
        }
        let kind = match text(FAILURE_KIND)?.as_deref() {
            Some("retry") => Some(FailureKind::Retry),
            Some("dead-letter") => Some(FailureKind::DeadLetter),
            _ => None,
        };
        let origin_timestamp = match text(ORIGIN_TIMESTAMP)? {
            Some(v) => Some(number(ORIGIN_TIMESTAMP, Some(v))?),
            None => None,
        };
        Ok(Some(FailureInfo {
            origin_topic,
            origin_partition: number(ORIGIN_PARTITION, text(ORIGIN_PARTITION)?)?,
            origin_offset: number(ORIGIN_OFFSET, text(ORIGIN_OFFSET)?)?,
            origin_timestamp,
            group: text(GROUP)?.filter(|g| !g.is_empty()),
            attempt: number(ATTEMPT, text(ATTEMPT)?)?,
            reason: text(REASON)?.unwrap_or_default(),
            kind,
            first_failure_ms: number(FIRST_FAILURE, text(FIRST_FAILURE)?)?,
            not_before_ms: number(NOT_BEFORE, text(NOT_BEFORE)?)?,
        }))
    }

    /// The failure of a record handled `attempt` times, due again after
    /// `delay`: its origin is where it was consumed, unless it carries
    /// failure headers already (it came through a retry topic), whose
    /// origin and first failure it keeps.
    pub(crate) fn for_failure(
        record: &Record,
        group: Option<&str>,
        attempt: u32,
        reason: &str,
        kind: FailureKind,
        delay: Duration,
    ) -> FailureInfo {
        let now = now_ms();
        let not_before_ms =
            now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        let earlier = Self::of(record);
        let (origin_topic, origin_partition, origin_offset, origin_timestamp, first_failure_ms) =
            match &earlier {
                Some(e) => (
                    e.origin_topic.clone(),
                    e.origin_partition,
                    e.origin_offset,
                    e.origin_timestamp,
                    // A record that only followed its key never failed.
                    if e.attempt == 0 {
                        now
                    } else {
                        e.first_failure_ms
                    },
                ),
                None => (
                    record.topic.to_string(),
                    record.partition,
                    record.offset,
                    (record.timestamp >= 0).then_some(record.timestamp),
                    now,
                ),
            };
        FailureInfo {
            origin_topic,
            origin_partition,
            origin_offset,
            origin_timestamp,
            group: group.map(str::to_string),
            attempt,
            reason: truncate(reason, MAX_REASON).to_string(),
            kind: Some(kind),
            first_failure_ms,
            not_before_ms,
        }
    }

    /// A copy of `record` for `topic` carrying these headers (and no older
    /// kastellan headers), timestamped now. No partition is fixed: the
    /// partitioner picks one from the key, so records with one key stay in
    /// order.
    pub(crate) fn copy_of(&self, record: &Record, topic: &str) -> ProducerRecord {
        ProducerRecord::from_record(&self.stamped(record))
            .topic_name(topic)
            .timestamp(now_ms())
    }

    /// `record` without older kastellan headers, with these appended.
    pub(crate) fn stamped(&self, record: &Record) -> Record {
        let mut r = without_ours(record);
        let mut add = |key: &str, value: String| {
            r.headers.push(crate::record::Header {
                key: key.to_string(),
                value: value.into(),
            })
        };
        add(ORIGIN_TOPIC, self.origin_topic.clone());
        add(ORIGIN_PARTITION, self.origin_partition.to_string());
        add(ORIGIN_OFFSET, self.origin_offset.to_string());
        if let Some(ts) = self.origin_timestamp {
            add(ORIGIN_TIMESTAMP, ts.to_string());
        }
        if let Some(group) = &self.group {
            add(GROUP, group.clone());
        }
        add(ATTEMPT, self.attempt.to_string());
        add(REASON, self.reason.clone());
        if let Some(kind) = self.kind {
            add(FAILURE_KIND, kind_name(kind).to_string());
        }
        add(FIRST_FAILURE, self.first_failure_ms.to_string());
        add(NOT_BEFORE, self.not_before_ms.to_string());
        r
    }

    /// `record` (from a retry topic) as it was in its origin topic: origin
    /// topic, partition, offset and timestamp, with the failure headers kept
    /// so the handler can read [`attempt`](Self::attempt).
    pub(crate) fn as_origin(&self, record: &Record) -> Record {
        let mut origin = record.clone();
        origin.topic = self.origin_topic.as_str().into();
        origin.partition = self.origin_partition;
        origin.offset = self.origin_offset;
        if let Some(ts) = self.origin_timestamp {
            origin.timestamp = ts;
        }
        origin
    }

    /// When the record may be handled again.
    pub fn not_before(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.not_before_ms.max(0) as u64)
    }
}

/// Which attempt at handling `record` this is: 1 on its first delivery,
/// `n + 1` when it comes back from a retry topic after `n` failures (its
/// [`ATTEMPT`] header says `n`). Records that only followed their key
/// through the retry topic (attempt header `0`) are on their first attempt.
///
/// ```
/// use kastellan::service::headers::{self, attempt};
/// use kastellan::Record;
///
/// assert_eq!(attempt(&Record::new("orders", 0, 5)), 1);
/// let retried = Record::new("orders", 0, 5)
///     .with_header(headers::ORIGIN_TOPIC, "orders")
///     .with_header(headers::ORIGIN_PARTITION, "0")
///     .with_header(headers::ORIGIN_OFFSET, "5")
///     .with_header(headers::ATTEMPT, "2")
///     .with_header(headers::FIRST_FAILURE, "1700000000000")
///     .with_header(headers::NOT_BEFORE, "1700000002000");
/// assert_eq!(attempt(&retried), 3);
/// ```
pub fn attempt(record: &Record) -> u32 {
    FailureInfo::of(record).map_or(1, |i| i.attempt.saturating_add(1))
}

/// `record` without the headers kastellan writes.
pub(crate) fn without_ours(record: &Record) -> Record {
    let mut r = record.clone();
    r.headers.retain(|h| !ALL.contains(&h.key.as_str()));
    r
}

fn kind_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Retry => "retry",
        FailureKind::DeadLetter => "dead-letter",
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_failure_takes_its_origin_from_the_record() {
        let record = Record::new("orders", 3, 41)
            .with_key("k")
            .with_value("v")
            .with_header("trace", "t1");
        let info = FailureInfo::for_failure(
            &record,
            Some("billing"),
            1,
            "busy",
            FailureKind::Retry,
            Duration::from_secs(2),
        );
        assert_eq!(info.origin_topic, "orders");
        assert_eq!((info.origin_partition, info.origin_offset), (3, 41));
        assert_eq!(info.not_before_ms, info.first_failure_ms + 2_000);
        assert!(info.first_failure_ms > 1_600_000_000_000);
    }

    #[test]
    fn copies_round_trip_and_keep_origin_and_first_failure() {
        let record = Record::new("orders", 3, 41)
            .with_key("k")
            .with_value("v")
            .with_header("trace", "t1");
        let mut record = record;
        record.timestamp = 1_000;
        let first = FailureInfo::for_failure(
            &record,
            Some("billing"),
            1,
            "busy",
            FailureKind::Retry,
            Duration::from_secs(5),
        );
        let copy = first.copy_of(&record, "billing.retry");
        assert_eq!(copy.topic(), Some("billing.retry"));
        // What the retry consumer reads back.
        let read_back = consumed(first.stamped(&record), "billing.retry", 0, 7);
        let parsed = FailureInfo::of(&read_back).expect("parses");
        assert_eq!(parsed, first);
        assert_eq!(read_back.header("trace"), Some(&b"t1"[..]));
        // Handed to the handler as the origin record.
        let origin = parsed.as_origin(&read_back);
        assert_eq!(
            (&*origin.topic, origin.partition, origin.offset),
            ("orders", 3, 41)
        );
        assert_eq!(origin.timestamp, 1_000);
        // A second failure keeps origin and first failure, replaces the rest.
        let second = FailureInfo::for_failure(
            &origin,
            Some("billing"),
            2,
            "still busy",
            FailureKind::DeadLetter,
            Duration::ZERO,
        );
        assert_eq!(second.first_failure_ms, first.first_failure_ms);
        assert_eq!(second.origin_offset, 41);
        let again = consumed(second.stamped(&origin), "dlq", 0, 1);
        assert_eq!(
            again
                .headers
                .iter()
                .filter(|h| h.key == ATTEMPT)
                .map(|h| h.value.clone())
                .collect::<Vec<_>>(),
            vec![bytes::Bytes::from("2")],
            "one attempt header, the new one"
        );
        assert_eq!(
            FailureInfo::of(&again).and_then(|i| i.kind),
            Some(FailureKind::DeadLetter)
        );
    }

    #[test]
    fn malformed_headers_are_named() {
        let r = Record::new("retry", 0, 0)
            .with_header(ORIGIN_TOPIC, "orders")
            .with_header(ORIGIN_PARTITION, "x");
        let e = FailureInfo::parse(&r).unwrap_err();
        assert!(e.contains(ORIGIN_PARTITION), "{e}");
        assert_eq!(FailureInfo::parse(&Record::new("t", 0, 0)), Ok(None));
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(5000);
        let cut = truncate(&long, MAX_REASON);
        assert!(cut.len() <= MAX_REASON && cut.len() >= MAX_REASON - 1);
    }

    /// `stamped` as a consumer of `topic` would read it.
    fn consumed(stamped: Record, topic: &str, partition: i32, offset: i64) -> Record {
        let mut r = stamped;
        r.topic = topic.into();
        r.partition = partition;
        r.offset = offset;
        r.timestamp = now_ms();
        r
    }
}
