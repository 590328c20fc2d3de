//! Aggregation over rounds and the Markdown report.
//!
//! Every measured child process is one [`Sample`]; the tables are medians
//! over rounds per client, value size, partition layout and phase, and the
//! ratios compare kastellan with every other client run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::clients::{Client, Phase};
use crate::spawn::PhaseOutcome;

pub const MIB: f64 = 1024.0 * 1024.0;

/// What a cell says when its phase was not run.
const NOT_RUN: &str = "not run";

/// One phase of one client on one topic in one round.
#[derive(Debug, Clone)]
pub struct Sample {
    pub round: usize,
    pub client: Client,
    /// Value size in bytes.
    pub size: usize,
    pub partitions: i32,
    pub phase: Phase,
    pub outcome: PhaseOutcome,
}

/// Throughput of one phase of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub records_per_sec: f64,
    pub mib_per_sec: f64,
}

pub fn rate(outcome: &PhaseOutcome) -> Option<Rate> {
    let report = outcome.result.as_ref().ok()?;
    let secs = report.work_ns as f64 / 1e9;
    if secs <= 0.0 {
        return None;
    }
    Some(Rate {
        records_per_sec: report.records as f64 / secs,
        mib_per_sec: report.bytes as f64 / MIB / secs,
    })
}

/// CPU seconds per million records of one run, and whether the figure is
/// the whole process's (start-up included) rather than the timed work's.
pub fn cpu_per_million(outcome: &PhaseOutcome) -> Option<(f64, bool)> {
    let report = outcome.result.as_ref().ok()?;
    let (cpu_ns, whole) = outcome.cpu_ns()?;
    (report.records > 0).then(|| (cpu_ns as f64 / 1e9 * 1e6 / report.records as f64, whole))
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// Which samples a figure is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub size: usize,
    pub partitions: i32,
}

fn matching<'a>(
    samples: &'a [Sample],
    client: Client,
    key: Key,
    phases: &'a [Phase],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| {
        s.client == client
            && s.size == key.size
            && s.partitions == key.partitions
            && phases.contains(&s.phase)
    })
}

/// A figure per round (`f` of each sample; with several phases, the largest
/// of a round's values).
fn per_round(
    samples: &[Sample],
    client: Client,
    key: Key,
    phases: &[Phase],
    f: impl Fn(&PhaseOutcome) -> Option<f64>,
) -> BTreeMap<usize, f64> {
    let mut rounds: BTreeMap<usize, f64> = BTreeMap::new();
    for sample in matching(samples, client, key, phases) {
        if let Some(value) = f(&sample.outcome) {
            let entry = rounds.entry(sample.round).or_insert(value);
            *entry = entry.max(value);
        }
    }
    rounds
}

/// The medians of one client and phase over rounds, or why there are none.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseFigures {
    pub rate: Result<Rate, String>,
    /// CPU s per million records, and whether it is whole-process.
    pub cpu: Option<(f64, bool)>,
    pub failed: usize,
    pub runs: usize,
}

pub fn phase_figures(samples: &[Sample], client: Client, key: Key, phase: Phase) -> PhaseFigures {
    let phases = [phase];
    let mine: Vec<&Sample> = matching(samples, client, key, &phases).collect();
    let rates: Vec<Rate> = mine.iter().filter_map(|s| rate(&s.outcome)).collect();
    let rate = match (
        median(rates.iter().map(|r| r.records_per_sec).collect()),
        median(rates.iter().map(|r| r.mib_per_sec).collect()),
    ) {
        (Some(records_per_sec), Some(mib_per_sec)) => Ok(Rate {
            records_per_sec,
            mib_per_sec,
        }),
        _ => Err(mine
            .iter()
            .filter_map(|s| s.outcome.result.as_ref().err())
            .find(|e| !e.is_empty())
            .cloned()
            .unwrap_or_else(|| NOT_RUN.to_string())),
    };
    let cpus: Vec<(f64, bool)> = mine
        .iter()
        .filter_map(|s| cpu_per_million(&s.outcome))
        .collect();
    let cpu = median(cpus.iter().map(|c| c.0).collect()).map(|m| (m, cpus.iter().any(|c| c.1)));
    PhaseFigures {
        rate,
        cpu,
        failed: mine.iter().filter(|s| s.outcome.result.is_err()).count(),
        runs: mine.len(),
    }
}

fn rss_mib(outcome: &PhaseOutcome) -> Option<f64> {
    outcome
        .result
        .is_ok()
        .then_some(outcome.max_rss_kib)
        .flatten()
        .map(|kib| kib as f64 / 1024.0)
}

/// The largest peak RSS over the given phases and all rounds, in MiB.
fn peak_rss(samples: &[Sample], client: Client, key: Key, phases: &[Phase]) -> Option<f64> {
    matching(samples, client, key, phases)
        .filter_map(|s| rss_mib(&s.outcome))
        .max_by(f64::total_cmp)
}

pub fn layout_label(partitions: i32) -> String {
    if partitions == 1 {
        "1 partition".to_string()
    } else {
        format!("{partitions} partitions")
    }
}

pub fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// `1234567.8` as `1,234,568`.
pub fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn cell_text(text: &str) -> String {
    let one_line = text.replace(['\n', '\r'], " ").replace('|', "\\|");
    let limit = 120;
    if one_line.chars().count() > limit {
        let cut: String = one_line.chars().take(limit).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

fn rate_cells(rate: &Result<Rate, String>) -> [String; 2] {
    match rate {
        Ok(rate) => [
            grouped(rate.records_per_sec),
            format!("{:.1}", rate.mib_per_sec),
        ],
        Err(error) if error == NOT_RUN => [NOT_RUN.to_string(), "n/a".to_string()],
        Err(error) => [format!("error: {}", cell_text(error)), "n/a".to_string()],
    }
}

/// CPU s per million records with 3 significant digits; a `*` marks a
/// whole-process figure.
fn cpu_cell(cpu: Option<(f64, bool)>) -> String {
    match cpu {
        Some((value, whole)) => format!("{}{}", significant(value), if whole { "*" } else { "" }),
        None => "n/a".to_string(),
    }
}

fn significant(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn mib_cell(mib: Option<f64>) -> String {
    mib.map_or_else(|| "n/a".to_string(), |mib| format!("{mib:.1}"))
}

/// kastellan's figure over the peer's (ratio of the medians), followed by
/// the range of the per-round ratios when more than one round has both.
fn ratio_cell(
    kastellan: Option<f64>,
    peer: Option<f64>,
    kastellan_rounds: &BTreeMap<usize, f64>,
    peer_rounds: &BTreeMap<usize, f64>,
) -> String {
    let (Some(k), Some(p)) = (kastellan, peer) else {
        return "n/a".to_string();
    };
    if p <= 0.0 {
        return "n/a".to_string();
    }
    let ratios: Vec<f64> = kastellan_rounds
        .iter()
        .filter_map(|(round, k)| peer_rounds.get(round).filter(|p| **p > 0.0).map(|p| k / p))
        .collect();
    let mut cell = format!("{:.2}", k / p);
    if ratios.len() > 1 {
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = write!(cell, " ({min:.2}–{max:.2})");
    }
    cell
}

/// One row of a ratios table: how to get the figure of one run and its
/// median.
struct RatioFigure {
    name: &'static str,
    phases: &'static [Phase],
    per_run: fn(&PhaseOutcome) -> Option<f64>,
    median: fn(&[Sample], Client, Key) -> Option<f64>,
    /// A CPU figure: no ratio against a whole-process figure, which
    /// includes a JVM's start-up and would compare nothing alike.
    cpu: bool,
}

/// Whether any of the client's runs of these phases has only a
/// whole-process CPU figure.
fn whole_process_cpu(samples: &[Sample], client: Client, key: Key, phases: &[Phase]) -> bool {
    matching(samples, client, key, phases).any(|s| matches!(s.outcome.cpu_ns(), Some((_, true))))
}

fn records_per_sec(outcome: &PhaseOutcome) -> Option<f64> {
    rate(outcome).map(|r| r.records_per_sec)
}

fn cpu_value(outcome: &PhaseOutcome) -> Option<f64> {
    cpu_per_million(outcome).map(|c| c.0)
}

const PRODUCE_READ_FIGURES: [RatioFigure; 5] = [
    RatioFigure {
        name: "produce rec/s",
        phases: &[Phase::Produce],
        per_run: records_per_sec,
        median: |s, c, k| {
            phase_figures(s, c, k, Phase::Produce)
                .rate
                .ok()
                .map(|r| r.records_per_sec)
        },
        cpu: false,
    },
    RatioFigure {
        name: "produce CPU s/M rec",
        phases: &[Phase::Produce],
        per_run: cpu_value,
        median: |s, c, k| phase_figures(s, c, k, Phase::Produce).cpu.map(|c| c.0),
        cpu: true,
    },
    RatioFigure {
        name: "read rec/s",
        phases: &[Phase::Read],
        per_run: records_per_sec,
        median: |s, c, k| {
            phase_figures(s, c, k, Phase::Read)
                .rate
                .ok()
                .map(|r| r.records_per_sec)
        },
        cpu: false,
    },
    RatioFigure {
        name: "read CPU s/M rec",
        phases: &[Phase::Read],
        per_run: cpu_value,
        median: |s, c, k| phase_figures(s, c, k, Phase::Read).cpu.map(|c| c.0),
        cpu: true,
    },
    RatioFigure {
        name: "peak RSS (MiB)",
        phases: &[Phase::Produce, Phase::Read],
        per_run: rss_mib,
        median: |s, c, k| peak_rss(s, c, k, &[Phase::Produce, Phase::Read]),
        cpu: false,
    },
];

const GROUP_FIGURES: [RatioFigure; 3] = [
    RatioFigure {
        name: "rec/s",
        phases: &[Phase::Group],
        per_run: records_per_sec,
        median: |s, c, k| {
            phase_figures(s, c, k, Phase::Group)
                .rate
                .ok()
                .map(|r| r.records_per_sec)
        },
        cpu: false,
    },
    RatioFigure {
        name: "CPU s/M rec",
        phases: &[Phase::Group],
        per_run: cpu_value,
        median: |s, c, k| phase_figures(s, c, k, Phase::Group).cpu.map(|c| c.0),
        cpu: true,
    },
    RatioFigure {
        name: "peak RSS (MiB)",
        phases: &[Phase::Group],
        per_run: rss_mib,
        median: |s, c, k| peak_rss(s, c, k, &[Phase::Group]),
        cpu: false,
    },
];

fn peers(clients: &[Client]) -> Vec<Client> {
    clients
        .iter()
        .copied()
        .filter(|&c| c != Client::Kastellan)
        .collect()
}

fn render_ratios(
    out: &mut String,
    samples: &[Sample],
    clients: &[Client],
    keys: &[Key],
    figures: &[RatioFigure],
) {
    let peers = peers(clients);
    if !clients.contains(&Client::Kastellan) || peers.is_empty() {
        let _ = writeln!(
            out,
            "(no ratios: kastellan and at least one peer are needed)"
        );
        return;
    }
    let _ = writeln!(
        out,
        "kastellan's median over the peer's; with several rounds, the range of the per-round ratios follows in brackets. For rec/s above 1 means kastellan is faster; for CPU and peak RSS above 1 means kastellan uses more."
    );
    let _ = writeln!(out);
    let header: Vec<String> = peers.iter().map(|p| format!("kastellan/{p}")).collect();
    let _ = writeln!(out, "| size | layout | figure | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|---|---|{}", "---:|".repeat(peers.len()));
    for &key in keys {
        for figure in figures {
            let k_rounds = per_round(
                samples,
                Client::Kastellan,
                key,
                figure.phases,
                figure.per_run,
            );
            let k = (figure.median)(samples, Client::Kastellan, key);
            let cells: Vec<String> = peers
                .iter()
                .map(|&peer| {
                    if figure.cpu && whole_process_cpu(samples, peer, key, figure.phases) {
                        return "n/a*".to_string();
                    }
                    let p_rounds = per_round(samples, peer, key, figure.phases, figure.per_run);
                    ratio_cell(k, (figure.median)(samples, peer, key), &k_rounds, &p_rounds)
                })
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                size_label(key.size),
                layout_label(key.partitions),
                figure.name,
                cells.join(" | ")
            );
        }
    }
}

fn failure_notes(
    out: &mut String,
    samples: &[Sample],
    clients: &[Client],
    keys: &[Key],
    phases: &[Phase],
) {
    let mut notes = Vec::new();
    for &key in keys {
        for &client in clients {
            for &phase in phases {
                let figures = phase_figures(samples, client, key, phase);
                if figures.failed > 0 && figures.failed < figures.runs {
                    notes.push(format!(
                        "Note: {client} {} on {}, {} failed in {} of {} rounds; its figures are medians of the other rounds.",
                        phase.id(),
                        size_label(key.size),
                        layout_label(key.partitions),
                        figures.failed,
                        figures.runs
                    ));
                }
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out);
        for note in notes {
            let _ = writeln!(out, "{note}");
        }
    }
}

fn whole_process_note(out: &mut String, samples: &[Sample], phases: &[Phase]) {
    if samples
        .iter()
        .filter(|s| phases.contains(&s.phase))
        .any(|s| matches!(s.outcome.cpu_ns(), Some((_, true))))
    {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "`*`: CPU of the whole process (JVM start-up, class loading and JIT included), from `wait4`; the Java tools cannot measure their own timed stretch, so there is no CPU ratio against them (`n/a*`)."
        );
    }
}

/// The produce and read section: medians per client, ratios, every run.
pub fn render(samples: &[Sample], clients: &[Client], keys: &[Key]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Produce and read");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| client | size | layout | produce rec/s | produce MiB/s | produce CPU s/M rec | read rec/s | read MiB/s | read CPU s/M rec | peak RSS (MiB) |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for &key in keys {
        for &client in clients {
            let produce = phase_figures(samples, client, key, Phase::Produce);
            let read = phase_figures(samples, client, key, Phase::Read);
            let [produce_records, produce_mib] = rate_cells(&produce.rate);
            let [read_records, read_mib] = rate_cells(&read.rate);
            let _ = writeln!(
                out,
                "| {client} | {} | {} | {produce_records} | {produce_mib} | {} | {read_records} | {read_mib} | {} | {} |",
                size_label(key.size),
                layout_label(key.partitions),
                cpu_cell(produce.cpu),
                cpu_cell(read.cpu),
                mib_cell(peak_rss(samples, client, key, &[Phase::Produce, Phase::Read])),
            );
        }
    }
    failure_notes(
        &mut out,
        samples,
        clients,
        keys,
        &[Phase::Produce, Phase::Read],
    );
    whole_process_note(&mut out, samples, &[Phase::Produce, Phase::Read]);

    let _ = writeln!(out);
    let _ = writeln!(out, "### Produce and read ratios");
    let _ = writeln!(out);
    render_ratios(&mut out, samples, clients, keys, &PRODUCE_READ_FIGURES);

    let _ = writeln!(out);
    let _ = writeln!(out, "### Produce and read runs");
    let _ = writeln!(out);
    render_runs(&mut out, samples, &[Phase::Produce, Phase::Read]);
    out
}

/// The group protocol each client speaks in the group phase.
pub fn group_protocol(client: Client) -> &'static str {
    match client {
        Client::Confluent => "consumer (KIP-848)",
        Client::Kastellan | Client::KastellanRing | Client::Rdkafka => "classic",
        Client::Franz => "classic (cooperative-sticky)",
        Client::Java => "classic (ConsumerPerformance)",
    }
}

/// The group-consume section: medians per client, ratios, and every run.
pub fn render_group(samples: &[Sample], clients: &[Client], keys: &[Key]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Group consume");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "One member of a fresh consumer group reads the whole topic from the earliest offset, with a handler that only counts; timed from the subscribe call (kastellan: `run`) to the last record handed to the application."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| client | size | layout | group protocol | rec/s | MiB/s | CPU s/M rec | peak RSS (MiB) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---:|---:|---:|---:|");
    for &key in keys {
        for &client in clients {
            let figures = phase_figures(samples, client, key, Phase::Group);
            if figures.runs == 0 {
                continue;
            }
            let [records, mib] = rate_cells(&figures.rate);
            let _ = writeln!(
                out,
                "| {client} | {} | {} | {} | {records} | {mib} | {} | {} |",
                size_label(key.size),
                layout_label(key.partitions),
                group_protocol(client),
                cpu_cell(figures.cpu),
                mib_cell(peak_rss(samples, client, key, &[Phase::Group])),
            );
        }
    }
    failure_notes(&mut out, samples, clients, keys, &[Phase::Group]);
    whole_process_note(&mut out, samples, &[Phase::Group]);

    let _ = writeln!(out);
    let _ = writeln!(out, "### Group consume ratios");
    let _ = writeln!(out);
    render_ratios(&mut out, samples, clients, keys, &GROUP_FIGURES);

    let _ = writeln!(out);
    let _ = writeln!(out, "### Group consume runs");
    let _ = writeln!(out);
    render_runs(&mut out, samples, &[Phase::Group]);
    out
}

fn render_runs(out: &mut String, samples: &[Sample], phases: &[Phase]) {
    let _ = writeln!(
        out,
        "| round | client | size | layout | phase | timed s | call s | rec/s | MiB/s | CPU s | RSS (MiB) | outcome |"
    );
    let _ = writeln!(
        out,
        "|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"
    );
    for sample in samples.iter().filter(|s| phases.contains(&s.phase)) {
        let outcome = &sample.outcome;
        let (timed, call, records, mib, result) = run_cells(outcome);
        let cpu = outcome
            .result
            .as_ref()
            .ok()
            .and(outcome.cpu_ns())
            .map_or_else(
                || "n/a".to_string(),
                |(ns, whole)| format!("{:.3}{}", ns as f64 / 1e9, if whole { "*" } else { "" }),
            );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {timed} | {call} | {records} | {mib} | {cpu} | {} | {result} |",
            sample.round + 1,
            sample.client,
            size_label(sample.size),
            layout_label(sample.partitions),
            sample.phase.id(),
            mib_cell(outcome.max_rss_kib.map(|kib| kib as f64 / 1024.0)),
        );
    }
}

/// The timed, call, rec/s, MiB/s and outcome cells of one run's row.
fn run_cells(outcome: &PhaseOutcome) -> (String, String, String, String, String) {
    let na = || "n/a".to_string();
    match (&outcome.result, rate(outcome)) {
        (Ok(report), Some(rate)) => (
            format!("{:.3}", report.work_ns as f64 / 1e9),
            format!("{:.3}", report.call_ns as f64 / 1e9),
            grouped(rate.records_per_sec),
            format!("{:.1}", rate.mib_per_sec),
            "ok".to_string(),
        ),
        (Ok(_), None) => (
            "0".to_string(),
            "0".to_string(),
            na(),
            na(),
            "no time measured".to_string(),
        ),
        (Err(error), _) => (
            na(),
            na(),
            na(),
            na(),
            format!("error: {}", cell_text(error)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::PhaseReport;

    fn ok(work_secs: f64, rss_kib: u64, cpu_secs: f64) -> PhaseOutcome {
        PhaseOutcome {
            result: Ok(PhaseReport {
                records: 1000,
                bytes: 1000 * 1024,
                work_ns: (work_secs * 1e9) as u128,
                call_ns: (work_secs * 1e9) as u128 + 1,
                hwm_kib: rss_kib,
                cpu_ns: Some((cpu_secs * 1e9) as u64),
                conns: None,
                status_conns: None,
            }),
            max_rss_kib: Some(rss_kib),
            process_cpu_ns: Some(10_000_000_000),
        }
    }

    fn sample(round: usize, client: Client, phase: Phase, outcome: PhaseOutcome) -> Sample {
        Sample {
            round,
            client,
            size: 1024,
            partitions: 1,
            phase,
            outcome,
        }
    }

    const KEY: Key = Key {
        size: 1024,
        partitions: 1,
    };

    #[test]
    fn grouping_and_median() {
        assert_eq!(grouped(1234567.4), "1,234,567");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1000.0), "1,000");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(size_label(100), "100 B");
        assert_eq!(size_label(1024), "1 KiB");
    }

    #[test]
    fn errored_client_reads_as_error_and_ratios_as_na() {
        let samples = vec![
            sample(
                0,
                Client::Kastellan,
                Phase::Produce,
                PhaseOutcome::failed("kastellan client not wired yet"),
            ),
            sample(0, Client::Rdkafka, Phase::Produce, ok(1.0, 2048, 0.5)),
            sample(0, Client::Rdkafka, Phase::Read, ok(0.5, 4096, 0.25)),
        ];
        let clients = [Client::Kastellan, Client::Rdkafka];
        let figures = phase_figures(&samples, Client::Rdkafka, KEY, Phase::Read);
        assert!((figures.rate.unwrap().records_per_sec - 2000.0).abs() < 1e-6);
        assert_eq!(figures.cpu, Some((250.0, false)));
        let text = render(&samples, &clients, &[KEY]);
        assert!(
            text.contains("| kastellan | 1 KiB | 1 partition | error: kastellan client not wired yet | n/a | n/a | not run |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| rdkafka | 1 KiB | 1 partition | 1,000 | 1.0 | 500 | 2,000 | 2.0 | 250 | 4.0 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| 1 KiB | 1 partition | produce rec/s | n/a |"),
            "{text}"
        );
    }

    #[test]
    fn ratios_have_a_spread_over_rounds() {
        let samples = vec![
            sample(0, Client::Kastellan, Phase::Group, ok(0.5, 8192, 0.1)),
            sample(1, Client::Kastellan, Phase::Group, ok(0.25, 8192, 0.1)),
            sample(0, Client::Franz, Phase::Group, ok(1.0, 4096, 0.2)),
            sample(1, Client::Franz, Phase::Group, ok(1.0, 4096, 0.2)),
            sample(
                0,
                Client::Confluent,
                Phase::Group,
                PhaseOutcome::failed("no group"),
            ),
        ];
        let clients = [Client::Kastellan, Client::Franz, Client::Confluent];
        let text = render_group(&samples, &clients, &[KEY]);
        assert!(
            text.contains(
                "| kastellan | 1 KiB | 1 partition | classic | 3,000 | 2.9 | 100 | 8.0 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| confluent-kafka | 1 KiB | 1 partition | consumer (KIP-848) | error: no group | n/a | n/a | n/a |"),
            "{text}"
        );
        assert!(
            text.contains("| 1 KiB | 1 partition | rec/s | 3.00 (2.00–4.00) | n/a |"),
            "{text}"
        );
        assert!(
            text.contains("| 1 KiB | 1 partition | CPU s/M rec | 0.50 (0.50–0.50) | n/a |"),
            "{text}"
        );
    }

    #[test]
    fn whole_process_cpu_is_marked() {
        let mut java = ok(1.0, 4096, 0.0);
        if let Ok(report) = java.result.as_mut() {
            report.cpu_ns = None;
        }
        let samples = vec![sample(0, Client::Java, Phase::Produce, java)];
        let text = render(&samples, &[Client::Java], &[KEY]);
        assert!(text.contains("| 10000* |"), "{text}");
        assert!(text.contains("`*`: CPU of the whole process"), "{text}");
    }
}
