//! Avro and the schema registry against a real registry (Apicurio Registry
//! through its Confluent-compatible API) and the real broker: round trips
//! for keys and values under each subject name strategy, the registry API
//! and its error codes, interoperability with Python's confluent-kafka in
//! both directions, schema evolution, poison records in a dead-letter topic,
//! and how often the registry is asked.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::testcontainers::{self, python_with_avro, run_python_checked, Registry};
use common::{client, new_topic, read_all, unique_topic, wait_for, RunningConsumer};
use kastellan::avro::apache_avro::{self, types::Value};
use kastellan::avro::{
    AvroDeserializer, AvroSerializer, GenericAvroDeserializer, Part, SubjectNameStrategy,
};
use kastellan::group::{ConsumerRecord, FailureKind, HandlerError};
use kastellan::middleware::{DeadLetter, Stack};
use kastellan::schema_registry::{
    codes, CompatibilityLevel, Schema, SchemaId, SchemaRegistry, Version,
};
use kastellan::service::headers::FailureInfo;
use kastellan::{Client, Error, Record};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// Helpers.

/// The shared registry, started on first use (a JVM: off the runtime's
/// threads).
async fn registry() -> &'static Registry {
    tokio::task::spawn_blocking(testcontainers::registry)
        .await
        .expect("registry start did not panic")
}

/// A kastellan registry client of its own (empty caches, its own count).
fn registry_client(registry: &Registry) -> SchemaRegistry {
    SchemaRegistry::builder(registry.url())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("registry client builds")
}

/// Runs a test body with an upper bound, so a hang fails instead of
/// stalling the suite; shows the registry's log when it fails that way.
async fn bounded<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(t) => t,
        Err(_) => panic!(
            "the test did not finish within {limit:?}\n--- registry log (end) ---\n{}",
            testcontainers::registry().log_tail(30)
        ),
    }
}

fn avro_schema(text: &str) -> apache_avro::Schema {
    apache_avro::Schema::parse_str(text).expect("a valid Avro schema")
}

/// The schema id in a Confluent frame.
fn frame_id(frame: &[u8]) -> SchemaId {
    assert_eq!(frame[0], 0, "magic byte of {frame:?}");
    SchemaId(u32::from_be_bytes(frame[1..5].try_into().unwrap()))
}

/// Schema texts compare as parsed JSON: the registry may normalise
/// whitespace.
fn same_schema(a: &str, b: &str) -> bool {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("schema JSON");
    parse(a) == parse(b)
}

fn registry_code(e: &Error) -> Option<i32> {
    match e {
        Error::Registry { code, .. } => *code,
        _ => None,
    }
}

async fn produce(client: &Client, topic: &str, records: Vec<(Option<Vec<u8>>, Vec<u8>)>) {
    let producer = client.producer().build().expect("producer builds");
    for (key, value) in records {
        let message = producer.to(topic).value(value);
        let message = match key {
            Some(key) => message.key(key),
            None => message,
        };
        message.send().await.expect("record delivered");
    }
    producer
        .close(Duration::from_secs(10))
        .await
        .expect("producer closes");
}

// ---------------------------------------------------------------------------
// Schemas and values.

const ORDER_KEY: &str = r#"{"type":"record","name":"OrderKey","namespace":"kastellan.it",
  "fields":[{"name":"id","type":"string"}]}"#;
const ORDER: &str = r#"{"type":"record","name":"Order","namespace":"kastellan.it","fields":[
  {"name":"id","type":"string"},
  {"name":"amount_cents","type":"long"},
  {"name":"lines","type":{"type":"array","items":"string"}},
  {"name":"note","type":["null","string"],"default":null}]}"#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderKey {
    id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: String,
    amount_cents: i64,
    lines: Vec<String>,
    note: Option<String>,
}

fn order(n: i64) -> Order {
    Order {
        id: format!("o-{n}"),
        amount_cents: 1_000 + n,
        lines: (0..n % 3).map(|i| format!("line-{i}")).collect(),
        note: (n % 2 == 0).then(|| format!("note {n}")),
    }
}

// ---------------------------------------------------------------------------
// Round trips under each subject name strategy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_values_round_trip_through_the_registry_under_each_subject_strategy() {
    let registry = registry().await;
    bounded(Duration::from_secs(180), async {
        let kafka = client().await;
        let sr = registry_client(registry);
        let strategies = [
            SubjectNameStrategy::TopicName,
            SubjectNameStrategy::RecordName,
            SubjectNameStrategy::TopicRecordName,
        ];
        for strategy in strategies {
            let topic = new_topic(&kafka, "avro-strategy", 1).await;
            let keys = AvroSerializer::<OrderKey>::with_schema(sr.clone(), avro_schema(ORDER_KEY))
                .unwrap()
                .part(Part::Key)
                .subject_name_strategy(strategy);
            let values = AvroSerializer::<Order>::with_schema(sr.clone(), avro_schema(ORDER))
                .unwrap()
                .subject_name_strategy(strategy);
            let producer = kafka.producer().build().unwrap();
            for n in 0..5 {
                let value = order(n);
                producer
                    .to(&topic)
                    .key(
                        keys.serialize(
                            &topic,
                            &OrderKey {
                                id: value.id.clone(),
                            },
                        )
                        .await
                        .unwrap(),
                    )
                    .value(values.serialize(&topic, &value).await.unwrap())
                    .send()
                    .await
                    .unwrap();
            }
            producer.close(Duration::from_secs(10)).await.unwrap();

            // Read back with deserializers on a client of their own.
            let reader_sr = registry_client(registry);
            let read_keys = AvroDeserializer::<OrderKey>::with_schema(
                reader_sr.clone(),
                Some(avro_schema(ORDER_KEY)),
            );
            let read_values =
                AvroDeserializer::<Order>::with_schema(reader_sr.clone(), Some(avro_schema(ORDER)));
            let records = read_all(&kafka, &topic).await;
            assert_eq!(records.len(), 5, "{strategy:?}");
            for (n, record) in records.iter().enumerate() {
                let key = record.key.as_deref().unwrap();
                let value = record.value.as_deref().unwrap();
                assert_eq!(
                    read_keys.deserialize(&topic, key).await.unwrap(),
                    OrderKey {
                        id: format!("o-{n}")
                    },
                    "{strategy:?} key {n}"
                );
                assert_eq!(
                    read_values.deserialize(&topic, value).await.unwrap(),
                    order(n as i64),
                    "{strategy:?} value {n}"
                );
            }
            assert_eq!(reader_sr.requests(), 2, "one by-id call per schema");

            // The subjects the strategy named, holding the ids in the frames.
            let (key_subject, value_subject) = match strategy {
                SubjectNameStrategy::TopicName => {
                    (format!("{topic}-key"), format!("{topic}-value"))
                }
                SubjectNameStrategy::RecordName => (
                    "kastellan.it.OrderKey".to_string(),
                    "kastellan.it.Order".to_string(),
                ),
                SubjectNameStrategy::TopicRecordName => (
                    format!("{topic}-kastellan.it.OrderKey"),
                    format!("{topic}-kastellan.it.Order"),
                ),
            };
            let subjects: BTreeSet<String> = sr.subjects().await.unwrap().into_iter().collect();
            for subject in [&key_subject, &value_subject] {
                assert!(
                    subjects.contains(subject),
                    "{strategy:?}: {subject} in {subjects:?}"
                );
            }
            let of_topic: Vec<&String> =
                subjects.iter().filter(|s| s.starts_with(&topic)).collect();
            let expected: Vec<&String> = match strategy {
                SubjectNameStrategy::RecordName => vec![],
                _ => {
                    let mut v = vec![&key_subject, &value_subject];
                    v.sort();
                    v
                }
            };
            assert_eq!(of_topic, expected, "{strategy:?}: the topic's subjects");
            for (subject, frame, text) in [
                (&key_subject, records[0].key.as_deref().unwrap(), ORDER_KEY),
                (&value_subject, records[0].value.as_deref().unwrap(), ORDER),
            ] {
                let latest = sr.version(subject, Version::Latest).await.unwrap();
                assert_eq!(latest.id, frame_id(frame), "{strategy:?}: {subject}");
                assert!(same_schema(
                    &latest.schema.text,
                    &serde_json::to_string(&avro_schema(text)).unwrap()
                ));
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// The registry API and its errors.

const READING_V1: &str = r#"{"type":"record","name":"Reading","namespace":"kastellan.api",
  "fields":[{"name":"id","type":"long"},{"name":"celsius","type":"double"}]}"#;
const READING_V2: &str = r#"{"type":"record","name":"Reading","namespace":"kastellan.api",
  "fields":[{"name":"id","type":"long"},{"name":"celsius","type":"double"},
            {"name":"unit","type":"string","default":"C"}]}"#;
const READING_BAD: &str = r#"{"type":"record","name":"Reading","namespace":"kastellan.api",
  "fields":[{"name":"id","type":"long"},{"name":"celsius","type":"double"},
            {"name":"station","type":"string"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_api_works_against_a_real_registry_and_its_errors_are_clear() {
    let registry = registry().await;
    bounded(Duration::from_secs(120), async {
        let sr = registry_client(registry);
        let subject = unique_topic("api-readings");
        let (v1, v2, bad) = (
            Schema::avro(READING_V1),
            Schema::avro(READING_V2),
            Schema::avro(READING_BAD),
        );

        // Register, register again, look up, fetch by id.
        let id1 = sr.register(&subject, &v1).await.unwrap();
        assert_eq!(
            registry_client(registry)
                .register(&subject, &v1)
                .await
                .unwrap(),
            id1
        );
        let found = sr.lookup(&subject, &v1).await.unwrap();
        assert_eq!(
            (found.subject.as_str(), found.id, found.version),
            (subject.as_str(), id1, 1)
        );
        let by_id = registry_client(registry).schema_by_id(id1).await.unwrap();
        assert!(same_schema(&by_id.text, READING_V1), "{}", by_id.text);
        assert!(sr.subjects().await.unwrap().contains(&subject));

        // Compatibility level, checks, a second version.
        sr.set_config(&subject, CompatibilityLevel::Backward)
            .await
            .unwrap();
        assert_eq!(
            sr.config(&subject).await.unwrap(),
            CompatibilityLevel::Backward
        );
        let ok = sr
            .check_compatibility(&subject, &v2, Version::Latest)
            .await
            .unwrap();
        assert!(ok.is_compatible, "{ok:?}");
        let refused = sr
            .check_compatibility(&subject, &bad, Version::Latest)
            .await
            .unwrap();
        assert!(!refused.is_compatible, "{refused:?}");
        eprintln!("incompatible check: {:?}", refused.messages);
        let id2 = sr.register(&subject, &v2).await.unwrap();
        assert_ne!(id1, id2);
        assert_eq!(sr.versions(&subject).await.unwrap(), vec![1, 2]);
        assert_eq!(sr.version(&subject, Version::Latest).await.unwrap().id, id2);
        assert_eq!(
            sr.version(&subject, Version::Number(1)).await.unwrap().id,
            id1
        );

        // The errors, as the user sees them.
        let shown = |what: &str, e: &Error| {
            let text = e.to_string();
            eprintln!("{what}: {text}");
            assert!(
                text.contains(registry.url()),
                "{what}: names the registry: {text}"
            );
            text
        };
        let missing = unique_topic("api-missing");
        let e = sr.lookup(&missing, &v1).await.unwrap_err();
        assert_eq!(registry_code(&e), Some(codes::SUBJECT_NOT_FOUND), "{e:?}");
        shown("lookup in a missing subject", &e);
        let e = sr.versions(&missing).await.unwrap_err();
        assert_eq!(registry_code(&e), Some(codes::SUBJECT_NOT_FOUND), "{e:?}");
        let e = sr.lookup(&subject, &bad).await.unwrap_err();
        assert_eq!(registry_code(&e), Some(codes::SCHEMA_NOT_FOUND), "{e:?}");
        shown("lookup of an unregistered schema", &e);
        let e = sr.schema_by_id(SchemaId(1_999_999_999)).await.unwrap_err();
        assert_eq!(registry_code(&e), Some(codes::SCHEMA_NOT_FOUND), "{e:?}");
        shown("an unknown id", &e);
        let e = sr.version(&subject, Version::Number(99)).await.unwrap_err();
        assert_eq!(registry_code(&e), Some(codes::VERSION_NOT_FOUND), "{e:?}");
        let e = sr.register(&subject, &bad).await.unwrap_err();
        assert_eq!(registry_code(&e), Some(codes::INCOMPATIBLE_SCHEMA), "{e:?}");
        assert!(!e.is_retriable());
        // Apicurio names the offending field.
        let text = shown("an incompatible schema", &e);
        assert!(text.to_ascii_lowercase().contains("incompatible"), "{text}");
        assert!(text.contains("station"), "the registry's reason: {text}");
        let e = sr
            .register(
                &unique_topic("api-invalid"),
                &Schema::avro(r#"{"type":"record","name":"X"}"#),
            )
            .await
            .unwrap_err();
        assert_eq!(registry_code(&e), Some(codes::INVALID_SCHEMA), "{e:?}");
        assert!(!e.is_retriable());
        shown("an invalid schema", &e);

        // Delete: the versions it had; the subject is gone, the ids stay.
        assert_eq!(sr.delete_subject(&subject).await.unwrap(), vec![1, 2]);
        assert!(!sr.subjects().await.unwrap().contains(&subject));
        let e = sr.versions(&subject).await.unwrap_err();
        assert_eq!(registry_code(&e), Some(codes::SUBJECT_NOT_FOUND), "{e:?}");
        let by_id = registry_client(registry).schema_by_id(id2).await.unwrap();
        assert!(same_schema(&by_id.text, READING_V2));
    })
    .await;
}

// ---------------------------------------------------------------------------
// Interoperability with Python's confluent-kafka (AvroSerializer and
// AvroDeserializer, fastavro underneath), both directions.

const SENSOR: &str = r#"{"type":"record","name":"SensorReading","namespace":"kastellan.interop",
  "fields":[{"name":"id","type":"long"},{"name":"name","type":"string"},
            {"name":"celsius","type":"double"},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"note","type":["null","string"],"default":null}]}"#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SensorReading {
    id: i64,
    name: String,
    celsius: f64,
    tags: Vec<String>,
    note: Option<String>,
}

fn sensor(n: i64) -> SensorReading {
    SensorReading {
        id: n,
        name: format!("sensor-{n}"),
        celsius: 20.5 + n as f64,
        tags: (0..n % 3).map(|i| format!("t{i}")).collect(),
        note: (n % 2 == 1).then(|| format!("odd {n}")),
    }
}

/// The generic value a `SensorReading` reads as.
fn sensor_value(r: &SensorReading) -> Value {
    Value::Record(vec![
        ("id".into(), Value::Long(r.id)),
        ("name".into(), Value::String(r.name.clone())),
        ("celsius".into(), Value::Double(r.celsius)),
        (
            "tags".into(),
            Value::Array(r.tags.iter().cloned().map(Value::String).collect()),
        ),
        (
            "note".into(),
            match &r.note {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(n) => Value::Union(1, Box::new(Value::String(n.clone()))),
            },
        ),
    ])
}

// Reads what kastellan wrote to `from_kastellan` with AvroDeserializer;
// serializes the same values under that topic's subject with
// AvroSerializer (for a byte comparison); produces records of its own to
// `to_kastellan` with AvroSerializer (registered under
// `<to_kastellan>-value`). Prints one JSON object.
const PYTHON_INTEROP: &str = r#"
import json, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

bootstrap, registry_url, from_kastellan, to_kastellan, schema, count = sys.argv[1:7]
count = int(count)
registry = SchemaRegistryClient({"url": registry_url, "timeout": 10})
serializer = AvroSerializer(registry, schema)
deserializer = AvroDeserializer(registry)
ctx_from = SerializationContext(from_kastellan, MessageField.VALUE)
ctx_to = SerializationContext(to_kastellan, MessageField.VALUE)

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": from_kastellan + "-python",
    "enable.auto.commit": False,
})
consumer.assign([TopicPartition(from_kastellan, 0, OFFSET_BEGINNING)])
read = []
deadline = time.monotonic() + 60
while len(read) < count and time.monotonic() < deadline:
    msg = consumer.poll(0.5)
    if msg is None:
        continue
    if msg.error():
        sys.exit("consume failed: %s" % msg.error())
    value = deserializer(msg.value(), ctx_from)
    read.append({
        "raw_hex": msg.value().hex(),
        "value": value,
        "again_hex": serializer(value, ctx_from).hex(),
    })
consumer.close()
if len(read) < count:
    sys.exit("read %d of %d records from kastellan" % (len(read), count))

written = [
    {"id": 100 + i, "name": "py-%d" % i, "celsius": 0.25 * i - 3.5,
     "tags": ["p%d" % j for j in range(i % 4)], "note": None if i % 2 else "even %d" % i}
    for i in range(count)
]
errors = []
def delivered(err, msg):
    if err is not None:
        errors.append(str(err))
producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 30000})
raw = []
for record in written:
    value = serializer(record, ctx_to)
    raw.append(value.hex())
    producer.produce(to_kastellan, value=value, on_delivery=delivered)
left = producer.flush(40)
if left or errors:
    sys.exit("produce failed: %d not delivered, errors %s" % (left, errors))
print(json.dumps({"read": read, "written": written, "written_hex": raw}))
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_kastellan_read_each_others_avro_records_with_identical_framing() {
    const N: usize = 6;
    let registry = registry().await;
    bounded(Duration::from_secs(300), async {
        let kafka = client().await;
        let python = tokio::task::spawn_blocking(python_with_avro)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        let from_kastellan = new_topic(&kafka, "avro-to-python", 1).await;
        let to_kastellan = new_topic(&kafka, "avro-from-python", 1).await;
        let sr = registry_client(registry);
        let serializer =
            AvroSerializer::<SensorReading>::with_schema(sr.clone(), avro_schema(SENSOR)).unwrap();
        // Python registers the very text kastellan registered.
        let schema_text = serde_json::to_string(serializer.schema()).unwrap();
        let mut frames = Vec::new();
        for n in 0..N as i64 {
            frames.push(
                serializer
                    .serialize(&from_kastellan, &sensor(n))
                    .await
                    .unwrap(),
            );
        }
        produce(
            &kafka,
            &from_kastellan,
            frames.iter().map(|f| (None, f.clone())).collect(),
        )
        .await;

        let run = {
            let (from, to, text) = (
                from_kastellan.clone(),
                to_kastellan.clone(),
                schema_text.clone(),
            );
            let bootstrap = testcontainers::bootstrap();
            move || {
                run_python_checked(
                    &python,
                    PYTHON_INTEROP,
                    &[
                        &bootstrap,
                        registry.url(),
                        &from,
                        &to,
                        &text,
                        &N.to_string(),
                    ],
                    &[],
                    Duration::from_secs(150),
                )
            }
        };
        let started = Instant::now();
        let stdout = tokio::task::spawn_blocking(run)
            .await
            .unwrap()
            .unwrap_or_else(|e| {
                panic!("{e}\n--- registry log (end) ---\n{}", registry.log_tail(30))
            });
        eprintln!("the Python side took {:?}", started.elapsed());
        let out: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));

        // kastellan -> Python: the values, and Python's own serialization
        // of them is byte for byte kastellan's, with the same schema id.
        let read = out["read"].as_array().unwrap();
        assert_eq!(read.len(), N);
        for (n, (got, frame)) in read.iter().zip(&frames).enumerate() {
            assert_eq!(
                got["raw_hex"],
                hex(frame),
                "record {n} as Python received it"
            );
            let value: SensorReading = serde_json::from_value(got["value"].clone()).unwrap();
            assert_eq!(value, sensor(n as i64), "Python reads record {n}");
            assert_eq!(
                got["again_hex"],
                hex(frame),
                "Python writes record {n} identically"
            );
        }

        // Python -> kastellan: typed and generic reads, and kastellan's
        // serialization of the same values is Python's bytes.
        let written: Vec<SensorReading> = serde_json::from_value(out["written"].clone()).unwrap();
        let written_hex = out["written_hex"].as_array().unwrap();
        let records = read_all(&kafka, &to_kastellan).await;
        assert_eq!(records.len(), N);
        let reader_sr = registry_client(registry);
        let typed = AvroDeserializer::<SensorReading>::with_schema(
            reader_sr.clone(),
            Some(avro_schema(SENSOR)),
        );
        let generic = GenericAvroDeserializer::new(reader_sr.clone(), None);
        let python_id = frame_id(records[0].value.as_deref().unwrap());
        let latest = sr
            .version(&format!("{to_kastellan}-value"), Version::Latest)
            .await
            .unwrap();
        assert_eq!(latest.id, python_id, "the id Python registered");
        for (n, record) in records.iter().enumerate() {
            let frame = record.value.as_deref().unwrap();
            assert_eq!(hex(frame), written_hex[n].as_str().unwrap(), "record {n}");
            assert_eq!(
                typed.deserialize(&to_kastellan, frame).await.unwrap(),
                written[n]
            );
            assert_eq!(
                generic.deserialize(&to_kastellan, frame).await.unwrap(),
                sensor_value(&written[n])
            );
            let ours = serializer
                .serialize(&to_kastellan, &written[n])
                .await
                .unwrap();
            assert_eq!(
                hex(&ours),
                hex(frame),
                "kastellan writes Python's record {n} identically"
            );
        }
        assert_eq!(
            reader_sr.requests(),
            1,
            "one by-id call for Python's schema"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Schema evolution through the registry.

const USER_V1: &str = r#"{"type":"record","name":"User","namespace":"kastellan.evolution",
  "fields":[{"name":"id","type":"long"},{"name":"name","type":"string"}]}"#;
const USER_V2: &str = r#"{"type":"record","name":"User","namespace":"kastellan.evolution",
  "fields":[{"name":"id","type":"long"},{"name":"name","type":"string"},
            {"name":"email","type":"string","default":"unknown"}]}"#;
// A field added without a default: a v3 reader cannot read v1 or v2 data.
const USER_V3: &str = r#"{"type":"record","name":"User","namespace":"kastellan.evolution",
  "fields":[{"name":"id","type":"long"},{"name":"name","type":"string"},
            {"name":"email","type":"string","default":"unknown"},
            {"name":"tier","type":"int"}]}"#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserV1 {
    id: i64,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserV2 {
    id: i64,
    name: String,
    email: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserV3 {
    id: i64,
    name: String,
    email: String,
    tier: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_evolve_through_the_registry_and_incompatible_changes_are_refused() {
    let registry = registry().await;
    bounded(Duration::from_secs(180), async {
        let kafka = client().await;
        let sr = registry_client(registry);
        let topic = new_topic(&kafka, "avro-evolution", 1).await;
        let subject = format!("{topic}-value");
        // Apicurio's default level is NONE.
        sr.set_config(&subject, CompatibilityLevel::Backward)
            .await
            .unwrap();

        let v1 = AvroSerializer::<UserV1>::with_schema(sr.clone(), avro_schema(USER_V1)).unwrap();
        let v2 = AvroSerializer::<UserV2>::with_schema(sr.clone(), avro_schema(USER_V2)).unwrap();
        let mut frames = Vec::new();
        for n in 0..3 {
            let user = UserV1 {
                id: n,
                name: format!("user-{n}"),
            };
            frames.push((None, v1.serialize(&topic, &user).await.unwrap()));
        }
        for n in 3..6 {
            let user = UserV2 {
                id: n,
                name: format!("user-{n}"),
                email: format!("u{n}@example.com"),
            };
            frames.push((None, v2.serialize(&topic, &user).await.unwrap()));
        }
        produce(&kafka, &topic, frames).await;
        assert_eq!(sr.versions(&subject).await.unwrap(), vec![1, 2]);

        // A v1 reader reads v2 records (the new field dropped), a v2 reader
        // v1 records (the new field's default).
        let records = read_all(&kafka, &topic).await;
        assert_eq!(records.len(), 6);
        let reader_sr = registry_client(registry);
        let read_v1 =
            AvroDeserializer::<UserV1>::with_schema(reader_sr.clone(), Some(avro_schema(USER_V1)));
        let read_v2 =
            AvroDeserializer::<UserV2>::with_schema(reader_sr.clone(), Some(avro_schema(USER_V2)));
        for (n, record) in records.iter().enumerate() {
            let frame = record.value.as_deref().unwrap();
            let n = n as i64;
            let name = format!("user-{n}");
            assert_eq!(
                read_v1.deserialize(&topic, frame).await.unwrap(),
                UserV1 {
                    id: n,
                    name: name.clone()
                }
            );
            let email = if n < 3 {
                "unknown".to_string()
            } else {
                format!("u{n}@example.com")
            };
            assert_eq!(
                read_v2.deserialize(&topic, frame).await.unwrap(),
                UserV2 { id: n, name, email }
            );
        }
        assert_eq!(
            reader_sr.requests(),
            2,
            "one by-id call per writer's schema"
        );

        // A reader that cannot read the data: a clear, poison error.
        let read_v3 =
            AvroDeserializer::<UserV3>::with_schema(reader_sr.clone(), Some(avro_schema(USER_V3)));
        let e = read_v3
            .deserialize(&topic, records[0].value.as_deref().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Serialization { .. }), "{e:?}");
        assert!(e.to_string().contains("tier"), "{e}");

        // An incompatible change is refused at register, with the
        // registry's reason; the subject keeps its two versions.
        let v3 = AvroSerializer::<UserV3>::with_schema(sr.clone(), avro_schema(USER_V3)).unwrap();
        let user = UserV3 {
            id: 9,
            name: "x".into(),
            email: "y".into(),
            tier: 1,
        };
        let e = v3.serialize(&topic, &user).await.unwrap_err();
        eprintln!("refused: {e}");
        assert_eq!(registry_code(&e), Some(codes::INCOMPATIBLE_SCHEMA), "{e:?}");
        assert!(e.to_string().contains("tier"), "the registry's reason: {e}");
        assert_eq!(sr.versions(&subject).await.unwrap(), vec![1, 2]);

        // register_all (a service's schema migration at start-up) names
        // the incompatible subject and registers nothing, not even the
        // compatible schema of a new subject listed before it.
        let fresh = format!("{topic}-audit-value");
        let e = sr
            .register_all(&[
                (fresh.clone(), Schema::avro(USER_V1)),
                (subject.clone(), Schema::avro(USER_V3)),
            ])
            .await
            .unwrap_err();
        eprintln!("register_all: {e}");
        assert_eq!(registry_code(&e), Some(codes::INCOMPATIBLE_SCHEMA), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&format!("subject `{subject}`")), "{text}");
        assert!(!text.contains(&format!("subject `{fresh}`")), "{text}");
        assert!(text.contains("none was registered"), "{text}");
        // Apicurio's check gives no reason; the library adds its own.
        assert!(text.contains("'tier'"), "why: {text}");
        let e = sr.versions(&fresh).await.unwrap_err();
        assert_eq!(registry_code(&e), Some(codes::SUBJECT_NOT_FOUND), "{e:?}");
        assert_eq!(sr.versions(&subject).await.unwrap(), vec![1, 2]);
        // With the compatible change it registers both.
        let ids = sr
            .register_all(&[
                (fresh.clone(), Schema::avro(USER_V1)),
                (subject.clone(), Schema::avro(USER_V2)),
            ])
            .await
            .unwrap();
        assert_eq!(ids[1], frame_id(records[5].value.as_deref().unwrap()));
        assert_eq!(sr.versions(&fresh).await.unwrap(), vec![1]);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Poison records: malformed frames and unknown schema ids.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_unknown_ids_go_to_the_dead_letter_topic_and_good_records_are_handled()
{
    let registry = registry().await;
    bounded(Duration::from_secs(240), async {
        let kafka = client().await;
        let topic = new_topic(&kafka, "avro-poison", 1).await;
        let dlq = new_topic(&kafka, "avro-poison-dlq", 1).await;
        let sr = registry_client(registry);
        let serializer =
            AvroSerializer::<Order>::with_schema(sr.clone(), avro_schema(ORDER)).unwrap();
        let good: Vec<Vec<u8>> = {
            let mut v = Vec::new();
            for n in 0..8 {
                v.push(serializer.serialize(&topic, &order(n)).await.unwrap());
            }
            v
        };
        let id = frame_id(&good[0]).0.to_be_bytes();
        let unknown_id = 2_000_000_000u32.to_be_bytes();
        let mut truncated = good[1].clone();
        truncated.truncate(truncated.len() - 3);
        let mut trailing = good[2].clone();
        trailing.extend_from_slice(b"extra");
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("too short", vec![0, 0, 0]),
            (
                "wrong magic byte",
                [&[1u8][..], &id, &good[0][5..]].concat(),
            ),
            (
                "unknown schema id",
                [&[0u8][..], &unknown_id, &good[0][5..]].concat(),
            ),
            ("truncated body", truncated),
            ("bytes after the value", trailing),
            (
                "hostile length",
                [&[0u8][..], &id, &[0xfe, 0xff, 0xff, 0xff, 0x0f][..]].concat(),
            ),
        ];
        // Good and bad records interleaved.
        let mut records = Vec::new();
        for (i, frame) in good.iter().enumerate() {
            records.push((Some(format!("good-{i}").into_bytes()), frame.clone()));
            if let Some((what, frame)) = bad.get(i) {
                records.push((Some(format!("bad-{what}").into_bytes()), frame.clone()));
            }
        }
        produce(&kafka, &topic, records).await;

        // A group consumer whose handler uses `?` on the deserializer, with
        // the dead-letter middleware in front of it.
        let handled: Arc<Mutex<Vec<Order>>> = Arc::default();
        let deserializer = AvroDeserializer::<Order>::with_schema(
            registry_client(registry),
            Some(avro_schema(ORDER)),
        );
        let handler = {
            let handled = Arc::clone(&handled);
            move |r: ConsumerRecord| {
                let (handled, deserializer) = (Arc::clone(&handled), deserializer.clone());
                async move {
                    let value = r.value.as_deref().unwrap_or_default();
                    let order = deserializer.deserialize(&r.topic, value).await?;
                    handled.lock().unwrap().push(order);
                    Ok::<(), HandlerError>(())
                }
            }
        };
        let group = unique_topic("avro-poison-group");
        let producer = kafka.producer().build().unwrap();
        let layered = Stack::new()
            .layer(DeadLetter::new(producer, &dlq).group(&group))
            .handler(handler);
        let consumer = common::group_member(&kafka, &group, &topic)
            .build()
            .unwrap();
        let running = RunningConsumer::spawn(consumer, layered);
        wait_for("every good record handled", Duration::from_secs(90), || {
            handled.lock().unwrap().len() >= good.len()
        })
        .await;
        let started = Instant::now();
        let dead = loop {
            let dead = read_all(&kafka, &dlq).await;
            if dead.len() >= bad.len() {
                break dead;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{} of {} poison records dead-lettered",
                dead.len(),
                bad.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        running.stop(Duration::from_secs(20)).await;

        let handled = handled.lock().unwrap().clone();
        assert_eq!(handled, (0..8).map(order).collect::<Vec<_>>());
        assert_eq!(dead.len(), bad.len());
        for (record, (what, _)) in dead.iter().zip(&bad) {
            let reason = FailureInfo::of(record)
                .map(|i| i.reason)
                .unwrap_or_default();
            eprintln!("{what}: {reason}");
        }
        for (record, (what, frame)) in dead.iter().zip(&bad) {
            let record: &Record = record;
            assert_eq!(
                record.key.as_deref(),
                Some(format!("bad-{what}").as_bytes())
            );
            assert_eq!(
                record.value.as_deref().unwrap_or_default(),
                &frame[..],
                "{what}"
            );
            let info = FailureInfo::of(record).expect("failure headers");
            assert_eq!(info.kind, Some(FailureKind::DeadLetter), "{what}");
            assert_eq!(info.origin_topic, topic);
            assert_eq!(info.group.as_deref(), Some(group.as_str()));
            let expected = match *what {
                "empty" => "empty",
                "too short" => "bytes",
                "wrong magic byte" => "magic",
                "unknown schema id" => "2000000000",
                _ => "does not decode",
            };
            assert!(info.reason.contains(expected), "{what}: {}", info.reason);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// How often the registry is asked.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_asked_once_per_schema_not_once_per_record() {
    const N: usize = 1_000;
    let registry = registry().await;
    bounded(Duration::from_secs(180), async {
        let kafka = client().await;
        let topic = new_topic(&kafka, "avro-calls", 1).await;

        // Producing: one registration call for a thousand records.
        let writer_sr = registry_client(registry);
        let serializer =
            AvroSerializer::<Order>::with_schema(writer_sr.clone(), avro_schema(ORDER)).unwrap();
        let producer = kafka.producer().build().unwrap();
        let mut deliveries = Vec::with_capacity(N);
        for n in 0..N as i64 {
            let value = serializer.serialize(&topic, &order(n)).await.unwrap();
            deliveries.push(producer.to(&topic).value(value).enqueue().await.unwrap());
        }
        for delivery in deliveries {
            delivery.await.expect("delivered");
        }
        producer.close(Duration::from_secs(10)).await.unwrap();
        assert_eq!(writer_sr.requests(), 1, "one registration for {N} records");

        // Consuming: one by-id call, even with a hundred tasks meeting the
        // new id at once.
        let records = read_all(&kafka, &topic).await;
        assert_eq!(records.len(), N);
        let reader_sr = registry_client(registry);
        let deserializer =
            AvroDeserializer::<Order>::with_schema(reader_sr.clone(), Some(avro_schema(ORDER)));
        let first: Vec<_> = records[..100]
            .iter()
            .map(|r| {
                let (deserializer, topic) = (deserializer.clone(), topic.clone());
                let value = r.value.clone().unwrap();
                tokio::spawn(async move { deserializer.deserialize(&topic, &value).await })
            })
            .collect();
        for (n, task) in first.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap(), order(n as i64));
        }
        assert_eq!(reader_sr.requests(), 1, "a hundred concurrent first reads");
        for (n, r) in records.iter().enumerate().skip(100) {
            let value = deserializer
                .deserialize(&topic, r.value.as_deref().unwrap())
                .await;
            assert_eq!(value.unwrap(), order(n as i64));
        }
        assert_eq!(reader_sr.requests(), 1, "one by-id call for {N} records");
    })
    .await;
}

// ---------------------------------------------------------------------------
// The registry over HTTPS.

/// Against a registry serving HTTPS only, with a certificate signed by the
/// test CA (one registry for the whole binary, started by the first of
/// these tests that runs).
#[cfg(feature = "tls")]
mod https {
    use super::*;
    use common::testcontainers::TlsRegistry;
    use kastellan::TlsConfig;

    /// Each call's limit in these tests: every failure must come well
    /// within it, not by running into it.
    const CALL_TIMEOUT: Duration = Duration::from_secs(20);

    /// The shared HTTPS registry, started on first use (off the runtime's
    /// threads).
    async fn tls_registry() -> &'static TlsRegistry {
        tokio::task::spawn_blocking(testcontainers::tls_registry)
            .await
            .expect("HTTPS registry start did not panic")
    }

    fn client(url: &str, tls: TlsConfig) -> SchemaRegistry {
        SchemaRegistry::builder(url)
            .tls(tls)
            .timeout(CALL_TIMEOUT)
            .build()
            .expect("registry client builds")
    }

    /// A client of the HTTPS registry trusting the test CA.
    fn trusting_client(tls: &TlsRegistry) -> SchemaRegistry {
        client(
            tls.registry.url(),
            TlsConfig::new().ca_pem(&tls.pki.ca_cert),
        )
    }

    /// Like the file's `bounded`, with the HTTPS registry's log.
    async fn bounded<T>(tls: &TlsRegistry, limit: Duration, body: impl Future<Output = T>) -> T {
        match tokio::time::timeout(limit, body).await {
            Ok(t) => t,
            Err(_) => panic!(
                "the test did not finish within {limit:?}\n--- registry log (end) ---\n{}",
                tls.registry.log_tail(30)
            ),
        }
    }

    /// The call's error, which must come as a transport failure (no HTTP
    /// status) well within [`CALL_TIMEOUT`].
    async fn failure<T: std::fmt::Debug>(
        what: &str,
        call: impl Future<Output = Result<T, Error>>,
    ) -> (String, bool) {
        let started = Instant::now();
        let e = call.await.expect_err(what);
        let took = started.elapsed();
        eprintln!("{what} ({took:?}): {e}");
        assert!(took < CALL_TIMEOUT / 2, "{what}: took {took:?}: {e}");
        match &e {
            Error::Registry {
                status: None,
                code: None,
                message,
                retriable,
                ..
            } => {
                assert!(
                    !message.contains("no complete answer within"),
                    "{what}: {e}"
                );
                (e.to_string(), *retriable)
            }
            other => panic!("{what}: not a transport failure of the registry: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_registry_api_and_avro_values_work_over_https_trusting_the_test_ca() {
        let tls = tls_registry().await;
        assert!(tls.registry.url().starts_with("https://127.0.0.1:"));
        bounded(tls, Duration::from_secs(120), async {
            let sr = trusting_client(tls);
            let subject = unique_topic("https-readings");
            let v1 = Schema::avro(READING_V1);

            // Register, register again, look up, fetch by id on a client
            // of its own, list.
            let id = sr.register(&subject, &v1).await.unwrap();
            assert_eq!(sr.register(&subject, &v1).await.unwrap(), id);
            let found = sr.lookup(&subject, &v1).await.unwrap();
            assert_eq!((found.id, found.version), (id, 1));
            let by_id = trusting_client(tls).schema_by_id(id).await.unwrap();
            assert!(same_schema(&by_id.text, READING_V1), "{}", by_id.text);
            assert!(sr.subjects().await.unwrap().contains(&subject));
            assert_eq!(sr.versions(&subject).await.unwrap(), vec![1]);

            // The certificate names `localhost` too.
            let by_name = client(
                &tls.registry.url().replace("127.0.0.1", "localhost"),
                TlsConfig::new().ca_pem(&tls.pki.ca_cert),
            );
            assert_eq!(by_name.schema_by_id(id).await.unwrap().text, by_id.text);

            // An Avro value out and back: the serializer registers its
            // schema, a deserializer on a client of its own fetches it by
            // id, all over HTTPS.
            let topic = unique_topic("https-orders");
            let writer_sr = trusting_client(tls);
            let serializer =
                AvroSerializer::<Order>::with_schema(writer_sr.clone(), avro_schema(ORDER))
                    .unwrap();
            let frames: Vec<Vec<u8>> = {
                let mut frames = Vec::new();
                for n in 0..3 {
                    frames.push(serializer.serialize(&topic, &order(n)).await.unwrap());
                }
                frames
            };
            let order_id = frame_id(&frames[0]);
            assert!(frames.iter().all(|f| frame_id(f) == order_id));
            assert_eq!(writer_sr.requests(), 1, "one registration");
            let registered = sr
                .version(&format!("{topic}-value"), Version::Latest)
                .await
                .unwrap();
            assert_eq!(registered.id, order_id);

            let reader_sr = trusting_client(tls);
            let deserializer = AvroDeserializer::<Order>::with_schema(reader_sr.clone(), None);
            for (n, frame) in frames.iter().enumerate() {
                let value = deserializer.deserialize(&topic, frame).await.unwrap();
                assert_eq!(value, order(n as i64));
            }
            assert_eq!(reader_sr.requests(), 1, "one by-id fetch");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn https_failures_name_the_registry_and_come_before_the_timeout() {
        let tls = tls_registry().await;
        bounded(tls, Duration::from_secs(120), async {
            let url = tls.registry.url();

            // A CA the registry's certificate does not chain to.
            let wrong_ca = client(url, TlsConfig::new().ca_pem(&tls.pki.other_ca_cert));
            let (text, retriable) = failure("wrong CA", wrong_ca.schema_by_id(SchemaId(1))).await;
            assert!(!retriable, "a certificate problem is not passing: {text}");
            assert!(
                text.contains("the schema registry's certificate is not signed by a trusted CA"),
                "{text}"
            );
            assert!(text.contains("TlsConfig::ca_pem"), "{text}");
            assert!(text.contains(url), "names the URL: {text}");
            assert!(!text.contains("broker"), "{text}");
            assert!(!text.contains("KAFKA_"), "{text}");

            // The right CA, but a name the certificate does not list.
            let wrong_name = client(
                url,
                TlsConfig::new()
                    .ca_pem(&tls.pki.ca_cert)
                    .server_name(testcontainers::WRONG_HOST_NAME),
            );
            let (text, retriable) = failure("wrong name", wrong_name.subjects()).await;
            assert!(!retriable, "{text}");
            assert!(
                text.contains("the schema registry's certificate does not name the host"),
                "{text}"
            );
            assert!(!text.contains("broker"), "{text}");

            // Plain HTTP to the HTTPS port: the registry closes the
            // connection without an answer.
            let plain_url = url.replacen("https://", "http://", 1);
            let plain = SchemaRegistry::builder(&plain_url)
                .timeout(CALL_TIMEOUT)
                .build()
                .unwrap();
            let (text, _) = failure("http:// to the HTTPS port", plain.subjects()).await;
            assert!(text.contains("use an https:// URL"), "{text}");
            assert!(!text.contains("broker"), "{text}");

            // HTTPS to a plain-HTTP port (the registry's management port).
            let management = format!(
                "https://127.0.0.1:{}{}",
                tls.registry.management_port(),
                testcontainers::CCOMPAT_PATH
            );
            let to_plain = client(&management, TlsConfig::new().ca_pem(&tls.pki.ca_cert));
            let (text, retriable) =
                failure("https:// to a plain-HTTP port", to_plain.subjects()).await;
            assert!(!retriable, "{text}");
            assert!(
                text.contains("the schema registry did not answer with TLS"),
                "{text}"
            );
            assert!(text.contains("use an http:// URL"), "{text}");
            assert!(!text.contains("listener"), "{text}");

            // The registry is still serving after all that.
            trusting_client(tls).subjects().await.unwrap();
        })
        .await;
    }
}
