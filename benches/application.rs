//! The application layer's costs, each as a ratio of two runs on the same
//! broker, interleaved round by round so that both sides see the same
//! machine:
//!
//! 1. **routing** — a [`Service`] routing 3 topics to no-op handlers vs a
//!    bare [`GroupConsumer`](kastellan::group::GroupConsumer) subscribed to
//!    the same 3 topics with the same no-op handler;
//! 2. **poison** — a service with 1% of its records failing permanently
//!    (each copied to the dead-letter topic) vs the same service with none
//!    failing;
//! 3. **keys** — a handler that takes 5 ms per record, 6 partitions, 1,000
//!    distinct keys: records of different keys handled at once
//!    (`key_concurrency`) vs one record at a time per partition.
//!
//! A run's time is from the first record handled to the moment the last
//! one is done (for the poison run: the last good record handled and every
//! poison record's dead-letter copy acknowledged), so joining the group is
//! not counted. Each ratio is the median of the rounds' ratios; every round
//! is printed.
//!
//! ```text
//! cargo bench --bench application -- [records] [rounds]
//! ```
//!
//! `records` (default 2,000,000, 100-byte values) is the routing and poison
//! runs' total; the keys runs use 6,000 records; `rounds` defaults to 5.
//! `PHASES=routing,poison,keys` (the default) picks the comparisons to run.
//! Besides each rate: client CPU per record (this process) and machine CPU
//! per record (every process, the broker included, from `/proc/stat`).

#[path = "support/cpu.rs"]
mod cpu;
#[path = "../testcontainers.rs"]
mod testcontainers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cpu::{cpu_seconds, machine_cpu_seconds};
use kastellan::admin::NewTopic;
use kastellan::group::{ConsumerError, ConsumerRecord, HandlerError};
use kastellan::service::{Route, Router, Service, ServiceConfig, ServiceError};
use kastellan::{Client, ClientConfig, StartOffset};

/// Records of the keys comparison, and handler calls at once per partition.
const KEYED: usize = 6_000;
const CONCURRENCY: usize = 100;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A point of a run: when, this process's CPU seconds then, and the
/// whole machine's (broker included).
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    cpu: f64,
    machine: f64,
}

impl Mark {
    fn now() -> Mark {
        Mark {
            at: Instant::now(),
            cpu: cpu_seconds(),
            machine: machine_cpu_seconds().unwrap_or(f64::NAN),
        }
    }
}

/// What one run took: wall-clock time, client CPU time and machine CPU
/// time.
#[derive(Debug, Clone, Copy)]
struct Took {
    wall: Duration,
    cpu: f64,
    machine: f64,
}

impl Took {
    fn between(first: Mark, done: Mark) -> Took {
        Took {
            wall: done.at - first.at,
            cpu: done.cpu - first.cpu,
            machine: done.machine - first.machine,
        }
    }
}

/// Counts handled records and marks when the first one and the
/// `target`-th one were handled.
struct Meter {
    target: u64,
    count: AtomicU64,
    first: Mutex<Option<Mark>>,
    done: Mutex<Option<Mark>>,
    reached: tokio::sync::Notify,
}

impl Meter {
    fn new(target: u64) -> Arc<Meter> {
        Arc::new(Meter {
            target,
            count: AtomicU64::new(0),
            first: Mutex::new(None),
            done: Mutex::new(None),
            reached: tokio::sync::Notify::new(),
        })
    }

    fn tick(&self) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 {
            lock(&self.first).get_or_insert_with(Mark::now);
        }
        if n == self.target {
            *lock(&self.done) = Some(Mark::now());
            self.reached.notify_one();
        }
    }

    /// Waits until the target is reached; the first and the last mark.
    async fn wait(&self, timeout: Duration) -> BenchResult<(Mark, Mark)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let (Some(first), Some(done)) = (*lock(&self.first), *lock(&self.done)) {
                return Ok((first, done));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "only {} of {} records handled within {timeout:?}",
                    self.count.load(Ordering::Relaxed),
                    self.target
                )
                .into());
            }
            // The notification may have come before this wait began: check
            // again at least every 50 ms.
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(50)), self.reached.notified())
                    .await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let records: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5).max(1);
    let bootstrap = testcontainers::shared_bootstrap()?;
    let client = Client::connect(ClientConfig::new(&bootstrap)).await?;
    println!("against {bootstrap}: {records} records of 100 bytes, {rounds} rounds");
    let phases = std::env::var("PHASES").unwrap_or_else(|_| "routing,poison,keys".into());
    let run = |phase: &str| phases.split(',').any(|p| p.trim() == phase);
    let mut routing = Vec::new();
    let mut routing_cpu = Vec::new();
    let mut poison = Vec::new();
    let mut poison_cpu = Vec::new();
    let mut keys = Vec::new();
    let mut topics = Vec::new();
    let key = |i: usize| format!("k{}", i % 1000);

    if run("routing") {
        // 3 topics of 2 partitions.
        let per_topic = records / 3;
        let names: Vec<String> = (0..3).map(|i| unique(&format!("app-route-{i}"))).collect();
        for t in &names {
            create(&client, t, 2).await?;
            produce(&client, t, per_topic, key, |_| false).await?;
        }
        let total = (per_topic * 3) as u64;
        for round in 1..=rounds {
            let bare = bare_consumer(&client, &names, total).await?;
            let routed = routed_service(&client, &names, total).await?;
            let ratio = rate(total, routed) / rate(total, bare);
            let cpu = cpu_us(total, routed) / cpu_us(total, bare);
            println!(
                "routing round {round}: bare {:>9.0} rec/s {:.2} us/record ({:.2} machine), \
                 routed {:>9.0} rec/s {:.2} us/record ({:.2} machine); routed/bare rate \
                 {ratio:.3}, CPU per record {cpu:.3}",
                rate(total, bare),
                cpu_us(total, bare),
                machine_us(total, bare),
                rate(total, routed),
                cpu_us(total, routed),
                machine_us(total, routed),
            );
            routing.push(ratio);
            routing_cpu.push(cpu);
        }
        topics.extend(names);
    }

    if run("poison") {
        // 1 in 100 records fails permanently, vs none.
        let clean = unique("app-clean");
        let poisoned = unique("app-poison");
        let dlq = unique("app-dlq");
        for t in [&clean, &poisoned, &dlq] {
            create(&client, t, 6).await?;
        }
        produce(&client, &clean, records, key, |_| false).await?;
        produce(&client, &poisoned, records, key, |i| i % 100 == 0).await?;
        let bad = records.div_ceil(100) as u64;
        let all = records as u64;
        for round in 1..=rounds {
            let (none, _) = dead_letter_service(&client, &clean, &dlq, all, 0).await?;
            let (some, pauses) =
                dead_letter_service(&client, &poisoned, &dlq, all - bad, bad).await?;
            let ratio = rate(all, some) / rate(all, none);
            let cpu = cpu_us(all, some) / cpu_us(all, none);
            println!(
                "poison  round {round}: 0% {:>9.0} rec/s {:.2} us/record ({:.2} machine), 1% \
                 {:>9.0} rec/s {:.2} us/record ({:.2} machine, {pauses} window pauses); 1%/0% \
                 rate {ratio:.3}, CPU per record {cpu:.3}, machine CPU per record {:.3}",
                rate(all, none),
                cpu_us(all, none),
                machine_us(all, none),
                rate(all, some),
                cpu_us(all, some),
                machine_us(all, some),
                machine_us(all, some) / machine_us(all, none),
            );
            poison.push(ratio);
            poison_cpu.push(cpu);
        }
        topics.extend([clean, poisoned, dlq]);
    }

    if run("keys") {
        // A 5 ms handler, 6 partitions, 1,000 keys.
        let keyed = unique("app-keys");
        create(&client, &keyed, 6).await?;
        produce(&client, &keyed, KEYED, key, |_| false).await?;
        let n = KEYED as u64;
        for round in 1..=rounds {
            let one = slow_service(&client, &keyed, n, 1).await?;
            let many = slow_service(&client, &keyed, n, CONCURRENCY).await?;
            let ratio = rate(n, many) / rate(n, one);
            println!(
                "keys    round {round}: one at a time {:>7.0} rec/s, key_concurrency({CONCURRENCY}) {:>7.0} rec/s, ratio {ratio:.1}",
                rate(n, one),
                rate(n, many)
            );
            keys.push(ratio);
        }
        topics.push(keyed);
    }

    println!();
    println!("| comparison | ratio (median of {rounds}) | rounds |");
    println!("|---|---:|---|");
    if !routing.is_empty() {
        println!(
            "| routed service, 3 topics / bare group consumer: throughput | {:.2} | {} |",
            median(&routing),
            list(&routing, 2)
        );
        println!(
            "| routed service, 3 topics / bare group consumer: client CPU per record | {:.2} | {} |",
            median(&routing_cpu),
            list(&routing_cpu, 2)
        );
    }
    if !poison.is_empty() {
        println!(
            "| 1% of records dead-lettered / none failing: throughput | {:.2} | {} |",
            median(&poison),
            list(&poison, 2)
        );
        println!(
            "| 1% of records dead-lettered / none failing: client CPU per record | {:.2} | {} |",
            median(&poison_cpu),
            list(&poison_cpu, 2)
        );
    }
    if !keys.is_empty() {
        println!(
            "| 5 ms handler: key_concurrency({CONCURRENCY}) / one at a time | {:.1} | {} |",
            median(&keys),
            list(&keys, 1)
        );
    }
    for t in &topics {
        client.admin().delete_topic(t).await?;
    }
    Ok(())
}

/// Consumer settings both sides of every comparison share.
fn tune(b: kastellan::group::GroupConsumerBuilder) -> kastellan::group::GroupConsumerBuilder {
    b.heartbeat_interval(Duration::from_millis(500))
        .max_wait(Duration::from_millis(100))
}

fn service_config(group: &str) -> ServiceConfig {
    ServiceConfig::new(group)
        .offset_reset(StartOffset::Earliest)
        .session_timeout(Duration::from_secs(10))
        .consumers(tune)
}

/// The bare group consumer: one no-op handler for every topic.
async fn bare_consumer(client: &Client, topics: &[String], total: u64) -> BenchResult<Took> {
    let meter = Meter::new(total);
    let consumer = tune(
        client
            .group_consumer(unique("app-bare"))
            .topics(topics.iter().cloned())
            .start_with_earliest()
            .session_timeout(Duration::from_secs(10)),
    )
    .build()?;
    let stop = consumer.shutdown_handle();
    let m = Arc::clone(&meter);
    let run = tokio::spawn(consumer.run(move |_r: ConsumerRecord| {
        m.tick();
        async { Ok::<(), HandlerError>(()) }
    }));
    let (first, done) = meter.wait(Duration::from_secs(300)).await?;
    stop.shutdown(Duration::from_secs(10));
    run.await??;
    Ok(Took::between(first, done))
}

/// A service routing each topic to its own no-op handler.
async fn routed_service(client: &Client, topics: &[String], total: u64) -> BenchResult<Took> {
    let meter = Meter::new(total);
    let mut router = Router::new();
    for t in topics {
        let m = Arc::clone(&meter);
        router = router.route(t, move |_r: ConsumerRecord| {
            m.tick();
            async { Ok::<(), HandlerError>(()) }
        });
    }
    let handle = Service::new(
        client.clone(),
        service_config(&unique("app-routed")),
        router,
    )?
    .start()
    .await?;
    let (first, done) = meter.wait(Duration::from_secs(300)).await?;
    handle.shutdown(Duration::from_secs(10)).await?;
    Ok(Took::between(first, done))
}

/// A service whose handler dead-letters every record whose value starts
/// with `poison`; done when `good` records were handled and `bad` copies
/// acknowledged by the dead-letter topic. Also says how many times a
/// partition paused (its window full behind a record whose copy was not
/// acknowledged yet).
async fn dead_letter_service(
    client: &Client,
    topic: &str,
    dlq: &str,
    good: u64,
    bad: u64,
) -> BenchResult<(Took, usize)> {
    let meter = Meter::new(good);
    let m = Arc::clone(&meter);
    let route = Route::new(move |r: ConsumerRecord| {
        let poison = r.value.as_deref().is_some_and(|v| v.starts_with(b"poison"));
        if !poison {
            m.tick();
        }
        async move {
            if poison {
                Err(HandlerError::dead_letter("poison record"))
            } else {
                Ok(())
            }
        }
    });
    let config = service_config(&unique("app-dlq-group")).dead_letter_topic(dlq);
    let mut handle = Service::new(client.clone(), config, Router::new().route(topic, route))?
        .start()
        .await?;
    let status = handle.status_handle();
    let mut problems = handle.errors().ok_or("errors taken")?;
    let (first, mut done) = meter.wait(Duration::from_secs(300)).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let dead = status.get().dead_lettered;
        if dead >= bad {
            if Instant::now() > done.at {
                done = Mark::now();
            }
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {dead} of {bad} records dead-lettered").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    handle.shutdown(Duration::from_secs(10)).await?;
    let mut pauses = 0;
    while let Some(problem) = problems.try_recv() {
        if let ServiceError::Consumer {
            error: ConsumerError::PartitionPaused { .. },
            ..
        } = problem
        {
            pauses += 1;
        }
    }
    Ok((Took::between(first, done), pauses))
}

/// A service whose handler takes 5 ms per record.
async fn slow_service(
    client: &Client,
    topic: &str,
    total: u64,
    key_concurrency: usize,
) -> BenchResult<Took> {
    let meter = Meter::new(total);
    let m = Arc::clone(&meter);
    let router = Router::new().route(topic, move |_r: ConsumerRecord| {
        let m = Arc::clone(&m);
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            m.tick();
            Ok::<(), HandlerError>(())
        }
    });
    let config = service_config(&unique("app-keys-group")).key_concurrency(key_concurrency);
    let handle = Service::new(client.clone(), config, router)?
        .start()
        .await?;
    let (first, done) = meter.wait(Duration::from_secs(300)).await?;
    handle.shutdown(Duration::from_secs(10)).await?;
    Ok(Took::between(first, done))
}

async fn create(client: &Client, topic: &str, partitions: i32) -> BenchResult<()> {
    client
        .admin()
        .create_topic(NewTopic::new(topic, partitions, 1))
        .await?;
    Ok(())
}

/// Produces `n` 100-byte records; those `poison(i)` picks start with
/// `poison`.
async fn produce(
    client: &Client,
    topic: &str,
    n: usize,
    key: impl Fn(usize) -> String,
    poison: impl Fn(usize) -> bool,
) -> BenchResult<()> {
    let producer = client.producer().linger(Duration::from_millis(5)).build()?;
    let good = Bytes::from(vec![b'x'; 100]);
    let mut bad = b"poison".to_vec();
    bad.resize(100, b'x');
    let bad = Bytes::from(bad);
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let value = if poison(i) { bad.clone() } else { good.clone() };
        pending.push(
            producer
                .to(topic)
                .key(key(i))
                .value(value)
                .enqueue()
                .await?,
        );
    }
    for p in pending {
        p.await?;
    }
    producer.close(Duration::from_secs(10)).await?;
    Ok(())
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn rate(records: u64, took: Took) -> f64 {
    records as f64 / took.wall.as_secs_f64().max(1e-9)
}

/// Client CPU microseconds per record.
fn cpu_us(records: u64, took: Took) -> f64 {
    took.cpu * 1e6 / records as f64
}

/// Machine CPU microseconds per record (client, broker and the rest).
fn machine_us(records: u64, took: Took) -> f64 {
    took.machine * 1e6 / records as f64
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn list(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|r| format!("{r:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}
