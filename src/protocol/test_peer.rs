//! A scripted stand-in for a broker, for unit tests of how connections
//! behave (framing, cancellation, pooling). It answers ApiVersions like a
//! broker and reports every other request frame it reads; real broker
//! behaviour is covered by the integration tests.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A request frame as the peer read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeenFrame {
    pub api_key: i16,
    pub correlation_id: i32,
    pub len: usize,
}

/// A listening peer: its address, the frames it reads (after ApiVersions),
/// and a switch that holds its reading back while `false`.
pub(crate) struct TestPeer {
    pub addr: String,
    pub frames: mpsc::UnboundedReceiver<SeenFrame>,
    pub reading: watch::Sender<bool>,
}

pub(crate) async fn start() -> TestPeer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (frames_tx, frames) = mpsc::unbounded_channel();
    let (reading, reading_rx) = watch::channel(true);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, frames_tx.clone(), reading_rx.clone()));
        }
    });
    TestPeer {
        addr,
        frames,
        reading,
    }
}

async fn serve(
    mut socket: TcpStream,
    frames: mpsc::UnboundedSender<SeenFrame>,
    mut reading: watch::Receiver<bool>,
) {
    loop {
        if reading.wait_for(|r| *r).await.is_err() {
            return;
        }
        let Ok(size) = socket.read_i32().await else {
            return;
        };
        let Ok(len) = usize::try_from(size) else {
            return;
        };
        let mut body = vec![0u8; len];
        if socket.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut header = &body[..];
        if header.len() < 8 {
            return;
        }
        let api_key = header.get_i16();
        let _version = header.get_i16();
        let correlation_id = header.get_i32();
        if api_key == ApiKey::ApiVersions as i16 {
            if socket
                .write_all(&api_versions_answer(correlation_id))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let _ = frames.send(SeenFrame {
            api_key,
            correlation_id,
            len,
        });
    }
}

/// An ApiVersions v3 answer offering every API at versions 0 to 20.
fn api_versions_answer(correlation_id: i32) -> Bytes {
    let keys = [0i16, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18, 19, 20, 22, 36];
    let response = ApiVersionsResponse::default().with_api_keys(
        keys.iter()
            .map(|k| {
                ApiVersion::default()
                    .with_api_key(*k)
                    .with_min_version(0)
                    .with_max_version(20)
            })
            .collect(),
    );
    let mut body = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut body, 0)
        .expect("header");
    response.encode(&mut body, 3).expect("body");
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    frame.freeze()
}
