//! The model's `autoscaling/v2` HorizontalPodAutoscaler.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior,
    HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::*;
use crate::crd::{LlmApplication, ModelConfig};

/// Per-pod metric the HPA scales on: running + waiting requests of one replica, which
/// prometheus-adapter serves from the engine's `vllm:num_requests_running` and
/// `vllm:num_requests_waiting` gauges (the chart ships that rule).
pub const ONGOING_REQUESTS_METRIC: &str = "llmserve_ongoing_requests";

/// The HPA for an autoscaled model, `None` when the model has a fixed replica count.
pub fn hpa(app: &LlmApplication, model: &ModelConfig) -> Option<HorizontalPodAutoscaler> {
    let auto = model.autoscaling()?;
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
                    metric: MetricIdentifier { name: ONGOING_REQUESTS_METRIC.into(), selector: None },
                    target: MetricTarget {
                        type_: "AverageValue".into(),
                        average_value: Some(quantity_from_f64(auto.target_ongoing_requests)),
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
