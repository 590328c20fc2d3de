//! The parent: topics, child processes in interleaved order, and the report.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::admin::Admin;
use crate::child::PhaseArgs;
use crate::clients::{Client, Phase};
use crate::member::MemberKind;
use crate::rebalance::{self, RebalanceArgs};
use crate::report::{self, layout_label, GroupRun, Run};
use crate::spawn::{self, PhaseOutcome};
use crate::{broker, confluent_client, rdkafka_client, workload};

/// Partitions of the group-consume topic.
pub const GROUP_PARTITIONS: i32 = 6;

/// The parts of the benchmark `--phases` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BenchPhase {
    Produce,
    Read,
    Group,
    Rebalance,
}

impl BenchPhase {
    pub const ALL: [BenchPhase; 4] = [
        BenchPhase::Produce,
        BenchPhase::Read,
        BenchPhase::Group,
        BenchPhase::Rebalance,
    ];
}

impl fmt::Display for BenchPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BenchPhase::Produce => "produce",
            BenchPhase::Read => "read",
            BenchPhase::Group => "group",
            BenchPhase::Rebalance => "rebalance",
        })
    }
}

impl FromStr for BenchPhase {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "produce" => Ok(BenchPhase::Produce),
            "read" => Ok(BenchPhase::Read),
            "group" => Ok(BenchPhase::Group),
            "rebalance" => Ok(BenchPhase::Rebalance),
            other => {
                anyhow::bail!("unknown phase {other:?} (known: produce, read, group, rebalance)")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub bootstrap: Option<String>,
    pub records: usize,
    pub size: usize,
    pub clients: Vec<Client>,
    pub rounds: usize,
    pub keyed: bool,
    pub layouts: Vec<i32>,
    pub timeout: Duration,
    /// Records produced and read once, untimed, before the first round.
    pub warmup: usize,
    pub phases: Vec<BenchPhase>,
    /// Member kinds of the rebalance phase, in order.
    pub rebalance_members: Vec<MemberKind>,
    /// Trials per member kind in the rebalance phase.
    pub rebalance_trials: usize,
    /// Records per second produced during a rebalance trial.
    pub trickle_rate: u32,
}

impl BenchArgs {
    fn runs(&self, phase: BenchPhase) -> bool {
        self.phases.contains(&phase)
    }

    /// Produce runs when asked for and whenever read does (read needs it).
    fn runs_throughput(&self) -> bool {
        self.runs(BenchPhase::Produce) || self.runs(BenchPhase::Read)
    }
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            bootstrap: None,
            records: 200_000,
            size: 1024,
            clients: Client::ALL.to_vec(),
            rounds: 1,
            keyed: false,
            layouts: vec![1, 6],
            timeout: Duration::from_secs(600),
            warmup: 50_000,
            phases: BenchPhase::ALL.to_vec(),
            rebalance_members: MemberKind::ALL.to_vec(),
            rebalance_trials: 3,
            trickle_rate: 200,
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(run_async(args))
}

fn settings_line(settings: &[(&str, String)]) -> String {
    settings
        .iter()
        .map(|(name, value)| format!("`{name}={value}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn byte_size(bytes: usize) -> String {
    if bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn print_header(args: &BenchArgs, bootstrap: &str) {
    let phases = args
        .phases
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    println!("# kastellan peers benchmark");
    println!();
    println!("- broker: `{bootstrap}`");
    println!("- phases: {phases}");
    if args.runs_throughput() || args.runs(BenchPhase::Group) {
        println!(
            "- workload: {} records of {} B values ({}), acks=all",
            args.records,
            args.size,
            if args.keyed && args.runs_throughput() {
                "8-byte keys, one per record, in the produce phase"
            } else {
                "no keys"
            }
        );
    }
    if args.runs_throughput() {
        println!(
            "- producers: linger {} ms, batches up to {}, requests up to {}, compression {}",
            workload::LINGER_MS,
            byte_size(workload::BATCH_BYTES),
            byte_size(workload::MAX_REQUEST_BYTES),
            workload::COMPRESSION
        );
        println!(
            "  - rdkafka: {}",
            settings_line(&rdkafka_client::producer_settings())
        );
        println!(
            "  - confluent-kafka: {}",
            settings_line(&confluent_client::producer_settings())
        );
    }
    if args.runs(BenchPhase::Read) {
        println!("- readers: no consumer group, no commits, partitions assigned from the earliest offset, fetch settings at client defaults");
    }
    if args.runs(BenchPhase::Group) {
        println!(
            "- group consume: the records are produced once (rdkafka, untimed) into one topic ({}); each client then reads all of them as the only member of a fresh group (earliest offset, no-op handler, other settings at client defaults)",
            layout_label(GROUP_PARTITIONS)
        );
    }
    println!(
        "- {} round(s), client order rotated each round; figures are medians over rounds; {} warm-up records before the first round",
        args.rounds, args.warmup
    );
    println!("- each phase runs in its own process; time is measured from the client's ready mark (client built, topic metadata fetched) to the last ack or the last record read; peak RSS is the larger `VmHWM` of the produce and read processes");
    if args.runs(BenchPhase::Rebalance) {
        println!(
            "- rebalance: {} trial(s) per member kind, see its section",
            args.rebalance_trials
        );
    }
    println!();
}

fn topic_name(client: Client, partitions: i32, round: usize) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!(
        "peers-{}-{}p-r{}-{}-{}",
        client.id(),
        partitions,
        round + 1,
        std::process::id(),
        millis
    )
}

fn progress(round: usize, client: Client, layout: &str, phase: Phase, outcome: &PhaseOutcome) {
    let rss = outcome
        .max_rss_kib
        .map(|kib| format!(", RSS {:.1} MiB", kib as f64 / 1024.0))
        .unwrap_or_default();
    match &outcome.result {
        Ok(report) => {
            let secs = report.work_ns as f64 / 1e9;
            eprintln!(
                "[round {}] {} / {} / {}: {:.0} rec/s, {:.1} MiB/s in {:.2} s{}",
                round + 1,
                client,
                layout,
                phase.id(),
                report.records as f64 / secs,
                report.bytes as f64 / report::MIB / secs,
                secs,
                rss
            );
        }
        Err(error) => eprintln!(
            "[round {}] {} / {} / {}: error: {}{}",
            round + 1,
            client,
            layout,
            phase.id(),
            error,
            rss
        ),
    }
}

async fn run_one(
    admin: &Admin,
    args: &BenchArgs,
    bootstrap: &str,
    round: usize,
    client: Client,
    partitions: i32,
) -> Run {
    let topic = topic_name(client, partitions, round);
    let mut run = Run {
        round,
        client,
        partitions,
        produce: PhaseOutcome::failed("not run"),
        read: None,
    };
    if let Err(error) = admin.create_topic(&topic, partitions).await {
        run.produce = PhaseOutcome::failed(format!("topic set-up: {error:#}"));
        progress(
            round,
            client,
            &layout_label(partitions),
            Phase::Produce,
            &run.produce,
        );
        return run;
    }
    let mut phase_args = PhaseArgs {
        client,
        phase: Phase::Produce,
        bootstrap: bootstrap.to_string(),
        topic: topic.clone(),
        partitions,
        records: args.records,
        size: args.size,
        keyed: args.keyed,
    };
    let layout = layout_label(partitions);
    run.produce = run_child(&phase_args, args.timeout);
    progress(round, client, &layout, Phase::Produce, &run.produce);
    if run.produce.result.is_ok() && args.runs(BenchPhase::Read) {
        phase_args.phase = Phase::Read;
        let read = run_child(&phase_args, args.timeout);
        progress(round, client, &layout, Phase::Read, &read);
        run.read = Some(read);
    }
    if let Err(error) = admin.delete_topic(&topic).await {
        eprintln!("warning: {error:#}");
    }
    run
}

/// Pushes some records through the broker before anything is measured, so
/// the first client measured does not meet a cold broker (JIT, page cache).
async fn warm_up(
    admin: &Admin,
    bootstrap: &str,
    records: usize,
    size: usize,
) -> anyhow::Result<()> {
    let partitions = 6;
    let topic = format!("peers-warmup-{}", std::process::id());
    admin.create_topic(&topic, partitions).await?;
    let payload = workload::payload(size);
    let started = std::time::Instant::now();
    let outcome = async {
        rdkafka_client::produce(bootstrap, &topic, &payload, records).await?;
        rdkafka_client::read(bootstrap, &topic, partitions, records).await
    }
    .await;
    if let Err(error) = admin.delete_topic(&topic).await {
        eprintln!("warning: {error:#}");
    }
    outcome.context("warm-up")?;
    eprintln!(
        "warm-up: {records} records produced and read in {:.2} s (not measured)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_child(args: &PhaseArgs, timeout: Duration) -> PhaseOutcome {
    tokio::task::block_in_place(|| spawn::run_phase(args, timeout))
}

/// The group-consume phase: one topic, produced once, read by every client
/// as the only member of a fresh group.
async fn run_group(admin: &Admin, args: &BenchArgs, bootstrap: &str) -> Vec<GroupRun> {
    let topic = format!(
        "peers-group-{}p-{}-{}",
        GROUP_PARTITIONS,
        std::process::id(),
        workload::unix_micros() / 1000
    );
    let started = std::time::Instant::now();
    let prepared = async {
        admin.create_topic(&topic, GROUP_PARTITIONS).await?;
        let payload = workload::payload(args.size);
        rdkafka_client::produce(bootstrap, &topic, &payload, args.records).await
    }
    .await;
    let mut runs = Vec::new();
    match prepared {
        Ok(()) => {
            eprintln!(
                "group: {} records produced into {topic} in {:.2} s (not measured)",
                args.records,
                started.elapsed().as_secs_f64()
            );
            let layout = format!("{}, group", layout_label(GROUP_PARTITIONS));
            for round in 0..args.rounds {
                let mut order = args.clients.clone();
                if !order.is_empty() {
                    let shift = round % order.len();
                    order.rotate_left(shift);
                }
                for client in order {
                    let phase_args = PhaseArgs {
                        client,
                        phase: Phase::Group,
                        bootstrap: bootstrap.to_string(),
                        topic: topic.clone(),
                        partitions: GROUP_PARTITIONS,
                        records: args.records,
                        size: args.size,
                        keyed: false,
                    };
                    let outcome = run_child(&phase_args, args.timeout);
                    progress(round, client, &layout, Phase::Group, &outcome);
                    runs.push(GroupRun {
                        round,
                        client,
                        outcome,
                    });
                }
            }
        }
        Err(error) => {
            eprintln!("group: set-up failed: {error:#}");
            for &client in &args.clients {
                runs.push(GroupRun {
                    round: 0,
                    client,
                    outcome: PhaseOutcome::failed(format!("topic set-up: {error:#}")),
                });
            }
        }
    }
    if let Err(error) = admin.delete_topic(&topic).await {
        eprintln!("warning: {error:#}");
    }
    runs
}

async fn run_async(args: BenchArgs) -> anyhow::Result<()> {
    let (bootstrap, _local_broker) = broker::resolve(args.bootstrap.as_deref())?;
    let admin = Admin::connect(&bootstrap)?;
    let brokers = admin
        .probe()
        .with_context(|| format!("broker at {bootstrap} does not answer"))?;
    eprintln!("broker {bootstrap}: {brokers} broker(s) in metadata");

    if args.warmup > 0 {
        warm_up(&admin, &bootstrap, args.warmup, args.size).await?;
    }
    print_header(&args, &bootstrap);

    if args.runs_throughput() {
        let mut runs = Vec::new();
        for round in 0..args.rounds {
            let mut order = args.clients.clone();
            if !order.is_empty() {
                let shift = round % order.len();
                order.rotate_left(shift);
            }
            for &partitions in &args.layouts {
                for &client in &order {
                    runs.push(run_one(&admin, &args, &bootstrap, round, client, partitions).await);
                }
            }
        }
        let summaries = report::summarize(&runs, &args.clients, &args.layouts);
        print!("{}", report::render(&summaries, &runs, &args.layouts));
        println!();
    }

    if args.runs(BenchPhase::Group) {
        let runs = run_group(&admin, &args, &bootstrap).await;
        print!(
            "{}",
            report::render_group(&runs, &args.clients, GROUP_PARTITIONS)
        );
        println!();
    }

    if args.runs(BenchPhase::Rebalance) {
        let rebalance_args = RebalanceArgs {
            members: args.rebalance_members.clone(),
            trials: args.rebalance_trials,
            rate: args.trickle_rate,
        };
        let trials = rebalance::run(&admin, &bootstrap, &rebalance_args).await;
        print!("{}", rebalance::render(&trials, &rebalance_args));
    }
    Ok(())
}
