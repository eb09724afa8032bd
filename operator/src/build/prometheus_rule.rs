//! The application's PrometheusRule: one alert per SLO of each model, from `models[].slo` (or
//! its defaults). Built as a dynamic object: the CRD may be absent.

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::service_monitor::APP_SERIES_LABEL;
use super::*;
use crate::crd::{LlmApplication, ModelConfig, SloConfig};

/// `PrometheusRule`.
pub const PROMETHEUS_RULE_KIND: &str = "PrometheusRule";
/// Where each alert's runbook lives.
pub const RUNBOOK_BASE: &str = "https://github.com/llmserve/llmserve/blob/main/README.md";

/// Alert names, also the README's runbook anchors.
pub mod alerts {
    /// p95 time to first token above `ttftP95Seconds`.
    pub const TTFT_HIGH: &str = "LlmserveTTFTHigh";
    /// p95 time per output token above `tpotP95Seconds`.
    pub const TPOT_HIGH: &str = "LlmserveTPOTHigh";
    /// 5xx share above `errorRatePercent`.
    pub const ERROR_RATE_HIGH: &str = "LlmserveErrorRateHigh";
    /// A replica's KV cache above `kvCacheUsageMax`.
    pub const KV_CACHE_FULL: &str = "LlmserveKVCacheFull";
    /// More than `queueLengthMax` requests waiting.
    pub const QUEUE_LONG: &str = "LlmserveQueueLong";
}

/// The API resource of PrometheusRules.
pub fn prometheus_rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", PROMETHEUS_RULE_KIND),
        "prometheusrules",
    )
}

/// Name of the application's PrometheusRule.
pub fn prometheus_rule_name(app_name: &str) -> String {
    format!("{app_name}-slo")
}

/// The application's PrometheusRule.
pub fn prometheus_rule(app: &LlmApplication) -> DynamicObject {
    let name = prometheus_rule_name(&app.name_any());
    let mut obj = DynamicObject::new(&name, &prometheus_rule_resource());
    obj.metadata = child_meta(app, name, object_labels(&router_selector(&app.name_any())));
    obj.data = json!({"spec": {"groups": rule_groups(app)}});
    obj
}

/// The rule groups (Prometheus's rule-file format), one group per application.
pub fn rule_groups(app: &LlmApplication) -> Value {
    let ns = app.namespace().unwrap_or_else(|| "default".into());
    let app_name = app.name_any();
    let rules: Vec<Value> =
        app.spec.models.iter().flat_map(|m| model_rules(&ns, &app_name, m, app.spec.engine_metrics(m))).collect();
    json!([{"name": format!("llmserve.{ns}.{app_name}.slo"), "rules": rules}])
}

fn model_rules(ns: &str, app: &str, model: &ModelConfig, engine_metrics: bool) -> Vec<Value> {
    let slo = model.slo.clone().unwrap_or_default();
    let id = model.model_id();
    let engine = format!(r#"namespace="{ns}", {APP_SERIES_LABEL}="{app}", model_name="{id}""#);
    let http = format!(r#"namespace="{ns}", {APP_SERIES_LABEL}="{app}", model="{id}""#);
    let rule = |alert: &str, expr: String, for_: &str, severity: &str, summary: String, description: String| {
        json!({
            "alert": alert,
            "expr": expr,
            "for": for_,
            "labels": {"severity": severity, APP_SERIES_LABEL: app, "model": id, "namespace": ns},
            "annotations": {
                "summary": summary,
                "description": description,
                "runbook_url": format!("{RUNBOOK_BASE}#{}", alert.to_lowercase()),
            },
        })
    };
    let SloConfig { ttft_p95_seconds, tpot_p95_seconds, error_rate_percent, kv_cache_usage_max, queue_length_max } =
        slo;
    let mut out = vec![rule(
        alerts::ERROR_RATE_HIGH,
        format!(
            "100 * sum(rate(llmserve_http_requests_total{{{http}, status_class=\"5xx\"}}[5m])) \
             / sum(rate(llmserve_http_requests_total{{{http}}}[5m])) > {error_rate_percent}"
        ),
        "5m",
        "critical",
        format!("{id}: more than {error_rate_percent}% of answers are errors"),
        format!(
            "{{{{ $value | humanize }}}}% of the answers of model {id} in {app} ({ns}) were 5xx over 5 minutes; the \
                SLO allows {error_rate_percent}%."
        ),
    )];
    if !engine_metrics {
        return out; // the other SLOs read engine metrics, which this model does not export
    }
    out.push(rule(
        alerts::TTFT_HIGH,
        format!(
            "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{engine}}}[5m]))) \
            > {ttft_p95_seconds}"
        ),
        "5m",
        "warning",
        format!("{id}: p95 time to first token above {ttft_p95_seconds} s"),
        format!(
            "The p95 time to first token of model {id} in {app} ({ns}) is {{{{ $value | humanizeDuration }}}}; the \
            SLO is {ttft_p95_seconds} s."
        ),
    ));
    out.push(rule(
        alerts::TPOT_HIGH,
        format!(
            "histogram_quantile(0.95, sum by (le) \
            (rate(vllm:request_time_per_output_token_seconds_bucket{{{engine}}}[5m]))) > {tpot_p95_seconds}"
        ),
        "5m",
        "warning",
        format!("{id}: p95 time per output token above {tpot_p95_seconds} s"),
        format!(
            "The p95 time per output token of model {id} in {app} ({ns}) is {{{{ $value | humanizeDuration }}}}; \
            the SLO is {tpot_p95_seconds} s."
        ),
    ));
    out.push(rule(
        alerts::KV_CACHE_FULL,
        format!("max by (pod) (vllm:kv_cache_usage_perc{{{engine}}}) > {kv_cache_usage_max}"),
        "10m",
        "warning",
        format!("{id}: a replica's KV cache is above {kv_cache_usage_max}"),
        format!(
            "Replica {{{{ $labels.pod }}}} of model {id} in {app} ({ns}) has used \
            {{{{ $value | humanizePercentage }}}} of its KV cache for 10 minutes; the limit is {kv_cache_usage_max}."
        ),
    ));
    out.push(rule(
        alerts::QUEUE_LONG,
        format!("sum(vllm:num_requests_waiting{{{engine}}}) > {queue_length_max}"),
        "5m",
        "warning",
        format!("{id}: more than {queue_length_max} requests waiting"),
        format!(
            "{{{{ $value }}}} requests of model {id} in {app} ({ns}) have been waiting for 5 minutes; the limit is \
            {queue_length_max}."
        ),
    ));
    out
}
