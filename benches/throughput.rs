//! kastellan-only throughput: produce N records of S bytes to a 1- and a
//! 6-partition topic, then read them back with the Reader. For comparisons
//! with other clients see `benches/peers`.
//!
//! ```text
//! cargo bench --bench throughput -- [records] [size]
//! ```

#[path = "support/cpu.rs"]
#[allow(dead_code)] // machine_cpu_seconds is for the application benchmark
mod cpu;
#[path = "../testcontainers.rs"]
mod testcontainers;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cpu::cpu_seconds;
use futures::StreamExt;
use kastellan::admin::NewTopic;
use kastellan::{Client, ClientConfig, StartOffset};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let records: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let size: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let bootstrap = testcontainers::shared_bootstrap()?;
    let client = Client::connect(ClientConfig::new(&bootstrap)).await?;
    let payload = Bytes::from(vec![0x5a; size]);
    let mib = (records * size) as f64 / (1024.0 * 1024.0);
    println!("{records} records of {size} bytes against {bootstrap}");
    for partitions in [1, 6] {
        let topic = format!("bench-{partitions}p-{}", std::process::id());
        client
            .admin()
            .create_topic(NewTopic::new(&topic, partitions, 1))
            .await?;
        let in_flight: usize = std::env::var("IN_FLIGHT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let producer = client
            .producer()
            .linger(Duration::from_millis(5))
            .max_in_flight(in_flight)
            .build()?;
        let started = Instant::now();
        let cpu_before = cpu_seconds();
        let mut pending = Vec::with_capacity(records);
        for _ in 0..records {
            pending.push(producer.to(&topic).value(payload.clone()).enqueue().await?);
        }
        for p in pending {
            p.await?;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_before;
        println!(
            "produce {partitions}p: {:>9.0} rec/s {:>7.1} MiB/s  client CPU {:.2} s ({:.2} us/record)",
            records as f64 / secs,
            mib / secs,
            cpu,
            cpu * 1e6 / records as f64
        );
        let reader = client
            .reader()
            .topic(&topic)
            .start(StartOffset::Earliest)
            .build()
            .await?;
        let started = Instant::now();
        let cpu_before = cpu_seconds();
        let mut stream = reader.stream_to_end();
        let mut n = 0;
        while let Some(r) = stream.next().await {
            r?;
            n += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_before;
        assert_eq!(n, records, "read back everything");
        println!(
            "read    {partitions}p: {:>9.0} rec/s {:>7.1} MiB/s  client CPU {:.2} s ({:.2} us/record)",
            records as f64 / secs,
            mib / secs,
            cpu,
            cpu * 1e6 / records as f64
        );
        client.admin().delete_topic(&topic).await?;
    }
    Ok(())
}
