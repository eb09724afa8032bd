//! The HTTP front both binaries share: our own accept loop on hyper, so that every connection
//! is bounded. A connection cap (the ones over it get a 503 with `Retry-After`, not a silent
//! queue), a limit on the time to send a request's headers (which is also the keep-alive idle
//! limit), `TCP_NODELAY`, and a drain on SIGTERM. Request bodies are bounded by [`crate::body`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounter, IntGauge, Opts, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::ApiError;
use crate::tls::Tls;

/// What every connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; the ones over it are answered 503 and closed.
    pub max_connections: usize,
    /// Time a connection has to send a request's headers, counted from when it opened or its
    /// previous response ended (so also how long an idle keep-alive connection stays open).
    pub header_timeout: Duration,
}

/// The connection metrics (each binary names them in its metrics module).
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections refused because `max_connections` were open.
    pub refused: IntCounter,
}

impl ConnectionMetrics {
    /// Registers the gauge of open connections as `open` and the counter of refused ones as
    /// `refused` in `registry`.
    pub fn register(registry: &Registry, open: &str, refused: &str) -> prometheus::Result<Self> {
        let open = IntGauge::with_opts(Opts::new(open, "HTTP connections open now."))?;
        let refused = IntCounter::with_opts(Opts::new(
            refused,
            "HTTP connections answered 503 and closed because the connection cap was reached.",
        ))?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(ConnectionMetrics { open, refused })
    }

    /// Metrics registered nowhere, for a side listener whose connections are not worth a series.
    pub fn detached() -> prometheus::Result<Self> {
        Ok(ConnectionMetrics {
            open: IntGauge::new("detached_connections_open", "unregistered")?,
            refused: IntCounter::new("detached_connections_refused", "unregistered")?,
        })
    }
}

/// Serves `app` (meant to hold only `/metrics` and `/health`) in plain HTTP on its own listener,
/// with a small connection cap: the port a NetworkPolicy opens to Prometheus alone, while the API
/// port stays closed to it (and, on the router, may speak TLS).
pub fn spawn_side(listener: TcpListener, app: Router, header_timeout: Duration) -> prometheus::Result<Serving> {
    Ok(spawn(listener, app, Limits { max_connections: 64, header_timeout }, ConnectionMetrics::detached()?))
}

/// A server running in the background that can be drained.
pub struct Serving {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves `app` on `listener` within `limits`, in plain HTTP.
pub fn spawn(listener: TcpListener, app: Router, limits: Limits, metrics: ConnectionMetrics) -> Serving {
    spawn_with_tls(listener, app, limits, metrics, None)
}

/// [`spawn`], with TLS on every connection when `tls` is given (the handshake counts against
/// the header timeout).
pub fn spawn_with_tls(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    tls: Option<Arc<Tls>>,
) -> Serving {
    let (stop, rx) = tokio::sync::watch::channel(false);
    Serving { stop, task: tokio::spawn(accept_loop(listener, app, limits, metrics, tls, rx)) }
}

/// Refused connections being answered at once; beyond this they are closed without an answer.
const REFUSING_AT_ONCE: usize = 256;
/// How long a refused connection may take to read its 503.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    tls: Option<Arc<Tls>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let service = TowerToHyperService::new(app);
    loop {
        let tcp = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning. Errors of
                    // one connection (reset before accept) cost nothing.
                    if !is_connection_error(&e) {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        // Small SSE writes must leave at once, not wait for the client's delayed ACK (40 ms each).
        let _ = tcp.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            // Over TLS a plain-text answer would only fail the handshake: such a connection is
            // closed at once.
            if tls.is_none()
                && let Ok(turn) = refusing.clone().try_acquire_owned()
            {
                tokio::spawn(async move {
                    refuse(tcp).await;
                    drop(turn);
                });
            }
            continue;
        };
        let open = metrics.open.clone();
        open.inc();
        // Errors of a connection are the client's (a reset, a failed handshake, headers too slow
        // or malformed; hyper has answered what could be answered), so they are not logged one
        // by one.
        match tls.as_ref().and_then(|t| t.config()) {
            None => {
                let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), service.clone()));
                tokio::spawn(async move {
                    let _ = conn.await;
                    open.dec();
                    drop(slot);
                });
            }
            Some(config) => {
                let (http, service) = (http.clone(), service.clone());
                let watcher = graceful.watcher();
                let handshake = limits.header_timeout;
                tokio::spawn(async move {
                    let accepted =
                        tokio::time::timeout(handshake, tokio_rustls::TlsAcceptor::from(config).accept(tcp)).await;
                    if let Ok(Ok(stream)) = accepted {
                        let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await;
                    }
                    open.dec();
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Answers a connection over the cap with a 503 in OpenAI's envelope, then closes it. The
/// request is not read; what the client sent is drained after the answer, so that closing does
/// not reset the connection before the client read its 503.
async fn refuse(mut tcp: TcpStream) {
    let err = ApiError {
        code: Some("too_many_connections"),
        retry_after: Some(1),
        ..ApiError::unavailable("too many open connections; retry later")
    };
    let body = err.body().to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

impl Serving {
    /// Stops accepting and waits up to `grace` for the requests in flight (streams included);
    /// false when the grace period ran out first.
    pub async fn drain(self, grace: Duration) -> bool {
        tracing::info!(
            grace_seconds = grace.as_secs_f64(),
            "shutting down: no new requests, finishing those in flight"
        );
        let _ = self.stop.send(true);
        let done = tokio::time::timeout(grace, self.task).await.is_ok();
        if !done {
            tracing::warn!("grace period over; dropping the requests still in flight");
        }
        done
    }
}

/// A duration flag that must be a positive, finite number of seconds.
pub fn positive_seconds(flag: &str, value: f64) -> Result<Duration, String> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("--{flag} must be a positive number of seconds, got {value}")),
    }
}

/// The first step of a shutdown: sets `draining` (so `/health` answers 503 and whoever routes
/// here stops) and keeps serving for `delay` before the drain refuses new connections.
pub async fn announce_shutdown(draining: &std::sync::atomic::AtomicBool, delay: Duration) {
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    if !delay.is_zero() {
        tracing::info!(delay_seconds = delay.as_secs(), "shutting down: /health answers 503, still serving");
        tokio::time::sleep(delay).await;
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
