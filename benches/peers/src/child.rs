//! One phase of one client, in a process of its own (`peers run ...`).
//!
//! The outcome goes to stdout as a single machine-readable line:
//! `PEERS_RESULT phase=<p> records=<n> bytes=<b> work_ns=<ns> call_ns=<ns> hwm_kib=<kib>`
//! or `PEERS_ERROR <message>`.

use std::process::ExitCode;
use std::time::Instant;

use crate::clients::{Client, Phase};
use crate::workload;

pub const RESULT_TAG: &str = "PEERS_RESULT";
pub const ERROR_TAG: &str = "PEERS_ERROR";

#[derive(Debug, Clone)]
pub struct PhaseArgs {
    pub client: Client,
    pub phase: Phase,
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub records: usize,
    pub size: usize,
    pub keyed: bool,
}

/// What a child reports for a phase that succeeded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseReport {
    pub records: u64,
    /// Value bytes produced or read.
    pub bytes: u64,
    /// From the client's ready mark (or the call) to the end of the work.
    pub work_ns: u128,
    /// The whole call of the client's phase function, set-up included.
    pub call_ns: u128,
    /// This process's peak resident set (`VmHWM`) at the end of the phase,
    /// in KiB; 0 when unknown.
    pub hwm_kib: u64,
}

impl PhaseReport {
    pub fn line(&self, phase: Phase) -> String {
        format!(
            "{RESULT_TAG} phase={} records={} bytes={} work_ns={} call_ns={} hwm_kib={}",
            phase.id(),
            self.records,
            self.bytes,
            self.work_ns,
            self.call_ns,
            self.hwm_kib
        )
    }

    /// Parses a line written by [`PhaseReport::line`].
    pub fn parse(line: &str) -> Option<PhaseReport> {
        let rest = line.strip_prefix(RESULT_TAG)?;
        let mut report = PhaseReport {
            records: 0,
            bytes: 0,
            work_ns: 0,
            call_ns: 0,
            hwm_kib: 0,
        };
        let mut found = 0;
        for field in rest.split_whitespace() {
            let (name, value) = field.split_once('=')?;
            match name {
                "records" => report.records = value.parse().ok()?,
                "bytes" => report.bytes = value.parse().ok()?,
                "work_ns" => report.work_ns = value.parse().ok()?,
                "call_ns" => report.call_ns = value.parse().ok()?,
                "hwm_kib" => {
                    report.hwm_kib = value.parse().ok()?;
                    continue;
                }
                _ => continue,
            }
            found += 1;
        }
        (found == 4).then_some(report)
    }
}

pub fn run(args: PhaseArgs) -> ExitCode {
    workload::set_keyed(args.keyed);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            println!("{ERROR_TAG} building the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(run_phase(&args));
    // Client tasks left behind must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match outcome {
        Ok(report) => {
            println!("{}", report.line(args.phase));
            ExitCode::SUCCESS
        }
        Err(error) => {
            let message = format!("{error:#}").replace('\n', " ");
            println!("{ERROR_TAG} {message}");
            ExitCode::from(1)
        }
    }
}

async fn run_phase(args: &PhaseArgs) -> anyhow::Result<PhaseReport> {
    let payload = workload::payload(args.size);
    let start = Instant::now();
    let (bytes, end) = match args.phase {
        Phase::Produce => {
            args.client
                .produce(&args.bootstrap, &args.topic, &payload, args.records)
                .await?;
            ((args.records as u64) * (args.size as u64), Instant::now())
        }
        Phase::Read => {
            let bytes = args
                .client
                .read(&args.bootstrap, &args.topic, args.partitions, args.records)
                .await?;
            (bytes, Instant::now())
        }
        // Timed to the last record handed over, not to the end of the
        // call, which also leaves the group.
        Phase::Group => {
            let read = args
                .client
                .group_consume(&args.bootstrap, &args.topic, args.partitions, args.records)
                .await?;
            (read.bytes, read.finished)
        }
    };
    let expected_bytes = (args.records as u64) * (args.size as u64);
    if bytes != expected_bytes {
        anyhow::bail!(
            "{} value bytes in {} records, expected {expected_bytes}",
            bytes,
            args.records
        );
    }
    let work_start = workload::work_started()
        .filter(|mark| *mark >= start && *mark <= end)
        .unwrap_or(start);
    Ok(PhaseReport {
        records: args.records as u64,
        bytes,
        work_ns: (end - work_start).as_nanos(),
        call_ns: (end - start).as_nanos(),
        hwm_kib: peak_rss_kib(std::process::id()).unwrap_or(0),
    })
}

/// `VmHWM` of process `pid` from `/proc/<pid>/status`, in KiB.
///
/// This is the high-water mark of the process's own address space, which
/// `exec` starts afresh; `ru_maxrss` of a spawned child would also count the
/// parent's high-water mark, inherited through `posix_spawn`.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_round_trips() {
        let report = PhaseReport {
            records: 200_000,
            bytes: 204_800_000,
            work_ns: 1_234_567_890,
            call_ns: 1_334_567_890,
            hwm_kib: 12_345,
        };
        let line = report.line(Phase::Read);
        assert_eq!(PhaseReport::parse(&line), Some(report));
        assert_eq!(
            PhaseReport::parse("PEERS_RESULT phase=read records=1"),
            None
        );
        assert_eq!(PhaseReport::parse("something else"), None);
    }

    #[test]
    fn own_peak_rss_is_readable() {
        let kib = peak_rss_kib(std::process::id()).expect("VmHWM of this process");
        assert!(kib > 0);
    }
}
