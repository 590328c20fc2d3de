//! The client against small local HTTP peers: caching, error mapping,
//! timeouts and broken answers. (The registry's own semantics are tested
//! against a real registry in the integration tests.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// One request as the peer saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: String,
    pub(crate) body: String,
}

/// What the peer does with a request.
pub(crate) enum Reply {
    /// Answer with this status and body.
    Json(u16, String),
    /// Read the request, then never answer.
    Silence,
    /// Read the request, then close the connection.
    Close,
    /// Send these raw bytes and close.
    Raw(&'static str),
    /// Wait, then answer with this status and body.
    Later(Duration, u16, String),
}

/// A local HTTP/1.1 peer that answers each request with `reply(seen)`.
pub(crate) struct Peer {
    pub(crate) url: String,
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
    pub(crate) calls: Arc<AtomicUsize>,
}

impl Peer {
    pub(crate) async fn start<F>(reply: F) -> Peer
    where
        F: Fn(&Seen) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(reply);
        let (s, c) = (Arc::clone(&seen), Arc::clone(&calls));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, c, reply) = (Arc::clone(&s), Arc::clone(&c), Arc::clone(&reply));
                tokio::spawn(async move { serve(stream, s, c, &*reply).await });
            }
        });
        Peer { url, seen, calls }
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

async fn serve(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    calls: Arc<AtomicUsize>,
    reply: &(dyn Fn(&Seen) -> Reply + Send + Sync),
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let item = Seen {
        method: first.next().unwrap_or("").to_string(),
        path: first.next().unwrap_or("").to_string(),
        headers: head.clone(),
        body: String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string(),
    };
    calls.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(item.clone());
    let mut answer = reply(&item);
    if let Reply::Later(delay, status, body) = answer {
        tokio::time::sleep(delay).await;
        answer = Reply::Json(status, body);
    }
    match answer {
        Reply::Later(..) => unreachable!("made a Json answer above"),
        Reply::Json(status, body) => {
            let text = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(text.as_bytes()).await;
        }
        Reply::Silence => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Reply::Close => {}
        Reply::Raw(bytes) => {
            let _ = stream.write_all(bytes.as_bytes()).await;
        }
    }
    let _ = stream.shutdown().await;
}

fn client(url: &str) -> SchemaRegistry {
    SchemaRegistry::builder(url)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test]
async fn register_and_schema_by_id_ask_once() {
    let peer = Peer::start(|seen| {
        if seen.path.ends_with("/versions") {
            Reply::Json(200, r#"{"id":7}"#.into())
        } else {
            Reply::Json(200, r#"{"schema":"\"string\""}"#.into())
        }
    })
    .await;
    let registry = client(&format!("{}/apis/ccompat/v7/", peer.url));
    let schema = Schema::avro(r#""string""#);
    for _ in 0..3 {
        assert_eq!(
            registry.register("t-value", &schema).await.unwrap(),
            SchemaId(7)
        );
    }
    assert_eq!(peer.calls(), 1);
    let seen = peer.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/apis/ccompat/v7/subjects/t-value/versions");
    assert_eq!(seen.body, r#"{"schema":"\"string\""}"#);
    assert!(seen
        .headers
        .to_ascii_lowercase()
        .contains("content-type: application/vnd.schemaregistry.v1+json"));

    // A clone shares the caches.
    let clone = registry.clone();
    for _ in 0..3 {
        let s = clone.schema_by_id(SchemaId(7)).await.unwrap();
        assert_eq!(s.text, r#""string""#);
        assert_eq!(s.schema_type, SchemaType::Avro);
    }
    assert_eq!(peer.calls(), 2);
    assert_eq!(peer.last().path, "/apis/ccompat/v7/schemas/ids/7");
}

#[tokio::test]
async fn credentials_are_sent() {
    let peer = Peer::start(|_| Reply::Json(200, "[]".into())).await;
    let registry = SchemaRegistry::builder(&peer.url)
        .basic_auth("user", "pass")
        .build()
        .unwrap();
    registry.subjects().await.unwrap();
    // base64("user:pass")
    assert!(peer
        .last()
        .headers
        .contains("authorization: Basic dXNlcjpwYXNz"));
    let registry = SchemaRegistry::builder(&peer.url)
        .bearer_token("tok")
        .build()
        .unwrap();
    registry.subjects().await.unwrap();
    assert!(peer.last().headers.contains("authorization: Bearer tok"));
    let with_user = peer.url.replace("http://", "http://u:p@");
    client(&with_user).subjects().await.unwrap();
    assert!(peer.last().headers.contains("authorization: Basic dTpw"));
}

#[tokio::test]
async fn registry_errors_keep_code_and_message() {
    let peer = Peer::start(|seen| match seen.path.as_str() {
        "/schemas/ids/99" => Reply::Json(
            404,
            r#"{"error_code":40403,"message":"Schema not found"}"#.into(),
        ),
        "/subjects/x/versions" => Reply::Json(
            409,
            r#"{"error_code":409,"message":"Schema being registered is incompatible"}"#.into(),
        ),
        "/subjects" => Reply::Json(503, "<html>down for maintenance</html>".into()),
        _ => Reply::Json(200, "not json".into()),
    })
    .await;
    let registry = client(&peer.url);
    let e = registry.schema_by_id(SchemaId(99)).await.unwrap_err();
    let Error::Registry {
        status,
        code,
        ref message,
        retriable,
        ref url,
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!((status, code, retriable), (Some(404), Some(40403), false));
    assert_eq!(message, "Schema not found");
    assert!(url.ends_with("/schemas/ids/99"), "{url}");
    assert!(
        e.to_string()
            .contains("HTTP 404, error code 40403: Schema not found"),
        "{e}"
    );

    let e = registry
        .register("x", &Schema::avro("1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Registry {
                code: Some(409),
                retriable: false,
                ..
            }
        ),
        "{e}"
    );

    let e = registry.subjects().await.unwrap_err();
    assert!(e.is_retriable(), "{e}");
    assert!(e.to_string().contains("down for maintenance"), "{e}");

    let e = registry.versions("y").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Registry {
                status: Some(200),
                code: None,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("not the JSON expected") && e.to_string().contains("not json"),
        "{e}"
    );
}

#[tokio::test]
async fn a_silent_peer_times_out_within_the_timeout() {
    let peer = Peer::start(|_| Reply::Silence).await;
    let registry = SchemaRegistry::builder(&peer.url)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let start = Instant::now();
    let e = registry.subjects().await.unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(e.is_retriable(), "{e}");
    assert!(
        e.to_string().contains("no complete answer within 300ms"),
        "{e}"
    );
}

#[tokio::test]
async fn a_peer_that_closes_or_talks_nonsense_is_an_error() {
    let peer = Peer::start(|_| Reply::Close).await;
    let e = client(&peer.url).subjects().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Registry {
                status: None,
                retriable: true,
                ..
            }
        ),
        "{e}"
    );

    let peer = Peer::start(|_| Reply::Raw("SSH-2.0-OpenSSH\r\n")).await;
    let e = client(&peer.url).subjects().await.unwrap_err();
    assert!(matches!(e, Error::Registry { status: None, .. }), "{e}");

    // Nobody listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let e = client(&url).subjects().await.unwrap_err();
    assert!(
        e.is_retriable() && e.to_string().contains("cannot connect"),
        "{e}"
    );
}

#[tokio::test]
async fn lookup_versions_compatibility_and_config() {
    let peer = Peer::start(|seen| match (seen.method.as_str(), seen.path.as_str()) {
        ("POST", "/subjects/s") => Reply::Json(
            200,
            r#"{"subject":"s","id":3,"version":2,"schema":"\"long\""}"#.into(),
        ),
        ("GET", "/subjects/s/versions") => Reply::Json(200, "[1,2]".into()),
        ("GET", "/subjects/s/versions/latest") => Reply::Json(
            200,
            r#"{"subject":"s","id":3,"version":2,"schema":"\"long\"","schemaType":"AVRO"}"#.into(),
        ),
        ("POST", "/compatibility/subjects/s/versions/latest?verbose=true") => Reply::Json(
            200,
            r#"{"is_compatible":false,"messages":["reader field x has no default"]}"#.into(),
        ),
        ("GET", "/config/s?defaultToGlobal=true") => {
            Reply::Json(404, r#"{"error_code":40408,"message":"no"}"#.into())
        }
        ("GET", "/config") => Reply::Json(200, r#"{"compatibilityLevel":"BACKWARD"}"#.into()),
        ("PUT", "/config/s") => Reply::Json(200, r#"{"compatibility":"FULL_TRANSITIVE"}"#.into()),
        _ => Reply::Json(
            404,
            r#"{"error_code":40401,"message":"Subject not found"}"#.into(),
        ),
    })
    .await;
    let registry = client(&peer.url);
    let schema = Schema::avro(r#""long""#);
    let found = registry.lookup("s", &schema).await.unwrap();
    assert_eq!(
        (found.id, found.version, found.subject.as_str()),
        (SchemaId(3), 2, "s")
    );
    registry.lookup("s", &schema).await.unwrap();
    assert_eq!(peer.calls(), 1);
    // A lookup fills the register cache too.
    assert_eq!(registry.register("s", &schema).await.unwrap(), SchemaId(3));
    assert_eq!(peer.calls(), 1);

    assert_eq!(registry.versions("s").await.unwrap(), vec![1, 2]);
    let latest = registry.version("s", Version::Latest).await.unwrap();
    assert_eq!(latest.schema.text, r#""long""#);
    let verdict = registry
        .check_compatibility("s", &schema, Version::Latest)
        .await
        .unwrap();
    assert!(!verdict.is_compatible);
    assert_eq!(verdict.messages, vec!["reader field x has no default"]);
    assert_eq!(
        registry.config("s").await.unwrap(),
        CompatibilityLevel::Backward
    );
    registry
        .set_config("s", CompatibilityLevel::FullTransitive)
        .await
        .unwrap();
    assert_eq!(peer.last().body, r#"{"compatibility":"FULL_TRANSITIVE"}"#);
    let e = registry.versions("nope").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Registry {
                code: Some(codes::SUBJECT_NOT_FOUND),
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn register_all_registers_nothing_when_one_is_incompatible() {
    let peer = Peer::start(|seen| match seen.path.as_str() {
        p if p.starts_with("/compatibility/subjects/new-value") => Reply::Json(
            404,
            r#"{"error_code":40401,"message":"Subject 'new-value' not found."}"#.into(),
        ),
        p if p.starts_with("/compatibility/subjects/ok-value") => {
            Reply::Json(200, r#"{"is_compatible":true}"#.into())
        }
        p if p.starts_with("/compatibility/") => Reply::Json(
            200,
            r#"{"is_compatible":false,"messages":["field b removed without default"]}"#.into(),
        ),
        _ => Reply::Json(200, r#"{"id":11}"#.into()),
    })
    .await;
    let registry = client(&peer.url);
    let s = Schema::avro(r#""string""#);
    let e = registry
        .register_all(&[
            ("ok-value".into(), s.clone()),
            ("bad-value".into(), s.clone()),
            ("worse-value".into(), s.clone()),
        ])
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("2 of 3")
            && text.contains("subject `bad-value`: field b removed without default")
            && text.contains("subject `worse-value`"),
        "{text}"
    );
    assert!(matches!(
        e,
        Error::Registry {
            code: Some(409),
            retriable: false,
            ..
        }
    ));
    assert!(peer
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.path.starts_with("/compatibility/")));

    let ids = registry
        .register_all(&[("ok-value".into(), s.clone()), ("new-value".into(), s)])
        .await
        .unwrap();
    assert_eq!(ids, vec![SchemaId(11), SchemaId(11)]);
}

#[test]
fn https_without_tls_is_a_config_error() {
    let built = SchemaRegistry::builder("https://registry:8081").build();
    #[cfg(not(feature = "tls"))]
    {
        let e = built.unwrap_err();
        assert!(
            matches!(e, Error::Config(_)) && e.to_string().contains("`tls` feature"),
            "{e}"
        );
    }
    #[cfg(feature = "tls")]
    drop(built);
    let e = SchemaRegistry::builder("http://r")
        .timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)));
}

#[tokio::test]
async fn requests_counts_every_request_sent() {
    let peer = Peer::start(|seen| {
        if seen.path.ends_with("/versions") {
            Reply::Json(200, r#"{"id":3}"#.into())
        } else {
            Reply::Json(
                404,
                r#"{"error_code":40403,"message":"Schema not found"}"#.into(),
            )
        }
    })
    .await;
    let registry = client(&peer.url);
    assert_eq!(registry.requests(), 0);
    let schema = Schema::avro(r#""long""#);
    for _ in 0..5 {
        registry.register("n-value", &schema).await.unwrap();
    }
    assert_eq!(registry.requests(), 1, "cached after the first");
    // Errors are not cached: each asks, and each counts.
    for _ in 0..2 {
        registry.schema_by_id(SchemaId(9)).await.unwrap_err();
    }
    assert_eq!(registry.requests(), 3);
    assert_eq!(registry.clone().requests(), 3, "clones share the count");
    assert_eq!(peer.calls(), 3);
}

// A hundred callers that miss the cache for the same key at once share one
// request, an answer or an error alike; the next miss after an error asks
// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_key_share_one_request() {
    let peer = Peer::start(|seen| {
        let later =
            |status, body: &str| Reply::Later(Duration::from_millis(300), status, body.into());
        if seen.path.ends_with("/versions") {
            later(200, r#"{"id":7}"#)
        } else if seen.path.ends_with("/ids/7") {
            later(200, r#"{"schema":"\"string\""}"#)
        } else {
            later(404, r#"{"error_code":40403,"message":"Schema not found"}"#)
        }
    })
    .await;
    let registry = client(&peer.url);
    let schema = Schema::avro(r#""string""#);

    let all = |n: usize, f: &dyn Fn() -> tokio::task::JoinHandle<Result<String>>| {
        (0..n).map(|_| f()).collect::<Vec<_>>()
    };
    let by_id = all(100, &|| {
        let r = registry.clone();
        tokio::spawn(async move { Ok(r.schema_by_id(SchemaId(7)).await?.text.clone()) })
    });
    let registered = all(100, &|| {
        let (r, s) = (registry.clone(), schema.clone());
        tokio::spawn(async move { Ok(r.register("s-value", &s).await?.to_string()) })
    });
    let unknown = all(100, &|| {
        let r = registry.clone();
        tokio::spawn(async move { Ok(r.schema_by_id(SchemaId(8)).await?.text.clone()) })
    });
    for task in by_id {
        assert_eq!(task.await.unwrap().unwrap(), r#""string""#);
    }
    for task in registered {
        assert_eq!(task.await.unwrap().unwrap(), "7");
    }
    for task in unknown {
        let e = task.await.unwrap().unwrap_err();
        assert!(
            matches!(
                e,
                Error::Registry {
                    code: Some(codes::SCHEMA_NOT_FOUND),
                    ..
                }
            ),
            "{e}"
        );
    }
    assert_eq!(peer.calls(), 3, "one request per key");
    assert_eq!(registry.requests(), 3);

    // Answers are cached, errors are not.
    registry.schema_by_id(SchemaId(7)).await.unwrap();
    registry.register("s-value", &schema).await.unwrap();
    registry.schema_by_id(SchemaId(8)).await.unwrap_err();
    assert_eq!(peer.calls(), 4);
}
