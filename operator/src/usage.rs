//! Usage data: the facts Ray Serve LLM records, aggregated over every LlmApplication in the
//! cluster into a ConfigMap and the `llmserve_usage_info` metric. Sent nowhere unless a report URL
//! is configured; off entirely with `--usage-stats=false` / `LLMSERVE_USAGE_STATS_ENABLED=0`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PatchParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::crd::LlmApplication;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Name of the ConfigMap the report is written to, in the operator's namespace.
pub const CONFIGMAP_NAME: &str = "llmserve-usage-stats";
/// Key of the JSON report inside that ConfigMap.
pub const CONFIGMAP_KEY: &str = "usage.json";

/// One model's usage facts.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ModelUsage {
    /// `architectures[0]` of the model's config.json, when the operator can know it: it reads
    /// the `llmserve.dev/architecture` annotation of the app; otherwise `unknown`.
    pub architecture: String,
    /// Whether JSON mode (`response_format`) is enabled for the model. Always false until the
    /// engine supports structured output.
    pub json_mode: bool,
    /// Whether LoRA adapters are configured.
    pub lora: bool,
    /// Adapters loaded at start.
    pub lora_initial_adapters: usize,
    /// Whether an HPA scales the model.
    pub autoscaling: bool,
    /// HPA minimum (or the fixed count).
    pub min_replicas: i32,
    /// HPA maximum (or the fixed count).
    pub max_replicas: i32,
    /// Replicas at start.
    pub initial_replicas: i32,
    /// Tensor-parallel degree.
    pub tensor_parallel_size: i32,
    /// `acceleratorType`, `none` on CPU.
    pub gpu_type: String,
    /// GPUs per replica (tensor parallel x pipeline parallel, which is 1).
    pub num_gpus: i32,
}

/// The aggregated report.
#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct UsageReport {
    /// LlmApplications in the cluster.
    pub num_applications: usize,
    /// Models over all applications.
    pub num_models: usize,
    /// Whether any application serves more than one model.
    pub serves_multiple_models: bool,
    /// Whether more than one application exists.
    pub serves_multiple_apps: bool,
    /// Per-model facts.
    pub models: Vec<ModelUsage>,
}

/// Annotation through which a user may declare the architecture of every model of an app,
/// `LlamaForCausalLM` say, or per model as `modelId=Arch,modelId=Arch`.
pub const ARCHITECTURE_ANNOTATION: &str = "llmserve.dev/architecture";

/// Aggregates the facts over `apps`. Pure: the same apps give the same report.
pub fn collect(apps: &[LlmApplication]) -> UsageReport {
    let mut models = Vec::new();
    for app in apps {
        let arch_ann = app.annotations().get(ARCHITECTURE_ANNOTATION).cloned();
        for m in &app.spec.models {
            let auto = m.autoscaling();
            let (min, max) = match auto {
                Some(a) => (a.min_replicas, a.max_replicas),
                None => (m.fixed_replicas(), m.fixed_replicas()),
            };
            let initial = auto.map(|a| a.initial_replicas.unwrap_or(a.min_replicas)).unwrap_or(min);
            models.push(ModelUsage {
                architecture: architecture_for(arch_ann.as_deref(), m.model_id()),
                json_mode: false,
                lora: m.lora_config.is_some(),
                lora_initial_adapters: m.lora_config.as_ref().map(|l| l.initial_adapters.len()).unwrap_or(0),
                autoscaling: auto.is_some(),
                min_replicas: min,
                max_replicas: max,
                initial_replicas: initial,
                tensor_parallel_size: m.tensor_parallel_size(),
                gpu_type: m.accelerator_type.map(|a| a.as_str()).unwrap_or("none").to_string(),
                num_gpus: m.gpus(),
            });
        }
    }
    UsageReport {
        num_applications: apps.len(),
        num_models: models.len(),
        serves_multiple_models: apps.iter().any(|a| a.spec.models.len() > 1),
        serves_multiple_apps: apps.len() > 1,
        models,
    }
}

fn architecture_for(annotation: Option<&str>, model_id: &str) -> String {
    let Some(ann) = annotation else { return "unknown".into() };
    if !ann.contains('=') {
        return ann.trim().to_string();
    }
    ann.split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == model_id)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Sets `llmserve_usage_info` and `llmserve_usage_applications` from a report.
pub fn export(metrics: &Metrics, report: &UsageReport) {
    metrics.usage_info.reset();
    let mut counts: BTreeMap<[String; 5], i64> = BTreeMap::new();
    for m in &report.models {
        let key = [
            m.architecture.clone(),
            m.gpu_type.clone(),
            m.tensor_parallel_size.to_string(),
            m.autoscaling.to_string(),
            m.lora.to_string(),
        ];
        *counts.entry(key).or_default() += 1;
    }
    for (k, n) in counts {
        let labels: Vec<&str> = k.iter().map(String::as_str).collect();
        metrics.usage_info.with_label_values(&labels).set(n);
    }
    metrics.usage_applications.with_label_values(&["applications"]).set(report.num_applications as i64);
    metrics.usage_applications.with_label_values(&["models"]).set(report.num_models as i64);
}

/// Lists the LlmApplications the operator manages (those of `watched`, or of every namespace),
/// writes the ConfigMap in `namespace`, sets the metrics, and posts the report when `report_url`
/// is set.
pub async fn run_once(
    client: &Client,
    namespace: &str,
    watched: Option<&str>,
    metrics: &Metrics,
    report_url: Option<&str>,
) -> Result<UsageReport> {
    let api = match watched {
        Some(ns) => Api::<LlmApplication>::namespaced(client.clone(), ns),
        None => Api::<LlmApplication>::all(client.clone()),
    };
    let apps = api.list(&ListParams::default()).await?;
    let report = collect(&apps.items);
    export(metrics, &report);
    let body = serde_json::to_string_pretty(&report)?;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_string(), "llmserve".to_string()),
                ("app.kubernetes.io/component".to_string(), "usage-stats".to_string()),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(CONFIGMAP_KEY.to_string(), body.clone())])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(CONFIGMAP_NAME, &PatchParams::apply(crate::MANAGER).force(), &crate::ssa::patch(&cm)?)
        .await?;
    if let Some(url) = report_url {
        let resp = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| Error::UsageReport(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(Error::UsageReport(format!("report endpoint answered {}", resp.status())));
        }
    }
    Ok(report)
}
