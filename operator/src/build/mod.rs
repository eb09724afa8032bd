//! Pure builders: one function per owned object, from the application and a model to the object
//! the operator applies. No client, no clock, no I/O, so every builder is unit-tested from YAML.

mod deployment;
mod hpa;
mod names;
mod network_policy;
mod prometheus_rule;
mod router;
mod service;
mod service_monitor;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ContainerPort, HTTPGetAction, PodSecurityContext, Probe, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{DEFAULT_IMAGE, LlmApplication, ModelConfig};

pub use deployment::deployment;
pub use deployment::{TMP_SIZE_LIMIT, empty_dir};
pub use hpa::{
    KV_CACHE_USAGE_METRIC, ONGOING_REQUESTS_METRIC, TTFT_P95_METRIC, WAITING_REQUESTS_METRIC, hpa, quantity_from_f64,
    signal,
};
pub use names::{
    MAX_NAME_LEN, is_dns_1035_label, is_label_value, label_value, model_object_name, models_name, router_name, slug,
};
pub use network_policy::{MetricsPeers, network_policy};
pub use prometheus_rule::{
    PROMETHEUS_RULE_KIND, RUNBOOK_BASE, alerts, prometheus_rule, prometheus_rule_name, prometheus_rule_resource,
    rule_groups,
};
pub use router::{
    TLS_PATH, models_service_account, router_deployment, router_role, router_role_binding, router_service,
    router_service_account, router_url, tenant_limits_json,
};
pub use service::service;
pub use service_monitor::{
    APP_SERIES_LABEL, SERVICE_MONITOR_API_VERSION, SERVICE_MONITOR_KIND, service_monitor, service_monitor_resource,
};

/// Port the serving container listens on for OpenAI routes, `/health` and `/metrics`.
pub const HTTP_PORT: i32 = 8000;
/// Seconds the server and the router keep serving after SIGTERM, with `/health` at 503, before
/// they refuse connections: the time Kubernetes takes to drop a terminating pod's endpoint from
/// what routers and Services send to (within the pods' 60 s grace with the 30 s drain).
pub const SHUTDOWN_DELAY_SECONDS: u64 = 5;
/// Port (container and Service) serving only `/metrics` and `/health` in plain HTTP: what
/// ServiceMonitors scrape, and all the NetworkPolicy opens to Prometheus.
pub const METRICS_PORT: i32 = 9090;
/// Container port name for the HTTP listener.
pub const HTTP_PORT_NAME: &str = "http";
/// Name of [`METRICS_PORT`] on containers and Services.
pub const METRICS_PORT_NAME: &str = "metrics";
/// Unprivileged UID the serving image runs as.
pub const RUN_AS_USER: i64 = 65532;

/// `app.kubernetes.io/*` and llmserve label keys.
pub mod labels {
    /// Always `llmserve`.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// The LlmApplication's name.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `model` or `router`.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// Always [`super::super::MANAGER`].
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Always `llmserve`.
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    /// The model id, made label-safe (see [`super::label_value`]).
    pub const MODEL_ID: &str = "llmserve.dev/model-id";
    /// Annotation carrying the model id verbatim.
    pub const MODEL_ID_ANNOTATION: &str = "llmserve.dev/model-id";
    /// Component value of model replicas.
    pub const COMPONENT_MODEL: &str = "model";
    /// Component value of the router.
    pub const COMPONENT_ROUTER: &str = "router";
}

/// Labels selecting one model's pods.
pub fn model_selector(app_name: &str, model_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::INSTANCE.to_string(), app_name.to_string()),
        (labels::COMPONENT.to_string(), labels::COMPONENT_MODEL.to_string()),
        (labels::MODEL_ID.to_string(), label_value(model_id)),
    ])
}

/// Labels selecting the router's pods.
pub fn router_selector(app_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::INSTANCE.to_string(), app_name.to_string()),
        (labels::COMPONENT.to_string(), labels::COMPONENT_ROUTER.to_string()),
    ])
}

/// Selector-independent labels every child carries, plus the given selector labels.
pub fn object_labels(selector: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut l = selector.clone();
    l.insert(labels::NAME.into(), "llmserve".into());
    l.insert(labels::PART_OF.into(), "llmserve".into());
    l.insert(labels::MANAGED_BY.into(), crate::MANAGER.into());
    l
}

/// Metadata of a child: name, namespace, labels and the controller owner reference.
pub fn child_meta(app: &LlmApplication, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: app.namespace(),
        labels: Some(labels),
        owner_references: owner_ref(app).map(|o| vec![o]),
        ..Default::default()
    }
}

fn owner_ref(app: &LlmApplication) -> Option<OwnerReference> {
    app.controller_owner_ref(&())
}

/// Metadata of a model's child, with the verbatim model id as an annotation.
pub fn model_meta(app: &LlmApplication, model: &ModelConfig) -> ObjectMeta {
    let app_name = app.name_any();
    let mut meta = child_meta(
        app,
        model_object_name(&app_name, model.model_id()),
        object_labels(&model_selector(&app_name, model.model_id())),
    );
    meta.annotations = Some(BTreeMap::from([(labels::MODEL_ID_ANNOTATION.to_string(), model.model_id().to_string())]));
    meta
}

/// The image a model runs: the model's override, else the app's, else the default.
pub fn image_for(app: &LlmApplication, model: Option<&ModelConfig>) -> String {
    model.and_then(|m| m.image.clone()).or_else(|| app.spec.image.clone()).unwrap_or_else(|| DEFAULT_IMAGE.to_string())
}

/// Non-root, seccomp'd pod: the serving image needs no privilege at all.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// Read-only root, no escalation, every capability dropped.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        ..Default::default()
    }
}

/// The container's API port and its metrics port.
pub fn container_ports() -> Vec<ContainerPort> {
    [(HTTP_PORT_NAME, HTTP_PORT), (METRICS_PORT_NAME, METRICS_PORT)]
        .into_iter()
        .map(|(name, port)| ContainerPort {
            name: Some(name.into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect()
}

/// An HTTP GET probe on `/health` of the API port.
pub fn health_probe(period: i32, failure_threshold: i32) -> Probe {
    https_health_probe(period, failure_threshold, false)
}

/// [`health_probe`], in HTTPS when the port speaks TLS (the kubelet does not verify the
/// certificate), so the probe exercises the listener clients use.
pub fn https_health_probe(period: i32, failure_threshold: i32, https: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/health".into()),
            port: IntOrString::String(HTTP_PORT_NAME.into()),
            scheme: https.then(|| "HTTPS".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(3),
        ..Default::default()
    }
}
