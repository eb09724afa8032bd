//! Which replica in good standing serves a request: the routing policies.
//!
//! - `leastOutstanding`: the replica with the fewest requests in flight through this router.
//! - `prefixHash`: consistent hashing with bounded loads (CHWBL) over the request's prefix key
//!   (the first `prefix_chars` characters of the prompt, or of the chat messages up to the first
//!   user message rendered as `role: content` lines, so that a conversation keeps its key from turn
//!   to turn). Each replica owns [`POINTS_PER_REPLICA`] points on a 64-bit ring; a
//!   key goes to the first replica clockwise from its hash whose load, this request included,
//!   stays within [`load_bound`], `ceil(load_factor * total / replicas) + 1`, so one hot prefix
//!   can never pile more than that on one replica. A replica that joins or leaves moves only the
//!   keys its points own.
//! - `kvAware`: the same ring order, each replica scored from what its own `/metrics` said at
//!   most [`crate::routing::stale_after`] ago: `outstanding + waiting + KV_WEIGHT * kv_usage`,
//!   less `AFFINITY_BONUS` for the key's own replica; the lowest score within the load bound wins.
//!   When any candidate's figures are stale (or it exports no engine metrics), the pick falls back
//!   to `leastOutstanding`.
//!
//! Only replicas in the best standing are candidates (see [`crate::backends`]), so an ejected
//! replica leaves the ring and its keys move to their next replica until it returns.

use std::time::{Duration, Instant};

use serde_json::Value;

/// Points each replica owns on the ring: enough that four replicas split keys within a few
/// percent of evenly.
pub const POINTS_PER_REPLICA: u32 = 160;
/// `kvAware`: a full KV cache weighs like this many queued requests.
pub const KV_WEIGHT: f64 = 4.0;
/// `kvAware`: the prefix's own replica is preferred by this many requests' worth of load.
pub const AFFINITY_BONUS: f64 = 2.0;

/// The routing policy of the router, for every model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Fewest requests in flight.
    LeastOutstanding,
    /// Consistent hashing with bounded loads over the prefix key.
    PrefixHash(Affinity),
    /// Prefix affinity and the replicas' own queue and KV-cache figures.
    KvAware(Affinity),
}

/// The prefix key and the load bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affinity {
    /// Characters of the prompt (or rendered messages) that make the key.
    pub prefix_chars: usize,
    /// `1 + epsilon`: no replica takes more than this times the mean load.
    pub load_factor: f64,
}

impl Policy {
    /// The name used in flags, the CRD and the metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::LeastOutstanding => "leastOutstanding",
            Policy::PrefixHash(_) => "prefixHash",
            Policy::KvAware(_) => "kvAware",
        }
    }

    /// The affinity settings, for the policies that have them.
    pub fn affinity(&self) -> Option<Affinity> {
        match self {
            Policy::LeastOutstanding => None,
            Policy::PrefixHash(a) | Policy::KvAware(a) => Some(*a),
        }
    }
}

/// Why a replica was picked: the `reason` label of the picks counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `leastOutstanding` chose it.
    LeastOutstanding,
    /// The key's own replica.
    Affinity,
    /// A later replica on the ring: the key's own was over the load bound (or, with `kvAware`,
    /// scored worse).
    Overflow,
    /// Affinity could not apply (no prompt to key on, stale metrics): fewest in flight.
    Fallback,
}

impl Reason {
    /// Every reason, for zero-valued series.
    pub const ALL: [Reason; 4] = [Reason::LeastOutstanding, Reason::Affinity, Reason::Overflow, Reason::Fallback];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::LeastOutstanding => "least_outstanding",
            Reason::Affinity => "affinity",
            Reason::Overflow => "overflow",
            Reason::Fallback => "fallback",
        }
    }
}

/// A replica's engine figures, as its `/metrics` last said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineLoad {
    /// `vllm:num_requests_waiting`.
    pub waiting: f64,
    /// `vllm:kv_cache_usage_perc` (0..1).
    pub kv_usage: f64,
    /// When they were read.
    pub at: Instant,
}

/// Figures older than this many scrape intervals are stale.
pub fn stale_after(interval: Duration) -> Duration {
    interval.saturating_mul(3)
}

/// Reads the engine figures out of a Prometheus text exposition; `None` when the replica exports
/// no engine metrics.
pub fn parse_engine_load(text: &str, at: Instant) -> Option<EngineLoad> {
    let value = |family: &str| -> Option<f64> {
        text.lines()
            .filter(|l| l.strip_prefix(family).is_some_and(|rest| rest.starts_with(['{', ' '])))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    };
    Some(EngineLoad { waiting: value("vllm:num_requests_waiting")?, kv_usage: value("vllm:kv_cache_usage_perc")?, at })
}

/// The prefix key of an OpenAI request body: the first `chars` characters of `prompt` (a string,
/// the first of a list of strings, or token ids written out), or of the `messages` up to and
/// including the first user message, rendered as `role: content` lines (so every turn of a
/// conversation has the same key). `None` when there is nothing to key on.
pub fn prefix_key(req: &serde_json::Map<String, Value>, chars: usize) -> Option<String> {
    let mut key = String::new();
    let mut room = chars;
    let mut push = |s: &str, key: &mut String| {
        for c in s.chars().take(room) {
            key.push(c);
            room -= 1;
        }
    };
    match (req.get("prompt"), req.get("messages")) {
        (Some(Value::String(p)), _) => push(p, &mut key),
        (Some(Value::Array(items)), _) => match items.first() {
            Some(Value::String(p)) => push(p, &mut key),
            // Token ids, or a list of them: the ids written out key just as well.
            Some(_) => push(&Value::Array(items.clone()).to_string(), &mut key),
            None => {}
        },
        (_, Some(Value::Array(messages))) => {
            for m in messages {
                let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
                push(role, &mut key);
                push(": ", &mut key);
                match m.get("content") {
                    Some(Value::String(c)) => push(c, &mut key),
                    Some(Value::Array(parts)) => {
                        for p in parts {
                            push(p.get("text").and_then(Value::as_str).unwrap_or_default(), &mut key);
                        }
                    }
                    _ => {}
                }
                push("\n", &mut key);
                // A conversation keeps its key through every turn: what comes after its first
                // user message changes from turn to turn.
                if role == "user" {
                    break;
                }
            }
        }
        _ => {}
    }
    (!key.is_empty()).then_some(key)
}

/// A stable 64-bit hash (FNV-1a, then a SplitMix64 finalizer so that near-identical inputs such
/// as `url#1` and `url#2` land far apart on the ring). Stable across builds and processes: two
/// router replicas send the same key to the same model replica.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The ring points of the replica at `url`.
pub fn points(url: &str) -> Vec<u64> {
    (0..POINTS_PER_REPLICA).map(|i| hash(format!("{url}#{i}").as_bytes())).collect()
}

/// Indices into `replicas` (each replica's ring points) in the order the ring visits them from
/// `key`'s hash clockwise, each once.
pub fn ring_order(replicas: &[&[u64]], key: u64) -> Vec<usize> {
    let mut ring: Vec<(u64, usize)> =
        replicas.iter().enumerate().flat_map(|(i, ps)| ps.iter().map(move |&p| (p, i))).collect();
    ring.sort_unstable();
    let start = ring.partition_point(|&(p, _)| p < key);
    let mut seen = vec![false; replicas.len()];
    let mut order = Vec::with_capacity(replicas.len());
    let (after, before) = ring.split_at(start.min(ring.len()));
    for &(_, i) in before.iter().chain(after) {
        if let Some(s) = seen.get_mut(i)
            && !*s
        {
            *s = true;
            order.push(i);
            if order.len() == replicas.len() {
                break;
            }
        }
    }
    order
}

/// The load bound: how many requests in flight, this one included, one replica may hold when
/// `total` are in flight across `replicas` (this one included): `ceil(load_factor * mean)` and
/// one request more.
///
/// The one request of slack is what matters at a few requests per replica: at two, the ratio
/// alone caps the key's replica at three, which random keys reach about a third of the time (30%
/// of the picks in `tests/bench/routing.py`), and each overflow prefills its whole prompt again
/// elsewhere, while an engine batches one more request nearly for free. As the mean grows the
/// slack fades and the ratio bounds a hot replica (Envoy's bounded-load hashing counts the same
/// way: a host's load before the request, against the ceiling of the factor times the mean with it).
pub fn load_bound(load_factor: f64, total: usize, replicas: usize) -> usize {
    let mean = total as f64 / replicas.max(1) as f64;
    (load_factor * mean).ceil() as usize + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ring(urls: &[String]) -> Vec<Vec<u64>> {
        urls.iter().map(|u| points(u)).collect()
    }

    fn owner(points: &[Vec<u64>], key: &str) -> usize {
        let refs: Vec<&[u64]> = points.iter().map(Vec::as_slice).collect();
        ring_order(&refs, hash(key.as_bytes()))[0]
    }

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:8000")).collect()
    }

    #[test]
    fn keys_spread_evenly_and_stay_put() {
        let u = urls(4);
        let p = ring(&u);
        let mut counts = [0usize; 4];
        for k in 0..20_000 {
            counts[owner(&p, &format!("conversation {k}"))] += 1;
        }
        for c in counts {
            assert!((4_000..=6_000).contains(&c), "uneven split: {counts:?}");
        }
        assert_eq!(owner(&p, "same"), owner(&ring(&u), "same"), "assignment is stable");
    }

    #[test]
    fn a_replica_leaving_or_joining_moves_only_its_keys() {
        let four = urls(4);
        let three: Vec<String> = four[..3].to_vec();
        let (p4, p3) = (ring(&four), ring(&three));
        let mut moved = 0;
        for k in 0..10_000 {
            let key = format!("k{k}");
            let (a, b) = (owner(&p4, &key), owner(&p3, &key));
            if a == 3 {
                moved += 1;
            } else {
                assert_eq!(a, b, "{key} moved though its replica stayed");
            }
        }
        assert!((1_500..=3_500).contains(&moved), "the leaver owned about a quarter: {moved}");
    }

    #[test]
    fn the_ring_order_visits_every_replica_once() {
        let p = ring(&urls(5));
        let refs: Vec<&[u64]> = p.iter().map(Vec::as_slice).collect();
        for key in [0, u64::MAX, 12345, hash(b"x")] {
            let mut order = ring_order(&refs, key);
            order.sort_unstable();
            assert_eq!(order, vec![0, 1, 2, 3, 4]);
        }
        assert!(ring_order(&[], 7).is_empty());
    }

    #[test]
    fn the_load_bound_admits_the_idle_and_caps_the_hot() {
        assert_eq!(load_bound(1.25, 1, 4), 2, "a lone request goes anywhere");
        assert_eq!(load_bound(1.25, 5, 4), 3);
        // Two per replica: one more than the ratio's three, so a key's replica holding three of
        // the other seven still takes its request.
        assert_eq!(load_bound(1.25, 8, 4), 4);
        assert_eq!(load_bound(1.25, 40, 4), 14);
        assert_eq!(load_bound(1.0, 8, 4), 3);
        assert_eq!(load_bound(1.25, 3, 0), 5);
        // At many requests per replica the slack fades: the hot replica stays near the factor.
        assert_eq!(load_bound(1.25, 4_000, 4), 1_251);
    }

    #[test]
    fn prefix_keys_of_prompts_and_messages() {
        let m = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(prefix_key(&m(json!({"prompt": "héllo wörld"})), 5).as_deref(), Some("héllo"));
        assert_eq!(prefix_key(&m(json!({"prompt": ["abc", "def"]})), 10).as_deref(), Some("abc"));
        assert_eq!(prefix_key(&m(json!({"prompt": [1, 2, 3]})), 4).as_deref(), Some("[1,2"));
        let chat = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Later turns do not change the key."}
        ]});
        assert_eq!(prefix_key(&m(chat.clone()), 100).as_deref(), Some("system: Be brief.\nuser: Hi\n"));
        assert_eq!(prefix_key(&m(chat), 9).as_deref(), Some("system: B"));
        assert_eq!(prefix_key(&m(json!({"prompt": ""})), 10), None);
        assert_eq!(prefix_key(&m(json!({"prompt": 7})), 10), None);
        assert_eq!(prefix_key(&m(json!({"messages": "nonsense"})), 10), None);
    }

    #[test]
    fn engine_load_from_an_exposition() {
        let text = "# TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3\n\
            vllm:num_requests_waiting_extra 100\n\
            vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n";
        let l = parse_engine_load(text, Instant::now()).unwrap();
        assert_eq!((l.waiting, l.kv_usage), (3.0, 0.25));
        assert!(parse_engine_load("llmserve_http_requests_total 1\n", Instant::now()).is_none());
    }

    proptest! {
        #[test]
        fn the_load_bound_is_the_ratio_and_one_request_of_slack(
            tenths in 10u32..=40,
            total in 1usize..10_000,
            replicas in 1usize..64,
        ) {
            let factor = f64::from(tenths) / 10.0;
            let bound = load_bound(factor, total, replicas);
            let mean = total as f64 / replicas as f64;
            prop_assert!(bound as f64 >= factor * mean + 1.0, "at least the ratio and one more");
            prop_assert!((bound as f64) < factor * mean + 2.0, "at most one over the ratio's ceiling");
            // The replicas at the bound would hold all in flight: one is always within it.
            prop_assert!(bound * replicas >= total);
        }

        #[test]
        fn prefix_keys_never_exceed_their_length_in_characters(
            prompt in any::<String>(),
            role in any::<String>(),
            chars in 0usize..64,
        ) {
            let m = json!({"prompt": prompt.clone()});
            let key = prefix_key(m.as_object().unwrap(), chars);
            prop_assert!(key.as_ref().is_none_or(|k| k.chars().count() <= chars));
            prop_assert!(key.as_ref().is_none_or(|k| prompt.starts_with(k.as_str())));
            let c = json!({"messages": [{"role": role, "content": prompt}]});
            let key = prefix_key(c.as_object().unwrap(), chars);
            prop_assert!(key.as_ref().is_none_or(|k| k.chars().count() <= chars));
        }
    }
}
