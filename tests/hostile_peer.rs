//! A peer that answers with hostile or corrupt frames: every try must end in
//! an error, never in a panic or a process abort, and no single allocation
//! may be sized by a length field instead of by the bytes that arrived.
//!
//! The peer is a loopback TCP listener, not a broker: it answers the
//! connection's first request (ApiVersions) with a frame that carries the
//! right correlation id followed by random bytes, or answers ApiVersions
//! properly and then does that to the Metadata request that follows. A
//! counting global allocator records the largest single allocation of the
//! whole run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;
use kastellan::{Client, ClientConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards to the system allocator and remembers the largest request.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counter is only
// an atomic maximum.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// No single allocation of a run may be larger than this.
const ALLOCATION_BOUND: usize = 64 * 1024 * 1024;

/// Which request gets the hostile answer.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The connection's first request.
    ApiVersions,
    /// Metadata, after a good ApiVersions answer that offers Metadata up to
    /// this version (so the client decodes that version).
    Metadata(i16),
}

/// What the peer sends instead of a good answer.
#[derive(Debug, Clone)]
enum Answer {
    /// Framed with the right size and the request's correlation id.
    Body(Vec<u8>),
    /// Written as is (a frame whose size prefix is itself the problem).
    Raw(Vec<u8>),
}

async fn read_request(sock: &mut TcpStream) -> Option<(i16, i16, i32)> {
    let size = sock.read_i32().await.ok()?;
    let mut body = vec![0u8; usize::try_from(size).ok()?];
    sock.read_exact(&mut body).await.ok()?;
    let api_key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    Some((api_key, version, correlation_id))
}

fn frame(correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
    out.extend_from_slice(&correlation_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A correct ApiVersions answer offering ApiVersions 0-3 and Metadata up to
/// `metadata_max`.
fn good_api_versions(correlation_id: i32, version: i16, metadata_max: i16) -> Vec<u8> {
    let response = ApiVersionsResponse::default().with_api_keys(vec![
        ApiVersion::default()
            .with_api_key(18)
            .with_min_version(0)
            .with_max_version(3),
        ApiVersion::default()
            .with_api_key(3)
            .with_min_version(0)
            .with_max_version(metadata_max),
    ]);
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, 0)
        .expect("header encodes");
    response
        .encode(&mut buf, version)
        .expect("response encodes");
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.to_vec()
}

/// A peer for one connection; returns its address.
async fn peer(target: Target, answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let Some((_, version, correlation_id)) = read_request(&mut sock).await else {
            return;
        };
        let correlation_id = match target {
            Target::ApiVersions => correlation_id,
            Target::Metadata(max) => {
                let good = good_api_versions(correlation_id, version, max);
                if sock.write_all(&good).await.is_err() {
                    return;
                }
                match read_request(&mut sock).await {
                    Some((_, _, id)) => id,
                    None => return,
                }
            }
        };
        let bytes = match &answer {
            Answer::Body(body) => frame(correlation_id, body),
            Answer::Raw(raw) => raw.clone(),
        };
        let _ = sock.write_all(&bytes).await;
        // Close: a body that happens to decode makes the next request fail.
        let _ = sock.shutdown().await;
    });
    addr
}

/// Run one try: connect (ApiVersions, then Metadata) against the peer.
async fn run(target: Target, answer: Answer) -> String {
    let addr = peer(target, answer.clone()).await;
    let config = ClientConfig::new(&addr)
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(5))
        .retry_deadline(Duration::ZERO);
    let outcome = tokio::time::timeout(Duration::from_secs(20), Client::connect(config)).await;
    match outcome {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => panic!("{target:?} {answer:?}: connecting to a hostile peer succeeded"),
        Err(_) => panic!("{target:?} {answer:?}: no outcome within 20 s"),
    }
}

fn random_body(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..4) {
        0 => rng.random_range(0..8),
        1 => rng.random_range(0..64),
        _ => rng.random_range(0..600),
    };
    (0..len).map(|_| rng.random()).collect()
}

/// Bodies whose first length field is huge or -1, in both array layouts.
fn crafted_bodies(target: Target) -> Vec<Vec<u8>> {
    let compact_huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
    let mut out = Vec::new();
    match target {
        Target::ApiVersions => {
            // error code 0, then the api_keys count: i32 (v0-2) or varint (v3).
            for count in [i32::MAX, -1, 0x0100_0000] {
                let mut b = vec![0, 0];
                b.extend_from_slice(&count.to_be_bytes());
                out.push(b);
            }
            let mut b = vec![0, 0];
            b.extend_from_slice(&compact_huge);
            out.push(b);
        }
        Target::Metadata(v) => {
            // Response header v1 (flexible versions) starts with tagged fields.
            let mut head = Vec::new();
            if v >= 9 {
                head.push(0);
            }
            if v >= 3 {
                head.extend_from_slice(&0i32.to_be_bytes()); // throttle time
            }
            if v >= 9 {
                let mut b = head.clone();
                b.extend_from_slice(&compact_huge);
                out.push(b);
                // One broker whose host string claims u32::MAX - 1 bytes.
                let mut b = head.clone();
                b.push(2);
                b.extend_from_slice(&1i32.to_be_bytes());
                b.extend_from_slice(&compact_huge);
                out.push(b);
            } else {
                for count in [i32::MAX, -1] {
                    let mut b = head.clone();
                    b.extend_from_slice(&count.to_be_bytes());
                    out.push(b);
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn hostile_answers_end_in_errors_with_bounded_allocation() {
    let mut rng = StdRng::seed_from_u64(0x6b61_7374);
    let mut targets = vec![Target::ApiVersions];
    targets.extend((0..=12).map(Target::Metadata));
    let mut tries = 0;
    for &target in &targets {
        let mut answers: Vec<Answer> = crafted_bodies(target)
            .into_iter()
            .map(Answer::Body)
            .collect();
        // Frame sizes that are themselves implausible, and one that is
        // plausible (200 MiB) but followed by a few bytes only.
        for size in [i32::MAX, -1, 200 << 20] {
            let mut raw = size.to_be_bytes().to_vec();
            raw.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
            answers.push(Answer::Raw(raw));
        }
        let random = if matches!(target, Target::ApiVersions) {
            200
        } else {
            30
        };
        answers.extend((0..random).map(|_| Answer::Body(random_body(&mut rng))));
        for answer in answers {
            let before = LARGEST.load(Ordering::Relaxed);
            let error = run(target, answer.clone()).await;
            tries += 1;
            let largest = LARGEST.load(Ordering::Relaxed);
            assert!(
                largest <= ALLOCATION_BOUND,
                "{target:?} {answer:?}: an allocation of {largest} bytes (before: {before}); error: {error}"
            );
        }
    }
    eprintln!(
        "{tries} hostile answers, all errors; largest single allocation {} bytes",
        LARGEST.load(Ordering::Relaxed)
    );
}

/// Record batches from a fetch (decoded by our own decoder, reached through
/// the fuzz entry points): huge record and header counts, varint lengths
/// and compressed batches that claim or produce far more than they carry.
#[cfg(feature = "unstable-fuzz")]
#[test]
fn hostile_record_batches_end_in_errors_with_bounded_allocation() {
    use kastellan::__fuzz::{fix_batch_crcs, record_batch_decode};

    /// A v2 batch at `base` with `attributes`, a record count and a body.
    fn batch(base: i64, attributes: i16, count: i32, body: &[u8]) -> Vec<u8> {
        let mut after_crc = Vec::new();
        after_crc.extend_from_slice(&attributes.to_be_bytes());
        after_crc.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
        after_crc.extend_from_slice(&0i64.to_be_bytes());
        after_crc.extend_from_slice(&0i64.to_be_bytes());
        after_crc.extend_from_slice(&(-1i64).to_be_bytes());
        after_crc.extend_from_slice(&(-1i16).to_be_bytes());
        after_crc.extend_from_slice(&(-1i32).to_be_bytes());
        after_crc.extend_from_slice(&count.to_be_bytes());
        after_crc.extend_from_slice(body);
        let mut out = Vec::new();
        out.extend_from_slice(&base.to_be_bytes());
        out.extend_from_slice(&((4 + 1 + 4 + after_crc.len()) as i32).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.push(2);
        out.extend_from_slice(&0u32.to_be_bytes()); // CRC, written below
        out.extend_from_slice(&after_crc);
        fix_batch_crcs(&mut out);
        out
    }

    // Each case breaks one thing in an otherwise good batch (its CRC
    // included), so that decoding gets as far as that thing: the same tiny
    // record under a true record count decodes.
    let good = record_batch_decode(&batch(0, 0, 1, &[0x0e, 0, 0, 0, 1, 1, 0, 0]), 0);
    assert_eq!(good.map(|d| d.offsets), Ok(vec![0]), "a good batch decodes");

    let huge_varint = [0xfe, 0xff, 0xff, 0xff, 0x0f]; // zig-zag i32::MAX
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // A record count of i32::MAX over one tiny record.
    cases.push((
        "record count".into(),
        batch(0, 0, i32::MAX, &[0x0e, 0, 0, 0, 1, 1, 0, 0]),
    ));
    // A record whose length, key length or header count is i32::MAX.
    let mut body = huge_varint.to_vec();
    body.extend_from_slice(&[0; 8]);
    cases.push(("record length".into(), batch(0, 0, 1, &body)));
    let mut body = vec![0x18, 0, 0, 0];
    body.extend_from_slice(&huge_varint);
    body.extend_from_slice(&[0; 4]);
    cases.push(("key length".into(), batch(0, 0, 1, &body)));
    let mut body = vec![0x18, 0, 0, 0, 1, 1];
    body.extend_from_slice(&huge_varint);
    body.extend_from_slice(&[0; 4]);
    cases.push(("header count".into(), batch(0, 0, 1, &body)));
    // A raw snappy block that claims u32::MAX bytes.
    cases.push((
        "snappy length".into(),
        batch(0, 2, 1, &[0xff, 0xff, 0xff, 0xff, 0x0f, 0x08, b'a', b'b']),
    ));
    // ... or 200 MiB (below the 256 MiB any batch may inflate to).
    let mut body = Vec::new();
    let mut n: u32 = 200 << 20;
    while n >= 0x80 {
        body.push((n as u8) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    body.extend_from_slice(&[0x08, b'a', b'b']);
    cases.push(("snappy 200 MiB".into(), batch(0, 2, 1, &body)));
    // Zstd frames asking for a 1 GiB and a 96 MiB window (window
    // descriptors: exponent 30; exponent 26 plus 4/8).
    for window in [0xa0, 0x84] {
        cases.push((
            format!("zstd window {window:#x}"),
            batch(
                0,
                4,
                1,
                &[0x28, 0xb5, 0x2f, 0xfd, 0x00, window, 0x01, 0x00, 0x00],
            ),
        ));
    }
    // An lz4 frame declaring a 4 MiB block size and a huge content size.
    cases.push((
        "lz4 frame".into(),
        batch(
            0,
            3,
            1,
            &[
                0x04, 0x22, 0x4d, 0x18, 0x68, 0x70, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                0x00,
            ],
        ),
    ));
    // Random bytes behind a valid batch header, per codec.
    let mut rng = StdRng::seed_from_u64(0x7265_636f);
    for codec in 0..5i16 {
        for _ in 0..40 {
            let body = random_body(&mut rng);
            cases.push((format!("codec {codec} random"), batch(0, codec, 3, &body)));
        }
    }
    for (what, data) in &cases {
        let outcome = record_batch_decode(data, 0);
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            largest <= ALLOCATION_BOUND,
            "{what}: an allocation of {largest} bytes ({outcome:?})"
        );
        if !what.ends_with("random") {
            assert!(outcome.is_err(), "{what}: {outcome:?}");
        }
    }
    eprintln!(
        "{} hostile record sets; largest single allocation {} bytes",
        cases.len(),
        LARGEST.load(Ordering::Relaxed)
    );
}
