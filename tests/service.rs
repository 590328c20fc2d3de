//! Services against a real broker: routing, the dead-letter topic under
//! load, retries through the retry topic, retry and dead-letter topics
//! shared by two services, a service killed between its dead-letter produce
//! and its commit, and graceful shutdown.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{client, new_topic, read_all, testcontainers, unique_topic, wait_for};
use kastellan::admin::NewTopic;
use kastellan::group::{with_state, ConsumerRecord, GroupState, Handler, HandlerError};
use kastellan::service::headers::{self, FailureInfo};
use kastellan::service::{attempt, Route, Router, Service, ServiceConfig, ServiceHandle};
use kastellan::{Client, Record, StartOffset};

// ---------------------------------------------------------------------------
// Helpers.

/// A service configuration with the settings these tests share: from the
/// earliest offset, 10 s sessions, heartbeats every 500 ms, commits every
/// 300 ms, fetches that wait at most 100 ms.
fn config(group: &str) -> ServiceConfig {
    ServiceConfig::new(group)
        .offset_reset(StartOffset::Earliest)
        .session_timeout(Duration::from_secs(10))
        .commit_interval(Duration::from_millis(300))
        .consumers(|b| {
            b.heartbeat_interval(Duration::from_millis(500))
                .max_wait(Duration::from_millis(100))
        })
}

/// Polls the async `cond` every 100 ms until it holds; fails the test after
/// `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !cond().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Produce `values` to `topic` with keys `k<i>`, spread by the key hash.
async fn produce(client: &Client, topic: &str, values: impl IntoIterator<Item = String>) {
    let producer = client.producer().build().unwrap();
    for (i, value) in values.into_iter().enumerate() {
        drop(
            producer
                .to(topic)
                .key(format!("k{i}"))
                .value(value)
                .enqueue()
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    producer.close(Duration::from_secs(10)).await.unwrap();
}

/// Committed offset and high watermark of each partition of `topic` for
/// `group`, as Kafka's own kafka-consumer-groups tool reports them.
async fn committed(group: &str, topic: &str) -> BTreeMap<i32, Option<i64>> {
    let (group, topic) = (group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        testcontainers::describe_group(&testcontainers::bootstrap(), &group, &topic)
            .expect("kafka-consumer-groups runs")
            .partitions
            .into_iter()
            .map(|(p, row)| (p, row.committed))
            .collect()
    })
    .await
    .unwrap()
}

/// Waits until `group` has committed the end of every partition of `topic`.
async fn wait_committed_to_end(client: &Client, group: &str, topic: &str, timeout: Duration) {
    let ends: BTreeMap<i32, Option<i64>> = client
        .admin()
        .watermarks(topic)
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.partition, Some(w.high)))
        .collect();
    let started = Instant::now();
    loop {
        let last = committed(group, topic).await;
        let done = ends
            .iter()
            .all(|(p, end)| *end == Some(0) || last.get(p) == Some(end));
        if done {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "group {group} did not commit the end of {topic} within {timeout:?}: committed \
             {last:?}, ends {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A header as text.
fn header(r: &Record, name: &str) -> String {
    String::from_utf8_lossy(r.header(name).unwrap_or_default()).into_owned()
}

async fn stop(handle: ServiceHandle) {
    tokio::time::timeout(
        Duration::from_secs(60),
        handle.shutdown(Duration::from_secs(20)),
    )
    .await
    .expect("service stops in time")
    .expect("service stopped cleanly");
}

// ---------------------------------------------------------------------------
// Routing.

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A handler struct with state.
struct Named {
    name: &'static str,
    seen: Seen,
}

impl Handler for Named {
    async fn handle(&self, record: ConsumerRecord) -> Result<(), HandlerError> {
        self.seen
            .lock()
            .unwrap()
            .push((self.name.to_string(), record.topic.to_string()));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_topics_reach_their_three_handlers() {
    let client = client().await;
    let a = new_topic(&client, "svc-route-a", 2).await;
    let b = new_topic(&client, "svc-route-b", 2).await;
    let c = new_topic(&client, "svc-route-c", 1).await;
    for t in [&a, &b, &c] {
        produce(&client, t, (0..10).map(|i| format!("{t}-{i}"))).await;
    }
    let seen: Seen = Arc::default();
    let closure_seen = Arc::clone(&seen);
    let router = Router::new()
        // A closure.
        .route(&a, move |r: ConsumerRecord| {
            let seen = Arc::clone(&closure_seen);
            async move {
                seen.lock().unwrap().push(("a".into(), r.topic.to_string()));
                Ok::<(), HandlerError>(())
            }
        })
        // A closure with state.
        .route(
            &b,
            with_state(
                Arc::clone(&seen),
                |seen: Seen, r: ConsumerRecord| async move {
                    seen.lock().unwrap().push(("b".into(), r.topic.to_string()));
                    Ok::<(), HandlerError>(())
                },
            ),
        )
        // A struct, with route options.
        .route(
            &c,
            Route::new(Named {
                name: "c",
                seen: Arc::clone(&seen),
            })
            .dead_letter(false),
        );
    let group = unique_topic("svc-route-group");
    let handle = Service::new(client.clone(), config(&group), router)
        .expect("valid service")
        .start()
        .await
        .expect("starts");
    wait_for("30 records handled", Duration::from_secs(90), || {
        seen.lock().unwrap().len() >= 30
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let mut by_handler: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (handler, topic) in &seen {
        by_handler
            .entry(handler.clone())
            .or_default()
            .insert(topic.clone());
    }
    assert_eq!(by_handler["a"], BTreeSet::from([a.clone()]));
    assert_eq!(by_handler["b"], BTreeSet::from([b.clone()]));
    assert_eq!(by_handler["c"], BTreeSet::from([c.clone()]));
    assert_eq!(seen.len(), 30, "each record once: {seen:?}");
    assert_eq!(handle.status().handled, 30);
    stop(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glob_route_picks_up_a_topic_created_after_start() {
    let client = client().await;
    let prefix = unique_topic("svc-content");
    let edited = format!("{prefix}.edited");
    client
        .admin()
        .create_topic(NewTopic::new(&edited, 1, 1))
        .await
        .unwrap();
    produce(&client, &edited, ["e1".to_string()]).await;
    let seen: Seen = Arc::default();
    let router = Router::new().route(
        format!("{prefix}.*"),
        Named {
            name: "content",
            seen: Arc::clone(&seen),
        },
    );
    let group = unique_topic("svc-glob-group");
    let handle = Service::new(
        client.clone(),
        config(&group).metadata_max_age(Duration::from_secs(1)),
        router,
    )
    .unwrap()
    .start()
    .await
    .expect("starts");
    wait_for(
        "the existing topic's record",
        Duration::from_secs(60),
        || seen.lock().unwrap().iter().any(|(_, t)| *t == edited),
    )
    .await;
    let deleted = format!("{prefix}.deleted");
    client
        .admin()
        .create_topic(NewTopic::new(&deleted, 1, 1))
        .await
        .unwrap();
    produce(&client, &deleted, ["d1".to_string()]).await;
    wait_for("the new topic's record", Duration::from_secs(60), || {
        seen.lock().unwrap().iter().any(|(_, t)| *t == deleted)
    })
    .await;
    stop(handle).await;
}

// ---------------------------------------------------------------------------
// The dead-letter topic under load.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_end_in_the_dead_letter_topic_and_no_partition_stalls() {
    const PER_TOPIC: usize = 10_000;
    let client = client().await;
    let topics = [
        new_topic(&client, "svc-load-a", 4).await,
        new_topic(&client, "svc-load-b", 4).await,
    ];
    let dlq = new_topic(&client, "svc-load-dlq", 2).await;
    for t in &topics {
        produce(
            &client,
            t,
            (0..PER_TOPIC).map(|i| {
                if i % 100 == 0 {
                    format!("poison-{i}")
                } else {
                    format!("ok-{i}")
                }
            }),
        )
        .await;
    }
    let handled: Arc<Mutex<HashSet<(String, i32, i64)>>> = Arc::default();
    let handler = with_state(
        Arc::clone(&handled),
        |handled: Arc<Mutex<HashSet<(String, i32, i64)>>>, r: ConsumerRecord| async move {
            let value = r.value_str().unwrap_or_default();
            if value.starts_with("poison") {
                return Err(HandlerError::dead_letter(format!("poison record {value}")));
            }
            handled
                .lock()
                .unwrap()
                .insert((r.topic.to_string(), r.partition, r.offset));
            Ok(())
        },
    );
    let handler = Arc::new(handler);
    let group = unique_topic("svc-load-group");
    let router = Router::new()
        .route(&topics[0], Arc::clone(&handler))
        .route(&topics[1], Arc::clone(&handler));
    let started = Instant::now();
    let handle = Service::new(
        client.clone(),
        config(&group).dead_letter_topic(&dlq),
        router,
    )
    .unwrap()
    .start()
    .await
    .expect("starts");
    let total = 2 * PER_TOPIC;
    let poison = total / 100;
    wait_for(
        "every good record handled",
        Duration::from_secs(240),
        || handled.lock().unwrap().len() >= total - poison,
    )
    .await;
    let status = handle.status_handle();
    wait_for(
        "every poison record dead-lettered",
        Duration::from_secs(120),
        || status.get().dead_lettered >= poison as u64,
    )
    .await;
    let elapsed = started.elapsed();

    // The dead-letter topic holds each poison record, with its headers.
    let originals: HashMap<(String, i32, i64), Record> = {
        let mut m = HashMap::new();
        for t in &topics {
            for r in read_all(&client, t).await {
                m.insert((r.topic.to_string(), r.partition, r.offset), r);
            }
        }
        m
    };
    let dead = read_all(&client, &dlq).await;
    let mut dead_origins = BTreeSet::new();
    for d in &dead {
        let info = FailureInfo::of(d).expect("failure headers");
        let origin = (
            info.origin_topic.clone(),
            info.origin_partition,
            info.origin_offset,
        );
        let original = &originals[&origin];
        assert_eq!(d.value, original.value, "same value");
        assert_eq!(d.key, original.key, "same key");
        assert!(original.value_str().unwrap().starts_with("poison"));
        assert_eq!(info.group.as_deref(), Some(group.as_str()));
        assert_eq!(header(d, headers::ATTEMPT), "1");
        assert_eq!(header(d, headers::FAILURE_KIND), "dead-letter");
        assert!(
            info.reason.starts_with("poison record poison-"),
            "{}",
            info.reason
        );
        assert_eq!(info.origin_timestamp, Some(original.timestamp));
        assert!(info.first_failure_ms <= info.not_before_ms);
        dead_origins.insert(origin);
    }
    let expected: BTreeSet<_> = originals
        .iter()
        .filter(|(_, r)| r.value_str().unwrap().starts_with("poison"))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        dead_origins, expected,
        "every poison record, and nothing else"
    );
    assert_eq!(handled.lock().unwrap().len(), total - poison);

    // No partition stalls; committed offsets reach the end of every topic.
    let now = handle.status();
    assert!(now.origin.stalled.is_empty(), "{:?}", now.origin.stalled);
    assert!(now.origin.paused.is_empty(), "{:?}", now.origin.paused);
    assert_eq!(now.failed, 0);
    for t in &topics {
        wait_committed_to_end(&client, &group, t, Duration::from_secs(120)).await;
    }
    eprintln!(
        "{total} records ({poison} poison) handled and dead-lettered in {elapsed:?}; \
         {} dead-letter copies",
        dead.len()
    );
    stop(handle).await;
}

// ---------------------------------------------------------------------------
// Retries through the retry topic.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_succeed_through_the_retry_topic_after_their_delays() {
    const DELAY: Duration = Duration::from_millis(400);
    const DELAY_MAX: Duration = Duration::from_millis(1600);
    let client = client().await;
    let topic = new_topic(&client, "svc-retry", 2).await;
    let retry = new_topic(&client, "svc-retry-topic", 2).await;
    let dlq = new_topic(&client, "svc-retry-dlq", 1).await;
    // Record i fails i % 3 times before it succeeds; two never succeed.
    let mut values: Vec<String> = (0..12).map(|i| format!("fail-{}", i % 3)).collect();
    values.push("always".into());
    values.push("always".into());
    produce(&client, &topic, values.clone()).await;

    // (key, attempt) -> (origin partition, origin offset, started, ended)
    type Attempts = Arc<Mutex<BTreeMap<(String, u32), (i32, i64, i64, i64)>>>;
    let attempts: Attempts = Arc::default();
    let handler = with_state(
        Arc::clone(&attempts),
        |log: Attempts, r: ConsumerRecord| async move {
            let started = now_ms();
            let n = attempt(&r);
            let key = r.key_str().unwrap_or_default().to_string();
            let value = r.value_str().unwrap_or_default().to_string();
            let fails = match value.as_str() {
                "always" => u32::MAX,
                v => v.trim_start_matches("fail-").parse().unwrap(),
            };
            let outcome = if n <= fails {
                Err(HandlerError::retry(format!(
                    "transient failure {n} of {key}"
                )))
            } else {
                Ok(())
            };
            log.lock()
                .unwrap()
                .insert((key, n), (r.partition, r.offset, started, now_ms()));
            outcome
        },
    );
    let group = unique_topic("svc-retry-group");
    let service_config = config(&group)
        .retry_topic(&retry)
        .dead_letter_topic(&dlq)
        .retry_delay(DELAY, DELAY_MAX);
    let router = Router::new().route(&topic, Route::new(handler).retries(3));
    let handle = Service::new(client.clone(), service_config.clone(), router)
        .unwrap()
        .start()
        .await
        .expect("starts");
    let status = handle.status_handle();
    // 12 successes; 2 records dead-lettered after 4 attempts.
    wait_for("retries to finish", Duration::from_secs(120), || {
        let s = status.get();
        s.handled >= 12 && s.dead_lettered >= 2
    })
    .await;

    let log = attempts.lock().unwrap().clone();
    let mut slack: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for (i, value) in values.iter().enumerate() {
        let key = format!("k{i}");
        let expected = match value.as_str() {
            "always" => 4,
            v => v.trim_start_matches("fail-").parse::<u32>().unwrap() + 1,
        };
        let seen: Vec<u32> = log
            .keys()
            .filter(|(k, _)| *k == key)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(
            seen,
            (1..=expected).collect::<Vec<_>>(),
            "attempts of {key}"
        );
        let first = log[&(key.clone(), 1)];
        for n in 1..expected {
            let previous = log[&(key.clone(), n)];
            let next = log[&(key.clone(), n + 1)];
            // Retried records reach the handler as their origin record.
            assert_eq!((next.0, next.1), (first.0, first.1), "origin of {key}");
            let configured = service_delay(DELAY, DELAY_MAX, n);
            let waited = next.2 - previous.3;
            assert!(
                waited >= configured,
                "{key}: attempt {} began {waited} ms after attempt {n} failed; the delay is \
                 {configured} ms",
                n + 1
            );
            slack.entry(n).or_default().push(waited - configured);
        }
    }
    for (n, s) in &slack {
        eprintln!(
            "retry {n}: configured delay {} ms, observed delay minus configured: min {} ms, \
             max {} ms over {} records",
            service_delay(DELAY, DELAY_MAX, *n),
            s.iter().min().unwrap(),
            s.iter().max().unwrap(),
            s.len()
        );
    }

    // The retry topic holds one copy per failure that was retried, with
    // rising attempts; the dead-letter topic the two records that never
    // succeeded, after their fourth attempt.
    let copies = read_all(&client, &retry).await;
    assert_eq!(copies.len(), 4 + 8 + 2 * 3, "one copy per retried failure");
    for c in &copies {
        let info = FailureInfo::of(c).unwrap();
        assert_eq!(info.group.as_deref(), Some(group.as_str()));
        assert_eq!(info.origin_topic, topic);
        assert!(info.not_before_ms >= info.first_failure_ms + DELAY.as_millis() as i64);
    }
    let dead = read_all(&client, &dlq).await;
    assert_eq!(dead.len(), 2);
    for d in &dead {
        let info = FailureInfo::of(d).unwrap();
        assert_eq!(info.attempt, 4);
        assert_eq!(d.value_str(), Some("always"));
        assert!(
            info.reason.starts_with("transient failure 4 of"),
            "{}",
            info.reason
        );
    }
    let s = status.get();
    assert_eq!((s.retried, s.dead_lettered, s.failed), (18, 2, 0));
    wait_committed_to_end(&client, &group, &topic, Duration::from_secs(60)).await;
    let retry_group = service_config.retry_group_id().unwrap();
    wait_committed_to_end(&client, &retry_group, &retry, Duration::from_secs(60)).await;
    stop(handle).await;
}

/// The service's documented delay before retry `n`.
fn service_delay(initial: Duration, max: Duration, n: u32) -> i64 {
    (initial * 2u32.pow(n - 1)).min(max).as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_share_a_retry_topic_and_a_dead_letter_topic() {
    let client = client().await;
    let topic = new_topic(&client, "svc-shared", 2).await;
    let retry = new_topic(&client, "svc-shared-retry", 2).await;
    let dlq = new_topic(&client, "svc-shared-dlq", 1).await;
    let mut values: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    values.push("poison".into());
    produce(&client, &topic, values).await;

    // Service A fails records with an even number once, B those with an
    // odd one; both dead-letter the poison record.
    type Log = Arc<Mutex<Vec<(String, u32)>>>;
    let start = |name: &'static str, even: bool| {
        let client = client.clone();
        let (topic, retry, dlq) = (topic.clone(), retry.clone(), dlq.clone());
        async move {
            let log: Log = Arc::default();
            let handler = with_state(
                Arc::clone(&log),
                move |log: Log, r: ConsumerRecord| async move {
                    let value = r.value_str().unwrap_or_default().to_string();
                    let n = attempt(&r);
                    log.lock().unwrap().push((value.clone(), n));
                    if value == "poison" {
                        return Err(HandlerError::dead_letter("poison"));
                    }
                    let number: u32 = value.trim_start_matches('v').parse().unwrap();
                    if n == 1 && number.is_multiple_of(2) == even {
                        return Err(HandlerError::retry(format!("{name} is busy")));
                    }
                    Ok(())
                },
            );
            let group = unique_topic(&format!("svc-shared-{name}"));
            let handle = Service::new(
                client,
                config(&group)
                    .retry_topic(retry)
                    .dead_letter_topic(dlq)
                    .retry_delay(Duration::from_millis(200), Duration::from_secs(1)),
                Router::new().route(topic, Route::new(handler).retries(2)),
            )
            .unwrap()
            .start()
            .await
            .expect("starts");
            (group, log, handle)
        }
    };
    let (group_a, log_a, a) = start("a", true).await;
    let (group_b, log_b, b) = start("b", false).await;
    let (status_a, status_b) = (a.status_handle(), b.status_handle());
    wait_for("both services to finish", Duration::from_secs(120), || {
        let (sa, sb) = (status_a.get(), status_b.get());
        // 20 handled each, 10 retried each, the poison dead-lettered by
        // each, and each skipped the other's 10 retry copies.
        sa.handled >= 20
            && sb.handled >= 20
            && sa.dead_lettered >= 1
            && sb.dead_lettered >= 1
            && sa.skipped >= 10
            && sb.skipped >= 10
    })
    .await;
    let retried = |log: &Log| -> BTreeSet<String> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| *n > 1)
            .map(|(v, _)| v.clone())
            .collect()
    };
    let evens: BTreeSet<String> = (0..20).step_by(2).map(|i| format!("v{i}")).collect();
    let odds: BTreeSet<String> = (1..20).step_by(2).map(|i| format!("v{i}")).collect();
    assert_eq!(retried(&log_a), evens, "A retried exactly its own failures");
    assert_eq!(retried(&log_b), odds, "B retried exactly its own failures");
    let (sa, sb) = (status_a.get(), status_b.get());
    assert_eq!((sa.retried, sb.retried), (10, 10));
    assert_eq!(
        (sa.skipped, sb.skipped),
        (10, 10),
        "each skipped the other's copies"
    );

    let copies = read_all(&client, &retry).await;
    let groups: BTreeMap<String, usize> = copies.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(header(c, headers::GROUP)).or_default() += 1;
        m
    });
    assert_eq!(
        groups,
        BTreeMap::from([(group_a.clone(), 10), (group_b.clone(), 10)])
    );
    let dead = read_all(&client, &dlq).await;
    let dead_groups: BTreeSet<String> = dead.iter().map(|d| header(d, headers::GROUP)).collect();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead_groups, BTreeSet::from([group_a, group_b]));
    stop(a).await;
    stop(b).await;
}

// ---------------------------------------------------------------------------
// A service killed between its dead-letter produce and its commit.

/// Set in the child process of the SIGKILL test: `topic,group,dlq`.
const CHILD_ENV: &str = "KASTELLAN_SERVICE_TEST_CHILD";

/// The child process of `a_service_killed_before_its_commit_loses_nothing`:
/// a service that dead-letters every record and never commits by itself.
/// Does nothing in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_service_for_the_kill_test() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let [topic, group, dlq] = parts[..] else {
        panic!("{CHILD_ENV} is `{spec}`; expected topic,group,dlq");
    };
    let client = client().await;
    let handle = Service::new(
        client,
        config(group)
            .dead_letter_topic(dlq)
            .session_timeout(Duration::from_secs(6))
            // Nothing is committed before the kill.
            .commit_interval(Duration::from_secs(3600)),
        Router::new().route(topic, |_r: ConsumerRecord| async {
            Err::<(), _>(HandlerError::dead_letter("poison"))
        }),
    )
    .unwrap()
    .start()
    .await
    .expect("child service starts");
    // Killed by the parent long before this ends.
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(handle);
}

/// Kills the child when dropped (also when the test fails).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_between_its_dead_letter_produce_and_its_commit_loses_nothing() {
    const N: usize = 40;
    let client = client().await;
    let topic = new_topic(&client, "svc-kill", 2).await;
    let dlq = new_topic(&client, "svc-kill-dlq", 1).await;
    produce(&client, &topic, (0..N).map(|i| format!("poison-{i}"))).await;
    let group = unique_topic("svc-kill-group");

    let mut child = Child(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_service_for_the_kill_test",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{topic},{group},{dlq}"))
            .env("KAFKA_BOOTSTRAP", testcontainers::bootstrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("child starts"),
    );
    wait_until(
        "the child to dead-letter every record",
        Duration::from_secs(120),
        || {
            let client = client.clone();
            let dlq = dlq.clone();
            async move { read_all(&client, &dlq).await.len() >= N }
        },
    )
    .await;
    // SIGKILL: no shutdown, no commit.
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");
    let before = committed(&group, &topic).await;
    assert!(
        before.values().all(Option::is_none),
        "nothing was committed before the kill: {before:?}"
    );

    // A new instance of the service takes over and handles them again.
    let handle = Service::new(
        client.clone(),
        config(&group).dead_letter_topic(&dlq),
        Router::new().route(&topic, |_r: ConsumerRecord| async {
            Err::<(), _>(HandlerError::dead_letter("poison"))
        }),
    )
    .unwrap()
    .start()
    .await
    .expect("starts");
    wait_committed_to_end(&client, &group, &topic, Duration::from_secs(120)).await;
    stop(handle).await;

    // Nothing is missing; each record's copy is there twice: once from the
    // killed instance, whose commit never happened, once from its successor.
    let originals = read_all(&client, &topic).await;
    let dead = read_all(&client, &dlq).await;
    let mut copies: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for d in &dead {
        let info = FailureInfo::of(d).unwrap();
        *copies
            .entry((info.origin_partition, info.origin_offset))
            .or_default() += 1;
    }
    for r in &originals {
        assert!(
            copies.contains_key(&(r.partition, r.offset)),
            "{}@{} is missing from the dead-letter topic",
            r.partition,
            r.offset
        );
    }
    assert_eq!(copies.len(), N);
    assert!(copies.values().all(|&n| n == 2), "{copies:?}");
    eprintln!(
        "{N} records: {} dead-letter copies after the kill and the restart (the documented \
         duplicate)",
        dead.len()
    );
}

// ---------------------------------------------------------------------------
// Graceful shutdown.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_records_in_flight_finish_commits_and_leaves() {
    let client = client().await;
    let topic = new_topic(&client, "svc-stop", 2).await;
    let slow = new_topic(&client, "svc-stop-retried", 1).await;
    let retry = new_topic(&client, "svc-stop-retry", 1).await;
    // Two records per partition.
    let producer = client.producer().build().unwrap();
    for p in 0..2 {
        for i in 0..2 {
            producer
                .to(&topic)
                .partition(p)
                .value(format!("{p}-{i}"))
                .send()
                .await
                .unwrap();
        }
    }
    producer.to(&slow).value("later").send().await.unwrap();

    let started: Arc<Mutex<Vec<(i32, i64)>>> = Arc::default();
    let finished: Arc<Mutex<Vec<(i32, i64)>>> = Arc::default();
    let (s, f) = (Arc::clone(&started), Arc::clone(&finished));
    // Each record is in flight until the shutdown begins, then finishes
    // its work.
    let handler = move |r: ConsumerRecord| {
        let (s, f) = (Arc::clone(&s), Arc::clone(&f));
        async move {
            s.lock().unwrap().push((r.partition, r.offset));
            r.revoked().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            f.lock().unwrap().push((r.partition, r.offset));
            Ok::<(), HandlerError>(())
        }
    };
    let group = unique_topic("svc-stop-group");
    let service_config = config(&group)
        .retry_topic(&retry)
        // A record retried in an hour: its wait must not hold the shutdown.
        .retry_delay(Duration::from_secs(3600), Duration::from_secs(3600));
    let router = Router::new().route(&topic, handler).route(
        &slow,
        Route::new(|_r: ConsumerRecord| async {
            Err::<(), _>(HandlerError::retry("try again in an hour"))
        })
        .retries(1),
    );
    let handle = Service::new(client.clone(), service_config.clone(), router)
        .unwrap()
        .start()
        .await
        .expect("starts");
    let status = handle.status_handle();
    wait_for(
        "a record in flight in each partition, and the retry handed off",
        Duration::from_secs(60),
        || started.lock().unwrap().len() == 2 && status.get().retried == 1,
    )
    .await;

    let begun = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(60),
        handle.shutdown(Duration::from_secs(20)),
    )
    .await
    .expect("shutdown returns")
    .expect("clean shutdown");
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    let mut done = finished.lock().unwrap().clone();
    done.sort();
    assert_eq!(done, [(0, 0), (1, 0)], "the records in flight finished");
    assert_eq!(
        started.lock().unwrap().len(),
        2,
        "nothing was dispatched after the shutdown began"
    );
    let s = status.get();
    assert_eq!(s.origin.state, GroupState::Stopped);
    assert_eq!(s.retry.as_ref().map(|r| r.state), Some(GroupState::Stopped));

    // Their offsets were committed, and both groups were left.
    let offsets = committed(&group, &topic).await;
    assert_eq!(offsets, BTreeMap::from([(0, Some(1)), (1, Some(1))]));
    let retry_group = service_config.retry_group_id().unwrap();
    for (g, t) in [(&group, &topic), (&retry_group, &retry)] {
        let (g, t) = (g.clone(), t.clone());
        let description = tokio::task::spawn_blocking(move || {
            testcontainers::describe_group(&testcontainers::bootstrap(), &g, &t).unwrap()
        })
        .await
        .unwrap();
        assert!(
            description
                .partitions
                .values()
                .all(|p| p.consumer.is_none()),
            "group left: {}",
            description.output
        );
    }
    // The waiting retry record was not completed: its next run retries it.
    let retry_offsets = committed(&retry_group, &retry).await;
    assert!(
        retry_offsets.values().all(|o| o.unwrap_or(0) == 0),
        "{retry_offsets:?}"
    );
    eprintln!("shutdown with two records in flight and a retry waiting took {took:?}");
}

// ---------------------------------------------------------------------------
// The order guard.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_guard_keeps_per_key_order_across_retries() {
    let client = client().await;
    let topic = new_topic(&client, "svc-order", 1).await;
    let retry = new_topic(&client, "svc-order-retry", 2).await;
    // a0 fails twice; a1 and a2 must still come after it. b0 and b1 are
    // not held up by key a.
    let producer = client.producer().build().unwrap();
    for (key, value) in [
        ("a", "a0"),
        ("a", "a1"),
        ("b", "b0"),
        ("a", "a2"),
        ("b", "b1"),
    ] {
        producer
            .to(&topic)
            .key(key)
            .value(value)
            .send()
            .await
            .unwrap();
    }
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = with_state(
        Arc::clone(&done),
        |done: Arc<Mutex<Vec<String>>>, r: ConsumerRecord| async move {
            let value = r.value_str().unwrap_or_default().to_string();
            if value == "a0" && attempt(&r) <= 2 {
                return Err(HandlerError::retry("a0 is not ready"));
            }
            done.lock().unwrap().push(value);
            Ok(())
        },
    );
    let group = unique_topic("svc-order-group");
    let handle = Service::new(
        client.clone(),
        config(&group)
            .retry_topic(&retry)
            .retry_delay(Duration::from_millis(300), Duration::from_secs(1)),
        Router::new().route(&topic, Route::new(handler).retries(3).order_guard(true)),
    )
    .unwrap()
    .start()
    .await
    .expect("starts");
    wait_for("all five records", Duration::from_secs(60), || {
        done.lock().unwrap().len() >= 5
    })
    .await;
    let done = done.lock().unwrap().clone();
    let of = |k: char| -> Vec<&str> {
        done.iter()
            .filter(|v| v.starts_with(k))
            .map(String::as_str)
            .collect()
    };
    assert_eq!(
        of('a'),
        ["a0", "a1", "a2"],
        "key a kept its order: {done:?}"
    );
    assert_eq!(of('b'), ["b0", "b1"]);
    let pos = |v: &str| done.iter().position(|d| d == v).unwrap();
    assert!(
        pos("b1") < pos("a0"),
        "key b did not wait for key a: {done:?}"
    );
    let status = handle.status();
    assert_eq!(status.retried, 2, "a0 failed twice");
    assert!(status.followed >= 2, "a1 and a2 followed a0: {status:?}");
    stop(handle).await;
}

// ---------------------------------------------------------------------------
// The commit rule when the dead-letter topic cannot be written.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_dead_letter_copy_fails_holds_the_commits_not_the_records_behind_it() {
    use kastellan::service::ServiceError;
    let client = client().await;
    let topic = new_topic(&client, "svc-holdup", 1).await;
    let dlq = new_topic(&client, "svc-holdup-dlq", 1).await;
    let group = unique_topic("svc-holdup-group");
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = with_state(
        Arc::clone(&handled),
        |handled: Arc<Mutex<Vec<String>>>, r: ConsumerRecord| async move {
            let value = r.value_str().unwrap_or_default().to_string();
            if value == "poison" {
                return Err(HandlerError::dead_letter("poison"));
            }
            handled.lock().unwrap().push(value);
            Ok(())
        },
    );
    let mut handle = Service::new(
        client.clone(),
        config(&group).dead_letter_topic(&dlq),
        Router::new().route(&topic, handler),
    )
    .unwrap()
    .start()
    .await
    .expect("starts");
    let mut errors = handle.errors().expect("errors");
    // The dead-letter topic goes away while the service runs.
    client.admin().delete_topic(&dlq).await.unwrap();
    wait_until("the topic to be gone", Duration::from_secs(60), || {
        let client = client.clone();
        let dlq = dlq.clone();
        async move {
            !client
                .admin()
                .list_topics()
                .await
                .unwrap()
                .iter()
                .any(|t| t.name == dlq)
        }
    })
    .await;
    produce(
        &client,
        &topic,
        std::iter::once("poison".to_string()).chain((1..=9).map(|i| format!("ok-{i}"))),
    )
    .await;
    let reported = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match errors.recv().await.expect("stream open") {
                e @ ServiceError::HandOff { .. } => return e,
                _ => continue,
            }
        }
    })
    .await
    .expect("the failed produce is reported");
    assert!(reported.to_string().contains(&dlq), "{reported}");
    // The records behind it in its partition are handled meanwhile: the
    // copy being stored holds the commits, not the partition's worker.
    wait_for(
        "the records behind the poison record to be handled",
        Duration::from_secs(60),
        || handled.lock().unwrap().len() == 9,
    )
    .await;
    let status = handle.status();
    assert_eq!(status.dead_lettered, 0);
    assert!(
        committed(&group, &topic)
            .await
            .values()
            .all(Option::is_none),
        "the record is not committed while its copy is not stored"
    );
    // The topic comes back: the copy is stored, the record completes.
    wait_until(
        "the topic to be created again",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let dlq = dlq.clone();
            async move {
                client
                    .admin()
                    .create_topic(NewTopic::new(&dlq, 1, 1))
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    let status_handle = handle.status_handle();
    wait_for("the copy to be stored", Duration::from_secs(60), || {
        status_handle.get().dead_lettered == 1
    })
    .await;
    wait_committed_to_end(&client, &group, &topic, Duration::from_secs(60)).await;
    let dead = read_all(&client, &dlq).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value_str(), Some("poison"));
    assert_eq!(handled.lock().unwrap().len(), 9);
    stop(handle).await;
}

// ---------------------------------------------------------------------------
// Replaying the dead-letter topic.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_moves_dead_letters_back_once() {
    use kastellan::service::Replay;
    let client = client().await;
    let orders = new_topic(&client, "svc-replay-orders", 2).await;
    let refunds = new_topic(&client, "svc-replay-refunds", 1).await;
    let dlq = new_topic(&client, "svc-replay-dlq", 2).await;
    produce(&client, &orders, (0..10).map(|i| format!("order-{i}"))).await;
    produce(&client, &refunds, (0..4).map(|i| format!("refund-{i}"))).await;
    // A bug dead-letters every third order and every refund.
    let buggy = |r: ConsumerRecord| async move {
        let value = r.value_str().unwrap_or_default().to_string();
        let n: u32 = value.rsplit('-').next().unwrap().parse().unwrap();
        if value.starts_with("refund") || n.is_multiple_of(3) {
            return Err(HandlerError::dead_letter(format!("bug on {value}")));
        }
        Ok(())
    };
    let group = unique_topic("svc-replay-group");
    let handle = Service::new(
        client.clone(),
        config(&group).dead_letter_topic(&dlq),
        Router::new().route(&orders, buggy).route(&refunds, buggy),
    )
    .unwrap()
    .start()
    .await
    .expect("starts");
    let status = handle.status_handle();
    wait_for("the dead letters", Duration::from_secs(60), || {
        status.get().dead_lettered >= 4 + 4
    })
    .await;
    stop(handle).await;

    // The bug is fixed: replay the orders (not the refunds).
    let replay = Replay::new(&client, &dlq)
        .origin_topic(&orders)
        .origin_group(&group);
    let first = replay.clone().run().await.expect("replay runs");
    assert_eq!((first.replayed, first.skipped, first.unreadable), (4, 4, 0));
    assert_eq!(first.ends.values().sum::<i64>(), 8);
    let again = replay.run().await.expect("replay runs again");
    assert_eq!(again.replayed, 0, "nothing is replayed twice");
    assert_eq!(again.ends, first.ends);

    let back: Vec<Record> = read_all(&client, &orders)
        .await
        .into_iter()
        .filter(|r| r.header(headers::REPLAYED_FROM).is_some())
        .collect();
    let mut values: Vec<&str> = back.iter().map(|r| r.value_str().unwrap()).collect();
    values.sort();
    assert_eq!(values, ["order-0", "order-3", "order-6", "order-9"]);
    let originals = read_all(&client, &orders).await;
    for r in &back {
        assert!(FailureInfo::of(r).is_none(), "failure headers dropped");
        let original = originals
            .iter()
            .find(|o| o.value == r.value && o.header(headers::REPLAYED_FROM).is_none())
            .unwrap();
        assert_eq!(
            r.partition, original.partition,
            "back in its origin partition"
        );
        assert_eq!(r.key, original.key);
    }
    // The refunds are still there for a replay of their own.
    let refunds_replay = Replay::new(&client, &dlq)
        .origin_topic(&refunds)
        .run()
        .await
        .unwrap();
    assert_eq!(refunds_replay.replayed, 4);
}
