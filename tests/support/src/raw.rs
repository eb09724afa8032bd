//! HTTP/1.1 by hand over TCP, for the clients a library client never is: ones that trickle,
//! idle, hold connections or send more than they may.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Bound on every wait for the server.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A `POST` of `body` (JSON) to `path`, keep-alive.
pub fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One response read off `tcp` (its head and a `content-length` or chunked body, or all until the
/// server closes), as text, chunk framing left in; panics when none arrives within [`PATIENCE`].
pub async fn response(tcp: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = tcp.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let head = head.to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()));
                let chunked = head.contains("transfer-encoding: chunked");
                if len.is_some_and(|len| body.len() >= len) || (chunked && body.ends_with("0\r\n\r\n")) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.expect("no complete response in time");
    String::from_utf8_lossy(&buf).into_owned()
}

/// The JSON body of a response read by [`response`], chunk framing removed (`Null` when it is not
/// JSON).
pub fn json_body(answer: &str) -> serde_json::Value {
    let Some((head, body)) = answer.split_once("\r\n\r\n") else { return serde_json::Value::Null };
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        // size line, data, size line, data ...: the data are the odd lines.
        body.split("\r\n").skip(1).step_by(2).collect::<String>()
    } else {
        body.to_string()
    };
    serde_json::from_str(&body).unwrap_or_default()
}

/// Whether the server closed `tcp` within [`PATIENCE`] (what it still sends is read and dropped).
pub async fn closed(tcp: &mut TcpStream) -> bool {
    let mut sink = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A keep-alive connection to `addr` that got a 200 for `GET /health`, retried while the server
/// answers 503 (a slot still held by a connection it has not yet seen close).
pub async fn hold(addr: &str) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(PATIENCE, async {
        loop {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n").await.expect("write");
            if response(&mut tcp).await.starts_with("HTTP/1.1 200") {
                return tcp;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no connection slot freed up in time")
}
