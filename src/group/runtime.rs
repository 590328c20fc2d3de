//! The partition runtime: for each owned partition, a fetch task and a
//! worker that hands records to the handler in offset order.
//!
//! The fetch task fills a channel of two batches; the worker dispatches
//! records one at a time, tracking each in the ack tracker. Memory per
//! partition is bounded by the channel (two fetched batches) and by the ack
//! tracker's window (`max_window_per_partition` records, 32 bytes each):
//!
//! - at most `max_pending_per_partition` records are incomplete at once; a
//!   worker at that limit waits for a completion (deferred acks). If every
//!   one of them failed, nothing can complete: the partition *pauses* and
//!   the pause is reported ([`ConsumerError::PartitionPaused`], and
//!   [`ConsumerStatus::paused`]);
//! - a record that stays incomplete at the head while later ones complete
//!   makes the window grow; at `max_window_per_partition` the partition
//!   pauses too, until the head completes.
//!
//! While a worker waits, the channel fills and the fetch task waits on it:
//! fetching for that partition pauses as well.
//!
//! A fetch that keeps failing (after the fetch loop's own retries until the
//! retry deadline) is reported ([`ConsumerError::Fetch`]) and restarted
//! from the same offset after a backoff; the partition is never dropped
//! silently.
//!
//! [`ConsumerError::PartitionPaused`]: super::ConsumerError::PartitionPaused
//! [`ConsumerError::Fetch`]: super::ConsumerError::Fetch
//! [`ConsumerStatus::paused`]: super::ConsumerStatus::paused

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::events::{ConsumerError, Reporter};
use super::handler::{Completion, ConsumerRecord, DynHandler, Sink};
use super::tracking::{Room, Tracking};
use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::fetch::Fetcher;
use crate::protocol::error_codes::UNKNOWN_TOPIC_OR_PARTITION;
use crate::record::Record;
use crate::{StartOffset, TopicPartition};

/// Pauses before restarting a fetch that failed for good.
const FETCH_RESTART_FIRST: Duration = Duration::from_secs(1);
const FETCH_RESTART_MAX: Duration = Duration::from_secs(30);

/// Settings of the partition runtime (fixed for a consumer).
#[derive(Debug, Clone)]
pub(crate) struct RuntimeSettings {
    pub max_wait: Duration,
    pub max_partition_bytes: i32,
    pub max_pending: usize,
    pub max_window: usize,
    pub offset_reset: StartOffset,
}

/// One running partition.
struct PartitionTask {
    /// Set by the runtime to stop dispatching; read by the worker before
    /// each record.
    stop: Arc<AtomicBool>,
    /// Set when the partition is revoked or lost; every record dispatched
    /// for this assignment holds a receiver (`ConsumerRecord::revoked`).
    revoked: tokio::sync::watch::Sender<bool>,
    worker: JoinHandle<()>,
    fetcher: JoinHandle<()>,
}

impl Drop for PartitionTask {
    // If the consumer is dropped (its `run` future cancelled) the partition
    // tasks must not outlive it.
    fn drop(&mut self) {
        self.fetcher.abort();
        self.worker.abort();
    }
}

/// The partitions this member is processing. Owned by the session task.
pub(crate) struct PartitionRuntime {
    client: Client,
    settings: RuntimeSettings,
    handler: Arc<dyn DynHandler>,
    /// Shared with workers, completions, the committer and status readers.
    tracking: Arc<Tracking>,
    /// Shared with workers and fetch tasks.
    reporter: Reporter,
    /// Poked by fetch tasks when a topic or partition seems gone; the
    /// session then refreshes metadata.
    metadata_hint: Arc<Notify>,
    /// Running partitions; written only by the session task.
    partitions: BTreeMap<TopicPartition, PartitionTask>,
}

impl std::fmt::Debug for PartitionRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionRuntime")
            .field("partitions", &self.partitions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl PartitionRuntime {
    pub(super) fn new(
        client: Client,
        settings: RuntimeSettings,
        handler: Arc<dyn DynHandler>,
        tracking: Arc<Tracking>,
        reporter: Reporter,
        metadata_hint: Arc<Notify>,
    ) -> Self {
        Self {
            client,
            settings,
            handler,
            tracking,
            reporter,
            metadata_hint,
            partitions: BTreeMap::new(),
        }
    }

    /// The running partitions, sorted.
    pub(super) fn owned(&self) -> impl Iterator<Item = &TopicPartition> {
        self.partitions.keys()
    }

    pub(super) fn contains(&self, tp: &TopicPartition) -> bool {
        self.partitions.contains_key(tp)
    }

    /// Start fetching and dispatching `tp` from `position`.
    pub(super) fn start(&mut self, tp: TopicPartition, position: i64) {
        let epoch = self.tracking.assign(tp.clone(), position);
        // Two fetched batches ahead of the handler: enough to hide fetch
        // latency, small enough to keep memory flat.
        let (tx, rx) = mpsc::channel(2);
        let fetcher = Fetcher {
            client: self.client.clone(),
            topic: Arc::clone(&tp.topic),
            partition: tp.partition,
            next: position,
            end: None,
            max_wait_ms: i32::try_from(self.settings.max_wait.as_millis()).unwrap_or(i32::MAX),
            max_bytes: self.settings.max_partition_bytes,
            out_of_range: self.settings.offset_reset,
            tx,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (revoked, revoked_rx) = tokio::sync::watch::channel(false);
        let worker = Worker {
            key: tp.clone(),
            epoch,
            revoked: revoked_rx,
            rx,
            handler: Arc::clone(&self.handler),
            tracking: Arc::clone(&self.tracking),
            stop: Arc::clone(&stop),
            max_pending: self.settings.max_pending,
            max_window: self.settings.max_window,
            reporter: self.reporter.clone(),
        };
        let fetch = fetch_partition(
            fetcher,
            tp.clone(),
            self.reporter.clone(),
            Arc::clone(&self.metadata_hint),
        );
        let task = PartitionTask {
            stop,
            revoked,
            worker: tokio::spawn(worker.run()),
            fetcher: tokio::spawn(fetch),
        };
        self.partitions.insert(tp, task);
    }

    /// Give partitions up: stop dispatching, wait until `until` for the
    /// records being handled and for deferred ones still pending (failed
    /// records will not complete and are not waited for), stop tracking.
    /// Returns each partition's commit point; what was not completed is
    /// redelivered to the next owner.
    pub(super) async fn stop(
        &mut self,
        which: &[TopicPartition],
        until: Instant,
    ) -> Vec<(TopicPartition, i64)> {
        let mut tasks = Vec::new();
        for tp in which {
            if let Some(task) = self.partitions.remove(tp) {
                task.stop.store(true, Ordering::Release);
                task.revoked.send_replace(true);
                task.fetcher.abort();
                tasks.push((tp.clone(), task));
            }
        }
        // Wake workers waiting for room, so they see the stop flag.
        self.tracking.completed.notify_waiters();
        for (tp, task) in &mut tasks {
            if tokio::time::timeout_at(until, &mut task.worker)
                .await
                .is_err()
            {
                tracing::warn!(partition = %tp, "handler still running at the revocation deadline; giving the partition up");
                task.worker.abort();
            }
        }
        // Deferred records may still be completed by the application.
        loop {
            let notified = self.tracking.completed.notified();
            if tasks.iter().all(|(tp, _)| self.tracking.pending(tp) == 0) {
                break;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                break;
            }
        }
        tasks
            .iter()
            .filter_map(|(tp, _)| self.tracking.revoke(tp).map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Drop partitions at once without committing (they were lost).
    pub(super) fn lose(&mut self, which: &[TopicPartition]) {
        for tp in which {
            if let Some(task) = self.partitions.remove(tp) {
                task.stop.store(true, Ordering::Release);
                task.revoked.send_replace(true);
                drop(task); // aborts both tasks
                self.tracking.revoke(tp);
            }
        }
        self.tracking.completed.notify_waiters();
    }
}

/// The fetch task of one partition: fetch until the worker is gone;
/// report a fetch that failed for good and restart it after a backoff.
async fn fetch_partition(
    mut fetcher: Fetcher,
    tp: TopicPartition,
    reporter: Reporter,
    metadata_hint: Arc<Notify>,
) {
    let mut backoff = Backoff::between(FETCH_RESTART_FIRST, FETCH_RESTART_MAX);
    loop {
        let error = match fetcher.fetch_loop().await {
            Ok(()) => return,
            Err(e) => e,
        };
        if fetcher.tx.is_closed() {
            return;
        }
        let delay = backoff.next_delay();
        tracing::warn!(partition = %tp, offset = fetcher.next, error = %error, retry_in = ?delay, "fetching failed; retrying");
        let gone = matches!(
            error,
            Error::UnknownTopic(_) | Error::UnknownPartition { .. }
        ) || error.broker_code() == Some(UNKNOWN_TOPIC_OR_PARTITION);
        if gone {
            metadata_hint.notify_one();
        }
        reporter.report(ConsumerError::Fetch {
            partition: tp.clone(),
            error,
        });
        tokio::time::sleep(delay).await;
    }
}

/// Hands one partition's records to the handler, in order. Owned by its
/// task; shares only what is marked.
struct Worker {
    key: TopicPartition,
    /// The assignment of the partition this worker dispatches for.
    epoch: u64,
    /// Handed to every record (`ConsumerRecord::revoked`).
    revoked: tokio::sync::watch::Receiver<bool>,
    /// Batches from the partition's fetch task.
    rx: mpsc::Receiver<Result<Vec<Record>>>,
    handler: Arc<dyn DynHandler>,
    /// Shared (see `Tracking`); the worker records dispatches and waits on
    /// its `completed` notification for room.
    tracking: Arc<Tracking>,
    /// Written by the runtime (stop dispatching), read before each record.
    stop: Arc<AtomicBool>,
    max_pending: usize,
    max_window: usize,
    /// Shared writer of the error stream.
    reporter: Reporter,
}

impl Worker {
    async fn run(mut self) {
        while let Some(batch) = self.rx.recv().await {
            // The fetch task reports its own errors and retries.
            let Ok(batch) = batch else { continue };
            for record in batch {
                if self.stop.load(Ordering::Acquire) || !self.wait_for_room().await {
                    return;
                }
                let offset = record.offset;
                if !self.tracking.dispatched(&self.key, offset, self.epoch) {
                    return; // revoked meanwhile
                }
                self.dispatch(record, offset).await;
            }
        }
    }

    /// Wait until the limits allow one more record; `false` when stopped
    /// meanwhile. Reports a pause once when it starts.
    async fn wait_for_room(&self) -> bool {
        let mut reported = false;
        loop {
            let notified = self.tracking.completed.notified();
            match self
                .tracking
                .room(&self.key, self.max_pending, self.max_window)
            {
                Room::Free => return true,
                Room::Wait => {}
                Room::Paused(paused) => {
                    if !reported {
                        reported = true;
                        tracing::warn!("{paused}");
                        self.reporter.report(ConsumerError::PartitionPaused {
                            partition: paused.partition,
                            offset: paused.offset,
                            failed: paused.failed,
                            reason: paused.reason,
                        });
                    }
                }
            }
            notified.await;
            if self.stop.load(Ordering::Acquire) {
                self.tracking.clear_pause(&self.key);
                return false;
            }
        }
    }

    async fn dispatch(&self, record: Record, offset: i64) {
        let completion = Completion {
            sink: Sink::Tracked {
                tracking: Arc::clone(&self.tracking),
                epoch: self.epoch,
            },
            key: self.key.clone(),
            offset,
            deferred: Arc::new(AtomicBool::new(false)),
            revoked: self.revoked.clone(),
        };
        let outcome = std::panic::AssertUnwindSafe(
            self.handler
                .handle_boxed(ConsumerRecord::new(record, completion.clone())),
        )
        .catch_unwind()
        .await;
        if completion.is_deferred() {
            return;
        }
        match outcome {
            Ok(Ok(())) => completion.ack(),
            Ok(Err(e)) => {
                tracing::warn!(partition = %self.key, offset, error = %e, "handler failed; the record holds the partition's commits");
                completion.fail(e.reason());
            }
            Err(panic) => {
                let reason = format!("handler panicked: {}", panic_message(&*panic));
                tracing::error!(partition = %self.key, offset, %reason, "the record holds the partition's commits");
                completion.fail(reason);
            }
        }
    }
}

/// The message of a panic payload (`panic!` with a string or a format).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}
