//! The parent: topics, child processes in interleaved order, and the report.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::admin::Admin;
use crate::child::PhaseArgs;
use crate::clients::{Client, Phase};
use crate::idle::{self, IdleSettings};
use crate::member::MemberKind;
use crate::rebalance::{self, RebalanceArgs};
use crate::report::{self, layout_label, size_label, Key, Sample};
use crate::spawn::{self, PhaseOutcome};
use crate::{broker, confluent_client, rdkafka_client, workload};

/// The parts of the benchmark `--phases` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BenchPhase {
    Produce,
    Read,
    Group,
    Rebalance,
    Idle,
}

impl BenchPhase {
    /// The phases run when `--phases` is not given: all but the idle
    /// phase, which takes a minute per client.
    pub const DEFAULT: [BenchPhase; 4] = [
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
            BenchPhase::Idle => "idle",
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
            "idle" => Ok(BenchPhase::Idle),
            other => anyhow::bail!(
                "unknown phase {other:?} (known: produce, read, group, rebalance, idle)"
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub bootstrap: Option<String>,
    pub records: usize,
    /// Value sizes in bytes; every produce/read/group run is repeated for
    /// each.
    pub sizes: Vec<usize>,
    pub clients: Vec<Client>,
    pub rounds: usize,
    pub keyed: bool,
    /// Partition counts of the produce/read and group topics.
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
    pub idle: IdleSettings,
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
            sizes: vec![1024],
            clients: Client::DEFAULT.to_vec(),
            rounds: 1,
            keyed: false,
            layouts: vec![1, 6],
            timeout: Duration::from_secs(600),
            warmup: 50_000,
            phases: BenchPhase::DEFAULT.to_vec(),
            rebalance_members: MemberKind::ALL.to_vec(),
            rebalance_trials: 3,
            trickle_rate: 200,
            idle: IdleSettings {
                partitions: 1000,
                topics: 4,
                secs: 60,
            },
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
    if let Some(ca) = workload::tls_ca() {
        println!(
            "- TLS: every client connects with TLS and trusts only the CA in `{ca}`; kastellan: rustls with graviola (its default provider), kastellan-ring: rustls with ring, rdkafka: librdkafka with OpenSSL"
        );
    }
    println!("- phases: {phases}");
    if args.runs_throughput() || args.runs(BenchPhase::Group) {
        let sizes = args
            .sizes
            .iter()
            .map(|&s| size_label(s))
            .collect::<Vec<_>>()
            .join(", ");
        let layouts = args
            .layouts
            .iter()
            .map(|&p| layout_label(p))
            .collect::<Vec<_>>()
            .join(", ");
        println!("- topic layouts: {layouts}; value sizes: {sizes}");
        println!(
            "- workload: {} records per client, size and layout ({}), acks=all",
            args.records,
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
            "- group consume: per size and layout the records are produced once (rdkafka, untimed) into one topic; each client then reads all of them as the only member of a fresh group (earliest offset, no-op handler, other settings at client defaults)"
        );
    }
    let measures_records = args.runs_throughput() || args.runs(BenchPhase::Group);
    if measures_records && args.clients.contains(&Client::Franz) {
        println!("- franz-go: `kgo` with `RequiredAcks(AllISRAcks)`, `ProducerLinger(5ms)`, `ProducerBatchMaxBytes(1 MiB)`, no compression; reader `AddConsumePartitions` from the start; group `ConsumerGroup` + `AddConsumeTopics`, reset to the start");
    }
    if measures_records && args.clients.contains(&Client::Java) {
        println!("- java: Kafka's `ProducerPerformance` (producer settings as confluent-kafka's above, its own random payload) and `ConsumerPerformance` (a fresh group; read takes `fetch.nMsg.sec`, which leaves out the join, group takes `nMsg.sec`); rates as the tools print them, CPU of the whole JVM process");
    }
    println!(
        "- {} round(s), client order rotated each round; figures are medians over rounds; {} warm-up records before the first round",
        args.rounds, args.warmup
    );
    println!("- each phase runs in its own process; time and CPU (user + system, all threads) are measured from the client's ready mark (client built, topic metadata fetched) to the last ack or the last record read; CPU s/M rec is CPU seconds per million records; peak RSS is the larger `VmHWM` of the produce and read processes");
    if args.runs(BenchPhase::Idle) {
        println!(
            "- idle: one member over {} partitions in {} topic(s), no traffic, {} s window",
            args.idle.partitions,
            idle::spread(args.idle.partitions, args.idle.topics).len(),
            args.idle.secs
        );
    }
    if args.runs(BenchPhase::Rebalance) {
        println!(
            "- rebalance: {} trial(s) per member kind, see its section",
            args.rebalance_trials
        );
    }
    println!();
}

fn topic_name(client: Client, size: usize, partitions: i32, round: usize) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!(
        "peers-{}-{}b-{}p-r{}-{}-{}",
        client.id(),
        size,
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
    key: Key,
) -> Vec<Sample> {
    let Key { size, partitions } = key;
    let topic = topic_name(client, size, partitions, round);
    let layout = format!("{}, {}", size_label(size), layout_label(partitions));
    let sample = |phase, outcome| Sample {
        round,
        client,
        size,
        partitions,
        phase,
        outcome,
    };
    if let Err(error) = admin.create_topic(&topic, partitions).await {
        let outcome = PhaseOutcome::failed(format!("topic set-up: {error:#}"));
        progress(round, client, &layout, Phase::Produce, &outcome);
        return vec![sample(Phase::Produce, outcome)];
    }
    let mut phase_args = PhaseArgs {
        client,
        phase: Phase::Produce,
        bootstrap: bootstrap.to_string(),
        topic: topic.clone(),
        partitions,
        records: args.records,
        size,
        keyed: args.keyed,
    };
    let produce = run_child(&phase_args, args.timeout);
    progress(round, client, &layout, Phase::Produce, &produce);
    let produced = produce.result.is_ok();
    let mut samples = vec![sample(Phase::Produce, produce)];
    if produced && args.runs(BenchPhase::Read) {
        phase_args.phase = Phase::Read;
        let read = run_child(&phase_args, args.timeout);
        progress(round, client, &layout, Phase::Read, &read);
        samples.push(sample(Phase::Read, read));
    }
    if let Err(error) = admin.delete_topic(&topic).await {
        eprintln!("warning: {error:#}");
    }
    samples
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

/// The group-consume phase for one size and layout: one topic, produced
/// once, read by every client as the only member of a fresh group.
async fn run_group(admin: &Admin, args: &BenchArgs, bootstrap: &str, key: Key) -> Vec<Sample> {
    let Key { size, partitions } = key;
    let topic = format!(
        "peers-group-{}b-{}p-{}-{}",
        size,
        partitions,
        std::process::id(),
        workload::unix_micros() / 1000
    );
    let started = std::time::Instant::now();
    let prepared = async {
        admin.create_topic(&topic, partitions).await?;
        let payload = workload::payload(size);
        rdkafka_client::produce(bootstrap, &topic, &payload, args.records).await
    }
    .await;
    let mut samples = Vec::new();
    match prepared {
        Ok(()) => {
            eprintln!(
                "group: {} records produced into {topic} in {:.2} s (not measured)",
                args.records,
                started.elapsed().as_secs_f64()
            );
            let layout = format!("{}, {}, group", size_label(size), layout_label(partitions));
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
                        partitions,
                        records: args.records,
                        size,
                        keyed: false,
                    };
                    let outcome = run_child(&phase_args, args.timeout);
                    progress(round, client, &layout, Phase::Group, &outcome);
                    samples.push(Sample {
                        round,
                        client,
                        size,
                        partitions,
                        phase: Phase::Group,
                        outcome,
                    });
                }
            }
        }
        Err(error) => {
            eprintln!("group: set-up failed: {error:#}");
            for &client in &args.clients {
                samples.push(Sample {
                    round: 0,
                    client,
                    size,
                    partitions,
                    phase: Phase::Group,
                    outcome: PhaseOutcome::failed(format!("topic set-up: {error:#}")),
                });
            }
        }
    }
    if let Err(error) = admin.delete_topic(&topic).await {
        eprintln!("warning: {error:#}");
    }
    samples
}

/// Over TLS (`PEERS_TLS_CA`) only the produce, read and group phases of
/// kastellan, kastellan-ring and rdkafka run: the other clients and phases
/// do not read the CA setting and would connect without TLS.
fn check_tls(args: &BenchArgs) -> anyhow::Result<()> {
    if workload::tls_ca().is_none() {
        return Ok(());
    }
    let plain: Vec<&str> = args
        .clients
        .iter()
        .filter(|c| {
            !matches!(
                c,
                Client::Kastellan | Client::KastellanRing | Client::Rdkafka
            )
        })
        .map(|c| c.label())
        .collect();
    if !plain.is_empty() {
        anyhow::bail!(
            "PEERS_TLS_CA is set but {} cannot connect with TLS here (kastellan, kastellan-ring and rdkafka can)",
            plain.join(", ")
        );
    }
    if args.runs(BenchPhase::Rebalance) || args.runs(BenchPhase::Idle) {
        anyhow::bail!("PEERS_TLS_CA is set: over TLS only the produce, read and group phases run");
    }
    Ok(())
}

async fn run_async(args: BenchArgs) -> anyhow::Result<()> {
    check_tls(&args)?;
    let (bootstrap, _local_broker) = broker::resolve(args.bootstrap.as_deref())?;
    let admin = Admin::connect(&bootstrap)?;
    let brokers = admin
        .probe()
        .with_context(|| format!("broker at {bootstrap} does not answer"))?;
    eprintln!("broker {bootstrap}: {brokers} broker(s) in metadata");

    if args.warmup > 0 {
        warm_up(&admin, &bootstrap, args.warmup, args.sizes[0]).await?;
    }
    print_header(&args, &bootstrap);
    let keys: Vec<Key> = args
        .sizes
        .iter()
        .flat_map(|&size| {
            args.layouts
                .iter()
                .map(move |&partitions| Key { size, partitions })
        })
        .collect();

    if args.runs_throughput() {
        let mut samples = Vec::new();
        for round in 0..args.rounds {
            let mut order = args.clients.clone();
            if !order.is_empty() {
                let shift = round % order.len();
                order.rotate_left(shift);
            }
            for &key in &keys {
                for &client in &order {
                    samples.extend(run_one(&admin, &args, &bootstrap, round, client, key).await);
                }
            }
        }
        print!("{}", report::render(&samples, &args.clients, &keys));
        println!();
    }

    if args.runs(BenchPhase::Group) {
        let mut samples = Vec::new();
        for &key in &keys {
            samples.extend(run_group(&admin, &args, &bootstrap, key).await);
        }
        print!("{}", report::render_group(&samples, &args.clients, &keys));
        println!();
    }

    if args.runs(BenchPhase::Idle) {
        let runs = idle::run(&admin, &bootstrap, &args.idle, &args.clients, args.rounds).await;
        print!("{}", idle::render(&runs, &args.clients, &args.idle));
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
