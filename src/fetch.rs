//! Fetching one partition in a loop, shared by the reader and the group
//! consumer. Batches go into a bounded channel, so a slow consumer holds at
//! most a few batches per partition in memory.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::client::{map_data_error, Client};
use crate::error::{Error, Result};
use crate::protocol::error_codes::OFFSET_OUT_OF_RANGE;
use crate::record::Record;

/// What to do when the next offset is no longer (or not yet) stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutOfRange {
    /// Jump to the earliest stored offset (records were lost to retention).
    Earliest,
    /// Jump to the end.
    Latest,
}

pub(crate) struct Fetcher {
    pub client: Client,
    pub topic: Arc<str>,
    pub partition: i32,
    pub next: i64,
    /// Stop before this offset (`read_to_end`); `None` reads forever.
    pub end: Option<i64>,
    pub max_wait_ms: i32,
    pub max_bytes: i32,
    pub out_of_range: OutOfRange,
    pub tx: mpsc::Sender<Result<Vec<Record>>>,
}

impl Fetcher {
    /// Fetch until the end (if any), the receiver is dropped, or an error,
    /// which is sent to the receiver before returning.
    pub async fn run(mut self) {
        if let Err(e) = self.fetch_loop().await {
            let _ = self.tx.send(Err(e)).await;
        }
    }

    async fn fetch_loop(&mut self) -> Result<()> {
        let topic = Arc::clone(&self.topic);
        let partition = self.partition;
        let pc = self.client.partition(&topic, partition).await?;
        loop {
            if self.end.is_some_and(|end| self.next >= end) {
                return Ok(());
            }
            let fetched = pc
                .fetch_records(self.next, 1..self.max_bytes, self.max_wait_ms)
                .await;
            let (records, _high_watermark) = match fetched {
                Ok(r) => r,
                Err(e) => {
                    let e = map_data_error(&format!("fetching {topic}/{partition}"), e);
                    if e.broker_code() == Some(OFFSET_OUT_OF_RANGE) {
                        self.recover_out_of_range(&e).await?;
                        continue;
                    }
                    return Err(match e {
                        Error::Client { message, .. } if message.contains("decode") => {
                            Error::Decode {
                                topic: topic.to_string(),
                                partition,
                                offset: self.next,
                                reason: message,
                            }
                        }
                        other => other,
                    });
                }
            };
            let mut batch = Vec::with_capacity(records.len());
            for r in records {
                if r.offset < self.next {
                    // Compressed batches start before the requested offset.
                    continue;
                }
                if self.end.is_some_and(|end| r.offset >= end) {
                    break;
                }
                batch.push(Record::from_data(&topic, partition, r));
            }
            if let Some(last) = batch.last() {
                self.next = last.offset + 1;
                if self.tx.send(Ok(batch)).await.is_err() {
                    return Ok(()); // receiver gone
                }
            }
        }
    }

    async fn recover_out_of_range(&mut self, e: &Error) -> Result<()> {
        let marks = self.client.admin().watermarks(&self.topic).await?;
        let Some(m) = marks.iter().find(|m| m.partition == self.partition) else {
            return Err(e.duplicate());
        };
        if self.next >= m.low && self.next <= m.high {
            return Ok(()); // the range moved back meanwhile; fetch again
        }
        let target = match self.out_of_range {
            OutOfRange::Earliest => m.low,
            OutOfRange::Latest => m.high,
        };
        tracing::warn!(
            topic = %self.topic,
            partition = self.partition,
            from = self.next,
            to = target,
            low = m.low,
            high = m.high,
            "offset out of range; resetting"
        );
        self.next = target;
        Ok(())
    }
}
