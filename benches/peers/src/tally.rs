//! Counting what a group consumer hands over: every client's group-consume
//! function feeds each record to a [`GroupTally`], which notes the instant
//! the last expected record arrives and checks offsets for duplicates and
//! gaps on the way.
//!
//! The topic is produced without transactions, so every partition holds the
//! offsets `0..n` without holes, and a single member reading from the
//! earliest offset must see each of them once, in order.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::bail;

/// How long a group consumer waits in `close`/`shutdown` once done.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// What a group-consume function returns.
#[derive(Debug, Clone, Copy)]
pub struct GroupRead {
    /// Value bytes of the records seen.
    pub bytes: u64,
    /// When the last expected record reached the application.
    pub finished: Instant,
    /// The process's CPU time at that moment (see
    /// `workload::process_cpu_ns`).
    pub finished_cpu_ns: u64,
}

pub struct GroupTally {
    expected: usize,
    seen: AtomicUsize,
    bytes: AtomicU64,
    /// Next offset expected per partition.
    next: Vec<AtomicI64>,
    anomalies: AtomicUsize,
    first_anomaly: Mutex<Option<String>>,
    finished: OnceLock<(Instant, u64)>,
    stalled: OnceLock<String>,
}

impl GroupTally {
    pub fn new(partitions: i32, expected: usize) -> GroupTally {
        GroupTally {
            expected,
            seen: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            next: (0..partitions.max(0)).map(|_| AtomicI64::new(0)).collect(),
            anomalies: AtomicUsize::new(0),
            first_anomaly: Mutex::new(None),
            finished: OnceLock::new(),
            stalled: OnceLock::new(),
        }
    }

    fn anomaly(&self, text: String) {
        self.anomalies.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_anomaly.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(text);
    }

    /// Counts one record. Returns `true` for the record that completes the
    /// expected count (and only for that one).
    pub fn see(&self, partition: i32, offset: i64, value_len: usize) -> bool {
        match usize::try_from(partition)
            .ok()
            .and_then(|p| self.next.get(p))
        {
            Some(next) => {
                let wanted = next.swap(offset + 1, Ordering::Relaxed);
                if offset != wanted {
                    let what = if offset < wanted { "repeated" } else { "gap" };
                    self.anomaly(format!(
                        "{what}: partition {partition} offset {offset}, expected {wanted}"
                    ));
                }
            }
            None => self.anomaly(format!("record from unknown partition {partition}")),
        }
        self.bytes.fetch_add(value_len as u64, Ordering::Relaxed);
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == self.expected {
            let _ = self
                .finished
                .set((Instant::now(), crate::workload::process_cpu_ns()));
            return true;
        }
        false
    }

    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::Relaxed)
    }

    pub fn is_done(&self) -> bool {
        self.finished.get().is_some()
    }

    /// Records that the consumer was given up on.
    pub fn give_up(&self, reason: String) {
        let _ = self.stalled.set(reason);
    }

    /// The outcome, once the consumer has stopped.
    pub fn finish(&self) -> anyhow::Result<GroupRead> {
        let anomalies = self.anomalies.load(Ordering::Relaxed);
        if anomalies > 0 {
            let first = self
                .first_anomaly
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            bail!(
                "{anomalies} records out of sequence in {} seen; first: {first}",
                self.seen()
            );
        }
        match self.finished.get() {
            Some(&(finished, finished_cpu_ns)) => Ok(GroupRead {
                bytes: self.bytes.load(Ordering::Relaxed),
                finished,
                finished_cpu_ns,
            }),
            None => match self.stalled.get() {
                Some(reason) => bail!("{reason}"),
                None => bail!(
                    "the consumer stopped after {} of {} records",
                    self.seen(),
                    self.expected
                ),
            },
        }
    }
}

/// Waits until `tally` is complete, or until it has made no progress for
/// `stall`; then marks it given up and returns `true`.
pub async fn watch_for_stall(tally: &GroupTally, stall: Duration) -> bool {
    let mut last = tally.seen();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if tally.is_done() {
            return false;
        }
        let now = tally.seen();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > stall {
            tally.give_up(format!(
                "no record for {stall:?}; saw {now} of {}",
                tally.expected
            ));
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_finishes() {
        let tally = GroupTally::new(2, 4);
        assert!(!tally.see(0, 0, 10));
        assert!(!tally.see(1, 0, 10));
        assert!(!tally.see(0, 1, 10));
        assert!(tally.see(1, 1, 10));
        let read = tally.finish().unwrap();
        assert_eq!(read.bytes, 40);
    }

    #[test]
    fn repeats_and_gaps_are_errors() {
        let tally = GroupTally::new(1, 3);
        tally.see(0, 0, 1);
        tally.see(0, 0, 1);
        tally.see(0, 2, 1);
        let error = tally.finish().unwrap_err().to_string();
        assert!(error.contains("2 records out of sequence"), "{error}");
        assert!(error.contains("repeated: partition 0 offset 0"), "{error}");
    }

    #[test]
    fn incomplete_is_an_error() {
        let tally = GroupTally::new(1, 3);
        tally.see(0, 0, 1);
        assert!(tally.finish().is_err());
        tally.give_up("no record".into());
        assert_eq!(tally.finish().unwrap_err().to_string(), "no record");
    }
}
