//! Rebalance latency: how long a consumer group takes to take in a second
//! member while records keep arriving.
//!
//! One trial, for one kind of member:
//!
//! 1. a fresh 6-partition topic and a fresh group id;
//! 2. a trickle producer in this process (rdkafka) writes records
//!    round-robin over the partitions, each value being its production time
//!    (unix microseconds, as decimal text);
//! 3. member 1 starts and is left alone until it owns a non-empty
//!    assignment, has consumed a record produced after it started, and its
//!    assignment has not changed for [`STEADY`];
//! 4. after a further delay (see [`start_delay`]), member 2 starts in the
//!    same group. `T2` is member 2's start event:
//!    its consumer is built and about to subscribe (for the Java member,
//!    `VerifiableConsumer`'s `startup_complete`, printed right before it
//!    subscribes), so process and JVM start-up are left out;
//! 5. the trial ends once both members are ready and no assignment has
//!    changed for [`SETTLE`].
//!
//! A member is *ready* at the first record it consumes that was produced
//! after `T2` and that comes after its last assignment event of the trial
//! (which must be a non-empty assignment). The rebalance latency is the
//! later of the two members' ready times, minus `T2`.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::admin::Admin;
use crate::member::{self, Event, MemberKind, What};
use crate::report;
use crate::testcontainers;
use crate::workload;

/// Partitions of every trial's topic.
pub const PARTITIONS: i32 = 6;
/// Member 1's assignment must have held this long before member 2 starts.
pub const STEADY: Duration = Duration::from_secs(1);
/// After both members are ready, no assignment may change for this long.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Longest wait for any one step of a trial.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a member gets to leave the group before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct RebalanceArgs {
    pub members: Vec<MemberKind>,
    pub trials: usize,
    /// Records per second of the trickle producer.
    pub rate: u32,
}

/// The figures of one trial, in microseconds from `T2`.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub latency: i64,
    /// Member 1's first assignment change after `T2`: when it had learnt of
    /// the rebalance (at a heartbeat) and acted on it.
    pub member1_reacted: i64,
    pub member2_assigned: i64,
    pub member2_ready: i64,
    pub member1_ready: i64,
    /// Longest time member 1 consumed nothing between `T2` and the end.
    pub member1_gap: i64,
    /// Assignments member 1 received after `T2`.
    pub member1_assignments: usize,
    pub member1_final: Vec<i32>,
    pub member2_final: Vec<i32>,
}

#[derive(Debug, Clone)]
pub struct Trial {
    pub trial: usize,
    pub kind: MemberKind,
    /// How long after member 1 was steady member 2 was started.
    pub delay: Duration,
    pub result: Result<Figures, String>,
}

/// When member 2 starts, after member 1 is steady, in trial `trial` of
/// `trials`.
///
/// Member 1 learns of a join at its next heartbeat, and its heartbeats keep
/// a fixed phase from its own join, as does the moment it becomes steady: a
/// fixed start time would meet the same point of the heartbeat cycle in
/// every trial (and a different one for each client). The delays spread the
/// trials evenly over one heartbeat interval, at `(trial + seed) / trials`
/// of it, `seed` in `[0, 1)` being drawn once per run; every member kind
/// gets the same delays.
pub fn start_delay(trial: usize, trials: usize, seed: f64) -> Duration {
    let fraction = ((trial as f64 + seed) / trials.max(1) as f64).min(1.0);
    member::HEARTBEAT_INTERVAL.mul_f64(fraction)
}

/// A number in `[0, 1)` from the clock.
fn seed() -> f64 {
    let mut x = workload::unix_micros() as u64 | 1;
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    (x >> 11) as f64 / (1u64 << 53) as f64
}

// ---------------------------------------------------------------------------
// Reading the timelines.

fn start_of(events: &[Event]) -> Option<i64> {
    events
        .iter()
        .find(|e| matches!(e.what, What::Start))
        .map(|e| e.at)
}

fn is_assignment_change(event: &Event) -> bool {
    matches!(event.what, What::Assigned(_) | What::Revoked(_))
}

fn last_change(events: &[Event]) -> Option<i64> {
    events
        .iter()
        .rev()
        .find(|e| is_assignment_change(e))
        .map(|e| e.at)
}

/// The assignment a member holds after its last change, if that change was
/// a non-empty assignment; and where it is in `events`.
fn current_assignment(events: &[Event]) -> Option<(usize, &[i32])> {
    let index = events.iter().rposition(is_assignment_change)?;
    match &events[index].what {
        What::Assigned(partitions) if !partitions.is_empty() => Some((index, partitions)),
        _ => None,
    }
}

/// When the member first consumed, after its last assignment, a record
/// produced after `since`.
pub fn ready_at(events: &[Event], since: i64) -> Option<i64> {
    let (index, _) = current_assignment(events)?;
    events[index + 1..]
        .iter()
        .find(|e| matches!(e.what, What::Consumed { produced: Some(at), .. } if at > since))
        .map(|e| e.at)
}

/// The figures of a finished trial.
pub fn analyse(member1: &[Event], member2: &[Event]) -> Result<Figures, String> {
    let t2 = start_of(member2).ok_or("member 2 never started")?;
    let ready1 = ready_at(member1, t2).ok_or("member 1 never became ready")?;
    let ready2 = ready_at(member2, t2).ok_or("member 2 never became ready")?;
    let done = ready1.max(ready2);
    let (assigned2, final2) = current_assignment(member2)
        .map(|(index, partitions)| (member2[index].at, partitions.to_vec()))
        .ok_or("member 2 holds no assignment")?;
    let final1 = current_assignment(member1)
        .map(|(_, partitions)| partitions.to_vec())
        .ok_or("member 1 holds no assignment")?;
    let mut all: Vec<i32> = final1.iter().chain(&final2).copied().collect();
    all.sort_unstable();
    if all != (0..PARTITIONS).collect::<Vec<_>>() {
        return Err(format!(
            "final assignments do not split the {PARTITIONS} partitions: member 1 {final1:?}, member 2 {final2:?}"
        ));
    }
    let mut gap = 0;
    let mut previous = t2;
    for at in member1
        .iter()
        .filter(|e| matches!(e.what, What::Consumed { .. }))
        .map(|e| e.at)
        .filter(|&at| at > t2 && at <= done)
        .chain(std::iter::once(done))
    {
        gap = gap.max(at - previous);
        previous = at;
    }
    let reacted = member1
        .iter()
        .find(|e| e.at >= t2 && is_assignment_change(e))
        .map(|e| e.at)
        .ok_or("member 1 never reacted to the rebalance")?;
    let member1_assignments = member1
        .iter()
        .filter(|e| e.at >= t2 && matches!(e.what, What::Assigned(_)))
        .count();
    Ok(Figures {
        latency: done - t2,
        member1_reacted: reacted - t2,
        member2_assigned: assigned2 - t2,
        member2_ready: ready2 - t2,
        member1_ready: ready1 - t2,
        member1_gap: gap,
        member1_assignments,
        member1_final: final1,
        member2_final: final2,
    })
}

// ---------------------------------------------------------------------------
// The trickle producer.

struct Trickle {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<u64>>,
}

impl Trickle {
    fn start(bootstrap: &str, topic: &str, rate: u32) -> anyhow::Result<Trickle> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()
            .context("creating the trickle producer")?;
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .context("fetching metadata for the trickle producer")?;
        let stop = Arc::new(AtomicBool::new(false));
        let topic = topic.to_string();
        let every = Duration::from_secs(1) / rate.max(1);
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut sent = 0u64;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let value = workload::unix_micros().to_string();
                    let partition = (sent % PARTITIONS as u64) as i32;
                    let record = BaseRecord::<[u8], str>::to(&topic)
                        .partition(partition)
                        .payload(&value);
                    if let Err((error, _)) = producer.send(record) {
                        return Err(anyhow!(error).context("trickle send"));
                    }
                    sent += 1;
                    producer.poll(Duration::ZERO);
                    next += every;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                }
                producer
                    .flush(Duration::from_secs(10))
                    .context("trickle flush")?;
                Ok(sent)
            })
        };
        Ok(Trickle { stop, thread })
    }

    fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("the trickle producer panicked"))?
    }
}

// ---------------------------------------------------------------------------
// Member processes.

enum Message {
    Event(usize, Event),
    Closed(usize),
}

struct Member {
    kind: MemberKind,
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

fn java_config_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "peers-verifiable-{}.properties",
        std::process::id()
    ))
}

fn member_command(
    kind: MemberKind,
    bootstrap: &str,
    topic: &str,
    group: &str,
) -> anyhow::Result<Command> {
    if kind == MemberKind::Java {
        let config = java_config_path();
        let mut file = std::fs::File::create(&config)
            .with_context(|| format!("writing {}", config.display()))?;
        writeln!(
            file,
            "heartbeat.interval.ms={}",
            member::HEARTBEAT_INTERVAL.as_millis()
        )?;
        let mut command = testcontainers::kafka_class_command(testcontainers::VERIFIABLE_CONSUMER)
            .map_err(|e| anyhow!("{e}"))?;
        command
            .args(["--bootstrap-server", bootstrap])
            .args(["--topic", topic])
            .args(["--group-id", group])
            .args(["--group-protocol", "classic"])
            .args(["--reset-policy", "earliest"])
            .args([
                "--session-timeout",
                &member::SESSION_TIMEOUT.as_millis().to_string(),
            ])
            .arg("--command-config")
            .arg(&config)
            .arg("--verbose");
        return Ok(command);
    }
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("member")
        .args(["--client", kind.id()])
        .args(["--bootstrap", bootstrap])
        .args(["--topic", topic])
        .args(["--group", group]);
    Ok(command)
}

impl Member {
    fn spawn(
        kind: MemberKind,
        index: usize,
        bootstrap: &str,
        topic: &str,
        group: &str,
        events: Sender<Message>,
    ) -> anyhow::Result<Member> {
        let mut command = member_command(kind, bootstrap, topic, group)?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting member {} ({kind})", index + 1))?;
        let stdout = child.stdout.take().context("member stdout")?;
        let topic = topic.to_string();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event = match kind {
                    MemberKind::Java => member::parse_java(&line, &topic),
                    _ => member::parse_line(&line),
                };
                if let Some(event) = event {
                    if events.send(Message::Event(index, event)).is_err() {
                        break;
                    }
                }
            }
            let _ = events.send(Message::Closed(index));
        });
        let stderr = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
                text
            })
        });
        Ok(Member {
            kind,
            stdin: child.stdin.take(),
            child,
            reader: Some(reader),
            stderr,
        })
    }

    /// Asks the member to leave the group and waits for it (killing it after
    /// [`STOP_GRACE`]). Returns the end of its stderr.
    fn stop(mut self) -> String {
        if self.kind == MemberKind::Java {
            // VerifiableConsumer closes its consumer on SIGTERM.
            // SAFETY: the pid is our own child, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    }
}

/// Collects events into `timelines` until `ready` returns something, a
/// member fails, or [`STEP_TIMEOUT`] passes.
fn wait_for<T>(
    what: &str,
    events: &Receiver<Message>,
    timelines: &mut [Vec<Event>; 2],
    mut ready: impl FnMut(&[Vec<Event>; 2], i64) -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(value) = ready(timelines, workload::unix_micros()) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {STEP_TIMEOUT:?} waiting for {what}"
            ));
        }
        match events.recv_timeout(Duration::from_millis(20)) {
            Ok(Message::Event(index, event)) => {
                if let What::Error(message) = &event.what {
                    return Err(format!("member {}: {message}", index + 1));
                }
                timelines[index].push(event);
            }
            Ok(Message::Closed(index)) => {
                return Err(format!(
                    "member {} exited while waiting for {what}",
                    index + 1
                ))
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err("no member left".to_string()),
        }
    }
}

fn quiet_since(events: &[Event], now: i64, quiet: Duration) -> bool {
    last_change(events).is_some_and(|at| now - at >= quiet.as_micros() as i64)
}

fn trial_blocking(
    bootstrap: &str,
    topic: &str,
    kind: MemberKind,
    rate: u32,
    delay: Duration,
) -> Result<Figures, String> {
    let trickle = Trickle::start(bootstrap, topic, rate).map_err(|e| format!("{e:#}"))?;
    let group = workload::fresh_group_id(&format!("rebalance-{}", kind.id()));
    let (sender, events) = mpsc::channel();
    let mut members: Vec<Member> = Vec::new();
    let mut timelines: [Vec<Event>; 2] = [Vec::new(), Vec::new()];
    let mut outcome = (|| {
        let first = Member::spawn(kind, 0, bootstrap, topic, &group, sender.clone())
            .map_err(|e| format!("{e:#}"))?;
        members.push(first);
        wait_for("member 1 to consume", &events, &mut timelines, |t, now| {
            let start = start_of(&t[0])?;
            ready_at(&t[0], start)?;
            quiet_since(&t[0], now, STEADY).then_some(())
        })?;
        let until = Instant::now() + delay;
        wait_for("the start of member 2", &events, &mut timelines, |_, _| {
            (Instant::now() >= until).then_some(())
        })?;
        let second = Member::spawn(kind, 1, bootstrap, topic, &group, sender.clone())
            .map_err(|e| format!("{e:#}"))?;
        members.push(second);
        wait_for(
            "both members to consume",
            &events,
            &mut timelines,
            |t, now| {
                let t2 = start_of(&t[1])?;
                ready_at(&t[0], t2)?;
                ready_at(&t[1], t2)?;
                let settled = quiet_since(&t[0], now, SETTLE) && quiet_since(&t[1], now, SETTLE);
                settled.then_some(())
            },
        )?;
        analyse(&timelines[0], &timelines[1])
    })();
    let mut notes = Vec::new();
    for (index, member) in members.into_iter().enumerate() {
        let stderr = member.stop();
        if outcome.is_err() && !stderr.is_empty() {
            notes.push(format!("member {} stderr: {stderr}", index + 1));
        }
    }
    if let Err(error) = trickle.stop() {
        notes.push(format!("{error:#}"));
    }
    if let Err(error) = &mut outcome {
        for note in notes {
            error.push_str("; ");
            error.push_str(&note);
        }
    }
    outcome
}

async fn run_trial(
    admin: &Admin,
    bootstrap: &str,
    kind: MemberKind,
    trial: usize,
    rate: u32,
    delay: Duration,
) -> Trial {
    let topic = format!(
        "peers-rebalance-{}-t{}-{}-{}",
        kind.id(),
        trial + 1,
        std::process::id(),
        workload::unix_micros() / 1000
    );
    let result = match admin.create_topic(&topic, PARTITIONS).await {
        Ok(()) => {
            let result = tokio::task::block_in_place(|| {
                trial_blocking(bootstrap, &topic, kind, rate, delay)
            });
            if let Err(error) = admin.delete_topic(&topic).await {
                eprintln!("warning: {error:#}");
            }
            result
        }
        Err(error) => Err(format!("topic set-up: {error:#}")),
    };
    Trial {
        trial,
        kind,
        delay,
        result,
    }
}

fn seconds(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// Runs every trial: `args.trials` times each member kind, the order
/// rotated from one trial to the next.
pub async fn run(admin: &Admin, bootstrap: &str, args: &RebalanceArgs) -> Vec<Trial> {
    let mut trials = Vec::new();
    let seed = seed();
    for trial in 0..args.trials {
        let delay = start_delay(trial, args.trials, seed);
        let mut order = args.members.clone();
        if !order.is_empty() {
            let shift = trial % order.len();
            order.rotate_left(shift);
        }
        for &kind in &order {
            let done = run_trial(admin, bootstrap, kind, trial, args.rate, delay).await;
            match &done.result {
                Ok(f) => eprintln!(
                    "[rebalance {}] {kind}: {:.3} s (member 2 started {} ms after member 1 was steady; member 1 reacted at {:.3} s; member 2 consuming at {:.3} s, member 1 at {:.3} s, member 1 longest gap {:.3} s)",
                    trial + 1,
                    seconds(f.latency),
                    delay.as_millis(),
                    seconds(f.member1_reacted),
                    seconds(f.member2_ready),
                    seconds(f.member1_ready),
                    seconds(f.member1_gap)
                ),
                Err(error) => eprintln!("[rebalance {}] {kind}: error: {error}", trial + 1),
            }
            trials.push(done);
        }
    }
    let _ = std::fs::remove_file(java_config_path());
    trials
}

fn median_seconds(trials: &[&Trial], pick: impl Fn(&Figures) -> i64) -> Option<f64> {
    report::median(
        trials
            .iter()
            .filter_map(|t| t.result.as_ref().ok())
            .map(|f| seconds(pick(f)))
            .collect(),
    )
}

fn seconds_cell(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |s| format!("{s:.3}"))
}

/// The rebalance section: medians per member kind, then every trial.
pub fn render(trials: &[Trial], args: &RebalanceArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Rebalance latency");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "A second member joins a group whose first member is consuming a {PARTITIONS}-partition topic with {} records/s arriving (round-robin over the partitions). Latency: from member 2's start mark (consumer built, about to subscribe) until both members have consumed, after their last assignment change, a record produced after that mark. Session timeout {} s, heartbeat {} ms, commit interval {} s where the client lets it be set; medians of {} trial(s), kinds interleaved. Member 1 learns of the join at its next heartbeat, so the trials start member 2 at points spread evenly over one heartbeat interval (same points for every kind); that wait alone varies by up to {} ms from trial to trial and dominates the latency. \"member 1 reacted\" is member 1's first assignment change after the mark (eager: its revocation; cooperative: its first new assignment), which ends that wait; \"reaction to done\" is the rest of the latency, which does not depend on the heartbeat phase (for a cooperative rebalance it still holds member 2's wait for its own next heartbeat before the second round).",
        args.rate,
        member::SESSION_TIMEOUT.as_secs(),
        member::HEARTBEAT_INTERVAL.as_millis(),
        member::COMMIT_INTERVAL.as_secs(),
        args.trials,
        member::HEARTBEAT_INTERVAL.as_millis()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| client | protocol, assignor | latency s | trials s | member 1 reacted s | reaction to done s | member 2 consuming s | member 1 longest gap s |"
    );
    let _ = writeln!(out, "|---|---|---:|---|---:|---:|---:|---:|");
    for &kind in &args.members {
        let mine: Vec<&Trial> = trials.iter().filter(|t| t.kind == kind).collect();
        if mine.is_empty() {
            continue;
        }
        let each = mine
            .iter()
            .map(|t| match &t.result {
                Ok(f) => format!("{:.3}", seconds(f.latency)),
                Err(_) => "error".to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let latency = match median_seconds(&mine, |f| f.latency) {
            Some(value) => format!("{value:.3}"),
            None => {
                let error = mine
                    .iter()
                    .find_map(|t| t.result.as_ref().err())
                    .cloned()
                    .unwrap_or_default();
                format!("error: {}", report::cell_text(&error))
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {latency} | {each} | {} | {} | {} | {} |",
            kind.client(),
            kind.protocol(),
            seconds_cell(median_seconds(&mine, |f| f.member1_reacted)),
            seconds_cell(median_seconds(&mine, |f| f.latency - f.member1_reacted)),
            seconds_cell(median_seconds(&mine, |f| f.member2_ready)),
            seconds_cell(median_seconds(&mine, |f| f.member1_gap)),
        );
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "### Rebalance trials");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Times in seconds from member 2's start mark; \"delay\" is when member 2 was started, in ms after member 1 was steady. \"member 1 assignments\" counts the assignments member 1 received after the mark (a cooperative rebalance takes two)."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| trial | member | delay ms | latency | member 1 reacted | member 2 assigned | member 2 consuming | member 1 resumed | member 1 longest gap | member 1 assignments | final partitions (1 / 2) | outcome |"
    );
    let _ = writeln!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for trial in trials {
        match &trial.result {
            Ok(f) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:?} / {:?} | ok |",
                    trial.trial + 1,
                    trial.kind,
                    trial.delay.as_millis(),
                    seconds(f.latency),
                    seconds(f.member1_reacted),
                    seconds(f.member2_assigned),
                    seconds(f.member2_ready),
                    seconds(f.member1_ready),
                    seconds(f.member1_gap),
                    f.member1_assignments,
                    f.member1_final,
                    f.member2_final
                );
            }
            Err(error) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | error: {} |",
                    trial.trial + 1,
                    trial.kind,
                    trial.delay.as_millis(),
                    report::cell_text(error)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at: i64, what: What) -> Event {
        Event { at, what }
    }

    fn consumed(time: i64, produced: i64) -> Event {
        at(
            time,
            What::Consumed {
                partition: 0,
                produced: Some(produced),
            },
        )
    }

    #[test]
    fn eager_trial_is_read_from_the_timelines() {
        let member1 = vec![
            at(0, What::Start),
            at(10, What::Assigned(vec![0, 1, 2, 3, 4, 5])),
            consumed(20, 15),
            consumed(105, 101),
            at(300, What::Revoked(Vec::new())),
            at(700, What::Assigned(vec![0, 1, 2])),
            consumed(710, 90),
            consumed(760, 750),
        ];
        let member2 = vec![
            at(100, What::Start),
            at(700, What::Assigned(vec![3, 4, 5])),
            consumed(720, 710),
        ];
        let figures = analyse(&member1, &member2).unwrap();
        assert_eq!(figures.latency, 660);
        assert_eq!(figures.member1_reacted, 200);
        assert_eq!(figures.member2_assigned, 600);
        assert_eq!(figures.member2_ready, 620);
        assert_eq!(figures.member1_ready, 660);
        // Member 1 consumed at 105, then nothing until 710.
        assert_eq!(figures.member1_gap, 605);
        assert_eq!(figures.member1_assignments, 1);
        assert_eq!(figures.member1_final, vec![0, 1, 2]);
    }

    #[test]
    fn overlapping_assignments_are_an_error() {
        let member1 = vec![
            at(0, What::Start),
            at(10, What::Assigned(vec![0, 1, 2, 3, 4, 5])),
            consumed(200, 150),
        ];
        let member2 = vec![
            at(100, What::Start),
            at(150, What::Assigned(vec![3, 4, 5])),
            consumed(160, 155),
        ];
        assert!(analyse(&member1, &member2).is_err());
    }

    #[test]
    fn start_delays_spread_over_one_heartbeat() {
        let interval = member::HEARTBEAT_INTERVAL;
        let millis: Vec<u128> = (0..3).map(|t| start_delay(t, 3, 0.5).as_millis()).collect();
        let whole = interval.as_millis();
        assert_eq!(millis, vec![whole / 6, whole / 2, whole * 5 / 6]);
        assert!(start_delay(2, 3, 0.999) < interval);
        assert_eq!(start_delay(0, 3, 0.0), Duration::ZERO);
        let s = seed();
        assert!((0.0..1.0).contains(&s));
    }

    #[test]
    fn not_ready_before_consuming_after_the_last_assignment() {
        let events = vec![
            at(0, What::Start),
            at(10, What::Assigned(vec![0])),
            consumed(20, 15),
            at(30, What::Revoked(Vec::new())),
        ];
        assert_eq!(ready_at(&events, 0), None);
        assert_eq!(ready_at(&events[..3], 0), Some(20));
        assert_eq!(ready_at(&events[..3], 15), None);
    }
}
