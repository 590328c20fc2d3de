//! The idle phase: what a group member costs while nothing happens.
//!
//! The parent creates `--idle-topics` topics that together hold
//! `--idle-partitions` partitions and writes nothing to them. For each
//! client, one member process (`peers idle ...`, or the franz-go program's
//! `idle` mode) joins a fresh group subscribed to all of them, waits until it
//! owns every partition, and then stays in its poll loop for `--idle-secs`.
//! It reports, in the usual result line: the CPU it used during that window
//! (`cpu_ns`), its peak RSS, the established TCP connections it holds to the
//! broker at the end of the window (`conns`, from `/proc/self/fd` and
//! `/proc/self/net/tcp`), the window's length (`work_ns`) and how long it
//! took from process start to the full assignment (`call_ns`).

use std::fmt::Write as _;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::admin::Admin;
use crate::child::{self, PhaseReport, ERROR_TAG};
use crate::clients::Client;
use crate::report::{cell_text, grouped, median};
use crate::spawn::{self, PhaseOutcome};
use crate::{kastellan_client, rdkafka_client, workload};

/// How long a member may take to own all partitions.
pub const ASSIGN_TIMEOUT: Duration = Duration::from_secs(120);

/// What `peers idle` is told.
#[derive(Debug, Clone)]
pub struct IdleArgs {
    pub client: Client,
    pub bootstrap: String,
    pub topics: Vec<String>,
    pub group: String,
    /// Partitions over all topics: the assignment to wait for.
    pub partitions: usize,
    pub secs: u64,
}

/// The clients that have an idle member.
pub fn supports(client: Client) -> bool {
    matches!(client, Client::Kastellan | Client::Rdkafka | Client::Franz)
}

/// The start of the idle window: time and CPU once the assignment is
/// complete.
pub struct Window {
    started: Instant,
    from: (Instant, u64),
}

impl Window {
    /// `started` is when the member process began its work.
    pub fn begin(started: Instant) -> Window {
        Window {
            started,
            from: (Instant::now(), workload::process_cpu_ns()),
        }
    }

    /// The report at the end of the window. `status_conns` is the client's
    /// own count of open connections, where it has one.
    pub fn end(self, args: &IdleArgs, status_conns: Option<u64>) -> anyhow::Result<PhaseReport> {
        let to = (Instant::now(), workload::process_cpu_ns());
        let conns = child::connections_to_port(child::bootstrap_port(&args.bootstrap)?)?;
        Ok(PhaseReport {
            records: args.partitions as u64,
            bytes: 0,
            work_ns: (to.0 - self.from.0).as_nanos(),
            call_ns: (self.from.0 - self.started).as_nanos(),
            hwm_kib: child::peak_rss_kib(std::process::id()).unwrap_or(0),
            cpu_ns: Some(to.1.saturating_sub(self.from.1)),
            conns: Some(conns),
            status_conns,
        })
    }
}

/// `peers idle ...`: one idle member, in a process of its own.
pub fn run_member(args: IdleArgs) -> ExitCode {
    let runtime = match crate::child::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(async {
        match args.client {
            Client::Kastellan => kastellan_client::idle(&args).await,
            Client::Rdkafka => rdkafka_client::idle(&args).await,
            other => Err(anyhow::anyhow!("{other} has no idle member in this binary")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(report) => {
            println!("{}", report.line("idle"));
            ExitCode::SUCCESS
        }
        Err(error) => {
            let message = format!("{error:#}").replace('\n', " ");
            println!("{ERROR_TAG} {message}");
            ExitCode::from(1)
        }
    }
}

/// The parent's settings for the phase.
#[derive(Debug, Clone)]
pub struct IdleSettings {
    pub partitions: usize,
    pub topics: usize,
    pub secs: u64,
}

/// One member process in one round.
#[derive(Debug, Clone)]
pub struct IdleRun {
    pub round: usize,
    pub client: Client,
    pub outcome: PhaseOutcome,
}

fn member_command(args: &IdleArgs) -> anyhow::Result<Command> {
    let program = match args.client {
        Client::Franz => spawn::franz_program()?,
        _ => std::env::current_exe()?,
    };
    let mut command = Command::new(program);
    command
        .arg("idle")
        .args(["--client", args.client.id()])
        .args(["--bootstrap", &args.bootstrap])
        .args(["--topics", &args.topics.join(",")])
        .args(["--group", &args.group])
        .args(["--partitions", &args.partitions.to_string()])
        .args(["--secs", &args.secs.to_string()]);
    Ok(command)
}

/// Partition counts of the topics: `partitions` spread as evenly as
/// possible over `topics`.
pub fn spread(partitions: usize, topics: usize) -> Vec<i32> {
    let topics = topics.clamp(1, partitions.max(1));
    (0..topics)
        .map(|i| (partitions / topics + usize::from(i < partitions % topics)) as i32)
        .collect()
}

/// Runs the phase: topics once, then every supporting client once per
/// round (order rotated), each as the only member of a fresh group.
pub async fn run(
    admin: &Admin,
    bootstrap: &str,
    settings: &IdleSettings,
    clients: &[Client],
    rounds: usize,
) -> Vec<IdleRun> {
    for skipped in clients.iter().filter(|&&c| !supports(c)) {
        eprintln!("idle: {skipped} has no idle member; skipped");
    }
    let clients: Vec<Client> = clients.iter().copied().filter(|&c| supports(c)).collect();
    let stamp = format!("{}-{}", std::process::id(), workload::unix_micros() / 1000);
    let layout = spread(settings.partitions, settings.topics);
    let mut topics = Vec::new();
    let mut runs = Vec::new();
    let mut setup = Ok(());
    for (index, &partitions) in layout.iter().enumerate() {
        let topic = format!("peers-idle-{index}-{partitions}p-{stamp}");
        if let Err(error) = admin.create_topic(&topic, partitions).await {
            setup = Err(error);
            break;
        }
        topics.push(topic);
    }
    match setup {
        Err(error) => {
            for &client in &clients {
                runs.push(IdleRun {
                    round: 0,
                    client,
                    outcome: PhaseOutcome::failed(format!("topic set-up: {error:#}")),
                });
            }
        }
        Ok(()) => {
            eprintln!(
                "idle: {} topics with {} partitions in all",
                topics.len(),
                settings.partitions
            );
            for round in 0..rounds {
                let mut order = clients.clone();
                if !order.is_empty() {
                    let shift = round % order.len();
                    order.rotate_left(shift);
                }
                for client in order {
                    let args = IdleArgs {
                        client,
                        bootstrap: bootstrap.to_string(),
                        topics: topics.clone(),
                        group: workload::fresh_group_id(&format!("idle-{}", client.id())),
                        partitions: settings.partitions,
                        secs: settings.secs,
                    };
                    let timeout = ASSIGN_TIMEOUT + Duration::from_secs(settings.secs + 60);
                    let outcome = match member_command(&args) {
                        Ok(command) => tokio::task::block_in_place(|| {
                            spawn::run_command(command, timeout, |stdout, _| {
                                stdout.lines().find_map(PhaseReport::parse).map(Ok)
                            })
                        }),
                        Err(error) => PhaseOutcome::failed(format!("{error:#}")),
                    };
                    match &outcome.result {
                        Ok(report) => eprintln!(
                            "[round {}] {client} / idle: {:.3} CPU s in {:.1} s, {} connection(s), assigned after {:.2} s",
                            round + 1,
                            report.cpu_ns.unwrap_or(0) as f64 / 1e9,
                            report.work_ns as f64 / 1e9,
                            report.conns.unwrap_or(0),
                            report.call_ns as f64 / 1e9
                        ),
                        Err(error) => eprintln!("[round {}] {client} / idle: error: {error}", round + 1),
                    }
                    runs.push(IdleRun {
                        round,
                        client,
                        outcome,
                    });
                }
            }
        }
    }
    for topic in &topics {
        if let Err(error) = admin.delete_topic(topic).await {
            eprintln!("warning: {error:#}");
        }
    }
    runs
}

/// Per-run figures: CPU s in the window, peak RSS MiB, connections,
/// seconds to the full assignment.
fn figures(outcome: &PhaseOutcome) -> Option<[Option<f64>; 4]> {
    let report = outcome.result.as_ref().ok()?;
    Some([
        report.cpu_ns.map(|ns| ns as f64 / 1e9),
        outcome.max_rss_kib.map(|kib| kib as f64 / 1024.0),
        report.conns.map(|n| n as f64),
        Some(report.call_ns as f64 / 1e9),
    ])
}

pub fn render(runs: &[IdleRun], clients: &[Client], settings: &IdleSettings) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Idle member");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "One member of a fresh group subscribed to {} topic(s) holding {} partitions in all, with no traffic; measured over {} s from the moment it owns every partition. Connections: established TCP connections to the broker's port at the end of the window.",
        spread(settings.partitions, settings.topics).len(),
        grouped(settings.partitions as f64),
        settings.secs
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| client | CPU s in window | CPU % of a core | peak RSS (MiB) | broker connections | time to full assignment (s) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let mut medians: Vec<(Client, [Option<f64>; 4])> = Vec::new();
    for &client in clients.iter().filter(|&&c| supports(c)) {
        let mine: Vec<&IdleRun> = runs.iter().filter(|r| r.client == client).collect();
        if mine.is_empty() {
            continue;
        }
        let per_run: Vec<[Option<f64>; 4]> =
            mine.iter().filter_map(|r| figures(&r.outcome)).collect();
        if per_run.is_empty() {
            let error = mine
                .iter()
                .find_map(|r| r.outcome.result.as_ref().err())
                .cloned()
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| {client} | error: {} | n/a | n/a | n/a | n/a |",
                cell_text(&error)
            );
            continue;
        }
        let m: [Option<f64>; 4] =
            std::array::from_fn(|i| median(per_run.iter().filter_map(|f| f[i]).collect()));
        let status_conns: Vec<u64> = mine
            .iter()
            .filter_map(|r| r.outcome.result.as_ref().ok())
            .filter_map(|r| r.status_conns)
            .collect();
        let conns = match (m[2], status_conns.first()) {
            (Some(c), Some(s)) => format!("{c:.0} (client says {s})"),
            (Some(c), None) => format!("{c:.0}"),
            _ => "n/a".to_string(),
        };
        let cell = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
        };
        let percent = m[0].map(|cpu| cpu / settings.secs.max(1) as f64 * 100.0);
        let _ = writeln!(
            out,
            "| {client} | {} | {} | {} | {conns} | {} |",
            cell(m[0], 3),
            cell(percent, 2),
            cell(m[1], 1),
            cell(m[3], 2)
        );
        medians.push((client, m));
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "### Idle ratios");
    let _ = writeln!(out);
    let Some((_, kastellan)) = medians.iter().find(|(c, _)| *c == Client::Kastellan) else {
        let _ = writeln!(out, "(no ratios: kastellan did not finish)");
        return out;
    };
    let peers: Vec<&(Client, [Option<f64>; 4])> = medians
        .iter()
        .filter(|(c, _)| *c != Client::Kastellan)
        .collect();
    let _ = writeln!(
        out,
        "kastellan's median over the peer's; above 1 means kastellan uses more."
    );
    let _ = writeln!(out);
    let header: Vec<String> = peers
        .iter()
        .map(|(p, _)| format!("kastellan/{p}"))
        .collect();
    let _ = writeln!(out, "| figure | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(peers.len()));
    for (index, name) in ["CPU s in window", "peak RSS (MiB)", "broker connections"]
        .iter()
        .enumerate()
    {
        let cells: Vec<String> = peers
            .iter()
            .map(|(_, peer)| match (kastellan[index], peer[index]) {
                (Some(k), Some(p)) if p > 0.0 => format!("{:.2}", k / p),
                _ => "n/a".to_string(),
            })
            .collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "### Idle runs");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| round | client | window s | CPU s | RSS (MiB) | connections | assigned after s | outcome |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---|");
    for run in runs {
        match &run.outcome.result {
            Ok(report) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {:.3} | {} | {} | {:.2} | ok |",
                    run.round + 1,
                    run.client,
                    report.work_ns as f64 / 1e9,
                    report.cpu_ns.unwrap_or(0) as f64 / 1e9,
                    run.outcome.max_rss_kib.map_or_else(
                        || "n/a".to_string(),
                        |kib| format!("{:.1}", kib as f64 / 1024.0)
                    ),
                    report
                        .conns
                        .map_or_else(|| "n/a".to_string(), |c| c.to_string()),
                    report.call_ns as f64 / 1e9
                );
            }
            Err(error) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | n/a | n/a | n/a | n/a | n/a | error: {} |",
                    run.round + 1,
                    run.client,
                    cell_text(error)
                );
            }
        }
    }
    out
}

/// Waits, polling `owned` every 100 ms, until it returns `want`; fails
/// after [`ASSIGN_TIMEOUT`], or at once when `owned` returns `None` (the
/// consumer has stopped).
pub async fn wait_for_assignment(
    want: usize,
    mut owned: impl FnMut() -> Option<usize>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + ASSIGN_TIMEOUT;
    loop {
        let Some(now) = owned() else {
            anyhow::bail!("the consumer stopped before it owned all {want} partitions");
        };
        if now == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("owned {now} of {want} partitions after {ASSIGN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parses `--topics a,b,c`.
pub fn topic_list(value: &str) -> anyhow::Result<Vec<String>> {
    let topics: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if topics.is_empty() {
        anyhow::bail!("--topics needs at least one topic");
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_over_topics() {
        assert_eq!(spread(1000, 4), vec![250, 250, 250, 250]);
        assert_eq!(spread(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(spread(2, 4), vec![1, 1]);
    }
}
