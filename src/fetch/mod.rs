//! Fetching, shared by the reader and the group consumer: one fetch
//! pipeline per broker, on our own wire layer (zero-copy record decoding).
//!
//! A [`FetchPool`] belongs to one reader or group consumer. Its task keeps
//! every partition it was given, finds each partition's leader, and keeps
//! at most one Fetch request in flight per broker, on one connection per
//! broker of its own (a fetch may wait `max_wait` on the broker, and a
//! broker answers one connection's requests in order, so fetches do not
//! share the client's pooled connections). One request carries every
//! partition that broker leads, in an incremental fetch session (KIP-227,
//! [`session`]): in the steady state it lists only the partitions whose
//! position moved. 1,000 partitions on one broker cost one connection and
//! one request per answer, not 1,000 of each.
//!
//! # Flow control and memory
//!
//! Each partition hands its batches to a bounded channel given by the
//! caller. A partition whose channel is full (its handler is behind) is
//! left out of the next request (forgotten by the session) while the
//! others go on; it comes back once its consumer takes a batch. Fetched
//! bytes are also bounded per pool ([`FetchSettings::buffer_bytes`]): the
//! bytes of every batch not yet finished by its consumer, plus what the
//! request in flight may return, stay within the bound (give or take one
//! batch: a broker always returns the first batch of a partition, however
//! large, so that fetching makes progress). A batch's bytes count until
//! its consumer drops the [`Fetched`] (its [`Lease`]).
//!
//! # Failures
//!
//! Errors are per partition. A partition whose leader moved
//! (`NOT_LEADER_OR_FOLLOWER`, `FENCED_LEADER_EPOCH`, `UNKNOWN_LEADER_EPOCH`,
//! a lost connection) looks its leader up again after a backoff, while the
//! others keep fetching; `OFFSET_OUT_OF_RANGE` resets the position by the
//! partition's reset policy. A partition that keeps failing for the retry
//! deadline, or fails in a way retrying cannot fix, goes to the caller's
//! [`OnFailure`]: a reader's stream ends with the error; a group consumer
//! reports it and tries again after a longer backoff (a partition is never
//! dropped silently).

mod pool;
mod progress;
mod recover;
pub(crate) mod session;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

pub(crate) use progress::FetchProgress;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::offsets::StartOffset;
use crate::record::Record;
use crate::TopicPartition;

/// Default bound of a pool's fetched bytes ([`FetchSettings::buffer_bytes`]).
pub(crate) const DEFAULT_BUFFER_BYTES: usize = 32 * 1024 * 1024;

/// Most bytes one Fetch request asks for, whatever the buffer bound: the
/// broker's own default cap (`fetch.max.bytes`, 50 MiB) is higher, but one
/// answer this size already keeps a consumer busy for a while.
pub(crate) const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Settings of one pool (fixed for its life).
#[derive(Debug, Clone)]
pub(crate) struct FetchSettings {
    /// How long the broker may hold a fetch open waiting for records.
    pub max_wait: Duration,
    /// Most bytes per partition in one answer.
    pub max_partition_bytes: i32,
    /// Bound of fetched bytes not yet finished by their consumers, plus
    /// what requests in flight may return.
    pub buffer_bytes: usize,
    /// The consumer's rack: with it, a broker configured for it may direct
    /// fetches to a replica in the same rack (KIP-392).
    pub rack: Option<String>,
}

/// Records fetched for one partition, in offset order, with the lease on
/// the pool's byte budget that they hold until dropped.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub records: Vec<Record>,
    pub lease: Lease,
}

impl Fetched {
    /// A batch outside any pool's budget, for tests of its consumers.
    #[cfg(test)]
    pub(crate) fn unbudgeted(records: Vec<Record>) -> Self {
        let budget = Arc::new(Budget {
            limit: usize::MAX,
            used: AtomicUsize::new(0),
            room: Notify::new(),
        });
        let lease = budget.lease(0);
        Self { records, lease }
    }
}

/// Bytes of fetched records counted against a pool's budget; given back
/// (and the pool woken to fetch more) when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        // A consumer took a batch: its partition's channel has room again
        // and the budget grew; either may unblock fetching.
        self.budget.room.notify_one();
    }
}

/// The byte budget of one pool, shared with the leases of its batches.
#[derive(Debug)]
struct Budget {
    limit: usize,
    /// Bytes of batches handed out and not yet dropped. Added to by the
    /// pool's task, taken from by lease drops.
    used: AtomicUsize,
    /// Woken when a lease is dropped.
    room: Notify,
}

impl Budget {
    fn lease(self: &Arc<Self>, bytes: usize) -> Lease {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Lease {
            budget: Arc::clone(self),
            bytes,
        }
    }
}

/// Takes a partition's failure; the flag says the topic or partition
/// seems gone.
pub(crate) type ReportFailure = dyn Fn(&TopicPartition, Error, bool) + Send + Sync;

/// What the pool does with a partition that failed for good.
#[derive(Clone)]
pub(crate) enum OnFailure {
    /// Send the error into the partition's channel and stop fetching it
    /// (a reader's stream ends with the error).
    EndStream,
    /// Report it and try again after a backoff (the group consumer). The
    /// flag says the topic or partition seems gone, so metadata of the
    /// subscription should be refreshed.
    Report(Arc<ReportFailure>),
}

impl std::fmt::Debug for OnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnFailure::EndStream => f.write_str("EndStream"),
            OnFailure::Report(_) => f.write_str("Report"),
        }
    }
}

/// One partition for the pool to fetch.
#[derive(Debug)]
pub(crate) struct PartitionFetch {
    pub tp: TopicPartition,
    /// The first offset to fetch.
    pub next: i64,
    /// Stop before this offset (`read_to_end`); `None` fetches forever.
    pub end: Option<i64>,
    /// Where to go when the position is no longer (or not yet) stored.
    pub out_of_range: StartOffset,
    /// Where its batches go; bounded, so a slow consumer pauses fetching
    /// for this partition.
    pub tx: mpsc::Sender<Result<Fetched>>,
    /// Progress for a watchdog (group partitions); `None` for readers.
    pub progress: Option<Arc<FetchProgress>>,
}

/// Requests from the pool's owner to its task.
#[derive(Debug)]
enum Command {
    /// Partitions that start together (an assignment, a reader's set) come
    /// in one command, so that the first request carries all of them: a
    /// request for the first few alone could long-poll for `max_wait` with
    /// nothing to fetch while the others wait behind it.
    Add(Vec<PartitionFetch>),
    Remove(TopicPartition),
}

/// The handle of a running pool; dropping it stops the pool's task.
#[derive(Debug)]
pub(crate) struct FetchPool {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Drop for FetchPool {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FetchPool {
    /// Start a pool with no partitions.
    pub(crate) fn start(client: Client, settings: FetchSettings, on_failure: OnFailure) -> Self {
        let budget = Arc::new(Budget {
            limit: settings.buffer_bytes.max(1),
            used: AtomicUsize::new(0),
            room: Notify::new(),
        });
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(pool::run(client, settings, on_failure, budget, rx));
        Self { commands, task }
    }

    /// Start fetching partitions (replacing earlier entries for them).
    pub(crate) fn add(&self, partitions: Vec<PartitionFetch>) {
        if !partitions.is_empty() {
            let _ = self.commands.send(Command::Add(partitions));
        }
    }

    /// Stop fetching a partition. A batch already handed over stays with
    /// its consumer; nothing more is sent.
    pub(crate) fn remove(&self, tp: &TopicPartition) {
        let _ = self.commands.send(Command::Remove(tp.clone()));
    }
}
