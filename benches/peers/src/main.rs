//! Side-by-side throughput, CPU and memory of kastellan, rdkafka,
//! confluent-kafka, franz-go and Kafka's Java tools against one local Kafka
//! broker.

mod admin;
mod bench;
mod broker;
mod child;
mod clients;
mod confluent_client;
mod idle;
mod java_tools;
mod kastellan_client;
mod member;
mod rdkafka_client;
mod rebalance;
mod report;
mod spawn;
mod tally;
#[path = "../../../testcontainers.rs"]
mod testcontainers;
mod workload;

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

use crate::bench::BenchArgs;
use crate::child::PhaseArgs;
use crate::clients::Client;
use crate::member::{MemberArgs, MemberKind};

const USAGE: &str = "\
usage: peers [options]
  --phases p,q         phases to run: produce, read, group, rebalance, idle
                       (default produce,read,group,rebalance; read also runs
                       produce)
  --records N          records per client, value size and topic layout
                       (produce/read and group; default 200000)
  --sizes 100,1024     value sizes in bytes (default 1024; --size B: one)
  --clients a,b,c      clients to run, in this order (default
                       kastellan,rdkafka,confluent-kafka,franz-go; also java,
                       and kastellan-ring: kastellan with the ring TLS
                       provider, the same as kastellan without TLS)
  --rounds R           rounds, client order rotated each round (default 1)
  --partitions 1,6     partition counts of the produce/read and group topics
                       (default 1,6; --layouts is the same)
  --keyed              give every produced record a key (default: no keys)
  --timeout SECS       limit for one phase of one client (default 600)
  --warmup N           records pushed through the broker, untimed, first (default 50000; 0: none)
  --rebalance-members a,b
                       rebalance members, in this order (default
                       kastellan-eager,kastellan-cooperative,rdkafka,java)
  --rebalance-trials N trials per rebalance member (default 3)
  --trickle-rate N     records/s produced during a rebalance trial (default 200)
  --idle-partitions N  partitions the idle member owns (default 1000)
  --idle-topics N      topics they are spread over (default 4)
  --idle-secs S        length of the idle window (default 60)
  --bootstrap H:P      broker address (default: $KAFKA_BOOTSTRAP, else a local
                       broker started through the repository's test fixture)

internal: peers run --client C --phase produce|read|group --bootstrap H:P --topic T
                    --partitions N --records N --size BYTES [--keyed]
          peers member --client kastellan-eager|kastellan-cooperative|rdkafka
                    --bootstrap H:P --topic T --group G
          peers idle --client kastellan|rdkafka --bootstrap H:P --topics A,B
                    --group G --partitions N --secs S";

struct Flags {
    args: std::vec::IntoIter<String>,
}

impl Flags {
    fn value(&mut self, flag: &str) -> anyhow::Result<String> {
        self.args
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value"))
    }

    fn parsed<T: FromStr>(&mut self, flag: &str) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let value = self.value(flag)?;
        value.parse().map_err(|e| anyhow!("{flag} {value:?}: {e}"))
    }
}

fn list<T: FromStr>(flag: &str, value: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    let items = value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|e| anyhow!("{flag} {s:?}: {e}")))
        .collect::<anyhow::Result<Vec<T>>>()?;
    if items.is_empty() {
        bail!("{flag} needs at least one value");
    }
    Ok(items)
}

/// `items` without repeats, first occurrences kept in order.
fn deduplicated<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn parse_bench(args: Vec<String>) -> anyhow::Result<BenchArgs> {
    let mut bench = BenchArgs::default();
    let mut flags = Flags {
        args: args.into_iter(),
    };
    while let Some(flag) = flags.args.next() {
        match flag.as_str() {
            "--records" => bench.records = flags.parsed(&flag)?,
            "--size" => bench.sizes = vec![flags.parsed(&flag)?],
            "--sizes" => bench.sizes = deduplicated(list(&flag, &flags.value(&flag)?)?),
            "--clients" => {
                let clients: Vec<Client> = list(&flag, &flags.value(&flag)?)?;
                bench.clients = deduplicated(clients);
            }
            "--rounds" => bench.rounds = flags.parsed(&flag)?,
            "--layouts" | "--partitions" => {
                bench.layouts = deduplicated(list(&flag, &flags.value(&flag)?)?)
            }
            "--keyed" => bench.keyed = true,
            "--timeout" => bench.timeout = Duration::from_secs(flags.parsed(&flag)?),
            "--warmup" => bench.warmup = flags.parsed(&flag)?,
            "--phases" => bench.phases = deduplicated(list(&flag, &flags.value(&flag)?)?),
            "--rebalance-members" => {
                bench.rebalance_members = deduplicated(list(&flag, &flags.value(&flag)?)?)
            }
            "--rebalance-trials" => bench.rebalance_trials = flags.parsed(&flag)?,
            "--trickle-rate" => bench.trickle_rate = flags.parsed(&flag)?,
            "--idle-partitions" => bench.idle.partitions = flags.parsed(&flag)?,
            "--idle-topics" => bench.idle.topics = flags.parsed(&flag)?,
            "--idle-secs" => bench.idle.secs = flags.parsed(&flag)?,
            "--bootstrap" => bench.bootstrap = Some(flags.value(&flag)?),
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    if bench.records == 0 || bench.rounds == 0 {
        bail!("--records and --rounds must be at least 1");
    }
    if bench.rebalance_trials == 0 || bench.trickle_rate == 0 {
        bail!("--rebalance-trials and --trickle-rate must be at least 1");
    }
    if bench.layouts.iter().any(|&p| p < 1) {
        bail!("--partitions takes partition counts of at least 1");
    }
    if bench.idle.partitions == 0 || bench.idle.topics == 0 {
        bail!("--idle-partitions and --idle-topics must be at least 1");
    }
    Ok(bench)
}

fn parse_run(args: Vec<String>) -> anyhow::Result<PhaseArgs> {
    let mut flags = Flags {
        args: args.into_iter(),
    };
    let (mut client, mut phase, mut bootstrap, mut topic) = (None, None, None, None);
    let (mut partitions, mut records, mut size, mut keyed) = (None, None, None, false);
    while let Some(flag) = flags.args.next() {
        match flag.as_str() {
            "--client" => client = Some(flags.parsed(&flag)?),
            "--phase" => phase = Some(flags.parsed(&flag)?),
            "--bootstrap" => bootstrap = Some(flags.value(&flag)?),
            "--topic" => topic = Some(flags.value(&flag)?),
            "--partitions" => partitions = Some(flags.parsed(&flag)?),
            "--records" => records = Some(flags.parsed(&flag)?),
            "--size" => size = Some(flags.parsed(&flag)?),
            "--keyed" => keyed = true,
            other => bail!("unknown option {other:?} for run"),
        }
    }
    Ok(PhaseArgs {
        client: client.context("run needs --client")?,
        phase: phase.context("run needs --phase")?,
        bootstrap: bootstrap
            .or_else(broker::from_env)
            .context("run needs --bootstrap or KAFKA_BOOTSTRAP")?,
        topic: topic.context("run needs --topic")?,
        partitions: partitions.context("run needs --partitions")?,
        records: records.context("run needs --records")?,
        size: size.context("run needs --size")?,
        keyed,
    })
}

fn parse_idle(args: Vec<String>) -> anyhow::Result<idle::IdleArgs> {
    let mut flags = Flags {
        args: args.into_iter(),
    };
    let (mut client, mut bootstrap, mut topics, mut group) = (None, None, None, None);
    let (mut partitions, mut secs) = (None, None);
    while let Some(flag) = flags.args.next() {
        match flag.as_str() {
            "--client" => client = Some(flags.parsed::<Client>(&flag)?),
            "--bootstrap" => bootstrap = Some(flags.value(&flag)?),
            "--topics" => topics = Some(idle::topic_list(&flags.value(&flag)?)?),
            "--group" => group = Some(flags.value(&flag)?),
            "--partitions" => partitions = Some(flags.parsed(&flag)?),
            "--secs" => secs = Some(flags.parsed(&flag)?),
            other => bail!("unknown option {other:?} for idle"),
        }
    }
    Ok(idle::IdleArgs {
        client: client.context("idle needs --client")?,
        bootstrap: bootstrap
            .or_else(broker::from_env)
            .context("idle needs --bootstrap or KAFKA_BOOTSTRAP")?,
        topics: topics.context("idle needs --topics")?,
        group: group.context("idle needs --group")?,
        partitions: partitions.context("idle needs --partitions")?,
        secs: secs.context("idle needs --secs")?,
    })
}

fn parse_member(args: Vec<String>) -> anyhow::Result<MemberArgs> {
    let mut flags = Flags {
        args: args.into_iter(),
    };
    let (mut kind, mut bootstrap, mut topic, mut group) = (None, None, None, None);
    while let Some(flag) = flags.args.next() {
        match flag.as_str() {
            "--client" => kind = Some(flags.parsed::<MemberKind>(&flag)?),
            "--bootstrap" => bootstrap = Some(flags.value(&flag)?),
            "--topic" => topic = Some(flags.value(&flag)?),
            "--group" => group = Some(flags.value(&flag)?),
            other => bail!("unknown option {other:?} for member"),
        }
    }
    Ok(MemberArgs {
        kind: kind.context("member needs --client")?,
        bootstrap: bootstrap
            .or_else(broker::from_env)
            .context("member needs --bootstrap or KAFKA_BOOTSTRAP")?,
        topic: topic.context("member needs --topic")?,
        group: group.context("member needs --group")?,
    })
}

/// `peers secure-broker CA_FILE` (used by `tls.sh`): starts the fixture's
/// broker with secure listeners, writes its CA certificate to `CA_FILE`,
/// prints `PLAINTEXT=host:port` and `SSL=host:port`, and runs until its
/// standard input closes.
fn secure_broker(ca_file: Option<&str>) -> anyhow::Result<()> {
    use std::io::Read as _;
    let ca_file = ca_file.context("usage: peers secure-broker CA_FILE")?;
    let broker = testcontainers::start_secure_broker().context("starting the secure broker")?;
    std::fs::write(ca_file, &broker.pki.ca_cert).with_context(|| format!("writing {ca_file}"))?;
    println!("PLAINTEXT={}", broker.plaintext);
    println!("SSL={}", broker.ssl);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(broker);
    Ok(())
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.first().map(String::as_str) == Some("member") {
        args.remove(0);
        return match parse_member(args) {
            Ok(member) => member::run(member),
            Err(error) => {
                println!("{} {error:#}", member::ERROR_TAG);
                ExitCode::from(2)
            }
        };
    }
    if args.first().map(String::as_str) == Some("idle") {
        args.remove(0);
        return match parse_idle(args) {
            Ok(idle) => idle::run_member(idle),
            Err(error) => {
                println!("{} {error:#}", child::ERROR_TAG);
                ExitCode::from(2)
            }
        };
    }
    if args.first().map(String::as_str) == Some("secure-broker") {
        return match secure_broker(args.get(1).map(String::as_str)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some("run") {
        args.remove(0);
        return match parse_run(args) {
            Ok(phase) => child::run(phase),
            Err(error) => {
                println!("{} {error:#}", child::ERROR_TAG);
                ExitCode::from(2)
            }
        };
    }
    match parse_bench(args).and_then(bench::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bench_defaults_and_flags() {
        let defaults = parse_bench(Vec::new()).unwrap();
        assert_eq!(defaults.records, 200_000);
        assert_eq!(defaults.sizes, vec![1024]);
        assert_eq!(defaults.clients, Client::DEFAULT.to_vec());
        assert_eq!(defaults.layouts, vec![1, 6]);
        let parsed = parse_bench(strings(&[
            "--records",
            "10",
            "--size",
            "100",
            "--clients",
            "rdkafka,confluent-kafka,rdkafka",
            "--rounds",
            "3",
            "--keyed",
        ]))
        .unwrap();
        assert_eq!(parsed.records, 10);
        assert_eq!(parsed.sizes, vec![100]);
        assert_eq!(parsed.clients, vec![Client::Rdkafka, Client::Confluent]);
        assert_eq!(parsed.rounds, 3);
        assert!(parsed.keyed);
        assert!(parse_bench(strings(&["--clients", "nope"])).is_err());
        assert_eq!(defaults.phases, bench::BenchPhase::DEFAULT.to_vec());
        let scale = parse_bench(strings(&[
            "--sizes",
            "100,1024",
            "--partitions",
            "1,6,64,1000",
            "--clients",
            "kastellan,franz-go,java,kastellan-ring",
            "--phases",
            "idle",
            "--idle-secs",
            "5",
        ]))
        .unwrap();
        assert_eq!(scale.sizes, vec![100, 1024]);
        assert_eq!(scale.layouts, vec![1, 6, 64, 1000]);
        assert_eq!(
            scale.clients,
            vec![
                Client::Kastellan,
                Client::Franz,
                Client::Java,
                Client::KastellanRing
            ]
        );
        assert_eq!(scale.phases, vec![bench::BenchPhase::Idle]);
        assert_eq!(scale.idle.secs, 5);
        assert_eq!(scale.idle.partitions, 1000);
        assert_eq!(defaults.rebalance_members, MemberKind::ALL.to_vec());
        assert_eq!(defaults.rebalance_trials, 3);
        let phases = parse_bench(strings(&[
            "--phases",
            "group,rebalance,group",
            "--rebalance-members",
            "java,kastellan-cooperative",
            "--rebalance-trials",
            "1",
        ]))
        .unwrap();
        assert_eq!(
            phases.phases,
            vec![bench::BenchPhase::Group, bench::BenchPhase::Rebalance]
        );
        assert_eq!(
            phases.rebalance_members,
            vec![MemberKind::Java, MemberKind::KastellanCooperative]
        );
        assert_eq!(phases.rebalance_trials, 1);
        assert!(parse_bench(strings(&["--phases", "consume"])).is_err());
        assert!(parse_bench(strings(&["--records"])).is_err());
    }
}
