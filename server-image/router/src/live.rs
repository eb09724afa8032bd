//! Live serving figures per model, for `GET /status` (what the operator writes into the
//! application's status): every [`INTERVAL`] the router reads each replica's engine gauges and
//! time-to-first-token histogram from its `/metrics`, and its own request and token counters, and
//! keeps them for the last [`WINDOW`], so that rates and quantiles are over the last minute.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backends::Pool;
use crate::metrics::{COMPLETION_TOKENS_TOTAL, REQUESTS_TOTAL};

/// How often the figures are refreshed.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// The span rates and quantiles cover.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One model's figures.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelFigures {
    /// The model id.
    pub model: String,
    /// Replicas the router sends to now.
    pub ready_replicas: usize,
    /// Requests the engines run now, summed over replicas.
    pub running: f64,
    /// Requests waiting in the engines' queues now, summed over replicas.
    pub waiting: f64,
    /// KV-cache use (0 to 1), the mean over replicas that report it.
    pub kv_cache_usage: Option<f64>,
    /// Requests the router answered per second over the window.
    pub requests_per_second: f64,
    /// Completion tokens per second over the window.
    pub output_tokens_per_second: f64,
    /// Time to first token at the engines, median over the window (no request: none).
    pub ttft_seconds_p50: Option<f64>,
    /// Its 95th percentile.
    pub ttft_seconds_p95: Option<f64>,
}

/// What `GET /status` answers.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Seconds the rates and quantiles cover.
    pub window_seconds: u64,
    /// Per model, in flag order.
    pub models: Vec<ModelFigures>,
}

/// The engine figures read from one replica's `/metrics`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineSample {
    /// `vllm:num_requests_running`.
    pub running: f64,
    /// `vllm:num_requests_waiting`.
    pub waiting: f64,
    /// `vllm:kv_cache_usage_perc`.
    pub kv_cache_usage: Option<f64>,
    /// `vllm:time_to_first_token_seconds` buckets: upper bound, cumulative count.
    pub ttft_buckets: Vec<(f64, f64)>,
}

/// Parses the engine figures out of Prometheus text; `None` when the replica exports no engine
/// metrics (`--disable-engine-metrics`).
pub fn parse_engine(text: &str) -> Option<EngineSample> {
    let mut s = EngineSample::default();
    let mut seen = false;
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "vllm:num_requests_running" => (s.running, seen) = (s.running + value, true),
            "vllm:num_requests_waiting" => s.waiting += value,
            "vllm:kv_cache_usage_perc" => s.kv_cache_usage = Some(value),
            "vllm:time_to_first_token_seconds_bucket" => {
                if let Some(le) = label(labels, "le") {
                    let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
                    if !le.is_nan() {
                        buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
                    }
                }
            }
            _ => {}
        }
    }
    let mut b: Vec<(f64, f64)> = buckets.into_values().collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    s.ttft_buckets = b;
    seen.then_some(s)
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.trim_end_matches('}').split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// The `q` quantile of a cumulative histogram, interpolated linearly within the bucket it falls
/// in, as Prometheus's `histogram_quantile`; `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let span = count - prev.1;
            let within = if span > 0.0 { (rank - prev.1) / span } else { 1.0 };
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

/// Per-bucket growth between two readings of one histogram (a restarted replica's counts start
/// over: then the later reading is the growth).
fn growth(later: &[(f64, f64)], earlier: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let restarted = later.iter().zip(earlier).any(|(l, e)| l.1 < e.1) || later.len() != earlier.len();
    if restarted {
        return later.to_vec();
    }
    later.iter().zip(earlier).map(|(l, e)| (l.0, l.1 - e.1)).collect()
}

/// A cumulative histogram: (upper bound, count) per bucket.
type Buckets = Vec<(f64, f64)>;
/// Requests answered and completion tokens, since the router started.
type Counts = (f64, f64);

/// Readings kept over the window.
#[derive(Default)]
struct History {
    /// Per replica URL: (when, TTFT buckets).
    ttft: HashMap<String, VecDeque<(Instant, Buckets)>>,
    /// Per model: (when, (requests answered, completion tokens)).
    counters: HashMap<String, VecDeque<(Instant, Counts)>>,
}

/// The figures, refreshed by [`run`].
#[derive(Default)]
pub struct Live {
    snapshot: Mutex<Snapshot>,
    history: Mutex<History>,
}

impl Live {
    /// The latest figures.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Folds in one round of readings taken at `now`: `engines` per model and replica URL,
    /// `counters` per model (requests answered, completion tokens, both since the start).
    pub fn update(
        &self,
        now: Instant,
        ready: &[(String, usize)],
        engines: &[(String, String, Option<EngineSample>)],
        counters: &HashMap<String, (f64, f64)>,
    ) {
        let mut h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let live: std::collections::HashSet<&str> = engines.iter().map(|(_, url, _)| url.as_str()).collect();
        h.ttft.retain(|url, _| live.contains(url.as_str()));
        let mut models = Vec::with_capacity(ready.len());
        for (model, ready_replicas) in ready {
            let mut f = ModelFigures { model: model.clone(), ready_replicas: *ready_replicas, ..Default::default() };
            let (mut kv, mut kv_n, mut ttft): (f64, u32, Vec<(f64, f64)>) = (0.0, 0, Vec::new());
            for (_, url, sample) in engines.iter().filter(|(m, _, _)| m == model) {
                let Some(s) = sample else { continue };
                f.running += s.running;
                f.waiting += s.waiting;
                if let Some(u) = s.kv_cache_usage {
                    (kv, kv_n) = (kv + u, kv_n + 1);
                }
                let q = h.ttft.entry(url.clone()).or_default();
                q.push_back((now, s.ttft_buckets.clone()));
                trim(q, now);
                let first = q.front().map(|x| x.1.clone()).unwrap_or_default();
                let grown = if q.len() > 1 { growth(&s.ttft_buckets, &first) } else { Vec::new() };
                ttft = if ttft.is_empty() { grown } else { add(&ttft, &grown) };
            }
            f.kv_cache_usage = (kv_n > 0).then(|| kv / f64::from(kv_n));
            f.ttft_seconds_p50 = quantile(0.5, &ttft);
            f.ttft_seconds_p95 = quantile(0.95, &ttft);
            if let Some(&(requests, tokens)) = counters.get(model) {
                let q = h.counters.entry(model.clone()).or_default();
                q.push_back((now, (requests, tokens)));
                trim(q, now);
                if let (Some((t0, first)), Some((t1, last))) = (q.front(), q.back()) {
                    let secs = t1.duration_since(*t0).as_secs_f64();
                    if secs > 0.0 {
                        f.requests_per_second = (last.0 - first.0).max(0.0) / secs;
                        f.output_tokens_per_second = (last.1 - first.1).max(0.0) / secs;
                    }
                }
            }
            models.push(f);
        }
        drop(h);
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) =
            Snapshot { window_seconds: WINDOW.as_secs(), models };
    }
}

/// Drops the readings older than the window, keeping at least the latest.
fn trim<T>(q: &mut VecDeque<(Instant, T)>, now: Instant) {
    while q.len() > 1 && q.front().is_some_and(|(at, _)| now.duration_since(*at) > WINDOW) {
        q.pop_front();
    }
}

/// Two histograms' sum, bucket by bucket (replicas of one model share the engine's buckets; a
/// mismatch keeps the first).
fn add(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.0 != y.0) {
        return a.to_vec();
    }
    a.iter().zip(b).map(|(x, y)| (x.0, x.1 + y.1)).collect()
}

/// Per model, the requests the router answered (any status) and the completion tokens, from its
/// own registry.
pub fn own_counters(registry: &prometheus::Registry) -> HashMap<String, (f64, f64)> {
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    for family in registry.gather() {
        let requests = family.name() == REQUESTS_TOTAL;
        if !requests && family.name() != COMPLETION_TOKENS_TOTAL {
            continue;
        }
        for m in family.get_metric() {
            let Some(model) = m.get_label().iter().find(|l| l.name() == "model").map(|l| l.value().to_string()) else {
                continue;
            };
            let e = out.entry(model).or_default();
            let v = m.get_counter().get_value();
            if requests { e.0 += v } else { e.1 += v }
        }
    }
    out
}

/// A replica's `/metrics` text, or `None` when it does not answer with one within a second.
pub async fn replica_metrics(client: &reqwest::Client, base_url: &str) -> Option<String> {
    let answer = client.get(format!("{base_url}/metrics")).timeout(Duration::from_secs(1)).send().await;
    match answer {
        Ok(r) if r.status().is_success() => r.text().await.ok(),
        _ => None,
    }
}

/// Refreshes `live` every [`INTERVAL`]: each replica's `/metrics` (1 s at most), the router's
/// own counters.
pub async fn run(live: Arc<Live>, pool: Arc<Pool>, client: reqwest::Client, registry: prometheus::Registry) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reads = pool.all_replicas().into_iter().map(|(model, replica)| {
            let client = client.clone();
            async move {
                let text = replica_metrics(&client, &replica.url).await;
                (model, replica.url.clone(), text.as_deref().and_then(parse_engine))
            }
        });
        let engines = futures::future::join_all(reads).await;
        let ready: Vec<(String, usize)> = pool.models().iter().map(|m| (m.clone(), pool.replicas(m).len())).collect();
        live.update(Instant::now(), &ready, &engines, &own_counters(&registry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE vllm:num_requests_running gauge\n\
        vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3\n\
        vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 2\n\
        vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.5\n\
        vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"m\",le=\"0.1\"} 4\n\
        vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"m\",le=\"1\"} 8\n\
        vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"m\",le=\"+Inf\"} 10\n";

    #[test]
    fn engine_figures_are_parsed_and_absent_without_engine_metrics() {
        let s = parse_engine(TEXT).unwrap();
        assert_eq!((s.running, s.waiting, s.kv_cache_usage), (3.0, 2.0, Some(0.5)));
        assert_eq!(s.ttft_buckets, vec![(0.1, 4.0), (1.0, 8.0), (f64::INFINITY, 10.0)]);
        assert_eq!(parse_engine("llmserve_http_requests_total 3\n"), None);
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [(0.1, 4.0), (1.0, 8.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.2, &b), Some(0.05));
        assert!((quantile(0.5, &b).unwrap() - 0.325).abs() < 1e-9, "a quarter into (0.1, 1]");
        assert_eq!(quantile(0.95, &b), Some(1.0), "in the +Inf bucket: the last finite bound");
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn rates_and_quantiles_cover_the_growth_within_the_window() {
        let live = Live::default();
        let t0 = Instant::now();
        let sample = |n: f64| EngineSample {
            running: 1.0,
            waiting: 0.0,
            kv_cache_usage: Some(0.25),
            ttft_buckets: vec![(0.1, n), (1.0, n), (f64::INFINITY, n)],
        };
        let ready = [("m".to_string(), 1)];
        let counters = |r: f64, t: f64| HashMap::from([("m".to_string(), (r, t))]);
        live.update(t0, &ready, &[("m".into(), "u".into(), Some(sample(100.0)))], &counters(100.0, 1000.0));
        let first = live.snapshot().models[0].clone();
        assert_eq!((first.requests_per_second, first.ttft_seconds_p50), (0.0, None), "one reading: no rate yet");
        let t1 = t0 + Duration::from_secs(10);
        live.update(t1, &ready, &[("m".into(), "u".into(), Some(sample(110.0)))], &counters(120.0, 1500.0));
        let f = live.snapshot().models[0].clone();
        assert_eq!((f.requests_per_second, f.output_tokens_per_second), (2.0, 50.0));
        assert_eq!((f.running, f.kv_cache_usage, f.ready_replicas), (1.0, Some(0.25), 1));
        assert!(f.ttft_seconds_p50.unwrap() <= 0.1, "the 10 new requests were all under 100 ms: {f:?}");
        // Past the window, the old readings drop out: nothing new, no rate, no quantile.
        let t2 = t1 + WINDOW + Duration::from_secs(1);
        live.update(t2, &ready, &[("m".into(), "u".into(), Some(sample(110.0)))], &counters(120.0, 1500.0));
        let f = live.snapshot().models[0].clone();
        assert_eq!((f.requests_per_second, f.ttft_seconds_p95), (0.0, None), "{f:?}");
    }
}
