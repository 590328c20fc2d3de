//! How one partition's fetching is going, for the group consumer's
//! watchdog.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How one partition's fetching is going, shared between its fetch loop
/// (writer), its consumer (which takes fetched records) and a watchdog
/// (reader). Lock-free: a few atomics written once per fetch or batch.
///
/// Written by the fetch pool (fetched, handing over, resumed) and the
/// partition's worker (taken); read by the watchdog.
#[derive(Debug)]
pub(crate) struct FetchProgress {
    /// Time base of `last_ok`.
    origin: Instant,
    /// Milliseconds from `origin` to the last successful fetch (empty
    /// answers count), or to the end of the last wait for the consumer;
    /// the partition's start until then.
    last_ok: AtomicU64,
    /// Set while the fetch loop waits for room in its channel: the consumer
    /// is behind. Not fetching, but not failing to fetch either.
    waiting: AtomicBool,
    /// Records fetched (handed to the channel, or waiting to be) that the
    /// consumer has not finished taking.
    buffered: AtomicUsize,
    /// The next offset to fetch.
    next: AtomicI64,
}

impl FetchProgress {
    /// Progress of a partition whose fetching starts now at `next`.
    pub(crate) fn new(next: i64) -> Self {
        Self {
            origin: Instant::now(),
            last_ok: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            buffered: AtomicUsize::new(0),
            next: AtomicI64::new(next),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A fetch succeeded (with or without records); `next` is the next
    /// offset to fetch.
    pub(crate) fn fetched(&self, next: i64) {
        self.last_ok.store(self.now_ms(), Ordering::Relaxed);
        self.next.store(next, Ordering::Relaxed);
    }

    /// `records` fetched records go to the consumer; the loop may wait for
    /// room from here until [`resumed`](Self::resumed).
    pub(crate) fn handing_over(&self, records: usize) {
        self.buffered.fetch_add(records, Ordering::Relaxed);
        self.waiting.store(true, Ordering::Relaxed);
    }

    /// The consumer took the batch into its channel: fetching resumes, and
    /// the time waited does not count as time without a fetch.
    pub(crate) fn resumed(&self) {
        self.last_ok.store(self.now_ms(), Ordering::Relaxed);
        self.waiting.store(false, Ordering::Relaxed);
    }

    /// The consumer is done with `records` fetched records.
    pub(crate) fn taken(&self, records: usize) {
        let _ = self
            .buffered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(records))
            });
    }

    /// How long the loop has been trying to fetch without success; `None`
    /// while it waits for the consumer.
    pub(crate) fn failing_for(&self) -> Option<Duration> {
        if self.waiting.load(Ordering::Relaxed) {
            return None;
        }
        let since = self.last_ok.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Fetched records the consumer has not finished taking.
    pub(crate) fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// The next offset to fetch.
    pub(crate) fn next_offset(&self) -> i64 {
        self.next.load(Ordering::Relaxed)
    }
}
