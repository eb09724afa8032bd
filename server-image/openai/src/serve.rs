//! Serving with a drain: what both binaries do on SIGTERM.

use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;

/// A server running in the background that can be drained.
pub struct Serving {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves `app` on `listener`, with `TCP_NODELAY` on every connection: small SSE writes must leave
/// at once, not wait for the client's delayed ACK (40 ms each).
pub fn spawn(listener: tokio::net::TcpListener, app: Router) -> Serving {
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = rx.changed().await;
    });
    Serving { stop, task: tokio::spawn(async move { server.await }) }
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

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
