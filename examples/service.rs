//! A routed service: two topics, each with its handler; a payment that
//! fails twice and succeeds through the retry topic; an undecodable order
//! and a payment that never succeeds landing in the dead-letter topic.
//!
//! Uses the broker at `KAFKA_BOOTSTRAP` (host:port) if set; otherwise fetches
//! Apache Kafka with Maven and starts a local single-node broker for the run.
//!
//! ```text
//! cargo run --example service
//! ```

#[path = "../testcontainers.rs"]
mod testcontainers;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kastellan::admin::{IfExists, NewTopic};
use kastellan::group::{with_state, ConsumerRecord, HandlerError, Outcome};
use kastellan::middleware::{Middleware, Next, Timeout};
use kastellan::service::headers;
use kastellan::service::{Route, Router, Service, ServiceConfig};
use kastellan::{Client, ClientConfig, StartOffset};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Order {
    order_id: u32,
    total_cents: u64,
}

#[derive(Debug, Deserialize)]
struct Payment {
    payment_id: u32,
    /// How many times the payment gateway says "busy" before it answers.
    busy_for: u32,
}

/// Orders: an async fn. An order that does not parse can never succeed:
/// `?` on a JSON error makes it a dead-letter failure.
async fn handle_order(record: ConsumerRecord) -> Result<(), HandlerError> {
    let order: Order = record.json()?;
    println!(
        "  order {} for {} cents (partition {}, offset {})",
        order.order_id, order.total_cents, record.partition, record.offset
    );
    Ok(())
}

/// Payments: a closure with state (a stand-in for a payment gateway
/// client), failing with a retryable error while the gateway is busy.
async fn handle_payment(calls: Arc<AtomicU32>, record: ConsumerRecord) -> Outcome {
    calls.fetch_add(1, Ordering::Relaxed);
    let payment: Payment = record.json()?;
    // 1 on the first delivery, 2 on the first retry, ...
    let attempt = kastellan::service::attempt(&record);
    if attempt <= payment.busy_for {
        println!(
            "  payment {}: gateway busy (attempt {attempt})",
            payment.payment_id
        );
        return Err(HandlerError::retry("payment gateway busy"));
    }
    println!(
        "  payment {} charged on attempt {attempt}",
        payment.payment_id
    );
    Ok(())
}

/// A middleware of our own: logs failures with the time they took.
struct LogFailures;

impl Middleware for LogFailures {
    async fn call(&self, record: ConsumerRecord, next: Next) -> Outcome {
        let started = Instant::now();
        let topic = record.topic.clone();
        let outcome = next.run(record).await;
        if let Err(e) = &outcome {
            println!("  ! {topic}: {e} after {:?}", started.elapsed());
        }
        outcome
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = testcontainers::example_bootstrap()?;
    println!("using broker {bootstrap}");
    let client =
        Client::connect(ClientConfig::new(&bootstrap).client_id("service-example")).await?;

    // Topics of this run.
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let orders = format!("example-orders-{run}");
    let payments = format!("example-payments-{run}");
    let retry = format!("example-billing-retry-{run}");
    let dlq = format!("example-dlq-{run}");
    for topic in [&orders, &payments, &retry, &dlq] {
        client
            .admin()
            .create_topic_with(NewTopic::new(topic, 3, 1), IfExists::Ignore)
            .await?;
    }

    // Some events: one order is not JSON, one payment's gateway is busy
    // twice, one payment's gateway never answers.
    let producer = client.producer().build()?;
    for (key, value) in [
        ("o-1", r#"{"order_id": 1, "total_cents": 1250}"#),
        ("o-2", "this is not JSON"),
        ("o-3", r#"{"order_id": 3, "total_cents": 990}"#),
    ] {
        producer.to(&orders).key(key).value(value).send().await?;
    }
    for (key, value) in [
        ("p-1", r#"{"payment_id": 1, "busy_for": 0}"#),
        ("p-2", r#"{"payment_id": 2, "busy_for": 2}"#),
        ("p-3", r#"{"payment_id": 3, "busy_for": 99}"#),
    ] {
        producer.to(&payments).key(key).value(value).send().await?;
    }

    // The service: two routes, a middleware around both, a retry topic and
    // a dead-letter topic.
    let gateway_calls = Arc::new(AtomicU32::new(0));
    let router = Router::new()
        .route(&orders, handle_order)
        .route(
            &payments,
            Route::new(with_state(Arc::clone(&gateway_calls), handle_payment))
                .retries(2) // at most 3 attempts, then the dead-letter topic
                .layer(Timeout::new(Duration::from_secs(5))),
        )
        .layer(LogFailures);
    let config = ServiceConfig::new(format!("example-billing-{run}"))
        .retry_topic(&retry)
        .dead_letter_topic(&dlq)
        .retry_delay(Duration::from_millis(500), Duration::from_secs(2))
        .offset_reset(StartOffset::Earliest);
    println!("starting the service (group {})", config.group_id());
    let mut running = Service::new(client.clone(), config, router)?
        .start()
        .await?;
    let mut problems = running.errors().expect("taken once");
    tokio::spawn(async move {
        while let Some(problem) = problems.recv().await {
            eprintln!("  service problem: {problem}");
        }
    });

    // 4 records handled (2 orders, payments 1 and 2), 4 retries (payment 2
    // twice, payment 3 twice), 2 dead letters (order 2, payment 3).
    let status = running.status_handle();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status.get();
        if s.handled >= 4 && s.retried >= 4 && s.dead_lettered >= 2 {
            println!(
                "service status: {} handled, {} retried through {retry}, {} dead-lettered",
                s.handled, s.retried, s.dead_lettered
            );
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the example did not finish in time: {s:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the payment gateway was called {} times",
        gateway_calls.load(Ordering::Relaxed)
    );
    running.shutdown(Duration::from_secs(10)).await?;

    // What landed in the dead-letter topic, with its failure headers.
    let dead = client
        .reader()
        .topic(&dlq)
        .start(StartOffset::Earliest)
        .build()
        .await?
        .read_to_end()
        .await?;
    println!("{} records in the dead-letter topic {dlq}:", dead.len());
    for record in &dead {
        let text = |name: &str| {
            String::from_utf8_lossy(record.header(name).unwrap_or_default()).into_owned()
        };
        println!(
            "  {}/{}@{} key={} attempts={} reason={:?} group={}",
            text(headers::ORIGIN_TOPIC),
            text(headers::ORIGIN_PARTITION),
            text(headers::ORIGIN_OFFSET),
            record.key_str().unwrap_or("-"),
            text(headers::ATTEMPT),
            text(headers::REASON),
            text(headers::GROUP),
        );
    }
    for topic in [&orders, &payments, &retry, &dlq] {
        client.admin().delete_topic(topic).await?;
    }
    producer.close(Duration::from_secs(10)).await?;
    Ok(())
}
