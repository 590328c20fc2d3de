//! One member of the rebalance phase's consumer group, and the events every
//! member reports.
//!
//! A Rust member runs in a process of its own (`peers member ...`) and
//! writes one line per event to stdout:
//!
//! ```text
//! PEERS_EVENT start <unix us>
//! PEERS_EVENT assigned <unix us> <partitions, comma-separated, or ->
//! PEERS_EVENT revoked <unix us> <partitions still owned, or ->
//! PEERS_EVENT consumed <unix us> <partition> <produced at, unix us, or ->
//! ```
//!
//! It stops gracefully (leaving the group) when its stdin closes. The Java
//! member is Kafka's own `VerifiableConsumer`, whose JSON events are read
//! into the same [`Event`]s by [`parse_java`].

use std::fmt;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use crate::workload;
use crate::{kastellan_client, rdkafka_client};

pub const EVENT_TAG: &str = "PEERS_EVENT";
pub const ERROR_TAG: &str = "PEERS_ERROR";

/// Member settings, the same for every client where it can be set.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// The members compared in the rebalance phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberKind {
    KastellanEager,
    KastellanCooperative,
    Rdkafka,
    Java,
}

impl MemberKind {
    pub const ALL: [MemberKind; 4] = [
        MemberKind::KastellanEager,
        MemberKind::KastellanCooperative,
        MemberKind::Rdkafka,
        MemberKind::Java,
    ];

    pub fn id(self) -> &'static str {
        match self {
            MemberKind::KastellanEager => "kastellan-eager",
            MemberKind::KastellanCooperative => "kastellan-cooperative",
            MemberKind::Rdkafka => "rdkafka",
            MemberKind::Java => "java",
        }
    }

    /// Client name in the report.
    pub fn client(self) -> &'static str {
        match self {
            MemberKind::KastellanEager | MemberKind::KastellanCooperative => "kastellan",
            MemberKind::Rdkafka => "rdkafka",
            MemberKind::Java => "Java (VerifiableConsumer)",
        }
    }

    /// Protocol and assignor in the report.
    pub fn protocol(self) -> &'static str {
        match self {
            MemberKind::KastellanEager => "classic, eager, `range`",
            MemberKind::KastellanCooperative => "classic, cooperative, `cooperative-sticky`",
            MemberKind::Rdkafka => "classic, eager, `range`",
            MemberKind::Java => "classic, eager, `RangeAssignor`",
        }
    }
}

impl fmt::Display for MemberKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for MemberKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kastellan-eager" | "eager" => Ok(MemberKind::KastellanEager),
            "kastellan-cooperative" | "kastellan-coop" | "cooperative" => {
                Ok(MemberKind::KastellanCooperative)
            }
            "rdkafka" | "librdkafka" => Ok(MemberKind::Rdkafka),
            "java" => Ok(MemberKind::Java),
            other => anyhow::bail!(
                "unknown member {other:?} (known: kastellan-eager, kastellan-cooperative, rdkafka, java)"
            ),
        }
    }
}

/// Arguments of `peers member`.
#[derive(Debug, Clone)]
pub struct MemberArgs {
    pub kind: MemberKind,
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
}

/// Writes events to stdout, one line each, stamped while stdout is held so
/// lines are in time order.
#[derive(Debug, Default)]
pub struct Events;

fn partition_list(partitions: &[i32]) -> String {
    if partitions.is_empty() {
        return "-".to_string();
    }
    partitions
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Events {
    fn emit(&self, kind: &str, rest: fmt::Arguments<'_>) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{EVENT_TAG} {kind} {} {rest}", workload::unix_micros());
        let _ = out.flush();
    }

    /// The member's consumer is built; it is about to join.
    pub fn start(&self) {
        self.emit("start", format_args!(""));
    }

    /// A new assignment (all partitions owned after it).
    pub fn assigned(&self, partitions: &[i32]) {
        self.emit("assigned", format_args!("{}", partition_list(partitions)));
    }

    /// Partitions given up without a new assignment yet (what is left).
    pub fn revoked(&self, remaining: &[i32]) {
        self.emit("revoked", format_args!("{}", partition_list(remaining)));
    }

    /// A record reached the application; `value` is the trickle producer's
    /// timestamp.
    pub fn consumed(&self, partition: i32, value: Option<&[u8]>) {
        match value.and_then(produced_at) {
            Some(at) => self.emit("consumed", format_args!("{partition} {at}")),
            None => self.emit("consumed", format_args!("{partition} -")),
        }
    }
}

/// The production time carried in a trickle record's value.
pub fn produced_at(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Calls `stop` once stdin reaches end-of-file (the parent closed it or
/// went away).
pub fn on_stdin_closed(stop: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        stop();
    });
}

/// `peers member ...`: runs one member until its stdin closes.
pub fn run(args: MemberArgs) -> ExitCode {
    let runtime = match crate::child::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(async {
        match args.kind {
            MemberKind::KastellanEager | MemberKind::KastellanCooperative => {
                kastellan_client::member(&args).await
            }
            MemberKind::Rdkafka => rdkafka_client::member(&args).await,
            MemberKind::Java => Err(anyhow::anyhow!(
                "the Java member runs VerifiableConsumer, not this binary"
            )),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = format!("{error:#}").replace('\n', " ");
            println!("{ERROR_TAG} {message}");
            ExitCode::from(1)
        }
    }
}

/// What a member reported, with the time it happened (unix microseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: i64,
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Start,
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
    Consumed {
        partition: i32,
        produced: Option<i64>,
    },
    Error(String),
}

fn parse_list(text: &str) -> Option<Vec<i32>> {
    if text == "-" {
        return Some(Vec::new());
    }
    text.split(',').map(|p| p.parse().ok()).collect()
}

/// Reads a line written by [`Events`] (or an error line).
pub fn parse_line(line: &str) -> Option<Event> {
    if let Some(message) = line.strip_prefix(ERROR_TAG) {
        return Some(Event {
            at: workload::unix_micros(),
            what: What::Error(message.trim().to_string()),
        });
    }
    let mut fields = line.strip_prefix(EVENT_TAG)?.split_whitespace();
    let kind = fields.next()?;
    let at = fields.next()?.parse().ok()?;
    let what = match kind {
        "start" => What::Start,
        "assigned" => What::Assigned(parse_list(fields.next()?)?),
        "revoked" => What::Revoked(parse_list(fields.next()?)?),
        "consumed" => What::Consumed {
            partition: fields.next()?.parse().ok()?,
            produced: fields.next()?.parse().ok(),
        },
        _ => return None,
    };
    Some(Event { at, what })
}

fn json_partitions(value: &serde_json::Value, topic: &str) -> Vec<i32> {
    let mut partitions: Vec<i32> = value["partitions"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|p| p["topic"].as_str() == Some(topic))
                .filter_map(|p| p["partition"].as_i64())
                .filter_map(|p| i32::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default();
    partitions.sort_unstable();
    partitions
}

/// Reads one stdout line of `VerifiableConsumer --verbose`: its
/// `startup_complete`, `partitions_assigned`, `partitions_revoked` and
/// `record_data` events (timestamps in milliseconds).
///
/// The Java client reports revocations with the partitions given up, and
/// an eager rebalance gives up everything, so a revocation is read as
/// "nothing left".
pub fn parse_java(line: &str, topic: &str) -> Option<Event> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let at = value["timestamp"].as_i64()? * 1000;
    let what = match value["name"].as_str()? {
        "startup_complete" => What::Start,
        "partitions_assigned" => What::Assigned(json_partitions(&value, topic)),
        "partitions_revoked" => What::Revoked(Vec::new()),
        "record_data" => What::Consumed {
            partition: i32::try_from(value["partition"].as_i64()?).ok()?,
            produced: value["value"]
                .as_str()
                .and_then(|v| produced_at(v.as_bytes())),
        },
        _ => return None,
    };
    Some(Event { at, what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_parse() {
        assert_eq!(
            parse_line("PEERS_EVENT assigned 17 0,1,2"),
            Some(Event {
                at: 17,
                what: What::Assigned(vec![0, 1, 2])
            })
        );
        assert_eq!(
            parse_line("PEERS_EVENT revoked 18 -"),
            Some(Event {
                at: 18,
                what: What::Revoked(Vec::new())
            })
        );
        assert_eq!(
            parse_line("PEERS_EVENT consumed 19 4 12"),
            Some(Event {
                at: 19,
                what: What::Consumed {
                    partition: 4,
                    produced: Some(12)
                }
            })
        );
        assert_eq!(
            parse_line("PEERS_EVENT consumed 19 4 -").map(|e| e.what),
            Some(What::Consumed {
                partition: 4,
                produced: None
            })
        );
        assert_eq!(parse_line("something"), None);
        assert!(matches!(
            parse_line("PEERS_ERROR broken").map(|e| e.what),
            Some(What::Error(m)) if m == "broken"
        ));
    }

    #[test]
    fn java_events_parse() {
        let assigned = r#"{"timestamp":1000,"name":"partitions_assigned","partitions":[{"topic":"t","partition":3},{"topic":"t","partition":1},{"topic":"x","partition":0}]}"#;
        assert_eq!(
            parse_java(assigned, "t"),
            Some(Event {
                at: 1_000_000,
                what: What::Assigned(vec![1, 3])
            })
        );
        let record = r#"{"timestamp":2,"name":"record_data","key":null,"value":"1500","topic":"t","partition":0,"offset":0}"#;
        assert_eq!(
            parse_java(record, "t").map(|e| e.what),
            Some(What::Consumed {
                partition: 0,
                produced: Some(1500)
            })
        );
        let start = r#"{"timestamp":3,"name":"startup_complete"}"#;
        assert_eq!(parse_java(start, "t").map(|e| e.what), Some(What::Start));
        let other = r#"{"timestamp":3,"name":"records_consumed","count":1}"#;
        assert_eq!(parse_java(other, "t"), None);
    }
}
