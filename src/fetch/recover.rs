//! A partition's new position after `OFFSET_OUT_OF_RANGE`: records were
//! lost to retention, or the log was truncated under us.

use crate::client::Client;
use crate::error::Result;
use crate::offsets::{self, OffsetQuery, StartOffset};
use crate::TopicPartition;

/// Where to fetch `tp` from, now that `next` is out of range: `next` again
/// if the range moved back meanwhile, else the position `policy` names.
pub(super) async fn new_position(
    client: Client,
    tp: TopicPartition,
    next: i64,
    policy: StartOffset,
) -> Result<i64> {
    let marks = offsets::watermarks(&client, tp.topic()).await?;
    let Some(m) = marks.iter().find(|m| m.partition == tp.partition) else {
        return Err(crate::error::Error::UnknownPartition {
            topic: tp.topic().to_string(),
            partition: tp.partition,
            count: i32::try_from(marks.len()).unwrap_or(i32::MAX),
        });
    };
    if next >= m.low && next <= m.high {
        return Ok(next); // the range moved back meanwhile; fetch again
    }
    let by_time = match policy {
        StartOffset::Timestamp(ms) => {
            offsets::list_offsets(&client, tp.topic(), OffsetQuery::Timestamp(ms))
                .await?
                .get(&tp.partition)
                .copied()
                .flatten()
        }
        _ => None,
    };
    let target = policy.position(m, by_time);
    tracing::warn!(
        partition = %tp,
        from = next,
        to = target,
        low = m.low,
        high = m.high,
        "offset out of range; resetting"
    );
    Ok(target)
}
