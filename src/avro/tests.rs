//! Serializers and deserializers against a small in-memory registry peer:
//! round trips, subject names, schema evolution, caching and hostile bodies.

use std::sync::Mutex;
use std::time::Duration;

use apache_avro::AvroSchema;
use serde::Deserialize;

use super::*;
use crate::schema_registry::tests::{Peer, Reply};

/// A registry peer that keeps registered schemas in memory: ids from 1 in
/// order of first registration, whatever the subject.
async fn fake_registry() -> (Peer, SchemaRegistry) {
    let schemas: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let peer = Peer::start(move |seen| {
        let mut schemas = schemas.lock().unwrap();
        if seen.method == "POST" && seen.path.ends_with("/versions") {
            let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
            let text = body["schema"].as_str().unwrap().to_string();
            let id = match schemas.iter().position(|s| *s == text) {
                Some(i) => i + 1,
                None => {
                    schemas.push(text);
                    schemas.len()
                }
            };
            return Reply::Json(200, format!(r#"{{"id":{id}}}"#));
        }
        if let Some(id) = seen.path.strip_prefix("/schemas/ids/") {
            let id: usize = id.parse().unwrap();
            return match schemas.get(id.wrapping_sub(1)) {
                Some(text) => Reply::Json(200, serde_json::json!({ "schema": text }).to_string()),
                None => Reply::Json(
                    404,
                    r#"{"error_code":40403,"message":"Schema not found"}"#.into(),
                ),
            };
        }
        Reply::Json(
            404,
            r#"{"error_code":40401,"message":"Subject not found"}"#.into(),
        )
    })
    .await;
    let registry = SchemaRegistry::builder(&peer.url)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    (peer, registry)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
struct Order {
    id: String,
    amount: i64,
    lines: Vec<String>,
    note: Option<String>,
}

fn order(n: i64) -> Order {
    Order {
        id: format!("o-{n}"),
        amount: n * 100,
        lines: vec!["a".into(), "b".into()],
        note: (n % 2 == 0).then(|| "even".into()),
    }
}

fn parse_schema(text: &str) -> apache_avro::Schema {
    apache_avro::Schema::parse_str(text).unwrap()
}

#[tokio::test]
async fn typed_values_round_trip_with_one_registry_call_each_way() {
    let (peer, registry) = fake_registry().await;
    let serializer = AvroSerializer::<Order>::new(registry.clone()).unwrap();
    let deserializer = AvroDeserializer::<Order>::new(registry).unwrap();
    for n in 0..20 {
        let bytes = serializer.serialize("orders", &order(n)).await.unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 1]);
        assert_eq!(
            deserializer.deserialize("orders", &bytes).await.unwrap(),
            order(n)
        );
    }
    assert_eq!(peer.calls(), 2, "one register, one schema fetch");
    // Clones share what they found.
    let bytes = serializer
        .clone()
        .serialize("orders", &order(1))
        .await
        .unwrap();
    deserializer
        .clone()
        .deserialize("orders", &bytes)
        .await
        .unwrap();
    assert_eq!(peer.calls(), 2);
}

#[tokio::test]
async fn subjects_follow_the_strategy_and_part() {
    let (peer, registry) = fake_registry().await;
    let cases = [
        (
            SubjectNameStrategy::TopicName,
            Part::Value,
            "/subjects/orders-value/versions",
        ),
        (
            SubjectNameStrategy::TopicName,
            Part::Key,
            "/subjects/orders-key/versions",
        ),
        (
            SubjectNameStrategy::RecordName,
            Part::Value,
            "/subjects/Order/versions",
        ),
        (
            SubjectNameStrategy::TopicRecordName,
            Part::Value,
            "/subjects/orders-Order/versions",
        ),
    ];
    for (strategy, part, path) in cases {
        let s = AvroSerializer::<Order>::new(registry.clone())
            .unwrap()
            .subject_name_strategy(strategy)
            .part(part);
        s.serialize("orders", &order(1)).await.unwrap();
        assert_eq!(peer.last().path, path);
    }
    let e = SubjectNameStrategy::RecordName
        .subject("t", Part::Value, &apache_avro::Schema::Long)
        .unwrap_err();
    assert!(
        matches!(e, Error::Config(_)) && e.to_string().contains("named Avro schema"),
        "{e}"
    );
}

#[tokio::test]
async fn without_auto_register_the_schema_is_looked_up() {
    let (peer, registry) = fake_registry().await;
    let s = AvroSerializer::<Order>::new(registry)
        .unwrap()
        .auto_register(false);
    let e = s.serialize("orders", &order(1)).await.unwrap_err();
    assert_eq!(peer.last().path, "/subjects/orders-value");
    assert!(
        matches!(
            e,
            Error::Registry {
                code: Some(40401),
                ..
            }
        ),
        "{e}"
    );
}

const V1: &str = r#"{"type":"record","name":"User","fields":[
    {"name":"name","type":"string"},
    {"name":"age","type":"int"}]}"#;
const V2: &str = r#"{"type":"record","name":"User","fields":[
    {"name":"name","type":"string"},
    {"name":"age","type":"int"},
    {"name":"email","type":"string","default":"none"}]}"#;
const V3_LONG: &str = r#"{"type":"record","name":"User","fields":[
    {"name":"name","type":"string"},
    {"name":"age","type":"long"}]}"#;
const V4_NO_DEFAULT: &str = r#"{"type":"record","name":"User","fields":[
    {"name":"name","type":"string"},
    {"name":"country","type":"string"}]}"#;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct UserV1 {
    name: String,
    age: i32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct UserV2 {
    name: String,
    age: i32,
    email: String,
}

#[derive(Debug, PartialEq, Deserialize)]
struct UserV3 {
    name: String,
    age: i64,
}

#[tokio::test]
async fn schema_evolution_resolves_writer_against_reader() {
    let (_peer, registry) = fake_registry().await;
    let v1 = AvroSerializer::<UserV1>::with_schema(registry.clone(), parse_schema(V1)).unwrap();
    let v2 = AvroSerializer::<UserV2>::with_schema(registry.clone(), parse_schema(V2)).unwrap();
    let old = v1
        .serialize(
            "users",
            &UserV1 {
                name: "ann".into(),
                age: 30,
            },
        )
        .await
        .unwrap();
    let new = v2
        .serialize(
            "users",
            &UserV2 {
                name: "bob".into(),
                age: 40,
                email: "b@x".into(),
            },
        )
        .await
        .unwrap();

    // A v2 reader reads v1 data: the added field takes its default.
    let read_v2 = AvroDeserializer::<UserV2>::with_schema(registry.clone(), Some(parse_schema(V2)));
    assert_eq!(
        read_v2.deserialize("users", &old).await.unwrap(),
        UserV2 {
            name: "ann".into(),
            age: 30,
            email: "none".into()
        }
    );
    // A v1 reader reads v2 data: the field it does not know is dropped.
    let read_v1 = AvroDeserializer::<UserV1>::with_schema(registry.clone(), Some(parse_schema(V1)));
    assert_eq!(
        read_v1.deserialize("users", &new).await.unwrap(),
        UserV1 {
            name: "bob".into(),
            age: 40
        }
    );
    // int is promoted to long.
    let read_v3 =
        AvroDeserializer::<UserV3>::with_schema(registry.clone(), Some(parse_schema(V3_LONG)));
    assert_eq!(
        read_v3.deserialize("users", &old).await.unwrap(),
        UserV3 {
            name: "ann".into(),
            age: 30
        }
    );
    // A reader field without a default that the writer lacks: a clear error.
    let read_v4 = GenericAvroDeserializer::new(registry.clone(), Some(parse_schema(V4_NO_DEFAULT)));
    let e = read_v4.deserialize("users", &old).await.unwrap_err();
    assert!(
        matches!(e, Error::Serialization { format: "Avro", .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("schema id 1 cannot be read with the reader's schema"),
        "{e}"
    );
}

#[tokio::test]
async fn generic_values_round_trip_and_are_validated() {
    let (_peer, registry) = fake_registry().await;
    let s = GenericAvroSerializer::new(registry.clone(), parse_schema(V1)).unwrap();
    let value = Value::Record(vec![
        ("name".into(), Value::String("cy".into())),
        ("age".into(), Value::Int(5)),
    ]);
    let bytes = s.serialize("users", &value).await.unwrap();
    let read = GenericAvroDeserializer::new(registry.clone(), None);
    assert_eq!(read.deserialize("users", &bytes).await.unwrap(), value);
    // Read as its writer wrote it, into a typed struct.
    let typed = AvroDeserializer::<UserV1>::with_schema(registry, None);
    assert_eq!(
        typed.deserialize("users", &bytes).await.unwrap(),
        UserV1 {
            name: "cy".into(),
            age: 5
        }
    );

    let wrong = Value::Record(vec![("name".into(), Value::Int(1))]);
    let e = s.serialize("users", &wrong).await.unwrap_err();
    assert!(matches!(e, Error::Serialization { .. }), "{e}");
    assert!(e.to_string().contains("does not fit its schema"), "{e}");
}

/// Frame `body` with schema id 1 (the first registered).
fn framed(body: &[u8]) -> Vec<u8> {
    confluent::frame(SchemaId(1), body)
}

const HOSTILE_SCHEMA: &str = r#"{"type":"record","name":"H","fields":[
    {"name":"s","type":"string"},
    {"name":"nulls","type":{"type":"array","items":"null"}},
    {"name":"m","type":{"type":"map","values":"long"}},
    {"name":"u","type":["null","int","string"]},
    {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
    {"name":"f","type":{"type":"fixed","name":"F","size":4}},
    {"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
    {"name":"next","type":["null","H"]}]}"#;

#[tokio::test]
async fn hostile_bodies_are_errors_not_panics_or_huge_allocations() {
    let (_peer, registry) = fake_registry().await;
    let schema = parse_schema(HOSTILE_SCHEMA);
    let s = GenericAvroSerializer::new(registry.clone(), schema.clone()).unwrap();
    let good = Value::Record(vec![
        ("s".into(), Value::String("x".into())),
        ("nulls".into(), Value::Array(vec![Value::Null; 3])),
        (
            "m".into(),
            Value::Map([("k".to_string(), Value::Long(1))].into()),
        ),
        (
            "u".into(),
            Value::Union(2, Box::new(Value::String("y".into()))),
        ),
        ("e".into(), Value::Enum(1, "B".into())),
        ("f".into(), Value::Fixed(4, vec![1, 2, 3, 4])),
        (
            "d".into(),
            Value::Decimal(apache_avro::Decimal::from(vec![1u8, 2])),
        ),
        ("next".into(), Value::Union(0, Box::new(Value::Null))),
    ]);
    let bytes = s.serialize("h", &good).await.unwrap();
    let read = GenericAvroDeserializer::new(registry.clone(), None);
    read.deserialize("h", &bytes).await.unwrap();

    let expect_error = |result: Result<Value>, needle: &str| {
        let e = result.unwrap_err();
        assert!(matches!(e, Error::Serialization { .. }), "{e}");
        assert!(e.to_string().contains(needle), "wanted `{needle}`: {e}");
        assert_eq!(
            crate::group::HandlerError::from(e).kind(),
            crate::group::FailureKind::DeadLetter
        );
    };
    // A string that claims a huge length.
    let mut huge = vec![];
    huge.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]); // 2^31 - 1
    expect_error(
        read.deserialize("h", &framed(&huge)).await,
        "needs 2147483647 bytes",
    );
    // An array of 2^62 nulls.
    let nulls = [0x00, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    expect_error(
        read.deserialize("h", &framed(&nulls)).await,
        "items that take no bytes",
    );
    // A union branch that does not exist.
    let mut body = bytes[5..].to_vec();
    // s (2 bytes), nulls (2), m (5): the union's branch is byte 9.
    body[9] = 0x0a; // branch 5
    expect_error(read.deserialize("h", &framed(&body)).await, "union branch");
    // Truncated and padded bodies.
    expect_error(
        read.deserialize("h", &bytes[..bytes.len() - 1]).await,
        "truncated",
    );
    let mut padded = bytes.clone();
    padded.push(0);
    expect_error(read.deserialize("h", &padded).await, "1 bytes are left");
    // Nesting far deeper than anything real: a linked list of 100,000.
    let mut deep = bytes[5..bytes.len() - 1].to_vec();
    let node = deep.clone();
    for _ in 0..100_000 {
        deep.push(0x02); // next: branch 1 (H)
        deep.extend_from_slice(&node);
    }
    deep.push(0x00);
    expect_error(read.deserialize("h", &framed(&deep)).await, "nested deeper");
    // Bad frames and unknown ids.
    expect_error(read.deserialize("h", b"").await, "empty");
    expect_error(
        read.deserialize("h", b"\x07abcde").await,
        "magic byte 7 instead of 0",
    );
    expect_error(
        read.deserialize("h", &confluent::frame(SchemaId(77), b""))
            .await,
        "schema id 77, which the registry does not know",
    );

    // Random bodies, and random damage to a good one: errors or values,
    // never a panic.
    let mut rng = rand::rng();
    use rand::Rng as _;
    for round in 0..3000 {
        let body: Vec<u8> = if round % 2 == 0 {
            (0..rng.random_range(0..64)).map(|_| rng.random()).collect()
        } else {
            let mut b = bytes[5..].to_vec();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            b
        };
        let _ = read.deserialize("h", &framed(&body)).await;
    }
}

#[test]
fn the_guard_checks_lengths_without_decoding() {
    let schema = parse_schema(r#"{"type":"array","items":"string"}"#);
    let names = ResolvedSchema::try_from(&schema).unwrap();
    let check = |body: &[u8]| guard::check(&schema, names.get_names(), body);
    check(&[0x02, 0x02, b'a', 0x00]).unwrap();
    // A negative block count is followed by the block's size.
    check(&[0x01, 0x04, 0x02, b'a', 0x00]).unwrap();
    assert!(check(&[0x02, 0x02, 0xff, 0x00])
        .unwrap_err()
        .contains("not UTF-8"));
    assert!(check(&[0xc8, 0x01, 0x00])
        .unwrap_err()
        .contains("claims 100 items"));
    assert!(check(&[0x02])
        .unwrap_err()
        .contains("claims 1 items, but only 0 bytes remain"));
    assert!(check(&[0x02, 0x04, b'a'])
        .unwrap_err()
        .contains("truncated"));
    assert!(check(&[0xff; 11])
        .unwrap_err()
        .contains("not a valid varint"));
}

// The field plan gives what apache-avro's general resolution gives, for
// added fields of every kind of default and removed fields; and changes it
// cannot carry (promotions, references, changed field types) have none.
#[test]
fn the_field_plan_matches_the_general_resolution() {
    let writer = parse_schema(
        r#"{"type":"record","name":"E","namespace":"t","fields":[
            {"name":"id","type":"long"},
            {"name":"gone","type":"string"},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"inner","type":{"type":"record","name":"In","fields":[{"name":"x","type":"int"}]}},
            {"name":"note","type":["null","string"]}]}"#,
    );
    let reader = parse_schema(
        r#"{"type":"record","name":"E","namespace":"t","fields":[
            {"name":"note","type":["null","string"]},
            {"name":"id","type":"long"},
            {"name":"inner","type":{"type":"record","name":"In","fields":[{"name":"x","type":"int"}]}},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"channel","type":"string","default":"web"},
            {"name":"maybe","type":["null","long"],"default":null},
            {"name":"count","type":["long","null"],"default":7},
            {"name":"kind","type":{"type":"enum","name":"K","symbols":["A","B"]},"default":"B"},
            {"name":"attrs","type":{"type":"map","values":"int"},"default":{"a":1}},
            {"name":"when","type":{"type":"long","logicalType":"timestamp-millis"},"default":5}]}"#,
    );
    let plan = field_plan(&writer, &reader).expect("a field plan");
    assert_eq!(plan.len(), 10);
    for note in [
        Value::Union(0, Box::new(Value::Null)),
        Value::Union(1, Box::new(Value::String("n".into()))),
    ] {
        let written = Value::Record(vec![
            ("id".into(), Value::Long(42)),
            ("gone".into(), Value::String("bye".into())),
            ("tags".into(), Value::Array(vec![Value::String("a".into())])),
            (
                "inner".into(),
                Value::Record(vec![("x".into(), Value::Int(3))]),
            ),
            ("note".into(), note),
        ]);
        let body = GenericDatumWriter::builder(&writer)
            .build()
            .unwrap()
            .write_value_to_vec(written)
            .unwrap();
        let general = GenericDatumReader::builder(&writer)
            .reader_schema(&reader)
            .build()
            .unwrap()
            .read_value(&mut body.as_slice())
            .unwrap();
        let decoder = DecoderTryBuilder {
            writer: writer.clone(),
            reader: None,
            names_builder: |w| ResolvedSchema::try_from(w),
            datum_builder: |w, _| GenericDatumReader::builder(w).build(),
        }
        .try_build()
        .unwrap();
        let planned = Plan {
            id: SchemaId(1),
            decoder,
            fields: field_plan(&writer, &reader),
        };
        assert_eq!(decode(&planned, "t", &body).unwrap(), general);
    }

    let none = |reader: &str| field_plan(&writer, &parse_schema(reader)).is_none();
    // int promoted to long, a changed field type, a reference, another name.
    assert!(none(
        r#"{"type":"record","name":"E","namespace":"t","fields":[{"name":"id","type":"double"}]}"#
    ));
    assert!(none(
        r#"{"type":"record","name":"E","namespace":"t","fields":[{"name":"gone","type":"bytes"}]}"#
    ));
    assert!(none(
        r#"{"type":"record","name":"E","namespace":"t","fields":[
        {"name":"inner","type":{"type":"record","name":"In","fields":[{"name":"x","type":"int"}]}},
        {"name":"again","type":"In","default":{"x":1}}]}"#
    ));
    assert!(none(
        r#"{"type":"record","name":"Other","namespace":"t","fields":[]}"#
    ));
    // A field the writer lacks with no default: the general resolution
    // reports it.
    assert!(none(
        r#"{"type":"record","name":"E","namespace":"t","fields":[{"name":"new","type":"int"}]}"#
    ));
}

// A hundred tasks that read the first records of a new schema id at once
// make one registry call between them; so do a hundred that write the
// first values of a new subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_records_make_one_registry_call() {
    let (peer, registry) = fake_registry().await;
    let serializer = AvroSerializer::<Order>::new(registry.clone()).unwrap();
    let writes: Vec<_> = (0..100)
        .map(|n| {
            let serializer = serializer.clone();
            tokio::spawn(async move { serializer.serialize("orders", &order(n)).await })
        })
        .collect();
    let mut frames = Vec::new();
    for w in writes {
        frames.push(w.await.unwrap().unwrap());
    }
    assert_eq!(peer.calls(), 1, "one register call");

    // A new client: empty caches.
    let fresh = SchemaRegistry::builder(&peer.url).build().unwrap();
    let deserializer = AvroDeserializer::<Order>::new(fresh.clone()).unwrap();
    let reads: Vec<_> = frames
        .into_iter()
        .map(|frame| {
            let deserializer = deserializer.clone();
            tokio::spawn(async move { deserializer.deserialize("orders", &frame).await })
        })
        .collect();
    for (n, r) in reads.into_iter().enumerate() {
        assert_eq!(r.await.unwrap().unwrap(), order(n as i64));
    }
    assert_eq!(peer.calls(), 2, "one schema-by-id call");
    assert_eq!(fresh.requests(), 1);
}
