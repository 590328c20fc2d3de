//! One phase of one client, in a process of its own (`peers run ...`).
//!
//! The outcome goes to stdout as a single machine-readable line:
//! `PEERS_RESULT phase=<p> records=<n> bytes=<b> work_ns=<ns> call_ns=<ns> hwm_kib=<kib> cpu_ns=<ns>`
//! (the idle phase adds `conns=<n>`, kastellan's idle member also
//! `status_conns=<n>`) or `PEERS_ERROR <message>`. The franz-go program
//! (`franz/main.go`) writes the same line.

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
    /// CPU time (user + system, all threads) the process spent over the
    /// same stretch as `work_ns`; `None` when the client did not report it.
    pub cpu_ns: Option<u64>,
    /// Idle phase: established TCP connections to the broker's port the
    /// process held at the end of the idle window.
    pub conns: Option<u64>,
    /// Idle phase, kastellan: `Client::status().open_connections` then.
    pub status_conns: Option<u64>,
}

impl PhaseReport {
    pub fn line(&self, phase: &str) -> String {
        let mut line = format!(
            "{RESULT_TAG} phase={phase} records={} bytes={} work_ns={} call_ns={} hwm_kib={}",
            self.records, self.bytes, self.work_ns, self.call_ns, self.hwm_kib
        );
        let optional = [
            ("cpu_ns", self.cpu_ns),
            ("conns", self.conns),
            ("status_conns", self.status_conns),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                line.push_str(&format!(" {name}={value}"));
            }
        }
        line
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
            cpu_ns: None,
            conns: None,
            status_conns: None,
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
                "cpu_ns" => {
                    report.cpu_ns = Some(value.parse().ok()?);
                    continue;
                }
                "conns" => {
                    report.conns = Some(value.parse().ok()?);
                    continue;
                }
                "status_conns" => {
                    report.status_conns = Some(value.parse().ok()?);
                    continue;
                }
                _ => continue,
            }
            found += 1;
        }
        (found == 4).then_some(report)
    }
}

/// The runtime of a child process; on failure, says so on stdout (the
/// parent reads it as the child's error) and gives the exit code.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            println!("{ERROR_TAG} building the runtime: {error}");
            ExitCode::from(2)
        })
}

pub fn run(args: PhaseArgs) -> ExitCode {
    workload::set_keyed(args.keyed);
    let runtime = match crate::child::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(run_phase(&args));
    // Client tasks left behind must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match outcome {
        Ok(report) => {
            println!("{}", report.line(args.phase.id()));
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
    let start = (Instant::now(), workload::process_cpu_ns());
    let (bytes, end) = match args.phase {
        Phase::Produce => {
            args.client
                .produce(&args.bootstrap, &args.topic, &payload, args.records)
                .await?;
            (
                (args.records as u64) * (args.size as u64),
                (Instant::now(), workload::process_cpu_ns()),
            )
        }
        Phase::Read => {
            let bytes = args
                .client
                .read(&args.bootstrap, &args.topic, args.partitions, args.records)
                .await?;
            (bytes, (Instant::now(), workload::process_cpu_ns()))
        }
        // Timed to the last record handed over, not to the end of the
        // call, which also leaves the group.
        Phase::Group => {
            let read = args
                .client
                .group_consume(&args.bootstrap, &args.topic, args.partitions, args.records)
                .await?;
            (read.bytes, (read.finished, read.finished_cpu_ns))
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
        .filter(|mark| mark.0 >= start.0 && mark.0 <= end.0)
        .unwrap_or(start);
    Ok(PhaseReport {
        records: args.records as u64,
        bytes,
        work_ns: (end.0 - work_start.0).as_nanos(),
        call_ns: (end.0 - start.0).as_nanos(),
        hwm_kib: peak_rss_kib(std::process::id()).unwrap_or(0),
        cpu_ns: Some(end.1.saturating_sub(work_start.1)),
        conns: None,
        status_conns: None,
    })
}

/// Established TCP connections this process holds to `port`: the socket
/// inodes among `/proc/self/fd`, looked up in `/proc/self/net/tcp` and
/// `tcp6`. The broker under test is a single node, so every connection to
/// it goes to its bootstrap port.
pub fn connections_to_port(port: u16) -> anyhow::Result<u64> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let mut count = 0;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st ... inode (field 9); st 01 is
        // ESTABLISHED.
        for fields in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            if fields.len() < 10 || fields[3] != "01" || !inodes.contains(fields[9]) {
                continue;
            }
            let remote_port = fields[2]
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if remote_port == Some(port) {
                count += 1;
            }
        }
    }
    Ok(count)
}

/// The port of a `host:port` bootstrap address.
pub fn bootstrap_port(bootstrap: &str) -> anyhow::Result<u16> {
    bootstrap
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in bootstrap address {bootstrap:?}"))
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
            cpu_ns: Some(987_654_321),
            conns: None,
            status_conns: None,
        };
        let line = report.line(Phase::Read.id());
        assert_eq!(PhaseReport::parse(&line), Some(report));
        let idle = PhaseReport {
            cpu_ns: Some(5),
            conns: Some(2),
            status_conns: Some(3),
            ..report
        };
        assert_eq!(PhaseReport::parse(&idle.line("idle")), Some(idle));
        assert_eq!(
            PhaseReport::parse("PEERS_RESULT phase=read records=1"),
            None
        );
        assert_eq!(PhaseReport::parse("something else"), None);
    }

    #[test]
    fn connections_to_a_port_are_counted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(connections_to_port(port).unwrap(), 0);
        let _first = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // The accepted ends have the clients' ports as their remote ports,
        // and the listener is not established: only the two clients count.
        let _accepted = (listener.accept().unwrap(), listener.accept().unwrap());
        assert_eq!(connections_to_port(port).unwrap(), 2);
        assert_eq!(bootstrap_port("127.0.0.1:9092").unwrap(), 9092);
        assert!(bootstrap_port("localhost").is_err());
    }

    #[test]
    fn own_peak_rss_is_readable() {
        let kib = peak_rss_kib(std::process::id()).expect("VmHWM of this process");
        assert!(kib > 0);
    }
}
