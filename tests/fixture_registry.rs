//! The schema-registry fixtures of `testcontainers.rs`: Apicurio Registry
//! speaking the Confluent API, Python's confluent-kafka with its
//! `AvroSerializer`/`AvroDeserializer` against it and the shared broker, and
//! the small HTTP client they are checked with. Avro support builds on
//! these.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::testcontainers::{
    self, http_get, python_with_avro, run_python_checked, start_registry, FixtureError,
    HttpResponse, Registry,
};
use serde_json::{json, Value};

// What a failure message says about the registry: where it is, how long
// its start took (a slow start explains many timeouts) and its size.
fn about(registry: &Registry) -> String {
    let rss = registry
        .pid()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l["VmRSS:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    format!(
        "registry at {} (pid {:?}, RSS {rss}), started in {:?}",
        registry.url(),
        registry.pid(),
        registry.startup_time()
    )
}

fn ok(result: Result<HttpResponse, FixtureError>, registry: &Registry) -> HttpResponse {
    result.unwrap_or_else(|e| {
        panic!(
            "{e}\n({})\n--- registry log (end) ---\n{}",
            about(registry),
            registry.log_tail(30)
        )
    })
}

fn json_of(response: &HttpResponse) -> Value {
    response
        .json()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {response:?}"))
}

// Gone, or a zombie: either way no longer running.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

fn reading_schema() -> Value {
    json!({
        "type": "record",
        "name": "Reading",
        "namespace": "kastellan.fixture",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "name", "type": "string"},
            {"name": "celsius", "type": "double"}
        ]
    })
}

// The body of `POST /subjects/{subject}/versions` for an Avro schema.
fn register_body(schema: &Value) -> String {
    json!({ "schema": schema.to_string() }).to_string()
}

#[test]
fn a_registry_serves_the_confluent_api_and_dies_with_its_handle() {
    let started = Instant::now();
    let registry = start_registry().unwrap_or_else(|e| panic!("{e}"));
    let about = about(&registry);
    eprintln!("{about}; {:?} in all", started.elapsed());
    assert!(
        registry.url().starts_with("http://127.0.0.1:")
            && registry.url().ends_with("/apis/ccompat/v7")
            && registry.url().starts_with(registry.base_url()),
        "{about}"
    );
    assert!(registry.is_running(), "{about}");
    assert_ne!(registry.port(), registry.management_port());

    let subjects = ok(registry.get("/subjects"), &registry);
    assert_eq!(subjects.status, 200, "{about}: {subjects:?}");
    assert_eq!(json_of(&subjects), json!([]), "a new registry is empty");

    // Register version 1 and read it back by id.
    let v1 = reading_schema();
    let created = ok(
        registry.post_json("/subjects/readings-value/versions", &register_body(&v1)),
        &registry,
    );
    assert_eq!(created.status, 200, "{about}: {created:?}");
    let id = json_of(&created)["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {created:?}"));
    let fetched = ok(registry.get(&format!("/schemas/ids/{id}")), &registry);
    assert_eq!(fetched.status, 200, "{about}: {fetched:?}");
    let text = json_of(&fetched)["schema"]
        .as_str()
        .unwrap_or_else(|| panic!("no schema text in {fetched:?}"))
        .to_string();
    // The text may come back whitespace-normalised: compare it parsed.
    let parsed: Value = serde_json::from_str(&text).expect("the schema text is JSON");
    assert_eq!(parsed, v1, "schema {id} as stored");
    let subjects = ok(registry.get("/subjects"), &registry);
    assert_eq!(json_of(&subjects), json!(["readings-value"]));
    // Registering the same schema again gives the same id.
    let again = ok(
        registry.post_json("/subjects/readings-value/versions", &register_body(&v1)),
        &registry,
    );
    assert_eq!(json_of(&again)["id"].as_i64(), Some(id), "{again:?}");

    // The default compatibility is NONE; make the subject BACKWARD.
    let set = ok(
        registry.put_json("/config/readings-value", r#"{"compatibility":"BACKWARD"}"#),
        &registry,
    );
    assert_eq!(set.status, 200, "{about}: {set:?}");
    assert_eq!(json_of(&set)["compatibility"], "BACKWARD", "{set:?}");
    let config = ok(registry.get("/config/readings-value"), &registry);
    assert_eq!(
        json_of(&config)["compatibilityLevel"],
        "BACKWARD",
        "{config:?}"
    );

    // A new field without a default cannot read old data: refused.
    let mut incompatible = v1.clone();
    incompatible["fields"]
        .as_array_mut()
        .expect("fields")
        .push(json!({"name": "unit", "type": "string"}));
    let refused = ok(
        registry.post_json(
            "/subjects/readings-value/versions",
            &register_body(&incompatible),
        ),
        &registry,
    );
    assert_eq!(refused.status, 409, "{about}: {refused:?}");
    let error = json_of(&refused);
    assert_eq!(error["error_code"], 409, "{refused:?}");
    let reason = error["message"].as_str().unwrap_or_default();
    assert!(
        reason.to_ascii_lowercase().contains("incompatible"),
        "409 without a reason: {refused:?}"
    );
    // With a default it can: version 2, a new id.
    let mut compatible = v1.clone();
    compatible["fields"]
        .as_array_mut()
        .expect("fields")
        .push(json!({"name": "unit", "type": "string", "default": "C"}));
    let accepted = ok(
        registry.post_json(
            "/subjects/readings-value/versions",
            &register_body(&compatible),
        ),
        &registry,
    );
    assert_eq!(accepted.status, 200, "{about}: {accepted:?}");
    assert_ne!(json_of(&accepted)["id"].as_i64(), Some(id));
    let versions = ok(registry.get("/subjects/readings-value/versions"), &registry);
    assert_eq!(json_of(&versions), json!([1, 2]));

    // Dropping the handle kills the JVM and removes its directory.
    let pid = registry.pid().expect("the registry's pid");
    let dir = registry.dir().to_path_buf();
    assert!(dir.is_dir());
    drop(registry);
    assert!(process_gone(pid), "registry JVM {pid} still running");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

// Produces three records with confluent-kafka's AvroSerializer (value
// subject `<topic>-value`, TopicNameStrategy, registered on first use),
// then reads them back with a plain Consumer (no deserializer: the raw
// bytes) and decodes each with AvroDeserializer. Prints one JSON object.
const AVRO_ROUND_TRIP: &str = r#"
import json, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

bootstrap, registry_url, topic, schema = sys.argv[1:5]
registry = SchemaRegistryClient({"url": registry_url, "timeout": 10})
serializer = AvroSerializer(registry, schema)
deserializer = AvroDeserializer(registry)
ctx = SerializationContext(topic, MessageField.VALUE)

records = [{"id": i, "name": "reading-%d" % i, "celsius": 20.5 + i} for i in range(3)]
errors = []
def delivered(err, msg):
    if err is not None:
        errors.append(str(err))
producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 30000})
for i, record in enumerate(records):
    producer.produce(topic, key=b"k%d" % i, value=serializer(record, ctx), on_delivery=delivered)
left = producer.flush(40)
if left or errors:
    sys.exit("produce failed: %d not delivered, errors %s" % (left, errors))

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": topic + "-python",
    "enable.auto.commit": False,
})
consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
consumed = []
deadline = time.monotonic() + 40
while len(consumed) < len(records) and time.monotonic() < deadline:
    msg = consumer.poll(0.5)
    if msg is None:
        continue
    if msg.error():
        sys.exit("consume failed: %s" % msg.error())
    raw = msg.value()
    consumed.append({
        "offset": msg.offset(),
        "key": msg.key().decode(),
        "raw_hex": raw.hex(),
        "value": deserializer(raw, ctx),
    })
consumer.close()
print(json.dumps({"produced": records, "consumed": consumed}))
"#;

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

// Avro binary: a zigzag varint long.
fn avro_long(data: &mut &[u8]) -> i64 {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = data.split_first().expect("truncated long");
        *data = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

// The Avro binary body of a `Reading`, decoded by hand: the bytes after the
// Confluent header are plain Avro, nothing else.
fn decode_reading(mut data: &[u8]) -> Value {
    let id = avro_long(&mut data);
    let len = usize::try_from(avro_long(&mut data)).expect("string length");
    let name = std::str::from_utf8(&data[..len])
        .expect("UTF-8")
        .to_string();
    data = &data[len..];
    let celsius = f64::from_le_bytes(data[..8].try_into().expect("a double"));
    assert_eq!(data.len(), 8, "bytes after the record");
    json!({"id": id, "name": name, "celsius": celsius})
}

#[tokio::test(flavor = "multi_thread")]
async fn python_avro_serializer_round_trips_through_the_registry_and_broker() {
    let registry = tokio::task::spawn_blocking(testcontainers::registry)
        .await
        .expect("registry start did not panic");
    assert!(
        std::ptr::eq(registry, testcontainers::registry()),
        "one shared registry per process"
    );
    let about = about(registry);
    let client = common::client().await;
    let topic = common::new_topic(&client, "avro-interop", 1).await;
    let built = Instant::now();
    let python = tokio::task::spawn_blocking(python_with_avro)
        .await
        .expect("venv build did not panic")
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{about}; Python virtualenv ready in {:?}", built.elapsed());

    let schema = reading_schema();
    let bootstrap = testcontainers::bootstrap();
    let run = {
        let (topic, schema) = (topic.clone(), schema.to_string());
        move || {
            run_python_checked(
                &python,
                AVRO_ROUND_TRIP,
                &[&bootstrap, registry.url(), &topic, &schema],
                &[],
                Duration::from_secs(120),
            )
        }
    };
    let ran = Instant::now();
    let stdout = tokio::task::spawn_blocking(run)
        .await
        .expect("script run did not panic")
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n({about})\n--- registry log (end) ---\n{}",
                registry.log_tail(30)
            )
        });
    eprintln!("Python produce and consume took {:?}", ran.elapsed());
    let out: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("script output is not JSON ({e}): {stdout}"));
    let produced = out["produced"].as_array().expect("produced").clone();
    let consumed = out["consumed"].as_array().expect("consumed").clone();
    assert_eq!(produced.len(), 3);
    assert_eq!(consumed.len(), 3, "{about}: {out}");

    // The subject the serializer registered, and its id.
    let subject = format!("{topic}-value");
    let latest = ok(
        registry.get(&format!("/subjects/{subject}/versions/latest")),
        registry,
    );
    assert_eq!(latest.status, 200, "{about}: {latest:?}");
    let registered_id = json_of(&latest)["id"].as_i64().expect("id");

    let mut raw_values = Vec::new();
    for (i, (sent, got)) in produced.iter().zip(&consumed).enumerate() {
        assert_eq!(&got["value"], sent, "record {i} round trip");
        assert_eq!(got["key"], format!("k{i}"));
        let raw = hex_bytes(got["raw_hex"].as_str().expect("raw_hex"));
        assert!(raw.len() > 5, "record {i} too short: {raw:?}");
        assert_eq!(raw[0], 0, "record {i}: Confluent magic byte");
        let id = u32::from_be_bytes(raw[1..5].try_into().expect("4 bytes"));
        assert_eq!(i64::from(id), registered_id, "record {i}: schema id");
        assert_eq!(decode_reading(&raw[5..]), *sent, "record {i}: Avro body");
        raw_values.push(raw);
    }

    // The registry knows that id, with our schema.
    let by_id = ok(
        registry.get(&format!("/schemas/ids/{registered_id}")),
        registry,
    );
    assert_eq!(by_id.status, 200, "{about}: {by_id:?}");
    let stored: Value = serde_json::from_str(json_of(&by_id)["schema"].as_str().expect("schema"))
        .expect("stored schema is JSON");
    assert_eq!(stored, schema, "schema {registered_id}");

    // kastellan's own Reader sees the same bytes.
    let records = common::read_all(&client, &topic).await;
    let values: Vec<Vec<u8>> = records
        .iter()
        .map(|r| r.value.as_deref().unwrap_or_default().to_vec())
        .collect();
    assert_eq!(values, raw_values, "kastellan reads what Python wrote");
}

// A one-connection-at-a-time HTTP server on loopback that answers the n-th
// connection with `replies[n]` (`None`: read the request, never answer).
fn serve(replies: Vec<Option<&'static [u8]>>) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let server = thread::spawn(move || {
        for reply in replies {
            let (mut socket, _) = listener.accept().expect("accept");
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            match reply {
                Some(bytes) => {
                    // In pieces, so the client must reassemble.
                    for piece in bytes.chunks(7) {
                        let _ = socket.write_all(piece);
                        let _ = socket.flush();
                    }
                }
                // Hold the connection open until the client gives up.
                None => {
                    let _ = socket.read(&mut buf);
                }
            }
        }
    });
    (url, server)
}

#[test]
fn the_fixture_http_client_reads_chunked_and_sized_bodies_and_times_out() {
    let (url, server) = serve(vec![
        Some(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1, \r\n2\r\n2]\r\n0\r\n\r\n",
        ),
        Some(b"HTTP/1.1 409 Conflict\r\nContent-Length: 15\r\n\r\n{\"error\":true}\n"),
        Some(b"HTTP/1.1 204 No Content\r\n\r\n"),
        None,
    ]);
    let chunked = http_get(&format!("{url}/a"), Duration::from_secs(5)).expect("chunked");
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.json().expect("JSON"), json!([1, 2]));
    let sized = testcontainers::http_post_json(&url, "{}", Duration::from_secs(5)).expect("sized");
    assert_eq!(sized.status, 409);
    assert_eq!(sized.body, "{\"error\":true}\n");
    assert_eq!(sized.header("content-length"), Some("15"));
    let empty = testcontainers::http_put_json(&url, "{}", Duration::from_secs(5)).expect("204");
    assert_eq!((empty.status, empty.body.as_str()), (204, ""));

    // A server that never answers costs the timeout, not more.
    let started = Instant::now();
    let silent = http_get(&format!("{url}/silent"), Duration::from_millis(300));
    let waited = started.elapsed();
    assert!(
        matches!(silent, Err(FixtureError::Http { ref reason, .. }) if reason.contains("no complete response")),
        "{silent:?}"
    );
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    server.join().expect("server thread");

    // Nothing listening: a prompt error, not a hang.
    let closed = http_get(&url, Duration::from_secs(2));
    assert!(
        matches!(closed, Err(FixtureError::Http { .. })),
        "{closed:?}"
    );
}
