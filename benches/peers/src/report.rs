//! Aggregation over rounds and the Markdown report.

use std::fmt::Write as _;

use crate::clients::Client;
use crate::spawn::PhaseOutcome;

pub const MIB: f64 = 1024.0 * 1024.0;

/// What a read cell says when the read phase was not run.
const NOT_RUN: &str = "not run";

/// One client on one topic layout in one round.
#[derive(Debug, Clone)]
pub struct Run {
    pub round: usize,
    pub client: Client,
    pub partitions: i32,
    pub produce: PhaseOutcome,
    /// `None` when the read was skipped because producing failed.
    pub read: Option<PhaseOutcome>,
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

/// A phase's figure over all rounds: the median rate, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    Rate(Rate),
    Error(String),
}

impl Figure {
    fn rate(&self) -> Option<Rate> {
        match self {
            Figure::Rate(rate) => Some(*rate),
            Figure::Error(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub client: Client,
    pub partitions: i32,
    pub produce: Figure,
    pub read: Figure,
    pub peak_rss_mib: Option<f64>,
    /// Runs with a failed phase, out of `runs`.
    pub failed_runs: usize,
    pub runs: usize,
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

fn figure<'a>(outcomes: impl Iterator<Item = Option<&'a PhaseOutcome>> + Clone) -> Figure {
    let rates: Vec<Rate> = outcomes.clone().flatten().filter_map(rate).collect();
    if let (Some(records_per_sec), Some(mib_per_sec)) = (
        median(rates.iter().map(|r| r.records_per_sec).collect()),
        median(rates.iter().map(|r| r.mib_per_sec).collect()),
    ) {
        return Figure::Rate(Rate {
            records_per_sec,
            mib_per_sec,
        });
    }
    let error = outcomes
        .map(|o| match o {
            None => NOT_RUN.to_string(),
            Some(o) => o.result.as_ref().err().cloned().unwrap_or_default(),
        })
        .find(|e| !e.is_empty())
        .unwrap_or_else(|| "no run".to_string());
    Figure::Error(error)
}

pub fn summarize(runs: &[Run], clients: &[Client], layouts: &[i32]) -> Vec<Summary> {
    let mut summaries = Vec::new();
    for &partitions in layouts {
        for &client in clients {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| r.client == client && r.partitions == partitions)
                .collect();
            let produce = figure(mine.iter().map(|r| Some(&r.produce)));
            let read = figure(mine.iter().map(|r| r.read.as_ref()));
            let peak_rss_mib = mine
                .iter()
                .flat_map(|r| {
                    std::iter::once(Some(&r.produce)).chain(std::iter::once(r.read.as_ref()))
                })
                .flatten()
                .filter(|o| o.result.is_ok())
                .filter_map(|o| o.max_rss_kib)
                .max()
                .map(|kib| kib as f64 / 1024.0);
            let failed_runs = mine
                .iter()
                .filter(|r| {
                    r.produce.result.is_err()
                        || r.read.as_ref().is_none_or(|read| read.result.is_err())
                })
                .count();
            summaries.push(Summary {
                client,
                partitions,
                produce,
                read,
                peak_rss_mib,
                failed_runs,
                runs: mine.len(),
            });
        }
    }
    summaries
}

pub fn layout_label(partitions: i32) -> String {
    if partitions == 1 {
        "1 partition".to_string()
    } else {
        format!("{partitions} partitions")
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

fn figure_cells(figure: &Figure) -> [String; 2] {
    match figure {
        Figure::Rate(rate) => [
            grouped(rate.records_per_sec),
            format!("{:.1}", rate.mib_per_sec),
        ],
        Figure::Error(error) if error == NOT_RUN => [NOT_RUN.to_string(), "n/a".to_string()],
        Figure::Error(error) => [format!("error: {}", cell_text(error)), "n/a".to_string()],
    }
}

/// The figures compared in the ratios section, in column order.
const FIGURES: [&str; 5] = [
    "produce rec/s",
    "produce MiB/s",
    "read rec/s",
    "read MiB/s",
    "peak RSS (MiB)",
];

fn figure_values(summary: &Summary) -> [Option<f64>; 5] {
    let produce = summary.produce.rate();
    let read = summary.read.rate();
    [
        produce.map(|r| r.records_per_sec),
        produce.map(|r| r.mib_per_sec),
        read.map(|r| r.records_per_sec),
        read.map(|r| r.mib_per_sec),
        summary.peak_rss_mib,
    ]
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> String {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.2}", n / d),
        _ => "n/a".to_string(),
    }
}

pub fn render(summaries: &[Summary], runs: &[Run], layouts: &[i32]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Results");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| client | layout | produce rec/s | produce MiB/s | read rec/s | read MiB/s | peak RSS (MiB) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for summary in summaries {
        let [produce_records, produce_mib] = figure_cells(&summary.produce);
        let [read_records, read_mib] = figure_cells(&summary.read);
        let rss = summary
            .peak_rss_mib
            .map_or_else(|| "n/a".to_string(), |mib| format!("{mib:.1}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            summary.client,
            layout_label(summary.partitions),
            produce_records,
            produce_mib,
            read_records,
            read_mib,
            rss
        );
    }
    let partial: Vec<&Summary> = summaries
        .iter()
        .filter(|s| s.failed_runs > 0 && s.failed_runs < s.runs)
        .collect();
    if !partial.is_empty() {
        let _ = writeln!(out);
        for summary in partial {
            let _ = writeln!(
                out,
                "Note: {} on {} failed in {} of {} rounds; its figures are medians of the other rounds.",
                summary.client,
                layout_label(summary.partitions),
                summary.failed_runs,
                summary.runs
            );
        }
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "## Ratios");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Above 1 means kastellan is faster; for peak RSS, above 1 means kastellan uses more memory."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| layout | figure | kastellan/rdkafka | kastellan/confluent-kafka |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|");
    let find = |client: Client, partitions: i32| {
        summaries
            .iter()
            .find(|s| s.client == client && s.partitions == partitions)
            .map(figure_values)
            .unwrap_or([None; 5])
    };
    for &partitions in layouts {
        let kastellan = find(Client::Kastellan, partitions);
        let rdkafka = find(Client::Rdkafka, partitions);
        let confluent = find(Client::Confluent, partitions);
        for (index, name) in FIGURES.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                layout_label(partitions),
                name,
                ratio(kastellan[index], rdkafka[index]),
                ratio(kastellan[index], confluent[index])
            );
        }
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "## Runs");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| round | client | layout | phase | timed s | call s | rec/s | MiB/s | RSS (MiB) | outcome |"
    );
    let _ = writeln!(out, "|---:|---|---|---|---:|---:|---:|---:|---:|---|");
    for run in runs {
        let phases = std::iter::once(("produce", Some(&run.produce)))
            .chain(std::iter::once(("read", run.read.as_ref())));
        for (phase, outcome) in phases {
            let Some(outcome) = outcome else { continue };
            let rss = outcome.max_rss_kib.map_or_else(
                || "n/a".to_string(),
                |kib| format!("{:.1}", kib as f64 / 1024.0),
            );
            let (timed, call, records, mib, result) = run_cells(outcome);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.round + 1,
                run.client,
                layout_label(run.partitions),
                phase,
                timed,
                call,
                records,
                mib,
                rss,
                result
            );
        }
    }
    out
}

/// One client's group-consume process in one round.
#[derive(Debug, Clone)]
pub struct GroupRun {
    pub round: usize,
    pub client: Client,
    pub outcome: PhaseOutcome,
}

fn rss_cell(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "n/a".to_string(),
        |kib| format!("{:.1}", kib as f64 / 1024.0),
    )
}

/// The group-consume section: medians per client, ratios, and every run.
pub fn render_group(runs: &[GroupRun], clients: &[Client], partitions: i32) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Group consume");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "One member of a fresh consumer group reads the whole topic ({}) from the earliest offset, with a handler that only counts; timed from the subscribe call (kastellan: `run`) to the last record handed to the application.",
        layout_label(partitions)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| client | group protocol | rec/s | MiB/s | peak RSS (MiB) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|");
    let mut values: Vec<(Client, [Option<f64>; 3])> = Vec::new();
    let mut notes = Vec::new();
    for &client in clients {
        let mine: Vec<&GroupRun> = runs.iter().filter(|r| r.client == client).collect();
        if mine.is_empty() {
            continue;
        }
        let figure = figure(mine.iter().map(|r| Some(&r.outcome)));
        let rss = mine
            .iter()
            .filter(|r| r.outcome.result.is_ok())
            .filter_map(|r| r.outcome.max_rss_kib)
            .max();
        let [records, mib] = figure_cells(&figure);
        let protocol = match client {
            Client::Confluent => "consumer (KIP-848)",
            Client::Kastellan | Client::Rdkafka => "classic",
        };
        let _ = writeln!(
            out,
            "| {client} | {protocol} | {records} | {mib} | {} |",
            rss_cell(rss)
        );
        let rate = figure.rate();
        values.push((
            client,
            [
                rate.map(|r| r.records_per_sec),
                rate.map(|r| r.mib_per_sec),
                rss.map(|kib| kib as f64 / 1024.0),
            ],
        ));
        let failed = mine.iter().filter(|r| r.outcome.result.is_err()).count();
        if failed > 0 && failed < mine.len() {
            notes.push(format!(
                "Note: {client} failed in {failed} of {} rounds; its figures are medians of the other rounds.",
                mine.len()
            ));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out);
        for note in notes {
            let _ = writeln!(out, "{note}");
        }
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "### Group consume ratios");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Above 1 means kastellan is faster; for peak RSS, above 1 means kastellan uses more memory."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| figure | kastellan/rdkafka | kastellan/confluent-kafka |"
    );
    let _ = writeln!(out, "|---|---:|---:|");
    let find = |client: Client| {
        values
            .iter()
            .find(|(c, _)| *c == client)
            .map(|(_, v)| *v)
            .unwrap_or([None; 3])
    };
    let kastellan = find(Client::Kastellan);
    let rdkafka = find(Client::Rdkafka);
    let confluent = find(Client::Confluent);
    for (index, name) in ["rec/s", "MiB/s", "peak RSS (MiB)"].iter().enumerate() {
        let _ = writeln!(
            out,
            "| {name} | {} | {} |",
            ratio(kastellan[index], rdkafka[index]),
            ratio(kastellan[index], confluent[index])
        );
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "### Group consume runs");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| round | client | timed s | call s | rec/s | MiB/s | RSS (MiB) | outcome |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---|");
    for run in runs {
        let outcome = &run.outcome;
        let (timed, call, records, mib, result) = run_cells(outcome);
        let _ = writeln!(
            out,
            "| {} | {} | {timed} | {call} | {records} | {mib} | {} | {result} |",
            run.round + 1,
            run.client,
            rss_cell(outcome.max_rss_kib)
        );
    }
    out
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

    fn ok(work_secs: f64, rss_kib: u64) -> PhaseOutcome {
        PhaseOutcome {
            result: Ok(PhaseReport {
                records: 1000,
                bytes: 1000 * 1024,
                work_ns: (work_secs * 1e9) as u128,
                call_ns: (work_secs * 1e9) as u128 + 1,
                hwm_kib: rss_kib,
            }),
            max_rss_kib: Some(rss_kib),
        }
    }

    #[test]
    fn grouping_and_median() {
        assert_eq!(grouped(1234567.4), "1,234,567");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1000.0), "1,000");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn errored_client_reads_as_error_and_ratios_as_na() {
        let runs = vec![
            Run {
                round: 0,
                client: Client::Kastellan,
                partitions: 1,
                produce: PhaseOutcome::failed("kastellan client not wired yet"),
                read: None,
            },
            Run {
                round: 0,
                client: Client::Rdkafka,
                partitions: 1,
                produce: ok(1.0, 2048),
                read: Some(ok(0.5, 4096)),
            },
        ];
        let clients = [Client::Kastellan, Client::Rdkafka];
        let summaries = summarize(&runs, &clients, &[1]);
        assert_eq!(
            summaries[0].produce,
            Figure::Error("kastellan client not wired yet".to_string())
        );
        assert_eq!(summaries[1].peak_rss_mib, Some(4.0));
        let rate = summaries[1].read.rate().unwrap();
        assert!((rate.records_per_sec - 2000.0).abs() < 1e-6);
        let text = render(&summaries, &runs, &[1]);
        assert!(text
            .contains("| kastellan | 1 partition | error: kastellan client not wired yet | n/a |"));
        assert!(text.contains("| 1 partition | produce rec/s | n/a | n/a |"));
    }

    #[test]
    fn group_section_has_medians_ratios_and_errors() {
        let runs = vec![
            GroupRun {
                round: 0,
                client: Client::Kastellan,
                outcome: ok(0.5, 8192),
            },
            GroupRun {
                round: 0,
                client: Client::Rdkafka,
                outcome: ok(1.0, 4096),
            },
            GroupRun {
                round: 0,
                client: Client::Confluent,
                outcome: PhaseOutcome::failed("no group"),
            },
        ];
        let text = render_group(&runs, &Client::ALL, 6);
        assert!(
            text.contains("| kastellan | classic | 2,000 | 2.0 | 8.0 |"),
            "{text}"
        );
        assert!(
            text.contains("| confluent-kafka | consumer (KIP-848) | error: no group | n/a | n/a |"),
            "{text}"
        );
        assert!(text.contains("| rec/s | 2.00 | n/a |"), "{text}");
        assert!(text.contains("| peak RSS (MiB) | 2.00 | n/a |"), "{text}");
    }
}
