//! Test harness shared by llmserve's crates: a real etcd + kube-apiserver per test binary (started
//! through `tests/harness/control-plane.sh`, the script developers and CI use, and torn down by
//! its watchdog when the test process exits), and real `llmserve-server` processes on free ports.

pub mod control_plane;
pub mod server;

use std::path::PathBuf;
use std::time::Duration;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// `../shared/models/stories260k`, the default test model.
pub fn stories260k() -> PathBuf {
    repo_root().join("../shared/models/stories260k")
}

/// Polls `f` every 100 ms until it returns `Some`, or `None` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
