//! One task per partition: gathers records into batches and sends them.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{Delivery, DeliveryReport, Outstanding};
use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::protocol::error_codes::{
    needs_metadata_refresh, MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE,
};
use crate::protocol::records::{encode_batch, Codec, OutgoingRecord};

/// A record waiting in a partition queue.
pub(crate) struct Pending {
    pub record: OutgoingRecord,
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
    pub compression: Codec,
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

    /// Encode and send one batch, retrying retriable failures (leader
    /// moves, lost connections) with backoff until the retry deadline.
    /// Returns the offset of each record.
    async fn produce(&self, batch: &[Pending]) -> Result<Vec<i64>> {
        let encoded =
            encode_batch(batch.iter().map(|p| &p.record), self.compression).map_err(|e| {
                Error::Protocol {
                    broker: "local".into(),
                    reason: e.to_string(),
                }
            })?;
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(
                i32::try_from(self.client.config().request_timeout.as_millis()).unwrap_or(i32::MAX),
            )
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(self.topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(self.partition)
                    .with_records(Some(encoded))])]);
        let cluster = self.client.cluster();
        let base = cluster
            .with_retries("Produce", || async {
                let addr = cluster.leader_addr(&self.topic, self.partition).await?;
                let conn = cluster.connection(&addr).await?;
                let response = conn.request(&request).await.inspect_err(|e| {
                    if e.is_retriable() {
                        cluster.invalidate(&self.topic);
                    }
                })?;
                let p = response
                    .responses
                    .iter()
                    .flat_map(|t| t.partition_responses.iter())
                    .find(|p| p.index == self.partition)
                    .ok_or_else(|| Error::Protocol {
                        broker: addr.clone(),
                        reason: format!("produce answer lacks {}/{}", self.topic, self.partition),
                    })?;
                if p.error_code != 0 {
                    if needs_metadata_refresh(p.error_code) {
                        cluster.invalidate(&self.topic);
                    }
                    return Err(BrokerError::new(
                        addr,
                        "Produce",
                        p.error_code,
                        p.error_message.as_ref().map(|m| m.to_string()),
                    )
                    .into());
                }
                Ok(p.base_offset)
            })
            .await?;
        Ok((0..batch.len() as i64).map(|i| base + i).collect())
    }

    fn resolve_ok(&self, batch: Vec<Pending>, offsets: Vec<i64>) {
        let n = batch.len();
        for (p, offset) in batch.into_iter().zip(offsets) {
            if let Some(r) = &self.reports {
                let _ = r.send(DeliveryReport {
                    topic: Arc::clone(&self.topic),
                    partition: self.partition,
                    key: p.record.key.clone(),
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
                    key: p.record.key.clone(),
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
