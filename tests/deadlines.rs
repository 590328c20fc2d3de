//! One deadline is one deadline: connecting to a cluster that cannot be
//! reached, or to peers that are not working Kafka brokers, ends within the
//! client's retry deadline with an error that says how long it tried and
//! what failed last; a client whose broker dies reports within its deadline
//! and works again once the broker is back.
//!
//! The bounds asserted here are liveness bounds with a wide margin for a
//! loaded machine (the failures they guard against took minutes or never
//! ended), not performance figures.

mod common;

use std::time::{Duration, Instant};

use common::testcontainers::{start_broker, BrokerOptions};
use kastellan::{Client, ClientConfig, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(3);
/// Scheduling slack on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(3);

fn config(bootstrap: &str) -> ClientConfig {
    ClientConfig::new(bootstrap)
        .retry_deadline(DEADLINE)
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// Connect and return the error and the wall-clock time it took.
async fn failed_connect(bootstrap: &str) -> (Error, Duration) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(DEADLINE * 20, Client::connect(config(bootstrap)))
        .await
        .unwrap_or_else(|_| panic!("connecting to {bootstrap} did not end"));
    let took = started.elapsed();
    match outcome {
        Ok(_) => panic!("connected to {bootstrap}, which is no broker"),
        Err(e) => (e, took),
    }
}

fn assert_bounded(what: &str, e: &Error, took: Duration) {
    assert!(
        took <= DEADLINE + MARGIN,
        "{what}: took {took:?} with a retry deadline of {DEADLINE:?}: {e}"
    );
    if let Error::Unreachable { elapsed, .. } = e {
        // The error states the real time waited.
        assert!(
            *elapsed <= took,
            "{what}: claims {elapsed:?}, took {took:?}"
        );
        assert!(
            took - *elapsed < MARGIN / 2,
            "{what}: claims {elapsed:?}, took {took:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_bootstrap_address_is_unreachable_within_the_deadline() {
    let (e, took) = failed_connect("127.0.0.1:1").await;
    assert_bounded("refused", &e, took);
    let Error::Unreachable { elapsed, last, .. } = &e else {
        panic!("{e:?}")
    };
    // Retried until the deadline, not given up early.
    assert!(*elapsed >= DEADLINE / 2, "gave up after {elapsed:?}: {e}");
    assert!(last.to_lowercase().contains("refused"), "{e}");
    assert!(e.is_retriable());
}

#[tokio::test]
async fn an_unresolvable_host_is_unreachable_within_the_deadline() {
    let (e, took) = failed_connect("kastellan-no-such-host.invalid:9092").await;
    assert_bounded("unresolvable", &e, took);
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(
        e.to_string().contains("kastellan-no-such-host.invalid"),
        "{e}"
    );
}

/// How a fake peer behaves once a client connects.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// Answers with an HTTP error page.
    Http,
    /// Announces a frame of 0x7fffffff bytes.
    HugeFrame,
    /// Announces a frame of -1 bytes.
    NegativeFrame,
    /// Closes the connection at once.
    Closes,
    /// Accepts and never says anything.
    Silent,
    /// Sends a plausible frame a byte per second.
    Trickles,
}

async fn serve(peer: Peer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(talk(peer, socket));
        }
    });
    addr
}

async fn talk(peer: Peer, mut socket: TcpStream) {
    let mut request = [0u8; 256];
    if !matches!(peer, Peer::Closes) {
        let _ = socket.read(&mut request).await;
    }
    match peer {
        Peer::Http => {
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
        Peer::HugeFrame => {
            let _ = socket
                .write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1])
                .await;
        }
        Peer::NegativeFrame => {
            let _ = socket.write_all(&[0xff, 0xff, 0xff, 0xff]).await;
        }
        Peer::Closes => return,
        Peer::Silent => {}
        Peer::Trickles => {
            // A 64-byte frame for correlation id 1, one byte a second.
            let mut frame = vec![0, 0, 0, 64, 0, 0, 0, 1];
            frame.resize(68, 0);
            for b in frame {
                if socket.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // Hold the connection open until the client gives up.
    let _ = socket.read(&mut request).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn peers_that_are_not_kafka_brokers_end_within_the_deadline() {
    let peers = [
        Peer::Http,
        Peer::HugeFrame,
        Peer::NegativeFrame,
        Peer::Closes,
        Peer::Silent,
        Peer::Trickles,
    ];
    let mut runs = Vec::new();
    for peer in peers {
        let addr = serve(peer).await;
        runs.push(tokio::spawn(async move {
            let (e, took) = failed_connect(&addr).await;
            (peer, e, took)
        }));
    }
    for run in runs {
        let (peer, e, took) = run.await.expect("test task");
        assert_bounded(&format!("{peer:?}"), &e, took);
        let text = e.to_string();
        let explained = match peer {
            Peer::Http | Peer::HugeFrame | Peer::NegativeFrame => text.contains("not plausible"),
            Peer::Closes => text.contains("closed"),
            Peer::Silent | Peer::Trickles => {
                text.contains("no ApiVersions answer") || text.contains("within")
            }
        };
        assert!(
            explained,
            "{peer:?}: the error does not say what failed: {text}"
        );
    }
}

#[tokio::test]
async fn a_dead_address_in_the_bootstrap_list_is_skipped() {
    let live = common::testcontainers::bootstrap();
    let client = Client::connect(config(&format!("127.0.0.1:1,{live}")))
        .await
        .expect("connects through the live address");
    assert!(!client.brokers().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_to_a_dead_broker_end_within_the_deadline_and_work_again_after_restart() {
    let mut broker = start_broker(BrokerOptions::default()).expect("broker");
    let client = Client::connect(config(broker.bootstrap()))
        .await
        .expect("connect");
    client.admin().list_topics().await.expect("list topics");

    broker.kill();
    let started = Instant::now();
    let e = client
        .admin()
        .list_topics()
        .await
        .expect_err("no broker to answer");
    let took = started.elapsed();
    assert!(took <= DEADLINE + MARGIN, "took {took:?}: {e}");
    assert!(e.is_retriable(), "{e:?}");
    let Error::RetriesExhausted { elapsed, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(*elapsed <= took);

    broker.restart().expect("restart");
    // The same client finds the broker again by itself.
    let mut last = None;
    for _ in 0..30 {
        match client.admin().list_topics().await {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
    }
    panic!("the client did not recover after the restart: {last:?}");
}
