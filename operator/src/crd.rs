//! The `LlmApplication` API (`llmserve.dev/v1alpha1`).
//!
//! Names mirror Ray Serve LLM's `LLMConfig` in Kubernetes camelCase, so a Ray user recognises every
//! field. Everything the OpenAPI schema and CEL can check is checked there, so `kubectl apply`
//! refuses a bad spec before the operator sees it; `validate.rs` checks the rest.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::accelerator::AcceleratorType;

/// API group of every llmserve resource.
pub const GROUP: &str = "llmserve.dev";
/// Serving image used when neither the app nor the model names one.
pub const DEFAULT_IMAGE: &str = "ghcr.io/llmserve/llmserve-server:0.1.0";
/// Most models one application may list (bounds the cost of the uniqueness rule).
pub const MAX_MODELS: usize = 32;

/// An OpenAI-compatible application serving one or more models, like Ray Serve LLM's
/// `build_openai_app({"llm_configs": [...]})`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "llmserve.dev",
    version = "v1alpha1",
    kind = "LlmApplication",
    plural = "llmapplications",
    shortname = "llmapp",
    namespaced,
    status = "LlmApplicationStatus",
    derive = "PartialEq",
    category = "llmserve",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Models","type":"string","jsonPath":".spec.models[*].modelLoadingConfig.modelId"}"#,
    printcolumn = r#"{"name":"Replicas","type":"string","description":"ready/desired model replicas",
        "jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Auth","type":"string","description":"apiKeys or none","jsonPath":".status.auth"}"#,
    printcolumn = r#"{"name":"RPS","type":"number","description":"requests per second, last minute",
        "jsonPath":".status.serving.requestsPerSecond"}"#,
    printcolumn = r#"{"name":"Tok/s","type":"number","description":"completion tokens per second, last minute",
        "jsonPath":".status.serving.outputTokensPerSecond"}"#,
    printcolumn = r#"{"name":"TTFT-P95","type":"number","description":"worst model's p95 time to first token (s)",
        "jsonPath":".status.serving.ttftP95Seconds"}"#,
    printcolumn = r#"{"name":"KV%","type":"integer","description":"worst model's KV-cache use",
        "jsonPath":".status.serving.kvCachePercent"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // The name is part of every child's name (see `build::names`) and a label value.
    validation = Rule::new("size(self.metadata.name) <= 63").message(
        "metadata.name must be at most 63 characters, since it names the application's Services and is a label value"
    ),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message(
        "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter and \
            ending with a letter or digit), since it names the application's Services"
    ),
    validation = Rule::new("!self.metadata.name.contains('--')").message(
        "metadata.name must not contain '--', which separates the application from the model in child names"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LlmApplicationSpec {
    /// The models this application serves; clients pick one with the request's `model` field.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new(
        "self.all(m, self.exists_one(n, n.modelLoadingConfig.modelId == m.modelLoadingConfig.modelId))"
    ).message("modelLoadingConfig.modelId must be unique within the application"))]
    pub models: Vec<ModelConfig>,

    /// Serving image for every model and the router, unless a model overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Path prefix under which the router serves the OpenAI routes (`/v1/...`).
    #[serde(default = "default_route_prefix")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^/[A-Za-z0-9._~/-]*$"))]
    pub route_prefix: String,

    /// The OpenAI-compatible router in front of all models of the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterConfig>,

    /// API keys and per-tenant limits at the router; unset: the router asks for no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,

    /// HTTPS at the router, from a `kubernetes.io/tls` Secret (a cert-manager `Certificate`'s
    /// works as it is); unset: the router speaks plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,

    /// One switch for the application's monitoring: ServiceMonitors, the PrometheusRule of SLO
    /// alerts, and engine metrics (a model's `logEngineMetrics` still wins for its engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<ObservabilityConfig>,
}

impl LlmApplicationSpec {
    /// Whether ServiceMonitors, alerts and (by default) engine metrics are on.
    pub fn observability_enabled(&self) -> bool {
        self.observability.as_ref().is_none_or(|o| o.enabled)
    }

    /// Whether `model` exports engine metrics: its `logEngineMetrics`, else the app's switch.
    pub fn engine_metrics(&self, model: &ModelConfig) -> bool {
        model.log_engine_metrics.unwrap_or_else(|| self.observability_enabled())
    }

    /// The Secret of API keys the router follows, if it asks for keys.
    pub fn api_keys_secret(&self) -> Option<&str> {
        self.auth.as_ref().map(|a| a.api_keys.secret_ref.name.as_str())
    }

    /// What `status.auth` reports.
    pub fn auth_status(&self) -> AuthStatus {
        if self.auth.is_some() { AuthStatus::ApiKeys } else { AuthStatus::None }
    }
}

/// The application's monitoring switch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilityConfig {
    /// False: no ServiceMonitors, no PrometheusRule, and no engine metrics unless a model sets
    /// `logEngineMetrics: true`. Service-level metrics stay on.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// Service-level objectives of one model; each becomes an alert in the application's
/// PrometheusRule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SloConfig {
    /// Alert when the 95th percentile of time to first token exceeds this many seconds (5 min).
    #[serde(default = "default_ttft_p95")]
    #[schemars(range(min = 0.001, max = 3600.0))]
    pub ttft_p95_seconds: f64,
    /// Alert when the 95th percentile of time per output token exceeds this many seconds (5 min).
    #[serde(default = "default_tpot_p95")]
    #[schemars(range(min = 0.0001, max = 60.0))]
    pub tpot_p95_seconds: f64,
    /// Alert when more than this percentage of answers are 5xx (5 min).
    #[serde(default = "default_error_rate")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub error_rate_percent: f64,
    /// Alert when a replica's KV cache stays fuller than this fraction (10 min).
    #[serde(default = "default_kv_usage")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub kv_cache_usage_max: f64,
    /// Alert when more requests than this wait in the model's queues (5 min).
    #[serde(default = "default_queue_max")]
    #[schemars(range(min = 0, max = 100000))]
    pub queue_length_max: i32,
}

fn default_ttft_p95() -> f64 {
    2.0
}
fn default_tpot_p95() -> f64 {
    0.2
}
fn default_error_rate() -> f64 {
    5.0
}
fn default_kv_usage() -> f64 {
    0.95
}
fn default_queue_max() -> i32 {
    32
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            ttft_p95_seconds: default_ttft_p95(),
            tpot_p95_seconds: default_tpot_p95(),
            error_rate_percent: default_error_rate(),
            kv_cache_usage_max: default_kv_usage(),
            queue_length_max: default_queue_max(),
        }
    }
}

fn default_route_prefix() -> String {
    "/".into()
}

/// The application's ingress router. Unset knobs pass no flag, so the router's defaults apply.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouterConfig {
    /// Router replicas (the router is stateless).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,

    /// How a replica is picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RoutingPolicy>,

    /// `prefixHash`/`kvAware`: characters of the prompt (or of the chat messages) that make the
    /// prefix key (`--prefix-chars`); unset: 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub prefix_chars: Option<i32>,

    /// `prefixHash`/`kvAware`: no replica takes more than the ceiling of this times the mean
    /// number of requests in flight, plus one (`--load-factor`); unset: 1.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub load_factor: Option<f64>,
}

/// How the router picks a replica of a model (`--routing-policy`); unset: `leastOutstanding`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RoutingPolicy {
    /// Fewest requests in flight.
    LeastOutstanding,
    /// Consistent hashing with bounded loads over the prompt's prefix, so that shared prefixes
    /// meet the replica that has them cached.
    PrefixHash,
    /// Prefix affinity weighed against each replica's queue and KV-cache use.
    KvAware,
}

impl RoutingPolicy {
    /// The value `llmserve-router --routing-policy` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingPolicy::LeastOutstanding => "leastOutstanding",
            RoutingPolicy::PrefixHash => "prefixHash",
            RoutingPolicy::KvAware => "kvAware",
        }
    }
}

/// The router's certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// A `kubernetes.io/tls` Secret in the application's namespace (`tls.crt`, `tls.key`); the
    /// router re-reads it when it changes, so renewals need no restart.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')"
    ).message(
        "tls.secretName must be a Secret name: a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', \
            starting and ending with a letter or digit)"
    ))]
    pub secret_name: String,
}

/// API keys at the router, and limits per tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthConfig {
    /// Where the keys are: every OpenAI route then asks for `Authorization: Bearer <key>`.
    pub api_keys: ApiKeysConfig,

    /// Limits per tenant; the keys' Secret may carry its own in the `llmserve.dev/limits`
    /// annotation, which then wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<TenantLimitsConfig>,
}

/// The Secret of API keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeysConfig {
    /// A Secret in the application's namespace whose data entries are one tenant each (entry
    /// name = tenant, value = key); the router follows it live and may read no other Secret.
    pub secret_ref: SecretRef,
}

/// A Secret in the application's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')"
    ).message(
        "secretRef.name must be a Secret name: a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', \
            starting and ending with a letter or digit)"
    ))]
    pub name: String,
}

/// `--tenant-limits`: a default for every tenant, and per-tenant entries that override it field
/// by field.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantLimitsConfig {
    /// Limits of every tenant without its own entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<TenantLimits>,

    /// Per-tenant overrides, by tenant (the keys' Secret entry name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 256))]
    #[x_kube(validation = Rule::new("self.all(t, size(t) <= 253 && t.matches('^[-._a-zA-Z0-9]+$'))").message(
        "tenants are named as the keys' Secret entries: at most 253 letters, digits, '-', '_' and '.'"
    ))]
    pub tenants: BTreeMap<String, TenantLimits>,
}

/// One tenant's limits; an unset field is unlimited.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4_294_967_295_i64))]
    pub requests_per_minute: Option<i64>,
    /// Prompt + completion tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<i64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4_294_967_295_i64))]
    pub concurrent_requests: Option<i64>,
}

fn one() -> i32 {
    1
}

/// One served model, like Ray Serve LLM's `LLMConfig`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.loraConfig)")
    .message("loraConfig is not supported yet: llmserve-server cannot serve LoRA adapters")
    .field_path(".loraConfig"))]
pub struct ModelConfig {
    /// Which model, and where its weights come from.
    pub model_loading_config: ModelLoadingConfig,

    /// GPU to run on; absent or `none` runs on CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_type: Option<AcceleratorType>,

    /// Replica count: fixed, or autoscaled on ongoing requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_config: Option<DeploymentConfig>,

    /// Engine settings passed to `llmserve-server` (vLLM's names in camelCase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_kwargs: Option<EngineKwargs>,

    /// LoRA adapters served on top of the base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_config: Option<LoraConfig>,

    /// Whether the engine exports its `vllm:*` metrics; false leaves only service-level metrics.
    /// Unset: follows `spec.observability.enabled` (true by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_engine_metrics: Option<bool>,

    /// Alert thresholds for this model (defaults apply when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloConfig>,

    /// Overrides the resources derived from `acceleratorType`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra environment variables for the serving container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub env: Option<Vec<EnvVar>>,

    /// Serving image for this model only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Most disk the model cache (downloaded weights) may use, a Kubernetes quantity; a replica
    /// over it is evicted. Default 20Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message(
        "cacheSizeLimit must be a positive Kubernetes quantity, such as 20Gi or 500M"
    ))]
    pub cache_size_limit: Option<String>,
}

/// The model cache's `sizeLimit` when a model sets none: room for a 7B-parameter checkpoint in
/// bf16 with margin.
pub const DEFAULT_CACHE_SIZE_LIMIT: &str = "20Gi";

fn yes() -> bool {
    true
}

/// Model identity and weights location.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelLoadingConfig {
    /// The name clients send as `model`; unique in the application.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"))]
    pub model_id: String,

    /// A Hugging Face repo id (`Qwen/Qwen2.5-0.5B-Instruct`), an absolute path inside the image
    /// (`/models/qwen`), or a PersistentVolumeClaim (`pvc://claim-name/path/in/volume`).
    /// Defaults to `modelId`, read as a Hugging Face repo id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = "^(/[^\\s]*|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\\s]*)?|\
                       [A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?)$")
    )]
    pub model_source: Option<String>,
}

/// Replica settings; `numReplicas` and `autoscalingConfig` exclude each other.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.numReplicas) && has(self.autoscalingConfig))")
    .message("set either numReplicas or autoscalingConfig, not both"))]
pub struct DeploymentConfig {
    /// Autoscale between `minReplicas` and `maxReplicas` on a per-replica signal (`metric`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling_config: Option<AutoscalingConfig>,

    /// A fixed replica count (no HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub num_replicas: Option<i32>,
}

/// Ray Serve's autoscaling knobs, applied through an `autoscaling/v2` HPA on the per-replica
/// signal `metric` names. Each signal but `ongoingRequests` has its own target, required when it is
/// chosen and refused otherwise; `targetOngoingRequests` has a default and is ignored then.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.metric != 'waitingRequests' || has(self.targetWaitingRequests)")
    .message("metric waitingRequests needs targetWaitingRequests").field_path(".targetWaitingRequests"))]
#[x_kube(validation = Rule::new("!has(self.targetWaitingRequests) || self.metric == 'waitingRequests'")
    .message("targetWaitingRequests is only for metric waitingRequests").field_path(".targetWaitingRequests"))]
#[x_kube(validation = Rule::new("self.metric != 'kvCacheUsage' || has(self.targetKvCacheUsage)")
    .message("metric kvCacheUsage needs targetKvCacheUsage").field_path(".targetKvCacheUsage"))]
#[x_kube(validation = Rule::new("!has(self.targetKvCacheUsage) || self.metric == 'kvCacheUsage'")
    .message("targetKvCacheUsage is only for metric kvCacheUsage").field_path(".targetKvCacheUsage"))]
#[x_kube(validation = Rule::new("self.metric != 'ttftP95' || has(self.targetTtftP95Seconds)")
    .message("metric ttftP95 needs targetTtftP95Seconds").field_path(".targetTtftP95Seconds"))]
#[x_kube(validation = Rule::new("!has(self.targetTtftP95Seconds) || self.metric == 'ttftP95'")
    .message("targetTtftP95Seconds is only for metric ttftP95").field_path(".targetTtftP95Seconds"))]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("minReplicas must be less than or equal to maxReplicas").field_path(".minReplicas"))]
#[x_kube(validation = Rule::new("!has(self.initialReplicas) || (self.initialReplicas >= self.minReplicas && \
    self.initialReplicas <= self.maxReplicas)")
    .message("initialReplicas must lie between minReplicas and maxReplicas").field_path(".initialReplicas"))]
pub struct AutoscalingConfig {
    /// Fewest replicas (at least 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,

    /// Most replicas.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// The per-replica signal the HPA scales on.
    #[serde(default)]
    pub metric: AutoscalingMetric,

    /// Target running + waiting requests per replica (metric `ongoingRequests`).
    #[serde(default = "default_target_ongoing")]
    #[x_kube(validation = Rule::new("self > 0.0").message("targetOngoingRequests must be greater than 0"))]
    #[schemars(range(max = 100000.0))]
    pub target_ongoing_requests: f64,

    /// Target waiting (queued) requests per replica (metric `waitingRequests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0").message("targetWaitingRequests must be greater than 0"))]
    #[schemars(range(max = 100000.0))]
    pub target_waiting_requests: Option<f64>,

    /// Target fraction of KV-cache blocks in use per replica, in (0, 1] (metric `kvCacheUsage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0")
        .message("targetKvCacheUsage must be greater than 0 and at most 1"))]
    pub target_kv_cache_usage: Option<f64>,

    /// Target time to first token, 95th percentile over the last minute, in seconds (metric `ttftP95`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0").message("targetTtftP95Seconds must be greater than 0"))]
    #[schemars(range(max = 3600.0))]
    pub target_ttft_p95_seconds: Option<f64>,

    /// Replicas to start with; defaults to `minReplicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub initial_replicas: Option<i32>,

    /// How long load must stay high before scaling up.
    #[serde(default = "default_upscale_delay")]
    #[schemars(range(min = 0, max = 3600))]
    pub upscale_delay_seconds: i32,

    /// How long load must stay low before scaling down.
    #[serde(default = "default_downscale_delay")]
    #[schemars(range(min = 0, max = 3600))]
    pub downscale_delay_seconds: i32,
}

fn default_target_ongoing() -> f64 {
    2.0
}
fn default_upscale_delay() -> i32 {
    30
}
fn default_downscale_delay() -> i32 {
    600
}

impl Default for AutoscalingConfig {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 1,
            metric: AutoscalingMetric::default(),
            target_ongoing_requests: default_target_ongoing(),
            target_waiting_requests: None,
            target_kv_cache_usage: None,
            target_ttft_p95_seconds: None,
            initial_replicas: None,
            upscale_delay_seconds: default_upscale_delay(),
            downscale_delay_seconds: default_downscale_delay(),
        }
    }
}

/// The per-replica signal an autoscaled model scales on; each is a custom metric the chart's
/// prometheus-adapter rules serve from the engine's metrics.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum AutoscalingMetric {
    /// Running + waiting requests (Ray Serve's signal), target `targetOngoingRequests`.
    #[default]
    OngoingRequests,
    /// Requests queued for a batch slot, target `targetWaitingRequests`.
    WaitingRequests,
    /// Fraction of KV-cache blocks in use, target `targetKvCacheUsage`.
    KvCacheUsage,
    /// Time to first token, 95th percentile over the last minute, target `targetTtftP95Seconds`.
    TtftP95,
}

/// Engine settings; unknown keys are refused (the API server's strict field validation).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineKwargs {
    /// Longest prompt + completion, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_model_len: Option<i32>,
    /// Most sequences in one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_num_seqs: Option<i32>,
    /// Most tokens scheduled in one engine step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_num_batched_tokens: Option<i32>,
    /// GPUs per replica the model is sharded over; only 1 until the engine shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    #[x_kube(validation = Rule::new("self == 1")
        .message("tensorParallelSize > 1 is not supported yet: llmserve-server runs a model on one GPU per replica"))]
    pub tensor_parallel_size: Option<i32>,
    /// Fraction of GPU memory the engine may take (weights + KV cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("gpuMemoryUtilization must be in (0, 1]"))]
    pub gpu_memory_utilization: Option<f64>,
    /// Weight and activation dtype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<Dtype>,
    /// Tokens per KV-cache block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self in [8, 16, 32, 64, 128]").message("blockSize must be one of 8, 16, 32, 64, 128")
    )]
    pub block_size: Option<i32>,
    /// Reuse KV blocks across requests that share a prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_prefix_caching: Option<bool>,
}

/// Model dtype, as vLLM spells it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Take the checkpoint's dtype.
    Auto,
    /// 32-bit float.
    Float32,
    /// 16-bit float.
    Float16,
    /// bfloat16.
    Bfloat16,
}

impl Dtype {
    /// The value `llmserve-server --dtype` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Auto => "auto",
            Dtype::Float32 => "float32",
            Dtype::Float16 => "float16",
            Dtype::Bfloat16 => "bfloat16",
        }
    }
}

/// LoRA adapters, like Ray Serve LLM's `lora_config`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoraConfig {
    /// Where adapters are loaded from on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub dynamic_lora_loading_path: Option<String>,
    /// Most adapters resident on one replica.
    #[serde(default = "default_max_adapters")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_num_adapters_per_replica: i32,
    /// Adapters loaded at start, each `name=source`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub initial_adapters: Vec<String>,
}

fn default_max_adapters() -> i32 {
    16
}

/// Observed state of an application.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LlmApplicationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Per-model replica counts.
    #[serde(default)]
    pub models: Vec<ModelStatus>,
    /// Ready over desired model replicas, summed over models (`3/4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
    /// The router's in-cluster base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_url: Option<String>,
    /// Whether the router asks for API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthStatus>,
    /// Live serving figures from the router, over its last minute; written apart from the rest of
    /// the status (field manager `llmserve-operator-live`), at most every 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<ServingStatus>,
}

/// The application's serving figures: the sums (or, for TTFT and KV cache, the worst) over its
/// models, and each model's.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServingStatus {
    /// When the router was read (RFC 3339).
    pub observed_at: String,
    /// Requests answered per second.
    pub requests_per_second: f64,
    /// Completion tokens per second.
    pub output_tokens_per_second: f64,
    /// The highest 95th-percentile time to first token of the models, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95_seconds: Option<f64>,
    /// The highest KV-cache use of the models, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_percent: Option<i64>,
    /// Per model.
    #[serde(default)]
    pub models: Vec<ModelServing>,
}

/// One model's serving figures.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelServing {
    /// The model's `modelId`.
    pub model_id: String,
    /// Replicas the router sends to.
    pub ready_replicas: i64,
    /// Requests running in the engines.
    pub running: i64,
    /// Requests waiting in the engines' queues.
    pub waiting: i64,
    /// KV-cache use in percent, the mean over replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_percent: Option<i64>,
    /// Requests answered per second.
    pub requests_per_second: f64,
    /// Completion tokens per second.
    pub output_tokens_per_second: f64,
    /// Median time to first token, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p50_seconds: Option<f64>,
    /// 95th-percentile time to first token, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95_seconds: Option<f64>,
}

/// What the router was configured to ask of clients.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum AuthStatus {
    /// `Authorization: Bearer <key>` with a key from `spec.auth.apiKeys`.
    ApiKeys,
    /// Nothing: every request is served.
    None,
}

/// Replica counts of one model.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// The model's `modelId`.
    pub model_id: String,
    /// Pods the Deployment has.
    pub replicas: i32,
    /// Pods passing readiness.
    pub ready_replicas: i32,
    /// Pods wanted now (the HPA's choice when autoscaling).
    pub desired_replicas: i32,
    /// The last change of `desiredReplicas` the operator saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<ScaleEvent>,
}

/// A change of a model's desired replica count.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScaleEvent {
    /// When the operator saw it (RFC 3339).
    pub time: String,
    /// Desired replicas before.
    pub from: i32,
    /// Desired replicas after.
    pub to: i32,
    /// Why: the HPA's metric against its target, or the spec's replica count.
    pub reason: String,
}

/// Conditions as a list-map keyed by `type`, so server-side apply merges them per type.
fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let obj = schema.ensure_object();
    obj.insert("x-kubernetes-list-type".into(), "map".into());
    obj.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

impl ModelConfig {
    /// The model cache's `sizeLimit`.
    pub fn cache_size_limit(&self) -> &str {
        self.cache_size_limit.as_deref().unwrap_or(DEFAULT_CACHE_SIZE_LIMIT)
    }

    /// The autoscaling settings in force, or `None` for a fixed replica count.
    pub fn autoscaling(&self) -> Option<&AutoscalingConfig> {
        self.deployment_config.as_ref()?.autoscaling_config.as_ref()
    }

    /// Fixed replica count when not autoscaling (Ray's default is one replica).
    pub fn fixed_replicas(&self) -> i32 {
        self.deployment_config.as_ref().and_then(|d| d.num_replicas).unwrap_or(1)
    }

    /// GPUs one replica needs: the tensor-parallel degree on a GPU, none on CPU.
    pub fn gpus(&self) -> i32 {
        match self.accelerator_type {
            Some(a) if a.is_gpu() => self.tensor_parallel_size(),
            _ => 0,
        }
    }

    /// `engineKwargs.tensorParallelSize`, 1 when unset.
    pub fn tensor_parallel_size(&self) -> i32 {
        self.engine_kwargs.as_ref().and_then(|k| k.tensor_parallel_size).unwrap_or(1)
    }

    /// Where the weights come from; `modelId` itself when no source is given.
    pub fn model_source(&self) -> &str {
        self.model_loading_config.model_source.as_deref().unwrap_or(&self.model_loading_config.model_id)
    }

    /// The model's id, as clients name it.
    pub fn model_id(&self) -> &str {
        &self.model_loading_config.model_id
    }
}
