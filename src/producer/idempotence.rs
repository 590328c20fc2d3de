//! Producer ids for the idempotent producer (KIP-98).
//!
//! An idempotent producer stamps every batch with a producer id, an epoch and
//! a per-partition sequence number. The partition leader stores a batch only
//! if its sequence follows the last one stored for that producer id, and
//! answers a resent batch it already stored with the original offset. So a
//! retry after a lost answer writes nothing twice, and batches pipelined on
//! one partition cannot be stored out of order.
//!
//! The broker tracks sequences per (producer id, partition), so partitions do
//! not have to share one epoch. A partition whose sequence state the leader
//! really lost (`OUT_OF_ORDER_SEQUENCE_NUMBER` for the oldest unacknowledged
//! batch, which the producer sent in order; `UNKNOWN_PRODUCER_ID` from older
//! brokers) bumps the epoch for itself and starts again at sequence 0, as the
//! Java client does for idempotent producers (KIP-360): a leader accepts a
//! higher epoch of a known producer id from sequence 0 on. Only an exhausted
//! epoch or `INVALID_PRODUCER_EPOCH` (the leader knows a newer epoch than
//! ours) takes a fresh producer id. A sequence complaint about a batch that
//! follows a failed one is not lost state: the batches are resent in order.

use std::sync::atomic::{AtomicU64, Ordering};

use kafka_protocol::messages::{InitProducerIdRequest, ProducerId};
use tokio::sync::OnceCell;

use crate::client::Client;
use crate::error::{BrokerError, Error, Result};

/// A producer id and epoch as the broker assigned them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerIdentity {
    pub id: i64,
    pub epoch: i16,
}

impl ProducerIdentity {
    /// The same id at the next epoch, or `None` when the epoch is exhausted
    /// (then a fresh id is needed).
    pub(super) fn bumped(self) -> Option<Self> {
        self.epoch
            .checked_add(1)
            .map(|epoch| Self { id: self.id, epoch })
    }
}

/// Hands out producer ids: one shared by all partitions, fetched on first
/// use, and fresh ones for partitions that must start over.
#[derive(Debug)]
pub(crate) struct ProducerIds {
    client: Client,
    shared: OnceCell<ProducerIdentity>,
    /// Sequence restarts (new epoch or fresh id) over all partitions.
    resets: AtomicU64,
}

impl ProducerIds {
    pub(super) fn new(client: Client) -> Self {
        Self {
            client,
            shared: OnceCell::new(),
            resets: AtomicU64::new(0),
        }
    }

    /// Count a partition's sequence restart (a new epoch or a fresh id).
    pub(super) fn count_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// Sequence restarts so far, over all partitions.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// The id shared by all partitions of this producer.
    pub(super) async fn shared(&self) -> Result<ProducerIdentity> {
        self.shared
            .get_or_try_init(|| init_producer_id(&self.client))
            .await
            .copied()
    }

    /// A new id, for a partition whose epoch is exhausted or stale.
    pub(super) async fn fresh(&self) -> Result<ProducerIdentity> {
        init_producer_id(&self.client).await
    }
}

/// InitProducerId without a transactional id: any broker can answer it.
async fn init_producer_id(client: &Client) -> Result<ProducerIdentity> {
    let cluster = client.cluster();
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    cluster
        .with_retries("InitProducerId", |left| {
            let request = &request;
            async move {
                let conn = cluster.any_broker_within(left).await?;
                let response = conn.request(request).await?;
                if response.error_code != 0 {
                    return Err(Error::from(BrokerError::new(
                        conn.addr(),
                        "InitProducerId",
                        response.error_code,
                        Some(
                            "the idempotent producer needs a producer id; if the cluster \
                         refuses one, build the producer with .idempotent(false)"
                                .into(),
                        ),
                    )));
                }
                Ok(ProducerIdentity {
                    id: response.producer_id.0,
                    epoch: response.producer_epoch,
                })
            }
        })
        .await
}
