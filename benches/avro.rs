//! Avro in the Confluent wire format, per record, with warm caches: a
//! 10-field record serialized and framed, then deframed and deserialized,
//! through `AvroSerializer` / `AvroDeserializer` (typed), and with the
//! reader's schema one version ahead of the writer's (schema resolution),
//! and through the generic-value pair.
//!
//! ```text
//! cargo bench --features avro --bench avro -- [records] [rounds]
//! ```
//!
//! `records` defaults to 200,000 per round, `rounds` to 5; each line is the
//! median round. The registry is a local peer that answers the first
//! register and schema-by-id calls; once the caches are warm, no call
//! reaches it (the bench checks).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kastellan::avro::apache_avro::{self, AvroSchema};
use kastellan::avro::{
    AvroDeserializer, AvroSerializer, GenericAvroDeserializer, GenericAvroSerializer,
};
use kastellan::schema_registry::SchemaRegistry;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
struct OrderPlaced {
    order_id: String,
    customer_id: String,
    amount_cents: i64,
    quantity: i32,
    unit_price: f64,
    express: bool,
    currency: String,
    placed_at_ms: i64,
    coupon: Option<String>,
    warehouse: i32,
}

/// The same record one version on: a field added with a default.
const READER_V2: &str = r#"{"type":"record","name":"OrderPlaced","fields":[
  {"name":"order_id","type":"string"},{"name":"customer_id","type":"string"},
  {"name":"amount_cents","type":"long"},{"name":"quantity","type":"int"},
  {"name":"unit_price","type":"double"},{"name":"express","type":"boolean"},
  {"name":"currency","type":"string"},{"name":"placed_at_ms","type":"long"},
  {"name":"coupon","type":["null","string"]},{"name":"warehouse","type":"int"},
  {"name":"channel","type":"string","default":"web"}]}"#;

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct OrderPlacedV2 {
    order_id: String,
    customer_id: String,
    amount_cents: i64,
    quantity: i32,
    unit_price: f64,
    express: bool,
    currency: String,
    placed_at_ms: i64,
    coupon: Option<String>,
    warehouse: i32,
    channel: String,
}

fn order(n: i64) -> OrderPlaced {
    OrderPlaced {
        order_id: format!("order-{n:08}"),
        customer_id: "customer-4711".into(),
        amount_cents: 12_345 + n,
        quantity: 3,
        unit_price: 41.15,
        express: n % 2 == 0,
        currency: "EUR".into(),
        placed_at_ms: 1_760_000_000_000 + n,
        coupon: (n % 3 == 0).then(|| "WINTER".to_string()),
        warehouse: 7,
    }
}

/// A registry peer: every register answers id 1, every schema-by-id the
/// schema registered last.
async fn registry_peer() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let schema = Arc::new(Mutex::new(String::new()));
    let counter = Arc::clone(&calls);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let schema = Arc::clone(&schema);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, length) = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap_or(0));
                        break (i + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let body = if head.starts_with("POST") {
                    let req: serde_json::Value =
                        serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
                    *schema.lock().unwrap() = req["schema"].as_str().unwrap().to_string();
                    r#"{"id":1}"#.to_string()
                } else {
                    serde_json::json!({ "schema": *schema.lock().unwrap() }).to_string()
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, calls)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let records: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (url, calls) = registry_peer().await;
        let registry = SchemaRegistry::builder(&url).build().unwrap();
        let ser = AvroSerializer::<OrderPlaced>::new(registry.clone()).unwrap();
        let de = AvroDeserializer::<OrderPlaced>::new(registry.clone()).unwrap();
        let de_v2 = AvroDeserializer::<OrderPlacedV2>::with_schema(
            registry.clone(),
            Some(apache_avro::Schema::parse_str(READER_V2).unwrap()),
        );
        let gser = GenericAvroSerializer::new(registry.clone(), OrderPlaced::get_schema()).unwrap();
        let gde = GenericAvroDeserializer::new(registry.clone(), None);

        let values: Vec<OrderPlaced> = (0..1024).map(order).collect();
        let generic: Vec<apache_avro::types::Value> = values
            .iter()
            .map(|v| apache_avro::to_value(v).unwrap().resolve(&OrderPlaced::get_schema()).unwrap())
            .collect();
        // Warm the caches.
        let framed = ser.serialize("orders", &values[0]).await.unwrap();
        assert_eq!(de.deserialize("orders", &framed).await.unwrap(), values[0]);
        de_v2.deserialize("orders", &framed).await.unwrap();
        gser.serialize("orders", &generic[0]).await.unwrap();
        gde.deserialize("orders", &framed).await.unwrap();
        let warm_calls = calls.load(Ordering::SeqCst);
        let frames: Vec<Vec<u8>> = {
            let mut f = Vec::new();
            for v in &values {
                f.push(ser.serialize("orders", v).await.unwrap());
            }
            f
        };
        println!(
            "10-field record, {} bytes framed on average; {records} records per round, {rounds} rounds (median)",
            frames.iter().map(Vec::len).sum::<usize>() / frames.len()
        );

        macro_rules! measure {
            ($name:expr, $body:expr) => {{
                let mut per = Vec::new();
                for _ in 0..rounds {
                    let start = Instant::now();
                    for i in 0..records {
                        #[allow(clippy::redundant_closure_call)]
                        let _ = std::hint::black_box(($body)(i).await);
                    }
                    per.push(start.elapsed().as_nanos() as f64 / records as f64);
                }
                println!("{:<52} {:>8.0} ns/record", $name, median(per));
            }};
        }
        measure!("typed: serialize + frame", |i: usize| ser
            .serialize("orders", &values[i % 1024]));
        measure!("typed: deframe + deserialize", |i: usize| de
            .deserialize("orders", &frames[i % 1024]));
        measure!("typed: deframe + deserialize, reader schema v2", |i: usize| de_v2
            .deserialize("orders", &frames[i % 1024]));
        measure!("generic: serialize + frame", |i: usize| gser
            .serialize("orders", &generic[i % 1024]));
        measure!("generic: deframe + deserialize", |i: usize| gde
            .deserialize("orders", &frames[i % 1024]));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            warm_calls,
            "a registry call was made with warm caches"
        );
    });
}
