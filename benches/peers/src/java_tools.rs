//! The `java` client: Kafka's own `ProducerPerformance` (produce) and
//! `ConsumerPerformance` (read and group) from the fixture's jar cache, with
//! the Java client's settings matched to the others where the tools allow.
//!
//! The tools time themselves and print their rates; the report is built
//! from those. They cannot report their own CPU or peak RSS, so the parent
//! takes the whole process's CPU from `wait4` (JVM start-up and JIT
//! included) and samples `VmHWM` as for every child.

use std::process::Command;

use anyhow::{anyhow, bail};

use crate::child::{PhaseArgs, PhaseReport};
use crate::clients::Phase;
use crate::testcontainers;
use crate::workload;

/// The JVM: `$JAVA_HOME/bin/java`, else `java` on `PATH`.
fn java_program() -> std::path::PathBuf {
    std::env::var_os("JAVA_HOME")
        .filter(|home| !home.is_empty())
        .map(|home| std::path::PathBuf::from(home).join("bin").join("java"))
        .filter(|java| java.is_file())
        .unwrap_or_else(|| "java".into())
}

/// A JVM with default flags (full JIT, default heap) running `class` on the
/// fixture's Kafka classpath. The fixture's own tool command is not used:
/// it limits the JIT to C1 for a fast start, which would handicap a
/// throughput run.
fn java(class: &str) -> anyhow::Result<Command> {
    let libs = testcontainers::kafka_libs().map_err(|e| anyhow!("Kafka jars: {e}"))?;
    let mut command = Command::new(java_program());
    if let Some(home) = libs.parent() {
        let mut flag = std::ffi::OsString::from("-Dlog4j2.configurationFile=");
        flag.push(home.join("log4j2.properties"));
        command.arg(flag);
    }
    command.arg("-cp").arg(libs.join("*")).arg(class);
    Ok(command)
}

/// The command for one phase.
pub fn command(args: &PhaseArgs) -> anyhow::Result<Command> {
    if args.keyed {
        bail!("ProducerPerformance cannot key its records (--keyed)");
    }
    match args.phase {
        Phase::Produce => {
            let mut command = java(testcontainers::PRODUCER_PERF)?;
            command
                .args(["--bootstrap-server", &args.bootstrap])
                .args(["--topic", &args.topic])
                .args(["--num-records", &args.records.to_string()])
                .args(["--record-size", &args.size.to_string()])
                .args(["--throughput", "-1"])
                .arg("--command-property")
                .args(
                    crate::confluent_client::producer_settings()
                        .into_iter()
                        .map(|(name, value)| format!("{name}={value}")),
                );
            Ok(command)
        }
        Phase::Read | Phase::Group => {
            let mut command = java(testcontainers::CONSUMER_PERF)?;
            command
                .args(["--bootstrap-server", &args.bootstrap])
                .args(["--topic", &args.topic])
                .args(["--num-records", &args.records.to_string()])
                .args(["--group", &workload::fresh_group_id("java")])
                .args(["--timeout", &(workload::READ_STALL_SECS * 1000).to_string()])
                // The tool raises the receive buffer to 2 MiB; this puts
                // back the Java consumer's default, as every other client
                // runs at its defaults.
                .args(["--socket-buffer-size", "65536"]);
            Ok(command)
        }
    }
}

/// The report from a tool's stdout; `call_ns` is the process's wall-clock
/// time. `None` when the output holds no result line.
pub fn parse(args: &PhaseArgs, stdout: &str, call_ns: u128) -> Option<Result<PhaseReport, String>> {
    let measured = match args.phase {
        Phase::Produce => producer_rate(stdout)?,
        Phase::Read | Phase::Group => consumer_rate(stdout, args.phase)?,
    };
    Some(measured.and_then(|(records, per_sec)| {
        if records != args.records as u64 {
            return Err(format!(
                "the tool handled {records} of {} records",
                args.records
            ));
        }
        if per_sec <= 0.0 {
            return Err("the tool reported no rate".to_string());
        }
        Ok(PhaseReport {
            records,
            bytes: records * args.size as u64,
            work_ns: (records as f64 / per_sec * 1e9) as u128,
            call_ns,
            hwm_kib: 0,
            cpu_ns: None,
            conns: None,
            status_conns: None,
        })
    }))
}

/// `ProducerPerformance`'s summary line: `N records sent, R records/sec
/// (M MB/sec), ...`, timed by the tool from its first send to the last
/// acknowledgement.
fn producer_rate(stdout: &str) -> Option<Result<(u64, f64), String>> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" records sent, ") && l.contains(" records/sec"))?;
    let mut words = line.split_whitespace();
    let records = words.next()?.parse().ok();
    let per_sec = line
        .split(", ")
        .nth(1)
        .and_then(|part| part.split_whitespace().next())
        .and_then(|rate| rate.parse().ok());
    Some(match (records, per_sec) {
        (Some(records), Some(per_sec)) => Ok((records, per_sec)),
        _ => Err(format!("unreadable summary {line:?}")),
    })
}

/// `ConsumerPerformance`'s CSV result. The group phase takes `nMsg.sec`
/// (subscribe to the last record, joining included); the read phase takes
/// `fetch.nMsg.sec`, which leaves the join (`rebalance.time.ms`) out, as
/// the other clients' assigned readers join nothing.
fn consumer_rate(stdout: &str, phase: Phase) -> Option<Result<(u64, f64), String>> {
    let mut lines = stdout.lines().map(str::trim).filter(|l| !l.is_empty());
    let header: Vec<&str> = lines
        .by_ref()
        .find(|l| l.contains("nMsg.sec"))?
        .split(',')
        .map(str::trim)
        .collect();
    let values: Vec<&str> = lines.next()?.split(',').map(str::trim).collect();
    let field = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let rate_field = if phase == Phase::Group {
        "nMsg.sec"
    } else {
        "fetch.nMsg.sec"
    };
    Some(match (field("data.consumed.in.nMsg"), field(rate_field)) {
        (Some(records), Some(per_sec)) => Ok((records as u64, per_sec)),
        _ => Err(format!("unreadable result {values:?} under {header:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_summary_parses() {
        let out = "1000 records sent, 200.0 records/sec (0.20 MB/sec), 1.0 ms avg latency\n\
                   20000 records sent, 81632.7 records/sec (79.72 MB/sec), 95.51 ms avg latency, 221.00 ms max latency, 90 ms 50th\n";
        assert_eq!(producer_rate(out), Some(Ok((20000, 81632.7))));
        assert_eq!(producer_rate("nothing"), None);
    }

    #[test]
    fn consumer_result_parses() {
        let out = "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec\n\
                   2026-11-30 06:40:00:123, 2026-11-30 06:40:01:123, 19.5312, 19.5312, 20000, 20000.0000, 300, 700, 27.9018, 28571.4286\n";
        assert_eq!(consumer_rate(out, Phase::Group), Some(Ok((20000, 20000.0))));
        assert_eq!(
            consumer_rate(out, Phase::Read),
            Some(Ok((20000, 28571.4286)))
        );
    }
}
