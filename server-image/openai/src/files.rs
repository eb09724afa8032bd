//! Files that change under a running process: mounted Secrets and ConfigMaps (a TLS pair, API
//! keys) are rewritten in place, and the process follows them.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Calls `reload` whenever the modification time of any of `files` changes, checking every
/// `every`; runs until the process ends. (Mounted Secrets and ConfigMaps change this way.)
pub async fn on_change(files: &[PathBuf], every: Duration, mut reload: impl FnMut()) {
    let stamps = || files.iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect::<Vec<_>>();
    let mut last: Vec<Option<SystemTime>> = stamps();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = stamps();
        if now != last {
            last = now;
            reload();
        }
    }
}
