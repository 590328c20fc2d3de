//! One task per partition: gathers records into batches and sends them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rskafka::client::partition::Compression;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{Delivery, DeliveryReport, Outstanding};
use crate::client::{map_data_error, Client};
use crate::error::{Error, Result};
use crate::protocol::error_codes::{MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE};

/// A record waiting in a partition queue.
pub(crate) struct Pending {
    pub record: rskafka::record::Record,
    pub key: Option<Bytes>,
    pub size: usize,
    /// Buffer memory held until the record is resolved.
    pub _permit: OwnedSemaphorePermit,
    pub done: oneshot::Sender<Result<Delivery>>,
}

pub(crate) struct PartitionWorker {
    pub client: Client,
    pub topic: Arc<str>,
    pub partition: i32,
    pub linger: Duration,
    pub max_batch_bytes: usize,
    pub compression: Compression,
    pub max_in_flight: usize,
    pub outstanding: Arc<Outstanding>,
    pub reports: Option<mpsc::UnboundedSender<DeliveryReport>>,
}

impl PartitionWorker {
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        let this = Arc::new(self);
        let in_flight = Arc::new(Semaphore::new(this.max_in_flight));
        // A record that did not fit the previous batch starts the next one.
        let mut carry: Option<Pending> = None;
        loop {
            let first = match carry.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => break,
                },
            };
            let mut bytes = first.size;
            let mut batch = vec![first];
            let linger = tokio::time::sleep(this.linger);
            tokio::pin!(linger);
            while bytes < this.max_batch_bytes {
                // Take what is queued already without waiting; wait only for linger.
                let next = match rx.try_recv() {
                    Ok(p) => Some(p),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                        p = rx.recv() => p,
                        _ = &mut linger => None,
                    },
                };
                let Some(p) = next else { break };
                if bytes + p.size > this.max_batch_bytes {
                    carry = Some(p);
                    break;
                }
                bytes += p.size;
                batch.push(p);
            }
            let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                break;
            };
            let worker = Arc::clone(&this);
            if this.max_in_flight == 1 {
                worker.send(batch).await;
                drop(permit);
            } else {
                tokio::spawn(async move {
                    worker.send(batch).await;
                    drop(permit);
                });
            }
        }
    }

    /// Produce a batch and resolve each record. A batch the broker finds too
    /// large is split in halves and retried; a single record that is too large
    /// fails alone.
    async fn send(&self, batch: Vec<Pending>) {
        let mut stack = vec![batch];
        while let Some(batch) = stack.pop() {
            match self.produce(&batch).await {
                Ok(offsets) => self.resolve_ok(batch, offsets),
                Err(e) if is_too_large(&e) && batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    stack.push(second);
                    stack.push(first);
                }
                Err(e) => {
                    let e = if is_too_large(&e) {
                        Error::RecordTooLarge {
                            size: batch.first().map_or(0, |p| p.size),
                            limit: self.max_batch_bytes,
                            which: "broker message.max.bytes (or the topic's max.message.bytes)",
                        }
                    } else {
                        e
                    };
                    self.resolve_err(batch, &e);
                }
            }
        }
    }

    async fn produce(&self, batch: &[Pending]) -> Result<Vec<i64>> {
        let pc = self.client.partition(&self.topic, self.partition).await?;
        let records = batch.iter().map(|p| p.record.clone()).collect();
        let offsets = pc.produce(records, self.compression).await.map_err(|e| {
            map_data_error(
                &format!("producing to {}/{}", self.topic, self.partition),
                e,
            )
        })?;
        if offsets.len() != batch.len() {
            return Err(Error::Protocol {
                broker: "partition leader".into(),
                reason: format!(
                    "produce acknowledged {} offsets for {} records",
                    offsets.len(),
                    batch.len()
                ),
            });
        }
        Ok(offsets)
    }

    fn resolve_ok(&self, batch: Vec<Pending>, offsets: Vec<i64>) {
        let n = batch.len();
        for (p, offset) in batch.into_iter().zip(offsets) {
            if let Some(r) = &self.reports {
                let _ = r.send(DeliveryReport {
                    topic: Arc::clone(&self.topic),
                    partition: self.partition,
                    key: p.key,
                    result: Ok(offset),
                });
            }
            let _ = p.done.send(Ok(Delivery {
                topic: Arc::clone(&self.topic),
                partition: self.partition,
                offset,
            }));
        }
        self.outstanding.done(n);
    }

    fn resolve_err(&self, batch: Vec<Pending>, e: &Error) {
        let n = batch.len();
        tracing::warn!(topic = %self.topic, partition = self.partition, records = n, error = %e, "produce failed");
        for p in batch {
            if let Some(r) = &self.reports {
                let _ = r.send(DeliveryReport {
                    topic: Arc::clone(&self.topic),
                    partition: self.partition,
                    key: p.key,
                    result: Err(e.duplicate()),
                });
            }
            let _ = p.done.send(Err(e.duplicate()));
        }
        self.outstanding.done(n);
    }
}

fn is_too_large(e: &Error) -> bool {
    matches!(
        e.broker_code(),
        Some(MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE)
    )
}
