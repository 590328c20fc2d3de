//! Handlers and middleware tested without a broker, through
//! `group::testing::test_record`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kastellan::group::testing::{test_record, Completed};
use kastellan::group::{with_state, ConsumerRecord, FailureKind, Handler, HandlerError, Outcome};
use kastellan::middleware::{
    from_fn, ConcurrencyLimit, Middleware, Next, Panicked, Retry, Stack, TimedOut, Timeout,
};
use kastellan::service::headers::{self, FailureInfo};
use kastellan::Record;

type Trace = Arc<Mutex<Vec<String>>>;

/// A middleware of our own: notes when a record enters and leaves it.
struct Tag {
    name: &'static str,
    trace: Trace,
}

impl Middleware for Tag {
    async fn call(&self, record: ConsumerRecord, next: Next) -> Outcome {
        self.trace.lock().unwrap().push(format!("{} in", self.name));
        let outcome = next.run(record).await;
        self.trace
            .lock()
            .unwrap()
            .push(format!("{} out ok={}", self.name, outcome.is_ok()));
        outcome
    }
}

/// Handles the record twice and succeeds only if both calls did: a
/// middleware may call `next` more than once.
struct Twice;

impl Middleware for Twice {
    async fn call(&self, record: ConsumerRecord, next: Next) -> Outcome {
        next.run(record.clone()).await?;
        next.run(record).await
    }
}

fn record(offset: i64) -> Record {
    Record::new("orders", 0, offset).with_value("42")
}

#[tokio::test]
async fn layers_run_in_the_order_written_then_the_handler() {
    let trace: Trace = Arc::default();
    let seen = Arc::clone(&trace);
    let handler = Stack::new()
        .layer(Tag {
            name: "dead-letter",
            trace: Arc::clone(&trace),
        })
        .layer(Tag {
            name: "retry",
            trace: Arc::clone(&trace),
        })
        .handler(move |r: ConsumerRecord| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(format!("handler {}", r.offset));
                Ok::<(), HandlerError>(())
            }
        });
    let (r, probe) = test_record(record(7));
    handler.handle(r).await.expect("ok");
    assert_eq!(
        *trace.lock().unwrap(),
        [
            "dead-letter in",
            "retry in",
            "handler 7",
            "retry out ok=true",
            "dead-letter out ok=true"
        ]
    );
    assert_eq!(
        probe.completed(),
        Completed::Pending,
        "the outcome is the return value"
    );
}

#[tokio::test]
async fn next_can_run_more_than_once_and_stacks_nest() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let inner = Stack::new()
        .layer(Twice)
        .handler(move |_r: ConsumerRecord| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), HandlerError>(()) }
        });
    // A layered handler is a handler: wrap it again.
    let outer = Stack::new().layer(Twice).handler(inner);
    let (r, _probe) = test_record(record(1));
    outer.handle(r).await.expect("ok");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_struct_handler_with_state_and_a_closure_with_state() {
    struct Ledger {
        total: Mutex<i64>,
    }
    impl Handler for Ledger {
        async fn handle(&self, record: ConsumerRecord) -> Result<(), HandlerError> {
            let cents: i64 = record.json()?;
            *self.total.lock().unwrap() += cents;
            Ok(())
        }
    }
    let ledger = Arc::new(Ledger {
        total: Mutex::new(0),
    });
    let handler = Stack::new()
        .layer(Retry::new(2))
        .handler(Arc::clone(&ledger));
    for offset in 0..3 {
        let (r, _probe) = test_record(record(offset));
        handler.handle(r).await.expect("ok");
    }
    assert_eq!(*ledger.total.lock().unwrap(), 126);
    // Undecodable: a poison record, not retried.
    let (r, _probe) = test_record(Record::new("orders", 0, 9).with_value("forty-two"));
    let failure = handler.handle(r).await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::DeadLetter);

    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let with = with_state(
        Arc::clone(&seen),
        |seen: Arc<Mutex<Vec<i64>>>, r: ConsumerRecord| async move {
            seen.lock().unwrap().push(r.offset);
            Ok::<(), HandlerError>(())
        },
    );
    let (r, _probe) = test_record(record(5));
    Stack::new().handler(with).handle(r).await.expect("ok");
    assert_eq!(*seen.lock().unwrap(), [5]);
}

#[tokio::test]
async fn retry_retries_only_retry_failures_up_to_its_attempts() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let always_busy = Stack::new()
        .layer(Retry::new(4).backoff(Duration::from_millis(1), Duration::from_millis(4)))
        .handler(move |_r: ConsumerRecord| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(HandlerError::retry("busy")) }
        });
    let (r, _probe) = test_record(record(1));
    let failure = always_busy.handle(r).await.unwrap_err();
    assert_eq!(failure.reason(), "busy");
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let poison = Stack::new()
        .layer(Retry::new(4).backoff(Duration::from_millis(1), Duration::from_millis(4)))
        .handler(move |_r: ConsumerRecord| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(HandlerError::dead_letter("bad record")) }
        });
    let (r, _probe) = test_record(record(2));
    assert_eq!(
        poison.handle(r).await.unwrap_err().kind(),
        FailureKind::DeadLetter
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "poison is never retried");
}

#[tokio::test]
async fn retry_stops_waiting_when_the_partition_is_revoked() {
    let handler = Stack::new()
        .layer(Retry::new(10).backoff(Duration::from_secs(60), Duration::from_secs(60)))
        .handler(|_r: ConsumerRecord| async { Err::<(), _>(HandlerError::retry("down")) });
    let (r, probe) = test_record(record(1));
    let started = Instant::now();
    let task = tokio::spawn(async move { handler.handle(r).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    probe.revoke();
    let failure = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("returns soon after the revocation")
        .expect("no panic")
        .unwrap_err();
    assert_eq!(failure.reason(), "down");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_panicking_handler_is_a_retry_failure_with_the_panic_message() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let handler = Stack::new()
        .layer(Retry::new(3).backoff(Duration::from_millis(1), Duration::from_millis(2)))
        .handler(move |r: ConsumerRecord| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if r.offset >= 0 {
                    panic!("no ledger for offset {}", r.offset);
                }
                Ok::<(), HandlerError>(())
            }
        });
    let (r, _probe) = test_record(record(3));
    let failure = handler.handle(r).await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::Retry);
    assert_eq!(failure.reason(), "handler panicked: no ledger for offset 3");
    let panicked = failure
        .error()
        .downcast_ref::<Panicked>()
        .expect("Panicked");
    assert_eq!(panicked.message(), "no ledger for offset 3");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "Retry saw the panics");
}

#[tokio::test]
async fn timeout_fails_slow_handlers_naming_the_limit() {
    let handler = Stack::new()
        .layer(Timeout::new(Duration::from_millis(20)))
        .handler(|r: ConsumerRecord| async move {
            if r.offset == 1 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok::<(), HandlerError>(())
        });
    let (fast, _p1) = test_record(record(0));
    assert!(handler.handle(fast).await.is_ok());
    let (slow, _p2) = test_record(record(1));
    let failure = handler.handle(slow).await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::Retry);
    assert_eq!(
        failure
            .error()
            .downcast_ref::<TimedOut>()
            .map(TimedOut::limit),
        Some(Duration::from_millis(20))
    );
    assert!(failure.reason().contains("20ms"), "{}", failure.reason());
}

#[tokio::test]
async fn a_concurrency_limit_is_shared_by_its_clones() {
    let limit = ConcurrencyLimit::new(2);
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let make = |limit: ConcurrencyLimit| {
        let now = Arc::clone(&now);
        let most = Arc::clone(&most);
        Stack::new()
            .layer(limit)
            .handler(move |_r: ConsumerRecord| {
                let now = Arc::clone(&now);
                let most = Arc::clone(&most);
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok::<(), HandlerError>(())
                }
            })
    };
    let (a, b) = (make(limit.clone()), make(limit.clone()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let h = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (r, probe) = test_record(record(i));
        tasks.push(tokio::spawn(async move {
            // Dropping the probe would count as a revocation.
            let _probe = probe;
            h.handle(r).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("ok");
    }
    assert_eq!(most.load(Ordering::SeqCst), 2);
    assert_eq!(limit.available(), 2);
}

#[tokio::test]
async fn from_fn_middleware_can_complete_without_the_handler() {
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let handler = Stack::new()
        .layer(from_fn(|r: ConsumerRecord, next: Next| async move {
            if r.header("test-only").is_some() {
                return Ok(());
            }
            next.run(r).await
        }))
        .handler(move |_r: ConsumerRecord| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), HandlerError>(()) }
        });
    let (skip, _p1) = test_record(record(1).with_header("test-only", "1"));
    let (keep, _p2) = test_record(record(2));
    handler.handle(skip).await.unwrap();
    handler.handle(keep).await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_handler_reads_the_attempt_of_a_retried_record() {
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let seen = Arc::clone(&attempts);
    let handler = move |r: ConsumerRecord| {
        let seen = Arc::clone(&seen);
        async move {
            let attempt = FailureInfo::of(&r).map_or(0, |i| i.attempt);
            seen.lock().unwrap().push(attempt);
            Ok::<(), HandlerError>(())
        }
    };
    let (first, _p1) = test_record(record(1));
    handler.handle(first).await.unwrap();
    let retried = Record::new("orders", 0, 1)
        .with_header(headers::ORIGIN_TOPIC, "orders")
        .with_header(headers::ORIGIN_PARTITION, "0")
        .with_header(headers::ORIGIN_OFFSET, "1")
        .with_header(headers::GROUP, "billing")
        .with_header(headers::ATTEMPT, "2")
        .with_header(headers::REASON, "busy")
        .with_header(headers::FIRST_FAILURE, "1")
        .with_header(headers::NOT_BEFORE, "2");
    let (again, _p2) = test_record(retried);
    handler.handle(again).await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), [0, 2]);
}
