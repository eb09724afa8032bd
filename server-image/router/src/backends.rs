//! The replicas of each model and the least-outstanding-requests choice among them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long a replica that refused a connection is passed over while others are available.
pub const COOL_DOWN: Duration = Duration::from_secs(2);

/// One replica of a model.
#[derive(Debug)]
pub struct Replica {
    /// Base URL, `http://host:port`.
    pub url: String,
    outstanding: AtomicUsize,
    refused_at: Mutex<Option<Instant>>,
}

impl Replica {
    fn new(url: String) -> Self {
        Replica { url, outstanding: AtomicUsize::new(0), refused_at: Mutex::new(None) }
    }

    /// Requests sent to it and not yet finished.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn cooling(&self, now: Instant) -> bool {
        self.refused_at.lock().map(|t| t.is_some_and(|t| now.duration_since(t) < COOL_DOWN)).unwrap_or(false)
    }

    /// Marks a refused connection: others are preferred for [`COOL_DOWN`].
    pub fn refused(&self) {
        if let Ok(mut t) = self.refused_at.lock() {
            *t = Some(Instant::now());
        }
    }
}

/// A replica chosen for one request; counts as outstanding until dropped.
#[derive(Debug)]
pub struct Lease(Arc<Replica>);

impl Lease {
    /// The replica.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The models of the application and their replicas.
#[derive(Debug, Default)]
pub struct Pool {
    models: Vec<String>,
    replicas: RwLock<BTreeMap<String, Vec<Arc<Replica>>>>,
    turn: AtomicUsize,
}

impl Pool {
    /// A pool serving `models`, with no replicas yet.
    pub fn new(models: Vec<String>) -> Self {
        let replicas = models.iter().map(|m| (m.clone(), Vec::new())).collect();
        Pool { models, replicas: RwLock::new(replicas), turn: AtomicUsize::new(0) }
    }

    /// The model ids, in flag order.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Whether `model` is served by this application.
    pub fn knows(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }

    /// Replaces the replicas of `model` by `urls`, keeping the outstanding counts of those that stay.
    pub fn set(&self, model: &str, urls: &[String]) {
        let Ok(mut map) = self.replicas.write() else { return };
        let Some(current) = map.get_mut(model) else { return };
        let next = urls
            .iter()
            .map(|u| current.iter().find(|r| &r.url == u).cloned().unwrap_or_else(|| Arc::new(Replica::new(u.clone()))))
            .collect();
        *current = next;
    }

    /// The replicas of `model`.
    pub fn replicas(&self, model: &str) -> Vec<Arc<Replica>> {
        self.replicas.read().ok().and_then(|m| m.get(model).cloned()).unwrap_or_default()
    }

    /// The replica of `model` with the fewest outstanding requests, other than `exclude`;
    /// replicas that just refused a connection only when nothing else is left. Ties go round.
    pub fn pick(&self, model: &str, exclude: Option<&str>) -> Option<Lease> {
        let all = self.replicas(model);
        let now = Instant::now();
        let eligible: Vec<&Arc<Replica>> = all.iter().filter(|r| Some(r.url.as_str()) != exclude).collect();
        let warm: Vec<&Arc<Replica>> = eligible.iter().copied().filter(|r| !r.cooling(now)).collect();
        let candidates = if warm.is_empty() { eligible } else { warm };
        if candidates.is_empty() {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let n = candidates.len();
        // Round robin among equals: the scan starts at a different candidate each time.
        let (before, after) = candidates.split_at_checked(start % n)?;
        let best = after.iter().chain(before).copied().min_by_key(|r| r.outstanding())?;
        best.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Lease(best.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(urls: &[&str]) -> Pool {
        let p = Pool::new(vec!["m".into()]);
        p.set("m", &urls.iter().map(|u| u.to_string()).collect::<Vec<_>>());
        p
    }

    #[test]
    fn least_outstanding_wins_and_ties_go_round() {
        let p = pool(&["a", "b"]);
        let first = p.pick("m", None).unwrap();
        let second = p.pick("m", None).unwrap();
        assert_ne!(first.replica().url, second.replica().url, "the busy replica is passed over");
        drop(first);
        let third = p.pick("m", None).unwrap();
        assert_ne!(third.replica().url, second.replica().url);
        assert_eq!(second.replica().outstanding(), 1);
    }

    #[test]
    fn exclusion_refusal_and_updates() {
        let p = pool(&["a", "b"]);
        assert_eq!(p.pick("m", Some("a")).unwrap().replica().url, "b");
        p.replicas("m")[0].refused();
        for _ in 0..4 {
            assert_eq!(p.pick("m", None).unwrap().replica().url, "b", "a cooling replica is avoided");
        }
        assert_eq!(p.pick("m", Some("b")).unwrap().replica().url, "a", "but used when nothing else is left");
        let held = p.pick("m", None).unwrap();
        p.set("m", &["b".into(), "c".into()]);
        let b = p.replicas("m").into_iter().find(|r| r.url == "b").unwrap();
        assert_eq!(b.outstanding(), 1, "a replica that stays keeps its count");
        drop(held);
        assert_eq!(b.outstanding(), 0);
        p.set("m", &[]);
        assert!(p.pick("m", None).is_none());
        assert!(p.pick("other", None).is_none());
    }
}
