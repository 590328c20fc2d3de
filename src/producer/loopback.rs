//! A stand-in partition leader on loopback for the producer's unit tests.
//!
//! It speaks just enough of Kafka's protocol for a producer (ApiVersions,
//! Metadata, InitProducerId, Produce), handles each connection's requests
//! one at a time in order as a broker does, and checks idempotent batches'
//! sequence numbers the way a leader does (KIP-98: no state accepts any
//! sequence, a new epoch must start at 0, the last five batches are
//! recognised as duplicates, anything else is `OUT_OF_ORDER_SEQUENCE_NUMBER`).
//! It records every batch that arrives, so a test can check what the
//! producer put on the wire, and can crash on cue: drop every connection
//! and refuse new ones for a while, as a SIGKILLed broker would.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, InitProducerIdRequest,
    InitProducerIdResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    ProducerId, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::protocol::error_codes::{
    INVALID_PRODUCER_EPOCH, OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_TOPIC_OR_PARTITION,
};
use crate::protocol::records::decode_batches;

/// What the leader did with an arriving batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Stored,
    Duplicate,
    /// Refused with this error code.
    Refused(i16),
    /// Dropped unanswered by a crash.
    Lost,
}

/// One batch as it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Arrival {
    pub partition: i32,
    pub producer_id: i64,
    pub epoch: i16,
    pub sequence: i32,
    pub count: i32,
    pub verdict: Verdict,
}

/// A fault to inject at the n-th produce request (counted from 1).
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Drop that request unanswered and unstored, close every connection
    /// and refuse connections for `down`.
    Crash { at: usize, down: Duration },
    /// Answer that request with `code` for every partition, storing nothing.
    Refuse { at: usize, code: i16 },
    /// Before that request, forget the last `by` sequence numbers of every
    /// producer, as a leader that lost the tail of its log would.
    Rewind { at: usize, by: i32 },
}

#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    last_sequence: i32,
    /// Last five stored batches: first and last sequence, base offset.
    batches: VecDeque<(i32, i32, i64)>,
}

#[derive(Default)]
struct Inner {
    topic: String,
    partitions: i32,
    /// Stored record values per partition, in offset order.
    logs: HashMap<i32, Vec<Option<Bytes>>>,
    producers: HashMap<(i32, i64), ProducerEntry>,
    arrivals: Vec<Arrival>,
    init_producer_ids: usize,
    produce_requests: usize,
    faults: VecDeque<Fault>,
    down_until: Option<Instant>,
    /// How long each produce or metadata request takes, so batches
    /// pipeline and first sends race.
    service_time: Duration,
}

/// The stand-in broker; stops when dropped.
pub(crate) struct FakeBroker {
    pub addr: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBroker {
    /// A leader for `topic` with `partitions` partitions; each produce
    /// request takes `service_time`; `faults` in the order of their `at`.
    pub(super) async fn start(
        topic: &str,
        partitions: i32,
        service_time: Duration,
        faults: Vec<Fault>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let inner = Arc::new(Mutex::new(Inner {
            topic: topic.to_string(),
            partitions,
            faults: faults.into(),
            service_time,
            ..Inner::default()
        }));
        let (crashes, _) = watch::channel(0u64);
        let task = tokio::spawn(accept_loop(
            listener,
            addr.clone(),
            Arc::clone(&inner),
            crashes,
        ));
        Self { addr, inner, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every batch that arrived, in arrival order.
    pub(super) fn arrivals(&self) -> Vec<Arrival> {
        self.lock().arrivals.clone()
    }

    /// Stored values of a partition, in offset order.
    pub(super) fn log(&self, partition: i32) -> Vec<Option<Bytes>> {
        self.lock()
            .logs
            .get(&partition)
            .cloned()
            .unwrap_or_default()
    }

    /// InitProducerId requests answered.
    pub(super) fn init_producer_ids(&self) -> usize {
        self.lock().init_producer_ids
    }

    /// Produce requests received.
    pub(super) fn produce_requests(&self) -> usize {
        self.lock().produce_requests
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: String,
    inner: Arc<Mutex<Inner>>,
    crashes: watch::Sender<u64>,
) {
    let crashes = Arc::new(crashes);
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        let down = {
            let g = inner.lock().unwrap_or_else(|p| p.into_inner());
            g.down_until.is_some_and(|t| t > Instant::now())
        };
        if down {
            drop(socket);
            continue;
        }
        let _ = socket.set_nodelay(true);
        tokio::spawn(serve_connection(
            socket,
            addr.clone(),
            Arc::clone(&inner),
            Arc::clone(&crashes),
        ));
    }
}

async fn serve_connection(
    mut socket: TcpStream,
    addr: String,
    inner: Arc<Mutex<Inner>>,
    crashes: Arc<watch::Sender<u64>>,
) {
    let mut crashed = crashes.subscribe();
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut socket) => frame,
            _ = crashed.changed() => return,
        };
        let Some(frame) = frame else { return };
        let reply = match handle(frame, &addr, &inner).await {
            Reply::Frame(reply) => reply,
            Reply::Crash => {
                crashes.send_modify(|n| *n += 1);
                return;
            }
        };
        let mut out = BytesMut::with_capacity(reply.len() + 4);
        out.put_i32(reply.len() as i32);
        out.extend_from_slice(&reply);
        if socket.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn read_frame(socket: &mut TcpStream) -> Option<Bytes> {
    let size = socket.read_i32().await.ok()?;
    let mut buf = vec![0u8; usize::try_from(size).ok()?];
    socket.read_exact(&mut buf).await.ok()?;
    Some(Bytes::from(buf))
}

enum Reply {
    Frame(BytesMut),
    Crash,
}

async fn handle(mut frame: Bytes, addr: &str, inner: &Mutex<Inner>) -> Reply {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(key).expect("known API key");
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .expect("request header");
    let mut out = BytesMut::new();
    let response_header = ResponseHeader::default().with_correlation_id(header.correlation_id);
    let header_version = if api == ApiKey::ApiVersions {
        0
    } else {
        api.response_header_version(version)
    };
    response_header
        .encode(&mut out, header_version)
        .expect("response header");
    let lock = || inner.lock().unwrap_or_else(|p| p.into_inner());
    match api {
        ApiKey::ApiVersions => {
            let _ = ApiVersionsRequest::decode(&mut frame, version);
            let keys = [
                (ApiKey::Produce, 3, 9),
                (ApiKey::Metadata, 1, 9),
                (ApiKey::ApiVersions, 0, 3),
                (ApiKey::InitProducerId, 0, 4),
            ];
            ApiVersionsResponse::default()
                .with_api_keys(
                    keys.iter()
                        .map(|&(k, min, max)| {
                            ApiVersion::default()
                                .with_api_key(k as i16)
                                .with_min_version(min)
                                .with_max_version(max)
                        })
                        .collect(),
                )
                .encode(&mut out, version)
                .expect("encode");
        }
        ApiKey::Metadata => {
            let request = MetadataRequest::decode(&mut frame, version).expect("metadata");
            let service_time = lock().service_time;
            tokio::time::sleep(service_time).await;
            let g = lock();
            let (host, port) = addr.rsplit_once(':').expect("host:port");
            let names: Vec<String> = match &request.topics {
                Some(topics) => topics
                    .iter()
                    .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                    .collect(),
                None => vec![g.topic.clone()],
            };
            let topics = names
                .into_iter()
                .map(|name| {
                    let known = name == g.topic;
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name))))
                        .with_error_code(if known { 0 } else { UNKNOWN_TOPIC_OR_PARTITION })
                        .with_partitions(if known {
                            (0..g.partitions)
                                .map(|p| {
                                    MetadataResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_leader_id(BrokerId(0))
                                        .with_replica_nodes(vec![BrokerId(0)])
                                        .with_isr_nodes(vec![BrokerId(0)])
                                })
                                .collect()
                        } else {
                            Vec::new()
                        })
                })
                .collect();
            MetadataResponse::default()
                .with_brokers(vec![MetadataResponseBroker::default()
                    .with_node_id(BrokerId(0))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(port.parse().expect("port"))])
                .with_cluster_id(Some(StrBytes::from_static_str("loopback")))
                .with_controller_id(BrokerId(0))
                .with_topics(topics)
                .encode(&mut out, version)
                .expect("encode");
        }
        ApiKey::InitProducerId => {
            let _ = InitProducerIdRequest::decode(&mut frame, version);
            let mut g = lock();
            g.init_producer_ids += 1;
            let id = 1000 + g.init_producer_ids as i64 - 1;
            InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0)
                .encode(&mut out, version)
                .expect("encode");
        }
        ApiKey::Produce => {
            let request = ProduceRequest::decode(&mut frame, version).expect("produce");
            let service_time = {
                let mut g = lock();
                g.produce_requests += 1;
                let n = g.produce_requests;
                match g.faults.front().cloned() {
                    Some(Fault::Crash { at, down }) if at == n => {
                        g.faults.pop_front();
                        g.down_until = Some(Instant::now() + down);
                        g.record(&request, Verdict::Lost);
                        return Reply::Crash;
                    }
                    Some(Fault::Rewind { at, by }) if at == n => {
                        g.faults.pop_front();
                        for entry in g.producers.values_mut() {
                            entry.last_sequence -= by;
                            entry.batches.clear();
                        }
                    }
                    Some(Fault::Refuse { at, code }) if at == n => {
                        g.faults.pop_front();
                        g.record(&request, Verdict::Refused(code));
                        produce_response(&request, |_, _| (code, -1))
                            .encode(&mut out, version)
                            .expect("encode");
                        return Reply::Frame(out);
                    }
                    _ => {}
                }
                g.service_time
            };
            tokio::time::sleep(service_time).await;
            let mut g = lock();
            produce_response(&request, |partition, records| g.append(partition, records))
                .encode(&mut out, version)
                .expect("encode");
        }
        other => panic!("the loopback broker does not serve {other:?}"),
    }
    Reply::Frame(out)
}

/// The answer to a produce request, partitions in the reverse of the
/// request's order: a real broker collects them in a hash map, so the
/// producer must not rely on the order.
fn produce_response(
    request: &ProduceRequest,
    mut outcome: impl FnMut(i32, &Bytes) -> (i16, i64),
) -> ProduceResponse {
    ProduceResponse::default().with_responses(
        request
            .topic_data
            .iter()
            .map(|t| {
                let mut partitions: Vec<PartitionProduceResponse> = t
                    .partition_data
                    .iter()
                    .map(|p| {
                        let records = p.records.clone().unwrap_or_default();
                        let (code, base) = outcome(p.index, &records);
                        PartitionProduceResponse::default()
                            .with_index(p.index)
                            .with_error_code(code)
                            .with_base_offset(base)
                            .with_log_append_time_ms(-1)
                    })
                    .collect();
                partitions.reverse();
                TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(partitions)
            })
            .collect(),
    )
}

/// Producer id, epoch, base sequence and record count of a batch.
fn batch_header(records: &Bytes) -> (i64, i16, i32, i32) {
    let mut b = records.clone();
    b.advance(43);
    (b.get_i64(), b.get_i16(), b.get_i32(), b.get_i32())
}

impl Inner {
    /// Record the batches of a request that faults handled.
    fn record(&mut self, request: &ProduceRequest, verdict: Verdict) {
        for t in &request.topic_data {
            for p in &t.partition_data {
                let (producer_id, epoch, sequence, count) =
                    batch_header(&p.records.clone().unwrap_or_default());
                self.arrivals.push(Arrival {
                    partition: p.index,
                    producer_id,
                    epoch,
                    sequence,
                    count,
                    verdict,
                });
            }
        }
    }

    /// Check one batch's sequence as a leader does and store it if it fits:
    /// (error code, base offset).
    fn append(&mut self, partition: i32, records: &Bytes) -> (i16, i64) {
        let (producer_id, epoch, sequence, count) = batch_header(records);
        let last = sequence + count - 1;
        let log_end = self.logs.get(&partition).map_or(0, Vec::len) as i64;
        let verdict = if producer_id < 0 {
            Ok(None)
        } else {
            match self.producers.get(&(partition, producer_id)) {
                None => Ok(None),
                Some(e) if epoch < e.epoch => Err(INVALID_PRODUCER_EPOCH),
                Some(e) if epoch > e.epoch => {
                    if sequence == 0 {
                        Ok(None)
                    } else {
                        Err(OUT_OF_ORDER_SEQUENCE_NUMBER)
                    }
                }
                Some(e) => match e
                    .batches
                    .iter()
                    .find(|(f, l, _)| *f == sequence && *l == last)
                {
                    Some(&(_, _, offset)) => Ok(Some(offset)),
                    None if sequence == e.last_sequence + 1 => Ok(None),
                    None => Err(OUT_OF_ORDER_SEQUENCE_NUMBER),
                },
            }
        };
        let (verdict, result) = match verdict {
            Err(code) => (Verdict::Refused(code), (code, -1)),
            Ok(Some(offset)) => (Verdict::Duplicate, (0, offset)),
            Ok(None) => {
                let topic: Arc<str> = Arc::from(self.topic.as_str());
                let decoded =
                    decode_batches(records.clone(), &topic, partition, 0).expect("decodable batch");
                let log = self.logs.entry(partition).or_default();
                log.extend(decoded.records.into_iter().map(|r| r.value));
                if producer_id >= 0 {
                    let entry = self.producers.entry((partition, producer_id)).or_default();
                    if entry.epoch != epoch {
                        entry.batches.clear();
                    }
                    entry.epoch = epoch;
                    entry.last_sequence = last;
                    entry.batches.push_back((sequence, last, log_end));
                    if entry.batches.len() > 5 {
                        entry.batches.pop_front();
                    }
                }
                (Verdict::Stored, (0, log_end))
            }
        };
        self.arrivals.push(Arrival {
            partition,
            producer_id,
            epoch,
            sequence,
            count,
            verdict,
        });
        result
    }
}
