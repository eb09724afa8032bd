//! The replicas of each model, outlier ejection, and the choice among the replicas in good
//! standing by the routing policy (`crate::routing`).
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

use crate::routing::{self, EngineLoad, Policy, Reason};

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
    points: Vec<u64>,
    engine: Mutex<Option<EngineLoad>>,
}

impl Replica {
    fn new(url: String) -> Self {
        Replica {
            outstanding: AtomicUsize::new(0),
            refused_at: Mutex::new(None),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            unhealthy: AtomicBool::new(false),
            points: routing::points(&url),
            engine: Mutex::new(None),
            url,
        }
    }

    /// Records what the replica's `/metrics` said (`None`: nothing usable).
    pub fn set_engine_load(&self, load: Option<EngineLoad>) {
        if let Ok(mut l) = self.engine.lock() {
            *l = load;
        }
    }

    /// The replica's engine figures if read within `fresh` of `now`.
    fn engine_load(&self, now: Instant, fresh: Duration) -> Option<EngineLoad> {
        let load = (*self.engine.lock().ok()?)?;
        (now.saturating_duration_since(load.at) <= fresh).then_some(load)
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
#[derive(Debug)]
pub struct Pool {
    models: Vec<String>,
    replicas: RwLock<BTreeMap<String, Vec<Arc<Replica>>>>,
    turn: AtomicUsize,
    policy: OutlierPolicy,
    routing: Policy,
    fresh: Duration,
}

impl Pool {
    /// A pool serving `models`, with no replicas yet, ejecting outliers by the default policy.
    pub fn new(models: Vec<String>) -> Self {
        Pool::with_policy(models, OutlierPolicy::default())
    }

    /// A pool serving `models`, with no replicas yet, ejecting outliers by `policy`.
    pub fn with_policy(models: Vec<String>, policy: OutlierPolicy) -> Self {
        Pool::with_routing(models, policy, Policy::LeastOutstanding, Duration::ZERO)
    }

    /// A pool serving `models` that picks replicas by `routing`; `kvAware` trusts a replica's
    /// engine figures for `fresh` after they were read.
    pub fn with_routing(models: Vec<String>, policy: OutlierPolicy, routing: Policy, fresh: Duration) -> Self {
        let replicas = models.iter().map(|m| (m.clone(), Vec::new())).collect();
        Pool { models, replicas: RwLock::new(replicas), turn: AtomicUsize::new(0), policy, routing, fresh }
    }

    /// The routing policy.
    pub fn routing(&self) -> Policy {
        self.routing
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

    /// A replica of `model` other than `exclude`, among those in the best standing (in good
    /// standing first, then those that just refused a connection, then, when every replica is
    /// out, the ejected ones), chosen by the routing policy for the request's prefix `key`.
    pub fn pick(&self, model: &str, exclude: Option<&str>, key: Option<&str>) -> Option<(Lease, Reason)> {
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
        let (chosen, reason) = match (self.routing, key) {
            (Policy::LeastOutstanding, _) => (self.least_outstanding(&candidates)?, Reason::LeastOutstanding),
            (Policy::PrefixHash(_) | Policy::KvAware(_), None) => {
                (self.least_outstanding(&candidates)?, Reason::Fallback)
            }
            // The first replica in ring order within the bound.
            (Policy::PrefixHash(a), Some(key)) => bounded(&candidates, key, a.load_factor, |rank, _| rank as f64)?,
            (Policy::KvAware(a), Some(key)) => {
                let loads: Option<Vec<EngineLoad>> =
                    candidates.iter().map(|r| r.engine_load(now, self.fresh)).collect();
                match loads {
                    None => (self.least_outstanding(&candidates)?, Reason::Fallback),
                    Some(loads) => bounded(&candidates, key, a.load_factor, |rank, r| {
                        let l = loads.get(r).copied().map(|l| l.waiting + routing::KV_WEIGHT * l.kv_usage);
                        let bonus = if rank == 0 { routing::AFFINITY_BONUS } else { 0.0 };
                        candidates.get(r).map_or(0.0, |c| c.outstanding() as f64) + l.unwrap_or(0.0) - bonus
                    })?,
                }
            }
        };
        chosen.outstanding.fetch_add(1, Ordering::Relaxed);
        Some((Lease(chosen, self.policy), reason))
    }

    /// The candidate with the fewest outstanding requests; ties go round.
    fn least_outstanding(&self, candidates: &[&Arc<Replica>]) -> Option<Arc<Replica>> {
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let n = candidates.len();
        // Round robin among equals: the scan starts at a different candidate each time.
        let (before, after) = candidates.split_at_checked(start.checked_rem(n)?)?;
        after.iter().chain(before).copied().min_by_key(|r| r.outstanding()).cloned()
    }
}

/// Consistent hashing with bounded loads: the candidates in `key`'s ring order, those within the
/// load bound only, and of those the lowest `score(rank, index)` (the earliest in ring order on
/// ties). The key's own replica (rank 0) is an affinity pick, any other an overflow.
fn bounded(
    candidates: &[&Arc<Replica>],
    key: &str,
    load_factor: f64,
    score: impl Fn(usize, usize) -> f64,
) -> Option<(Arc<Replica>, Reason)> {
    let points: Vec<&[u64]> = candidates.iter().map(|r| r.points.as_slice()).collect();
    let order = routing::ring_order(&points, routing::hash(key.as_bytes()));
    let total = candidates.iter().map(|r| r.outstanding()).sum::<usize>() + 1;
    let bound = routing::load_bound(load_factor, total, candidates.len());
    let mut best: Option<(f64, usize, usize)> = None;
    for (rank, &i) in order.iter().enumerate() {
        let Some(r) = candidates.get(i) else { continue };
        if r.outstanding() + 1 > bound {
            continue;
        }
        let s = score(rank, i);
        if best.is_none_or(|(b, _, _)| s < b) {
            best = Some((s, rank, i));
        }
    }
    // The bound always admits the least loaded candidate; the fallback only guards the arithmetic.
    let (rank, i) = match best {
        Some((_, rank, i)) => (rank, i),
        None => (usize::MAX, *order.first()?),
    };
    let reason = if rank == 0 { Reason::Affinity } else { Reason::Overflow };
    candidates.get(i).map(|r| ((*r).clone(), reason))
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
        let first = p.pick("m", None, None).map(|(l, _)| l).unwrap();
        let second = p.pick("m", None, None).map(|(l, _)| l).unwrap();
        assert_ne!(first.replica().url, second.replica().url, "the busy replica is passed over");
        drop(first);
        let third = p.pick("m", None, None).map(|(l, _)| l).unwrap();
        assert_ne!(third.replica().url, second.replica().url);
        assert_eq!(second.replica().outstanding(), 1);
    }

    #[test]
    fn exclusion_refusal_and_updates() {
        let p = pool(&["a", "b"]);
        assert_eq!(p.pick("m", Some("a"), None).map(|(l, _)| l).unwrap().replica().url, "b");
        p.replicas("m")[0].refused();
        for _ in 0..4 {
            assert_eq!(
                p.pick("m", None, None).map(|(l, _)| l).unwrap().replica().url,
                "b",
                "a cooling replica is avoided"
            );
        }
        assert_eq!(
            p.pick("m", Some("b"), None).map(|(l, _)| l).unwrap().replica().url,
            "a",
            "but used when nothing else is left"
        );
        let held = p.pick("m", None, None).map(|(l, _)| l).unwrap();
        p.set("m", &["b".into(), "c".into()]);
        let b = p.replicas("m").into_iter().find(|r| r.url == "b").unwrap();
        assert_eq!(b.outstanding(), 1, "a replica that stays keeps its count");
        drop(held);
        assert_eq!(b.outstanding(), 0);
        p.set("m", &[]);
        assert!(p.pick("m", None, None).map(|(l, _)| l).is_none());
        assert!(p.pick("other", None, None).map(|(l, _)| l).is_none());
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
            assert_eq!(p.pick("m", None, None).map(|(l, _)| l).unwrap().replica().url, "b");
        }
        assert_eq!(
            p.pick("m", Some("b"), None).map(|(l, _)| l).unwrap().replica().url,
            "a",
            "an ejected replica is the last resort"
        );
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
            assert_eq!(p.pick("m", None, None).map(|(l, _)| l).unwrap().replica().url, "b");
        }
        a.set_healthy(true);
        assert!(!a.ejected(Instant::now()));
    }

    fn routed(routing: Policy, urls: &[&str]) -> Pool {
        let p = Pool::with_routing(vec!["m".into()], policy(1), routing, Duration::from_secs(3));
        p.set("m", &urls.iter().map(|u| u.to_string()).collect::<Vec<_>>());
        p
    }

    const AFFINITY: routing::Affinity = routing::Affinity { prefix_chars: 64, load_factor: 1.25 };

    #[test]
    fn prefix_hash_keeps_a_key_on_its_replica_within_the_bound_then_overflows() {
        let p = routed(Policy::PrefixHash(AFFINITY), &["a", "b", "c", "d"]);
        let (first, reason) = p.pick("m", None, Some("system: be kind")).unwrap();
        assert_eq!(reason, Reason::Affinity);
        let home = first.replica().url.clone();
        drop(first);
        for _ in 0..5 {
            let (l, r) = p.pick("m", None, Some("system: be kind")).unwrap();
            assert_eq!((l.replica().url.as_str(), r), (home.as_str(), Reason::Affinity), "idle: always home");
        }
        // Hold requests on the key: home takes them up to the bound, then the next one overflows.
        let mut held = Vec::new();
        let mut overflowed = false;
        for _ in 0..8 {
            let (l, r) = p.pick("m", None, Some("system: be kind")).unwrap();
            let total: usize = p.replicas("m").iter().map(|r| r.outstanding()).sum();
            let max = p.replicas("m").iter().map(|r| r.outstanding()).max().unwrap();
            assert!(max <= routing::load_bound(1.25, total, 4), "over the bound: {max} of {total}");
            overflowed |= r == Reason::Overflow;
            assert_eq!(r == Reason::Affinity, l.replica().url == home);
            held.push(l);
        }
        assert!(overflowed, "a hot key must spill over");
        assert_eq!(p.pick("m", None, None).unwrap().1, Reason::Fallback, "no key: fewest in flight");
    }

    #[test]
    fn an_ejected_replica_leaves_the_ring_and_its_keys_come_back() {
        let p = routed(Policy::PrefixHash(AFFINITY), &["a", "b", "c", "d"]);
        let home = p.pick("m", None, Some("k")).unwrap().0.replica().clone();
        assert!(home.failed(&policy(1)), "one failure ejects under this policy");
        let away = p.pick("m", None, Some("k")).unwrap();
        assert_ne!(away.0.replica().url, home.url, "an ejected replica is off the ring");
        assert_eq!(away.1, Reason::Affinity, "the next replica on the ring is the key's home now");
        drop(away);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(p.pick("m", None, Some("k")).unwrap().0.replica().url, home.url, "back after the ejection");
    }

    #[test]
    fn kv_aware_weighs_queues_and_falls_back_on_stale_figures() {
        let p = routed(Policy::KvAware(AFFINITY), &["a", "b", "c", "d"]);
        assert_eq!(p.pick("m", None, Some("k")).unwrap().1, Reason::Fallback, "no figures yet");
        let now = Instant::now();
        let set = |url: &str, waiting: f64, kv_usage: f64| {
            let r = p.replicas("m").into_iter().find(|r| r.url == url).unwrap();
            r.set_engine_load(Some(EngineLoad { waiting, kv_usage, at: now }));
        };
        for u in ["a", "b", "c", "d"] {
            set(u, 0.0, 0.1);
        }
        let (l, r) = p.pick("m", None, Some("k")).unwrap();
        assert_eq!(r, Reason::Affinity, "equal figures: the key's home wins");
        let home = l.replica().url.clone();
        drop(l);
        set(&home, 6.0, 0.9);
        let (l, r) = p.pick("m", None, Some("k")).unwrap();
        assert_eq!(r, Reason::Overflow, "a home with a long queue loses to an idle replica");
        assert_ne!(l.replica().url, home);
        drop(l);
        set(&home, 1.0, 0.1);
        assert_eq!(p.pick("m", None, Some("k")).unwrap().1, Reason::Affinity, "a short queue is worth the cache");
        let r = p.replicas("m").into_iter().find(|r| r.url == "a").unwrap();
        r.set_engine_load(Some(EngineLoad { waiting: 0.0, kv_usage: 0.0, at: now - Duration::from_secs(10) }));
        assert_eq!(p.pick("m", None, Some("k")).unwrap().1, Reason::Fallback, "one stale replica: fall back");
    }
}
