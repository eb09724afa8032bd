//! The replicas of each model, outlier ejection, and the least-outstanding-requests choice among
//! the replicas in good standing.
//!
//! Outlier ejection follows Envoy's consecutive-failures detector: a replica that fails
//! `consecutive_failures` requests in a row (a 5xx answer, a refused or broken connection, a
//! timeout) leaves the pool for `base_ejection`, doubled at each further ejection up to
//! `max_ejection`; a replica whose `/health` fails (the active check) leaves it until the check
//! passes again. An ejected replica is picked only when every replica of the model is ejected, so a
//! replica that fails fast never attracts traffic by looking idle.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long a replica that refused a connection is passed over while others are available.
pub const COOL_DOWN: Duration = Duration::from_secs(2);

/// Successes in a row after which a replica's ejection backoff starts again from the base.
const FORGIVE_AFTER_SUCCESSES: u32 = 20;

/// When a replica is taken out of the pool, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject a replica (0: never eject).
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one doubles it.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// One replica of a model.
#[derive(Debug)]
pub struct Replica {
    /// Base URL, `http://host:port`.
    pub url: String,
    outstanding: AtomicUsize,
    refused_at: Mutex<Option<Instant>>,
    failures: AtomicU32,
    successes: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    unhealthy: AtomicBool,
}

impl Replica {
    fn new(url: String) -> Self {
        Replica {
            url,
            outstanding: AtomicUsize::new(0),
            refused_at: Mutex::new(None),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            unhealthy: AtomicBool::new(false),
        }
    }

    /// A request it answered without a server error.
    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.successes.fetch_add(1, Ordering::Relaxed) + 1 >= FORGIVE_AFTER_SUCCESSES {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A request it failed; true when this failure ejected it.
    pub fn failed(&self, policy: &OutlierPolicy) -> bool {
        self.successes.store(0, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if policy.consecutive_failures == 0 || n < policy.consecutive_failures {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let length = policy.base_ejection.saturating_mul(1 << k).min(policy.max_ejection);
        if let Ok(mut until) = self.ejected_until.lock() {
            *until = Some(Instant::now() + length);
        }
        true
    }

    /// The active health check's verdict; true when it just turned unhealthy.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let was_unhealthy = self.unhealthy.swap(!healthy, Ordering::Relaxed);
        !healthy && !was_unhealthy
    }

    /// Out of the pool: ejected for failures, or failing its health check.
    pub fn ejected(&self, now: Instant) -> bool {
        self.unhealthy.load(Ordering::Relaxed)
            || self.ejected_until.lock().map(|t| t.is_some_and(|t| now < t)).unwrap_or(false)
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
pub struct Lease(Arc<Replica>, OutlierPolicy);

impl Lease {
    /// The replica.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.0
    }

    /// The request failed on this replica; true when that ejected it.
    pub fn failed(&self) -> bool {
        self.0.failed(&self.1)
    }

    /// The replica answered without a server error.
    pub fn succeeded(&self) {
        self.0.succeeded()
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
    policy: OutlierPolicy,
}

impl Pool {
    /// A pool serving `models`, with no replicas yet, ejecting outliers by the default policy.
    pub fn new(models: Vec<String>) -> Self {
        Pool::with_policy(models, OutlierPolicy::default())
    }

    /// A pool serving `models`, with no replicas yet, ejecting outliers by `policy`.
    pub fn with_policy(models: Vec<String>, policy: OutlierPolicy) -> Self {
        let replicas = models.iter().map(|m| (m.clone(), Vec::new())).collect();
        Pool { models, replicas: RwLock::new(replicas), turn: AtomicUsize::new(0), policy }
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

    /// Every replica of every model, for the active health check.
    pub fn all_replicas(&self) -> Vec<(String, Arc<Replica>)> {
        let Ok(map) = self.replicas.read() else { return Vec::new() };
        map.iter().flat_map(|(m, rs)| rs.iter().map(move |r| (m.clone(), r.clone()))).collect()
    }

    /// The replica of `model` with the fewest outstanding requests, other than `exclude`, among
    /// those in the best standing: in good standing first, then those that just refused a
    /// connection, then (when every replica is out) the ejected ones. Ties go round.
    pub fn pick(&self, model: &str, exclude: Option<&str>) -> Option<Lease> {
        let all = self.replicas(model);
        let now = Instant::now();
        let standing = |r: &Replica| {
            if r.ejected(now) {
                2
            } else if r.cooling(now) {
                1
            } else {
                0
            }
        };
        let eligible: Vec<&Arc<Replica>> = all.iter().filter(|r| Some(r.url.as_str()) != exclude).collect();
        let best = eligible.iter().map(|r| standing(r)).min()?;
        let candidates: Vec<&Arc<Replica>> = eligible.into_iter().filter(|r| standing(r) == best).collect();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let n = candidates.len();
        // Round robin among equals: the scan starts at a different candidate each time.
        let (before, after) = candidates.split_at_checked(start % n)?;
        let best = after.iter().chain(before).copied().min_by_key(|r| r.outstanding())?;
        best.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Lease(best.clone(), self.policy))
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

    fn policy(n: u32) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: n,
            base_ejection: Duration::from_millis(200),
            max_ejection: Duration::from_millis(500),
        }
    }

    #[test]
    fn consecutive_failures_eject_and_ejected_replicas_get_no_traffic() {
        let p = Pool::with_policy(vec!["m".into()], policy(3));
        p.set("m", &["a".into(), "b".into()]);
        let a = p.replicas("m").into_iter().find(|r| r.url == "a").unwrap();
        assert!(!a.failed(&policy(3)) && !a.failed(&policy(3)));
        a.succeeded();
        assert!(!a.failed(&policy(3)) && !a.failed(&policy(3)), "a success resets the count");
        assert!(a.failed(&policy(3)), "the third failure in a row ejects");
        for _ in 0..6 {
            // Ties would alternate; the ejected `a` gets none of them.
            assert_eq!(p.pick("m", None).unwrap().replica().url, "b");
        }
        assert_eq!(p.pick("m", Some("b")).unwrap().replica().url, "a", "an ejected replica is the last resort");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!a.ejected(Instant::now()), "the first ejection lasts the base time");
    }

    #[test]
    fn ejections_grow_to_the_maximum_and_successes_forgive() {
        let r = Replica::new("a".into());
        let pol = policy(1);
        let length = |r: &Replica| {
            let until = r.ejected_until.lock().unwrap().unwrap();
            until.duration_since(Instant::now()).as_millis()
        };
        assert!(r.failed(&pol));
        assert!((150..=200).contains(&length(&r)), "base: {}", length(&r));
        assert!(r.failed(&pol));
        assert!((350..=400).contains(&length(&r)), "doubled: {}", length(&r));
        assert!(r.failed(&pol));
        assert!((450..=500).contains(&length(&r)), "capped: {}", length(&r));
        for _ in 0..FORGIVE_AFTER_SUCCESSES {
            r.succeeded();
        }
        assert!(r.failed(&pol));
        assert!((150..=200).contains(&length(&r)), "back to the base: {}", length(&r));
        assert!(!Replica::new("b".into()).failed(&policy(0)), "0 never ejects");
    }

    #[test]
    fn a_failed_health_check_ejects_until_it_passes() {
        let p = pool(&["a", "b"]);
        let a = p.replicas("m").into_iter().find(|r| r.url == "a").unwrap();
        assert!(a.set_healthy(false), "newly unhealthy");
        assert!(!a.set_healthy(false), "still unhealthy");
        for _ in 0..4 {
            assert_eq!(p.pick("m", None).unwrap().replica().url, "b");
        }
        a.set_healthy(true);
        assert!(!a.ejected(Instant::now()));
    }
}
