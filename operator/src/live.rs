//! Live serving figures in each application's status (`status.serving`, the RPS, TOK/S,
//! TTFT-P95 and KV% columns of `kubectl get llmapp`): every [`READ_EVERY`] the operator reads
//! `GET /status` on each application's router (its metrics port, plain HTTP even when the API
//! port speaks TLS), and writes the figures when they moved beyond [`worth_writing`]'s
//! thresholds, at most every [`WRITE_AT_MOST_EVERY`] per application, under a field manager of its
//! own so that it never contends with the reconciler's status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PatchParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;

use crate::build::{METRICS_PORT, router_name};
use crate::crd::{GROUP, LlmApplication, ModelServing, ServingStatus};
use crate::metrics::Metrics;

/// How often each router is read.
pub const READ_EVERY: Duration = Duration::from_secs(15);
/// The most often one application's status is written.
pub const WRITE_AT_MOST_EVERY: Duration = Duration::from_secs(30);
/// Field manager of `status.serving`.
pub const LIVE_MANAGER: &str = "llmserve-operator-live";
/// Routers read at once.
const CONCURRENCY: usize = 16;

/// One model's figures as the router's `GET /status` gives them.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouterModel {
    /// The model id.
    pub model: String,
    /// Replicas the router sends to.
    #[serde(default)]
    pub ready_replicas: f64,
    /// Requests running in the engines.
    #[serde(default)]
    pub running: f64,
    /// Requests waiting in the engines.
    #[serde(default)]
    pub waiting: f64,
    /// KV-cache use, 0 to 1.
    #[serde(default)]
    pub kv_cache_usage: Option<f64>,
    /// Requests answered per second.
    #[serde(default)]
    pub requests_per_second: f64,
    /// Completion tokens per second.
    #[serde(default)]
    pub output_tokens_per_second: f64,
    /// Median TTFT, seconds.
    #[serde(default)]
    pub ttft_seconds_p50: Option<f64>,
    /// 95th-percentile TTFT, seconds.
    #[serde(default)]
    pub ttft_seconds_p95: Option<f64>,
}

/// The router's `GET /status`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct RouterStatus {
    /// Per model.
    #[serde(default)]
    pub models: Vec<RouterModel>,
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    if x.is_finite() { (x * f).round() / f } else { 0.0 }
}

fn percent(fraction: f64) -> i64 {
    // A fraction of 0..1 from the router; clamped so a nonsense value cannot overflow.
    (fraction.clamp(0.0, 1.0) * 100.0).round() as i64
}

fn count(x: f64) -> i64 {
    x.clamp(0.0, 1e9).round() as i64
}

/// The status figures of a router's answer, rounded for people: requests per second to 0.01,
/// tokens per second to 0.1, seconds to 1 ms, KV cache to whole percent.
pub fn serving(router: &RouterStatus, observed_at: String) -> ServingStatus {
    let models: Vec<ModelServing> = router
        .models
        .iter()
        .map(|m| ModelServing {
            model_id: m.model.clone(),
            ready_replicas: count(m.ready_replicas),
            running: count(m.running),
            waiting: count(m.waiting),
            kv_cache_percent: m.kv_cache_usage.filter(|x| x.is_finite()).map(percent),
            requests_per_second: round(m.requests_per_second.max(0.0), 2),
            output_tokens_per_second: round(m.output_tokens_per_second.max(0.0), 1),
            ttft_p50_seconds: m.ttft_seconds_p50.filter(|x| x.is_finite()).map(|x| round(x, 3)),
            ttft_p95_seconds: m.ttft_seconds_p95.filter(|x| x.is_finite()).map(|x| round(x, 3)),
        })
        .collect();
    ServingStatus {
        observed_at,
        requests_per_second: round(models.iter().map(|m| m.requests_per_second).sum(), 2),
        output_tokens_per_second: round(models.iter().map(|m| m.output_tokens_per_second).sum(), 1),
        ttft_p95_seconds: models.iter().filter_map(|m| m.ttft_p95_seconds).reduce(f64::max),
        kv_cache_percent: models.iter().filter_map(|m| m.kv_cache_percent).max(),
        models,
    }
}

/// Whether `next` differs from what the status shows enough to be written: a model or replica
/// count changed, a rate moved by more than 10 % (and 0.05), a TTFT quantile by more than 10 %
/// (or appeared or went), KV cache by 5 points or more, running or waiting by more than 10 %
/// (and 1).
pub fn worth_writing(shown: Option<&ServingStatus>, next: &ServingStatus) -> bool {
    let Some(shown) = shown else { return true };
    let rate = |a: f64, b: f64| (a - b).abs() > 0.05 && (a - b).abs() > 0.1 * a.abs().max(b.abs());
    let quantile = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() > 0.1 * a.max(b) && (a - b).abs() >= 0.001,
        (None, None) => false,
        _ => true,
    };
    let gauge = |a: i64, b: i64| (a - b).abs() > 1 && (a - b).abs() * 10 > a.max(b);
    let kv = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() >= 5,
        (None, None) => false,
        _ => true,
    };
    if shown.models.len() != next.models.len() {
        return true;
    }
    shown.models.iter().zip(&next.models).any(|(a, b)| {
        a.model_id != b.model_id
            || a.ready_replicas != b.ready_replicas
            || rate(a.requests_per_second, b.requests_per_second)
            || rate(a.output_tokens_per_second, b.output_tokens_per_second)
            || quantile(a.ttft_p50_seconds, b.ttft_p50_seconds)
            || quantile(a.ttft_p95_seconds, b.ttft_p95_seconds)
            || kv(a.kv_cache_percent, b.kv_cache_percent)
            || gauge(a.running, b.running)
            || gauge(a.waiting, b.waiting)
    })
}

/// What the loop remembers per application (by uid).
#[derive(Default)]
struct Known {
    /// The router Service's ClusterIP (it never changes for a Service's life).
    cluster_ip: Option<String>,
    /// When `status.serving` was last written.
    written: Option<Instant>,
}

/// Reads every application's router and writes its figures, until the process ends.
pub async fn run(client: Client, namespace: Option<String>, metrics: Metrics) {
    let apps: Api<LlmApplication> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(3)).no_proxy().build() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "live status: no HTTP client; status.serving stays empty");
            return;
        }
    };
    let known = Arc::new(tokio::sync::Mutex::new(HashMap::<String, Known>::new()));
    let mut tick = tokio::time::interval(READ_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let list = match apps.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "live status: listing applications failed");
                continue;
            }
        };
        let uids: std::collections::HashSet<String> = list.iter().filter_map(|a| a.uid()).collect();
        known.lock().await.retain(|uid, _| uids.contains(uid));
        futures::stream::iter(list)
            .for_each_concurrent(CONCURRENCY, |app| {
                let (client, http, metrics, known) = (client.clone(), http.clone(), metrics.clone(), known.clone());
                async move { one(&client, &http, &metrics, &known, &app).await }
            })
            .await;
    }
}

/// Reads one application's router and writes its status when worth it.
async fn one(
    client: &Client,
    http: &reqwest::Client,
    metrics: &Metrics,
    known: &tokio::sync::Mutex<HashMap<String, Known>>,
    app: &LlmApplication,
) {
    let (Some(uid), Some(ns)) = (app.uid(), app.namespace()) else { return };
    let name = app.name_any();
    let cached = known.lock().await.get(&uid).and_then(|k| k.cluster_ip.clone());
    let ip = match cached {
        Some(ip) => ip,
        None => {
            let svc = Api::<Service>::namespaced(client.clone(), &ns).get_opt(&router_name(&name)).await;
            match svc.ok().flatten().and_then(|s| s.spec?.cluster_ip).filter(|ip| ip != "None") {
                Some(ip) => {
                    known.lock().await.entry(uid.clone()).or_default().cluster_ip = Some(ip.clone());
                    ip
                }
                None => {
                    metrics.live_reads.with_label_values(&["no_router"]).inc();
                    return;
                }
            }
        }
    };
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    let answer = http.get(format!("http://{host}:{METRICS_PORT}/status")).send().await;
    let router: RouterStatus = match answer {
        Ok(r) if r.status().is_success() => match r.json().await {
            Ok(s) => s,
            Err(_) => {
                metrics.live_reads.with_label_values(&["bad_answer"]).inc();
                return;
            }
        },
        _ => {
            metrics.live_reads.with_label_values(&["unreachable"]).inc();
            return;
        }
    };
    metrics.live_reads.with_label_values(&["ok"]).inc();
    let next = serving(&router, jiff::Timestamp::now().to_string());
    let shown = app.status.as_ref().and_then(|s| s.serving.as_ref());
    let recent =
        known.lock().await.get(&uid).and_then(|k| k.written).is_some_and(|t| t.elapsed() < WRITE_AT_MOST_EVERY);
    if recent || !worth_writing(shown, &next) {
        return;
    }
    let patch = json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "LlmApplication",
        "status": {"serving": next},
    });
    let apps: Api<LlmApplication> = Api::namespaced(client.clone(), &ns);
    let pp = PatchParams::apply(LIVE_MANAGER).force();
    match crate::ssa::patch(&patch) {
        Ok(p) => match apps.patch_status(&name, &pp, &p).await {
            Ok(_) => {
                metrics.live_writes.inc();
                known.lock().await.entry(uid).or_default().written = Some(Instant::now());
            }
            Err(e) => tracing::warn!(app = %name, error = %e, "live status: writing status.serving failed"),
        },
        Err(e) => tracing::warn!(app = %name, error = %e, "live status: encoding status.serving failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(rps: f64, ttft: Option<f64>) -> RouterStatus {
        RouterStatus {
            models: vec![
                RouterModel {
                    model: "a".into(),
                    ready_replicas: 2.0,
                    running: 3.0,
                    waiting: 1.0,
                    kv_cache_usage: Some(0.426),
                    requests_per_second: rps,
                    output_tokens_per_second: 123.456,
                    ttft_seconds_p50: ttft.map(|t| t / 2.0),
                    ttft_seconds_p95: ttft,
                },
                RouterModel { model: "b".into(), kv_cache_usage: Some(f64::NAN), ..Default::default() },
            ],
        }
    }

    #[test]
    fn figures_are_summed_over_models_and_rounded() {
        let s = serving(&router(1.234, Some(0.12345)), "t".into());
        assert_eq!((s.requests_per_second, s.output_tokens_per_second), (1.23, 123.5));
        assert_eq!((s.ttft_p95_seconds, s.kv_cache_percent), (Some(0.123), Some(43)));
        assert_eq!(s.models[0].ttft_p50_seconds, Some(0.062));
        assert_eq!((s.models[0].running, s.models[0].waiting, s.models[0].ready_replicas), (3, 1, 2));
        assert_eq!(s.models[1].kv_cache_percent, None, "a NaN is no figure");
        let absurd = RouterStatus {
            models: vec![RouterModel {
                model: "x".into(),
                running: f64::INFINITY,
                kv_cache_usage: Some(7.0),
                requests_per_second: -3.0,
                ..Default::default()
            }],
        };
        let s = serving(&absurd, "t".into());
        assert_eq!(
            (s.models[0].running, s.models[0].kv_cache_percent, s.requests_per_second),
            (1_000_000_000, Some(100), 0.0)
        );
    }

    #[test]
    fn only_moves_beyond_the_thresholds_are_written() {
        let base = serving(&router(10.0, Some(0.2)), "t0".into());
        assert!(worth_writing(None, &base), "nothing shown yet");
        assert!(!worth_writing(Some(&base), &serving(&router(10.5, Some(0.21)), "t1".into())), "5 % moves");
        assert!(worth_writing(Some(&base), &serving(&router(12.0, Some(0.2)), "t1".into())), "a 20 % rate move");
        assert!(worth_writing(Some(&base), &serving(&router(10.0, Some(0.3)), "t1".into())), "TTFT p95 +50 %");
        assert!(worth_writing(Some(&base), &serving(&router(10.0, None), "t1".into())), "TTFT gone");
        let idle = serving(&router(0.0, None), "t0".into());
        assert!(!worth_writing(Some(&idle), &serving(&router(0.04, None), "t1".into())), "noise at idle");
        let mut one_fewer = base.clone();
        one_fewer.models[0].ready_replicas = 1;
        assert!(worth_writing(Some(&base), &one_fewer), "a replica count");
        let mut busier = base.clone();
        busier.models[0].running = 4;
        assert!(!worth_writing(Some(&base), &busier), "running 3 -> 4 is within 1");
        busier.models[0].running = 10;
        assert!(worth_writing(Some(&base), &busier));
    }
}
