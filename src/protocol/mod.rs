//! Wire layer: our own broker connections (framing, correlation ids,
//! ApiVersions negotiation), cluster metadata, record-batch encoding and
//! decoding, and the error-code table. Message codecs come from
//! `kafka-protocol`; record batches are encoded and decoded here so the
//! data path is zero-copy and every compression codec is pure Rust.

pub(crate) mod api;
pub(crate) mod cluster;
pub(crate) mod connection;
pub mod error_codes;
pub(crate) mod records;
pub(crate) mod sasl;
pub(crate) mod scram;
pub(crate) mod stats;
#[cfg(test)]
pub(crate) mod test_peer;

/// Where a test writes a fuzz target's seed corpus: the directory
/// `FUZZ_SEEDS` names (fuzz/README.md), else a fresh temporary one, which
/// [`drop_seed_dir`] removes.
#[cfg(test)]
pub(crate) fn seed_dir(target: &str) -> std::path::PathBuf {
    let dir = match std::env::var_os("FUZZ_SEEDS") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            let dir = std::env::temp_dir()
                .join(format!("kastellan-seeds-{target}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            dir
        }
    };
    std::fs::create_dir_all(&dir).expect("seed directory");
    dir
}

/// Remove `dir` unless `FUZZ_SEEDS` named it (the seeds are wanted there).
#[cfg(test)]
pub(crate) fn drop_seed_dir(dir: &std::path::Path) {
    if std::env::var_os("FUZZ_SEEDS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub(crate) mod validate;

pub use cluster::{BrokerInfo, PartitionMetadata, TopicMetadata};
pub use stats::ClientStatus;
