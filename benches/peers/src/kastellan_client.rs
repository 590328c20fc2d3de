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

use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures::StreamExt;
use kastellan::{Client, ClientConfig, StartOffset};

use crate::workload;

async fn connect(bootstrap: &str) -> anyhow::Result<Client> {
    Client::connect(ClientConfig::new(bootstrap).client_id("peers-bench"))
        .await
        .context("connecting kastellan")
}

pub async fn produce(
    bootstrap: &str,
    topic: &str,
    payload: &[u8],
    records: usize,
) -> anyhow::Result<()> {
    let client = connect(bootstrap).await?;
    let producer = client
        .producer()
        .linger(Duration::from_millis(u64::from(workload::LINGER_MS)))
        .max_batch_bytes(workload::BATCH_BYTES)
        .build()?;
    client
        .topic_metadata(topic, true)
        .await?
        .context("topic missing")?;
    workload::mark_work_started();

    let payload = Bytes::copy_from_slice(payload);
    let mut pending = Vec::with_capacity(records);
    for index in 0..records {
        let mut message = producer.to(topic).value(payload.clone());
        if let Some(key) = workload::key(index) {
            message = message.key(Bytes::copy_from_slice(&key));
        }
        pending.push(message.enqueue().await?);
    }
    let mut failed = 0;
    let mut first_error = None;
    for delivery in pending {
        if let Err(e) = delivery.await {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        bail!("{failed} records failed; first error: {e}");
    }
    Ok(())
}

pub async fn read(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<u64> {
    let client = connect(bootstrap).await?;
    let all: Vec<i32> = (0..partitions).collect();
    let reader = client
        .reader()
        .partitions(topic, &all)
        .start(StartOffset::Earliest)
        .build()
        .await?;
    workload::mark_work_started();
    let mut stream = reader.stream();
    let mut seen = 0usize;
    let mut bytes = 0u64;
    while seen < expected {
        let next = tokio::time::timeout(
            Duration::from_secs(workload::READ_STALL_SECS),
            stream.next(),
        )
        .await
        .with_context(|| format!("no record for {}s after {seen}", workload::READ_STALL_SECS))?;
        match next {
            Some(Ok(record)) => {
                seen += 1;
                bytes += record.value.as_ref().map_or(0, |v| v.len() as u64);
            }
            Some(Err(e)) => return Err(e.into()),
            None => bail!("stream ended after {seen} of {expected} records"),
        }
    }
    Ok(bytes)
}
