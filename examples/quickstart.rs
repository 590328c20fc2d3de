//! Produce a few events and read them back.
//!
//! Uses the broker at `KAFKA_BOOTSTRAP` (host:port) if set; otherwise fetches
//! Apache Kafka with Maven and starts a local single-node broker for the run.
//!
//! ```text
//! cargo run --example quickstart
//! ```

#[path = "../testcontainers.rs"]
mod testcontainers;

use std::time::{SystemTime, UNIX_EPOCH};

use kastellan::admin::{IfExists, NewTopic};
use kastellan::{Client, ClientConfig, StartOffset};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u32,
    customer: String,
    total_cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = testcontainers::example_bootstrap()?;
    println!("using broker {bootstrap}");

    let client = Client::connect(ClientConfig::new(&bootstrap).client_id("quickstart")).await?;
    let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let topic = format!("quickstart-orders-{secs}");
    client
        .admin()
        .create_topic_with(NewTopic::new(&topic, 3, 1), IfExists::Ignore)
        .await?;

    let producer = client.producer().build()?;
    for order_id in 1..=9 {
        let event = OrderPlaced {
            order_id,
            customer: format!("customer-{}", order_id % 3),
            total_cents: 1000 + 250 * order_id as u64,
        };
        let delivery = producer
            .to(&topic)
            .key(event.customer.clone())
            .header("event-type", "OrderPlaced")
            .json(&event)?
            .send()
            .await?;
        println!(
            "produced order {order_id} -> partition {} offset {}",
            delivery.partition, delivery.offset
        );
    }

    let reader = client
        .reader()
        .topic(&topic)
        .start(StartOffset::Earliest)
        .build()
        .await?;
    let records = reader.read_to_end().await?;
    for record in &records {
        let event: OrderPlaced = record.json()?;
        println!(
            "read {}/{}@{} key={} {:?}",
            record.topic,
            record.partition,
            record.offset,
            record.key_str().unwrap_or("-"),
            event
        );
    }
    println!("{} events produced and read back", records.len());
    client.admin().delete_topic(&topic).await?;
    Ok(())
}
