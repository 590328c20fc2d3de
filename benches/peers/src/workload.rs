//! The workload every client runs: one payload, generated once, and the
//! producer settings shared by all clients.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// `linger.ms` for every producer.
pub const LINGER_MS: u32 = 5;
/// Largest record batch a producer builds, in bytes.
pub const BATCH_BYTES: usize = 1024 * 1024;
/// Largest produce request a producer sends, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Compression codec for every producer.
pub const COMPRESSION: &str = "none";
/// How long a reader may see no new record before it gives up.
pub const READ_STALL_SECS: u64 = 60;

static KEYED: OnceLock<bool> = OnceLock::new();
static WORK_STARTED: OnceLock<(Instant, u64)> = OnceLock::new();

/// Turns keys on or off for this process. Set once, before a phase starts.
pub fn set_keyed(keyed: bool) {
    let _ = KEYED.set(keyed);
}

/// Whether records carry keys (`--keyed`).
pub fn keyed() -> bool {
    KEYED.get().copied().unwrap_or(false)
}

/// The key of record `index`, or `None` when the run is not keyed.
///
/// Keys are the record index as 8 big-endian bytes, so every record of a
/// keyed run has its own key and the partitioner spreads them.
pub fn key(index: usize) -> Option<[u8; 8]> {
    keyed().then(|| (index as u64).to_be_bytes())
}

/// `size` bytes of deterministic noise, the same in every process.
pub fn payload(size: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let take = (size - out.len()).min(8);
        out.extend_from_slice(&state.to_le_bytes()[..take]);
    }
    out
}

/// Marks the moment a client has finished its set-up (client built,
/// connection and metadata in place) and starts the measured work.
///
/// A client that never calls it is timed from the call of its phase function.
/// The process's CPU time is taken at the same moment, so the CPU figure
/// covers the same stretch as the time.
pub fn mark_work_started() {
    let _ = WORK_STARTED.set((Instant::now(), process_cpu_ns()));
}

/// The instant and CPU time set by [`mark_work_started`], if any.
pub fn work_started() -> Option<(Instant, u64)> {
    WORK_STARTED.get().copied()
}

/// User plus system CPU time of this process (all threads) so far, in
/// nanoseconds; 0 if `getrusage` fails.
pub fn process_cpu_ns() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable rusage; getrusage fills it.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0;
        }
        usage.assume_init()
    };
    timeval_ns(usage.ru_utime) + timeval_ns(usage.ru_stime)
}

/// A `timeval` (CPU time from `getrusage`/`wait4`) in nanoseconds.
pub fn timeval_ns(time: libc::timeval) -> u64 {
    let secs = u64::try_from(time.tv_sec).unwrap_or(0);
    let micros = u64::try_from(time.tv_usec).unwrap_or(0);
    secs * 1_000_000_000 + micros * 1_000
}

/// A group id no earlier run has used: `peers-<what>-<pid>-<unix millis>`.
pub fn fresh_group_id(what: &str) -> String {
    format!(
        "peers-{what}-{}-{}",
        std::process::id(),
        unix_micros() / 1000
    )
}

/// Wall-clock time in microseconds since the Unix epoch. Events of different
/// processes on this machine are compared with it.
pub fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The CA certificate file when the run goes to a TLS listener
/// (`PEERS_TLS_CA`, set by `tls.sh`); every client then connects with TLS
/// and trusts only that CA.
pub fn tls_ca() -> Option<String> {
    std::env::var("PEERS_TLS_CA").ok().filter(|p| !p.is_empty())
}

/// rdkafka/librdkafka settings for a TLS run, empty otherwise.
pub fn rdkafka_tls_settings() -> Vec<(&'static str, String)> {
    match tls_ca() {
        Some(ca) => vec![
            ("security.protocol", "ssl".to_string()),
            ("ssl.ca.location", ca),
        ],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows() {
        let before = process_cpu_ns();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(process_cpu_ns() > before, "{x}");
    }

    #[test]
    fn payload_is_deterministic_and_sized() {
        assert_eq!(payload(1024), payload(1024));
        assert_eq!(payload(1000).len(), 1000);
        assert_eq!(payload(0).len(), 0);
        let p = payload(4096);
        assert!(p.iter().any(|&b| b != p[0]));
    }
}
