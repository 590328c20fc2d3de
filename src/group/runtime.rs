//! The partition runtime: the member's fetch pool (one request per broker
//! for all owned partitions, see [`crate::fetch`]) and, for each owned
//! partition, a worker that hands records to the handler in offset order.
//!
//! The pool fills each partition's channel of two batches; the worker dispatches
//! records one at a time (or, with `key_concurrency(n)`, up to `n` at once
//! when their keys differ: see below), tracking each in the ack tracker.
//! Memory per
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
//! While a worker waits, the channel fills and the pool leaves the
//! partition out of its requests: fetching for that partition pauses as
//! well, and the others go on. All partitions' fetched batches together
//! stay within the member's `fetch_buffer_bytes`.
//!
//! # Per-key concurrency
//!
//! With `key_concurrency(n)`, `n > 1`, a worker runs up to `n` handler calls
//! of its partition at once, for records with different keys (records
//! without a key count as one key). It takes records in offset order; a
//! record whose key has a record in the handler waits behind it, in offset
//! order, while later records of other keys go ahead. Such a waiting record
//! is tracked (dispatched) already, so it counts against
//! `max_pending_per_partition` and the window: memory stays bounded however
//! hot one key is. A key is free again when the handler call of its record
//! *returns*:
//!
//! - a deferred record ([`ConsumerRecord::defer`]) frees its key when its
//!   handler returns, not when it is acked: the handler took over
//!   completion, and a key that waited for acks would deadlock handlers
//!   that ack in batches;
//! - a failed record (or one whose handler panicked) frees its key too, as
//!   one-at-a-time dispatch goes on past a failed record: the failure holds
//!   the partition's commit point (so the record is redelivered after a
//!   rebalance or restart), not the later records. Handlers that must not
//!   let a later record of a key overtake a failed one retry inside the
//!   call (in-process retry keeps the key busy).
//!
//! The ack tracker takes completions in any order; commits stay gap-free.
//!
//! # Consumer-wide bound
//!
//! With `max_in_flight(n)`, every handler call holds one of `n` permits
//! shared by all partitions (FIFO, so no partition starves). A worker that
//! waits for a permit takes no more records: its channel fills and its
//! fetching pauses, so memory stays flat whatever the backlog. Deferred
//! records hold no permit once their handler returned.
//!
//! A fetch that keeps failing (after the pool's own retries until the
//! retry deadline) is reported ([`ConsumerError::Fetch`]) and restarted
//! from the same offset after a backoff; the partition is never dropped
//! silently.
//!
//! [`ConsumerRecord::defer`]: super::ConsumerRecord::defer
//! [`ConsumerError::PartitionPaused`]: super::ConsumerError::PartitionPaused
//! [`ConsumerError::Fetch`]: super::ConsumerError::Fetch
//! [`ConsumerStatus::paused`]: super::ConsumerStatus::paused

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::events::{ConsumerError, Reporter};
use super::handler::{Completion, CompletionState, ConsumerRecord, DynHandler, Outcome, Sink};
use super::tracking::{Room, Tracking};
use super::watchdog::Sample;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::fetch::{FetchPool, FetchProgress, FetchSettings, Fetched, OnFailure, PartitionFetch};
use crate::record::Record;
use crate::{StartOffset, TopicPartition};

/// Why a record tracked as dispatched never reached the handler.
const NOT_HANDED: &str = "not handed to the handler: the partition was revoked";

/// Settings of the partition runtime (fixed for a consumer).
#[derive(Debug, Clone)]
pub(crate) struct RuntimeSettings {
    pub max_wait: Duration,
    pub max_partition_bytes: i32,
    /// Bound of fetched bytes waiting for handlers, over all partitions.
    pub fetch_buffer_bytes: usize,
    /// The member's rack, for fetching from a replica in it (KIP-392).
    pub rack: Option<String>,
    pub max_pending: usize,
    pub max_window: usize,
    pub offset_reset: StartOffset,
    /// Handler calls of one partition at once, for different keys.
    pub key_concurrency: usize,
    /// Permits for handler calls, shared by every partition (`max_in_flight`).
    pub max_in_flight: Option<Arc<Semaphore>>,
}

/// One running partition.
struct PartitionTask {
    /// Set by the runtime to stop dispatching; read by the worker before
    /// each record.
    stop: Arc<AtomicBool>,
    /// Set when the partition is revoked or lost; every record dispatched
    /// for this assignment holds a receiver (`ConsumerRecord::revoked`).
    revoked: tokio::sync::watch::Sender<bool>,
    /// Written by the fetch pool and the worker; read by the watchdog.
    progress: Arc<FetchProgress>,
    worker: JoinHandle<()>,
}

impl Drop for PartitionTask {
    // If the consumer is dropped (its `run` future cancelled) the worker
    // must not outlive it (the fetch pool stops with the runtime).
    fn drop(&mut self) {
        self.worker.abort();
    }
}

/// The partitions this member is processing. Owned by the session task.
pub(crate) struct PartitionRuntime {
    settings: RuntimeSettings,
    handler: Arc<dyn DynHandler>,
    /// Shared with workers, completions, the committer and status readers.
    tracking: Arc<Tracking>,
    /// Shared with workers and the fetch pool.
    reporter: Reporter,
    /// Fetches every running partition: one request per broker.
    fetch: FetchPool,
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
        let fetch_settings = FetchSettings {
            max_wait: settings.max_wait,
            max_partition_bytes: settings.max_partition_bytes,
            buffer_bytes: settings.fetch_buffer_bytes,
            rack: settings.rack.clone(),
        };
        // A fetch that failed for good is reported and retried by the pool;
        // a topic or partition that seems gone pokes the session to
        // refresh metadata.
        let report = {
            let reporter = reporter.clone();
            move |tp: &TopicPartition, error: Error, gone: bool| {
                if gone {
                    metadata_hint.notify_one();
                }
                reporter.report(ConsumerError::Fetch {
                    partition: tp.clone(),
                    error,
                });
            }
        };
        let fetch = FetchPool::start(client, fetch_settings, OnFailure::Report(Arc::new(report)));
        Self {
            settings,
            handler,
            tracking,
            reporter,
            fetch,
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

    /// How each running partition is doing, for the watchdog.
    pub(super) fn progress(&self) -> Vec<Sample> {
        self.partitions
            .iter()
            .filter_map(|(tp, task)| {
                let (commit_point, incomplete) = self.tracking.progress(tp)?;
                Some(Sample {
                    partition: tp.clone(),
                    fetch_failing_for: task.progress.failing_for(),
                    next_fetch: task.progress.next_offset(),
                    commit_point,
                    waiting: incomplete + task.progress.buffered(),
                })
            })
            .collect()
    }

    /// Start fetching and dispatching partitions, each from its position.
    pub(super) fn start(&mut self, partitions: Vec<(TopicPartition, i64)>) {
        let fetches = partitions
            .into_iter()
            .map(|(tp, position)| self.start_one(tp, position))
            .collect();
        // One command for all: the first request carries every partition.
        self.fetch.add(fetches);
    }

    /// Start the worker of `tp`; returns what the fetch pool needs for it.
    fn start_one(&mut self, tp: TopicPartition, position: i64) -> PartitionFetch {
        let epoch = self.tracking.assign(tp.clone(), position);
        // Two fetched batches ahead of the handler: enough to hide fetch
        // latency, small enough to keep memory flat.
        let (tx, rx) = mpsc::channel(2);
        let progress = Arc::new(FetchProgress::new(position));
        let fetch = PartitionFetch {
            tp: tp.clone(),
            next: position,
            end: None,
            out_of_range: self.settings.offset_reset,
            tx,
            progress: Some(Arc::clone(&progress)),
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
            progress: Arc::clone(&progress),
            key_concurrency: self.settings.key_concurrency,
            in_flight: self.settings.max_in_flight.clone(),
        };
        let task = PartitionTask {
            stop,
            revoked,
            progress,
            worker: tokio::spawn(worker.run()),
        };
        self.partitions.insert(tp, task);
        fetch
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
                self.fetch.remove(tp);
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
                self.fetch.remove(tp);
                drop(task); // aborts the worker
                self.tracking.revoke(tp);
            }
        }
        self.tracking.completed.notify_waiters();
    }
}

/// Hands one partition's records to the handler, in order (per key, with
/// key concurrency). Owned by its task; shares only what is marked.
struct Worker {
    key: TopicPartition,
    /// The assignment of the partition this worker dispatches for.
    epoch: u64,
    /// Handed to every record (`ConsumerRecord::revoked`); the worker also
    /// watches it to stop waiting for a permit.
    revoked: tokio::sync::watch::Receiver<bool>,
    /// Batches from the fetch pool.
    rx: mpsc::Receiver<Result<Fetched>>,
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
    /// Shared with the fetch pool and the watchdog; the worker notes the
    /// fetched records it is done with.
    progress: Arc<FetchProgress>,
    /// Handler calls at once for different keys (1: strictly in order).
    key_concurrency: usize,
    /// Consumer-wide permits for handler calls (`max_in_flight`).
    in_flight: Option<Arc<Semaphore>>,
}

/// The in-order worker's fast path. While nothing of its partition is
/// incomplete, records that simply complete need no tracking one by one:
/// the worker hands them over without taking the tracker's lock and, once
/// per batch (or before it waits for a handler), moves the commit point
/// past them. A record that is deferred or fails is tracked (by `defer`,
/// or by the worker before failing it) and ends the fast path until the
/// partition has nothing incomplete again. Commits never run ahead of what
/// completed; they may lag by up to one batch.
#[derive(Debug, Default)]
struct FastPath {
    /// Whether the next record may take the fast path.
    on: bool,
    /// One past the last record completed on the fast path, not yet told
    /// to the tracker.
    done: Option<i64>,
}

/// A handler call of the keyed worker that ended.
struct Finished {
    /// The record's key (its busy entry is released).
    key: Option<Bytes>,
    offset: i64,
    /// `false` if the partition was revoked before the record got a permit:
    /// it never reached the handler.
    handled: bool,
}

impl Worker {
    async fn run(self) {
        if self.key_concurrency > 1 {
            self.run_keyed().await
        } else {
            self.run_in_order().await
        }
    }

    /// One record at a time, in offset order.
    async fn run_in_order(mut self) {
        let mut fast = FastPath::default();
        self.in_order(&mut fast).await;
        self.flush(&mut fast);
    }

    /// The loop of [`run_in_order`](Self::run_in_order); returns when the
    /// partition stops. What completed on the fast path and is not flushed
    /// yet stays in `fast`.
    async fn in_order(&mut self, fast: &mut FastPath) {
        while let Some(batch) = self.rx.recv().await {
            // The fetch pool reports its own errors and retries.
            let Ok(Fetched {
                records: batch,
                lease,
            }) = batch
            else {
                continue;
            };
            let len = batch.len();
            for record in batch {
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                if !fast.on {
                    match self.wait_for_room().await {
                        Some(idle) => fast.on = idle,
                        None => return,
                    }
                }
                let Ok(permit) = self.permit().await else {
                    return; // revoked while waiting
                };
                let offset = record.offset;
                if fast.on {
                    self.call_fast(record, fast).await;
                    drop(permit);
                } else {
                    if !self.tracking.dispatched(&self.key, offset, self.epoch) {
                        return; // revoked meanwhile
                    }
                    let completion = self.completion(offset, false);
                    let outcome = call(&*self.handler, record, &completion).await;
                    drop(permit);
                    finish(&completion, outcome);
                }
                // A handler that completes at once never makes this task
                // wait: without this, a whole batch would run in one poll
                // and hold the thread from other tasks (heartbeats, other
                // partitions, the producer of a service's hand-offs).
                tokio::task::consume_budget().await;
            }
            self.flush(fast);
            self.progress.taken(len);
            drop(lease); // the batch's bytes no longer count
        }
    }

    /// Hand one record to the handler on the fast path (see [`FastPath`]).
    async fn call_fast(&self, record: Record, fast: &mut FastPath) {
        let offset = record.offset;
        let completion = self.completion(offset, true);
        let mut call = std::pin::pin!(call(&*self.handler, record, &completion));
        let outcome = match futures::poll!(call.as_mut()) {
            std::task::Poll::Ready(outcome) => outcome,
            std::task::Poll::Pending => {
                // The handler waits: let the commit point catch up first, so
                // that what completed is committed even if this call never
                // ends (a revocation that gives up on it).
                self.flush(fast);
                call.await
            }
        };
        if completion.is_deferred() {
            // `defer` tracked the record; leave the fast path until it and
            // whatever follows it complete.
            fast.on = false;
            fast.done = None;
            return;
        }
        if matches!(outcome, Ok(Ok(()))) {
            fast.done = Some(offset + 1);
            return;
        }
        // It failed: track it (everything before it completed), then fail it.
        fast.on = false;
        fast.done = None;
        completion.register();
        finish(&completion, outcome);
    }

    /// Tell the tracker what completed on the fast path.
    fn flush(&self, fast: &mut FastPath) {
        if let Some(next) = fast.done.take() {
            self.tracking.advance(&self.key, next, self.epoch);
        }
    }

    /// A permit for one handler call, if the consumer has a bound; `Err`
    /// when the partition is revoked while waiting for one.
    async fn permit(&self) -> std::result::Result<Option<OwnedSemaphorePermit>, ()> {
        let Some(permits) = &self.in_flight else {
            return Ok(None);
        };
        if let Ok(p) = Arc::clone(permits).try_acquire_owned() {
            return Ok(Some(p));
        }
        let mut revoked = self.revoked.clone();
        tokio::select! {
            p = Arc::clone(permits).acquire_owned() => Ok(p.ok()),
            _ = revoked.wait_for(|r| *r) => Err(()),
        }
    }

    /// Up to `key_concurrency` handler calls at once, for different keys;
    /// per key in offset order (see the module docs).
    async fn run_keyed(mut self) {
        let limit = self.key_concurrency;
        // Handler calls under way (each may first wait for a permit).
        let mut running: FuturesUnordered<BoxFuture<'static, Finished>> = FuturesUnordered::new();
        // Keys with a record in `running`, each with the later records of
        // that key waiting behind it, in offset order. Invariant: a record
        // waits here only behind a running record of its key.
        let mut busy: HashMap<Option<Bytes>, VecDeque<Record>> = HashMap::new();
        // The batch being taken, and its size as fetched.
        let mut batch: VecDeque<Record> = VecDeque::new();
        let mut batch_len = 0;
        // Holds the batch's bytes against the pool's budget until taken.
        let mut lease: Option<crate::fetch::Lease> = None;
        let mut pause_reported = false;
        let mut revoked = self.revoked.clone();
        let mut stopping = false;
        while !stopping && !self.stop.load(Ordering::Acquire) {
            // Give other tasks their turn now and then (see run_in_order).
            tokio::task::consume_budget().await;
            // Created before the room checks, so no completion is missed.
            let notified = self.tracking.completed.notified();
            let mut blocked = false;
            while running.len() < limit && !batch.is_empty() {
                match self
                    .tracking
                    .room(&self.key, self.max_pending, self.max_window)
                {
                    Room::Free { .. } => pause_reported = false,
                    Room::Wait => {
                        blocked = true;
                        break;
                    }
                    Room::Paused(paused) => {
                        if !pause_reported {
                            pause_reported = true;
                            self.report_pause(paused);
                        }
                        blocked = true;
                        break;
                    }
                }
                let Some(record) = batch.pop_front() else {
                    break;
                };
                if batch.is_empty() {
                    self.progress.taken(batch_len);
                    drop(lease.take()); // the batch's bytes no longer count
                }
                if !self
                    .tracking
                    .dispatched(&self.key, record.offset, self.epoch)
                {
                    stopping = true; // revoked meanwhile
                    break;
                }
                match busy.get_mut(&record.key) {
                    Some(waiting) => waiting.push_back(record),
                    None => {
                        busy.insert(record.key.clone(), VecDeque::new());
                        running.push(self.start(record));
                    }
                }
            }
            if stopping {
                break;
            }
            let want_batch = batch.is_empty();
            tokio::select! {
                Some(done) = running.next(), if !running.is_empty() => {
                    if !done.handled {
                        // Revoked while it waited for a permit.
                        self.tracking
                            .fail(&self.key, done.offset, self.epoch, NOT_HANDED.into());
                        stopping = true;
                        continue;
                    }
                    // The key is free: its next record (if any) takes the slot.
                    if let Some(waiting) = busy.get_mut(&done.key) {
                        match waiting.pop_front() {
                            Some(next) => running.push(self.start(next)),
                            None => {
                                busy.remove(&done.key);
                            }
                        }
                    }
                }
                fetched = self.rx.recv(), if want_batch => match fetched {
                    Some(Ok(fetched)) => {
                        batch_len = fetched.records.len();
                        batch = fetched.records.into();
                        drop(lease.replace(fetched.lease));
                    }
                    Some(Err(_)) => {} // the fetch pool reports and retries
                    None => stopping = true,
                },
                _ = notified, if blocked => {}
                _ = revoked.wait_for(|r| *r) => stopping = true,
            }
        }
        if pause_reported {
            self.tracking.clear_pause(&self.key);
        }
        // Stopping: records waiting behind their key never reach the
        // handler; marked failed, they are not waited for (and not
        // committed: redelivered to the next owner). Calls under way finish.
        for waiting in busy.values_mut() {
            for record in waiting.drain(..) {
                self.tracking
                    .fail(&self.key, record.offset, self.epoch, NOT_HANDED.into());
            }
        }
        while let Some(done) = running.next().await {
            if !done.handled {
                self.tracking
                    .fail(&self.key, done.offset, self.epoch, NOT_HANDED.into());
            }
        }
    }

    /// The handler call of one record (first waiting for a permit, if the
    /// consumer has a bound), as a future of its own.
    fn start(&self, record: Record) -> BoxFuture<'static, Finished> {
        let completion = self.completion(record.offset, false);
        let handler = Arc::clone(&self.handler);
        let permits = self.in_flight.clone();
        let mut revoked = self.revoked.clone();
        let key = record.key.clone();
        let offset = record.offset;
        Box::pin(async move {
            let permit = match permits {
                Some(permits) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => tokio::select! {
                        p = permits.acquire_owned() => p.ok(),
                        _ = revoked.wait_for(|r| *r) => {
                            return Finished { key, offset, handled: false };
                        }
                    },
                },
                None => None,
            };
            let outcome = call(&*handler, record, &completion).await;
            drop(permit);
            finish(&completion, outcome);
            Finished {
                key,
                offset,
                handled: true,
            }
        })
    }

    /// A record's completion; `lazy` when it is not dispatched in the
    /// tracker (the fast path).
    fn completion(&self, offset: i64, lazy: bool) -> Completion {
        Completion::new(CompletionState {
            sink: Sink::Tracked {
                tracking: Arc::clone(&self.tracking),
                epoch: self.epoch,
            },
            key: self.key.clone(),
            offset,
            deferred: AtomicBool::new(false),
            lazy: AtomicBool::new(lazy),
            revoked: self.revoked.clone(),
        })
    }

    fn report_pause(&self, paused: super::status::PausedPartition) {
        tracing::warn!("{paused}");
        self.reporter.report(ConsumerError::PartitionPaused {
            partition: paused.partition,
            offset: paused.offset,
            failed: paused.failed,
            reason: paused.reason,
        });
    }

    /// Wait until the limits allow one more record; `None` when stopped
    /// meanwhile, else whether nothing of the partition is incomplete.
    /// Reports a pause once when it starts.
    async fn wait_for_room(&self) -> Option<bool> {
        let mut reported = false;
        loop {
            let notified = self.tracking.completed.notified();
            match self
                .tracking
                .room(&self.key, self.max_pending, self.max_window)
            {
                Room::Free { idle } => return Some(idle),
                Room::Wait => {}
                Room::Paused(paused) => {
                    if !reported {
                        reported = true;
                        self.report_pause(paused);
                    }
                }
            }
            notified.await;
            if self.stop.load(Ordering::Acquire) {
                self.tracking.clear_pause(&self.key);
                return None;
            }
        }
    }
}

/// Call the handler for one record, catching a panic.
async fn call(
    handler: &dyn DynHandler,
    record: Record,
    completion: &Completion,
) -> std::thread::Result<Outcome> {
    std::panic::AssertUnwindSafe(
        handler.handle_boxed(ConsumerRecord::new(record, completion.clone())),
    )
    .catch_unwind()
    .await
}

/// Complete a record with what its handler call gave, unless the handler
/// deferred it.
fn finish(completion: &Completion, outcome: std::thread::Result<Outcome>) {
    if completion.is_deferred() {
        return;
    }
    let (partition, offset) = (&completion.key, completion.offset);
    match outcome {
        Ok(Ok(())) => completion.ack(),
        Ok(Err(e)) => {
            tracing::warn!(%partition, offset, error = %e, "handler failed; the record holds the partition's commits");
            completion.fail(e.reason());
        }
        Err(panic) => {
            let reason = format!("handler panicked: {}", panic_message(&*panic));
            tracing::error!(%partition, offset, %reason, "the record holds the partition's commits");
            completion.fail(reason);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::HandlerError;
    use std::sync::Mutex;

    type Calls = Arc<Mutex<Vec<(&'static str, i64)>>>;

    /// A worker and the means to feed and stop it.
    struct Harness {
        worker: Worker,
        tx: mpsc::Sender<Result<Fetched>>,
        revoke: tokio::sync::watch::Sender<bool>,
        stop: Arc<AtomicBool>,
    }

    /// A keyed worker for partition t/0 from offset 0, fed through the
    /// returned sender, with a handler that logs the start and end of each
    /// call; records whose value is "hold" wait for the revocation.
    fn worker(tracking: &Arc<Tracking>, permits: Option<Arc<Semaphore>>, calls: &Calls) -> Harness {
        let calls = Arc::clone(calls);
        let handler = move |r: ConsumerRecord| {
            let calls = Arc::clone(&calls);
            async move {
                calls.lock().unwrap().push(("start", r.offset));
                if r.value.as_deref() == Some(&b"hold"[..]) {
                    r.revoked().await;
                }
                tokio::task::yield_now().await;
                calls.lock().unwrap().push(("end", r.offset));
                Ok::<(), HandlerError>(())
            }
        };
        let mut harness = harness(tracking, handler);
        harness.worker.key_concurrency = 4;
        harness.worker.in_flight = permits;
        harness
    }

    /// An in-order worker for partition t/0 from offset 0, calling
    /// `handler`, with no bound on handler calls.
    fn harness(tracking: &Arc<Tracking>, handler: impl crate::group::Handler) -> Harness {
        let tp = TopicPartition::new("t", 0);
        let epoch = tracking.assign(tp.clone(), 0);
        let (tx, rx) = mpsc::channel(2);
        let (revoke, revoked) = tokio::sync::watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            key: tp,
            epoch,
            revoked,
            rx,
            handler: Arc::new(handler),
            tracking: Arc::clone(tracking),
            stop: Arc::clone(&stop),
            max_pending: 100,
            max_window: 1000,
            reporter: Reporter::default(),
            progress: Arc::new(FetchProgress::new(0)),
            key_concurrency: 1,
            in_flight: None,
        };
        Harness {
            worker,
            tx,
            revoke,
            stop,
        }
    }

    fn record(offset: i64, key: Option<&'static str>, value: &'static str) -> Record {
        let mut r = Record::new("t", 0, offset);
        r.key = key.map(|k| Bytes::from_static(k.as_bytes()));
        r.value = Some(Bytes::from_static(value.as_bytes()));
        r
    }

    #[tokio::test]
    async fn records_behind_a_busy_key_wait_and_other_keys_go_ahead() {
        let tracking = Arc::new(Tracking::default());
        let calls: Calls = Arc::default();
        let Harness {
            worker,
            tx,
            revoke,
            stop,
        } = worker(&tracking, None, &calls);
        let task = tokio::spawn(worker.run());
        let batch = vec![
            record(0, Some("a"), "hold"),
            record(1, Some("a"), "x"),
            record(2, Some("b"), "x"),
            record(3, None, "x"),
            record(4, None, "x"),
        ];
        tx.send(Ok(Fetched::unbudgeted(batch))).await.unwrap();
        let tp = TopicPartition::new("t", 0);
        // Everything but the held record and the one behind it completes.
        tokio::time::timeout(Duration::from_secs(5), async {
            while tracking.progress(&tp) != Some((0, 2)) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the other records complete");
        {
            let calls = calls.lock().unwrap();
            assert!(
                !calls.contains(&("start", 1)),
                "a@1 waits behind a@0: {calls:?}"
            );
            let end3 = calls.iter().position(|c| *c == ("end", 3));
            let start4 = calls.iter().position(|c| *c == ("start", 4));
            assert!(end3 < start4, "keyless records are one key: {calls:?}");
        }
        // Revoked: the held call returns, the record behind it never
        // reaches the handler and is not waited for.
        stop.store(true, Ordering::Release);
        revoke.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the worker stops")
            .unwrap();
        assert!(!calls.lock().unwrap().contains(&("start", 1)));
        assert_eq!(tracking.pending(&tp), 0, "nothing left to wait for");
        assert_eq!(tracking.progress(&tp), Some((1, 1)), "commit point at a@1");
    }

    #[tokio::test]
    async fn a_worker_waiting_for_a_permit_stops_on_revocation() {
        for keyed in [false, true] {
            let tracking = Arc::new(Tracking::default());
            let calls: Calls = Arc::default();
            let permits = Arc::new(Semaphore::new(1));
            let taken = Arc::clone(&permits).acquire_owned().await.unwrap();
            let Harness {
                mut worker,
                tx,
                revoke,
                stop,
            } = worker(&tracking, Some(Arc::clone(&permits)), &calls);
            if !keyed {
                worker.key_concurrency = 1;
            }
            let task = tokio::spawn(worker.run());
            tx.send(Ok(Fetched::unbudgeted(vec![
                record(0, Some("a"), "x"),
                record(1, Some("b"), "x"),
            ])))
            .await
            .unwrap();
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            assert!(calls.lock().unwrap().is_empty(), "no permit, no call");
            stop.store(true, Ordering::Release);
            revoke.send_replace(true);
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the worker stops without a permit")
                .unwrap();
            let tp = TopicPartition::new("t", 0);
            assert_eq!(tracking.pending(&tp), 0, "keyed: {keyed}");
            assert_eq!(tracking.progress(&tp).map(|p| p.0), Some(0));
            drop(taken);
        }
    }

    async fn commit_point_reaches(tracking: &Tracking, want: (i64, usize)) {
        let tp = TopicPartition::new("t", 0);
        let reached = tokio::time::timeout(Duration::from_secs(5), async {
            while tracking.progress(&tp) != Some(want) {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "commit point and incomplete records: want {want:?}, have {:?}",
            tracking.progress(&tp)
        );
    }

    /// The fast path: records that simply complete move the commit point
    /// without being tracked one by one; a record deferred and acked at
    /// once from another task, and a failed one, are tracked, and the
    /// failed one holds the commit point while later records go on.
    #[tokio::test]
    async fn the_fast_path_commits_what_completed_and_tracks_deferred_and_failed_records() {
        let tracking = Arc::new(Tracking::default());
        let handler = |r: ConsumerRecord| async move {
            match r.value.as_deref() {
                Some(b"defer") => {
                    let ack = r.defer();
                    // Acked from elsewhere before the handler returns.
                    tokio::spawn(async move { ack.ack() }).await.unwrap();
                    Ok(())
                }
                Some(b"fail") => Err(HandlerError::retry("no")),
                _ => Ok(()),
            }
        };
        let Harness { worker, tx, .. } = harness(&tracking, handler);
        let epoch = worker.epoch;
        let task = tokio::spawn(worker.run());

        let plain: Vec<Record> = (0..5).map(|o| record(o, None, "x")).collect();
        tx.send(Ok(Fetched::unbudgeted(plain))).await.unwrap();
        commit_point_reaches(&tracking, (5, 0)).await;

        let mixed = vec![
            record(5, None, "x"),
            record(6, None, "defer"),
            record(7, None, "x"),
            record(8, None, "fail"),
            record(9, None, "x"),
        ];
        tx.send(Ok(Fetched::unbudgeted(mixed))).await.unwrap();
        // 8 failed: it holds the commit point; 9 went on behind it.
        commit_point_reaches(&tracking, (8, 1)).await;

        // A fresh batch after the failure still completes (tracked one by
        // one while 8 is incomplete), and the commit point stays at 8.
        tx.send(Ok(Fetched::unbudgeted(vec![record(10, None, "x")])))
            .await
            .unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the worker ends with its channel")
            .unwrap();
        let tp = TopicPartition::new("t", 0);
        assert_eq!(tracking.progress(&tp), Some((8, 1)));
        // Once 8 completes, everything up to 10 is committable.
        tracking.ack(&tp, 8, epoch);
        assert_eq!(tracking.progress(&tp), Some((11, 0)));
    }
}
