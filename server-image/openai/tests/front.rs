//! The shared HTTP front on a real socket: slow and idle connections are closed, the connection
//! cap answers 503 in the envelope, bodies are bounded in size and time, drain lets requests in
//! flight finish. Raw TCP, because these are the clients a library client never is.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::middleware;
use axum::routing::post;
use llmserve_openai::body::{BodyLimits, buffered};
use llmserve_openai::serve::{self, ConnectionMetrics, Limits, Serving};
use llmserve_test_support::raw::{self, PATIENCE, closed, json_body, response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_millis(800);
const BODY: BodyLimits = BodyLimits { max_bytes: 1024, timeout: Duration::from_millis(800) };

struct Front {
    addr: std::net::SocketAddr,
    metrics: ConnectionMetrics,
    serving: Serving,
}

async fn front(max_connections: usize) -> Front {
    let app = Router::new()
        .route(
            "/echo",
            post(|body: Bytes| async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                format!("{}", body.len())
            }),
        )
        .layer(middleware::from_fn_with_state(BODY, buffered));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = ConnectionMetrics::register(&prometheus::Registry::new(), "open", "refused").unwrap();
    let limits = Limits { max_connections, header_timeout: HEADER_TIMEOUT };
    let serving = serve::spawn(listener, app, limits, metrics.clone());
    Front { addr, metrics, serving }
}

fn request(body: &str) -> String {
    raw::post("/echo", body)
}

#[tokio::test]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let f = front(16).await;
    // A client that sends half a request head and then nothing.
    let mut slow = TcpStream::connect(f.addr).await.unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\n").await.unwrap();
    // A keep-alive client that sends one request and then idles.
    let mut idle = TcpStream::connect(f.addr).await.unwrap();
    idle.write_all(request("{}").as_bytes()).await.unwrap();
    let answer = response(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed(&mut slow).await, "a connection trickling its headers stayed open");
    assert!(closed(&mut idle).await, "an idle keep-alive connection stayed open");
    tokio::time::timeout(PATIENCE, async {
        while f.metrics.open.get() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the open-connections gauge did not return to 0");
}

#[tokio::test]
async fn connections_over_the_cap_get_a_503_envelope_and_the_cap_frees_up() {
    let f = front(2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(f.addr).await.unwrap();
        tcp.write_all(request("{}").as_bytes()).await.unwrap();
        assert!(response(&mut tcp).await.starts_with("HTTP/1.1 200"));
        held.push(tcp);
    }
    assert_eq!(f.metrics.open.get(), 2);
    let mut over = TcpStream::connect(f.addr).await.unwrap();
    over.write_all(request("{}").as_bytes()).await.unwrap();
    let answer = response(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    let body = json_body(&answer);
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    assert_eq!(f.metrics.refused.get(), 1);
    drop(held.pop());
    // The freed slot serves again (the server notices the close asynchronously).
    let served = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut tcp = TcpStream::connect(f.addr).await.unwrap();
            tcp.write_all(request("{}").as_bytes()).await.unwrap();
            if response(&mut tcp).await.starts_with("HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "a slot freed by a closed connection was never reused");
}

#[tokio::test]
async fn bodies_over_the_limit_get_a_413_not_a_reset() {
    let f = front(16).await;
    let big = "x".repeat(64 * 1024);
    // Declared over the limit: refused without buffering, the rest read and dropped.
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(request(&big).as_bytes()).await.unwrap();
    let answer = response(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"request_too_large\""), "{answer}");
    // Chunked, no declared length: noticed while reading.
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunked = format!("{head}{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    tcp.write_all(chunked.as_bytes()).await.unwrap();
    let answer = response(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Within the limit: served.
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(request(&"y".repeat(1000)).as_bytes()).await.unwrap();
    let answer = response(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("1000"), "{answer}");
}

#[tokio::test]
async fn a_body_that_trickles_gets_a_408_envelope() {
    let f = front(16).await;
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(b"{\"a\": ").await.unwrap();
    let answer = response(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = json_body(&answer);
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
}

#[tokio::test]
async fn drain_finishes_requests_in_flight_and_stops_accepting() {
    let f = front(16).await;
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(request("{\"n\": 1}").as_bytes()).await.unwrap();
    // The handler takes 300 ms; drain starts while it runs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = f.addr;
    let drained = tokio::spawn(f.serving.drain(PATIENCE));
    let answer = response(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with('8'), "{answer}");
    assert!(drained.await.unwrap(), "drain did not finish within the grace period");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after the drain");
}
