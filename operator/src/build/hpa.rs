//! The model's `autoscaling/v2` HorizontalPodAutoscaler.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior,
    HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::*;
use crate::crd::{AutoscalingConfig, AutoscalingMetric, LlmApplication, ModelConfig};

// The per-pod custom metrics the HPA scales on, one per `autoscalingConfig.metric`; the chart's
// prometheus-adapter rules (charts/llmserve/prometheus-adapter-values.yaml) serve each under this name.

/// Running + waiting requests of one replica, from the engine's `vllm:num_requests_running` and
/// `vllm:num_requests_waiting` gauges (HTTP requests in flight when engine metrics are off).
pub const ONGOING_REQUESTS_METRIC: &str = "llmserve_ongoing_requests";
/// Waiting requests of one replica, from `vllm:num_requests_waiting`.
pub const WAITING_REQUESTS_METRIC: &str = "llmserve_waiting_requests";
/// Fraction of one replica's KV-cache blocks in use, from `vllm:kv_cache_usage_perc`.
pub const KV_CACHE_USAGE_METRIC: &str = "llmserve_kv_cache_usage";
/// 95th percentile of one replica's time to first token over the last minute, in seconds, from the
/// `vllm:time_to_first_token_seconds` histogram.
pub const TTFT_P95_METRIC: &str = "llmserve_ttft_p95_seconds";

// Targets for a metric whose own target is missing, which the CRD's rules refuse; only an object
// stored before those rules can lack one.
const FALLBACK_TARGET_WAITING_REQUESTS: f64 = 1.0;
const FALLBACK_TARGET_KV_CACHE_USAGE: f64 = 0.8;
const FALLBACK_TARGET_TTFT_P95_SECONDS: f64 = 1.0;

/// The custom metric and per-replica target average for the signal `auto.metric` names.
pub fn signal(auto: &AutoscalingConfig) -> (&'static str, f64) {
    match auto.metric {
        AutoscalingMetric::OngoingRequests => (ONGOING_REQUESTS_METRIC, auto.target_ongoing_requests),
        AutoscalingMetric::WaitingRequests => {
            (WAITING_REQUESTS_METRIC, auto.target_waiting_requests.unwrap_or(FALLBACK_TARGET_WAITING_REQUESTS))
        }
        AutoscalingMetric::KvCacheUsage => {
            (KV_CACHE_USAGE_METRIC, auto.target_kv_cache_usage.unwrap_or(FALLBACK_TARGET_KV_CACHE_USAGE))
        }
        AutoscalingMetric::TtftP95 => {
            (TTFT_P95_METRIC, auto.target_ttft_p95_seconds.unwrap_or(FALLBACK_TARGET_TTFT_P95_SECONDS))
        }
    }
}

/// The HPA for an autoscaled model, `None` when the model has a fixed replica count.
pub fn hpa(app: &LlmApplication, model: &ModelConfig) -> Option<HorizontalPodAutoscaler> {
    let auto = model.autoscaling()?;
    let (metric, target) = signal(auto);
    let meta = model_meta(app, model);
    let target_name = meta.name.clone().unwrap_or_default();
    Some(HorizontalPodAutoscaler {
        metadata: meta,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: target_name,
            },
            min_replicas: Some(auto.min_replicas),
            max_replicas: auto.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Pods".into(),
                pods: Some(PodsMetricSource {
                    metric: MetricIdentifier { name: metric.into(), selector: None },
                    target: MetricTarget {
                        type_: "AverageValue".into(),
                        average_value: Some(quantity_from_f64(target)),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_up: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(auto.upscale_delay_seconds),
                    ..Default::default()
                }),
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(auto.downscale_delay_seconds),
                    ..Default::default()
                }),
            }),
        }),
        status: None,
    })
}

/// A Kubernetes quantity for a non-negative number: whole numbers plain, others in milli-units.
pub fn quantity_from_f64(v: f64) -> Quantity {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        Quantity(format!("{}", v as i64))
    } else {
        Quantity(format!("{}m", (v * 1000.0).round() as i64))
    }
}
