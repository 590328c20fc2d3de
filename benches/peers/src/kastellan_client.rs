//! kastellan, run through the same two functions as the other clients.
//!
//! Contract shared by every client module:
//! - `produce` sends `records` copies of `payload` to `topic` with acks=all,
//!   keyed with `crate::workload::key(i)` for record `i` (that is `None`
//!   unless the run is `--keyed`), and returns once every record is acked.
//! - `read` reads `topic` (partitions `0..partitions`) from the earliest
//!   offset, without a consumer group and without commits, until `expected`
//!   records have been seen, and returns the number of value bytes read.
//! - Either may call `crate::workload::mark_work_started()` once its client
//!   is built and connected, so that set-up is left out of the timing.
//! - Producer settings to match: `crate::workload::{LINGER_MS, BATCH_BYTES,
//!   MAX_REQUEST_BYTES, COMPRESSION}`.

pub async fn produce(
    bootstrap: &str,
    topic: &str,
    payload: &[u8],
    records: usize,
) -> anyhow::Result<()> {
    let _ = (bootstrap, topic, payload, records);
    anyhow::bail!("kastellan client not wired yet")
}

pub async fn read(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<u64> {
    let _ = (bootstrap, topic, partitions, expected);
    anyhow::bail!("kastellan client not wired yet")
}
