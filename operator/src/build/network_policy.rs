//! The NetworkPolicy that makes the router the only door to an application's models.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::*;
use crate::crd::LlmApplication;

/// Who may scrape the models' metrics port: pods matching `pods` in namespaces matching
/// `namespaces` (both label sets; an empty one matches everything of its kind).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsPeers {
    /// Labels of the namespaces Prometheus runs in.
    pub namespaces: BTreeMap<String, String>,
    /// Labels of the Prometheus pods.
    pub pods: BTreeMap<String, String>,
}

impl MetricsPeers {
    /// The defaults of the chart: pods `app.kubernetes.io/name=prometheus` in the `monitoring`
    /// namespace (the labels kube-prometheus-stack and the Prometheus Operator give them).
    pub fn monitoring_prometheus() -> Self {
        MetricsPeers {
            namespaces: BTreeMap::from([("kubernetes.io/metadata.name".into(), "monitoring".into())]),
            pods: BTreeMap::from([("app.kubernetes.io/name".into(), "prometheus".into())]),
        }
    }
}

/// Ingress to the application's model pods: the API port from the app's router pods only, the
/// metrics port from `metrics` only; nothing else reaches them (their own node's kubelet probes
/// stay allowed, as every NetworkPolicy implementation allows them).
pub fn network_policy(app: &LlmApplication, metrics: &MetricsPeers) -> NetworkPolicy {
    let app_name = app.name_any();
    let models = BTreeMap::from([
        (labels::INSTANCE.to_string(), app_name.clone()),
        (labels::COMPONENT.to_string(), labels::COMPONENT_MODEL.to_string()),
    ]);
    let port = |name: &str| {
        Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::String(name.into())),
            protocol: Some("TCP".into()),
            ..Default::default()
        }])
    };
    let select = |labels: &BTreeMap<String, String>| LabelSelector {
        match_labels: (!labels.is_empty()).then(|| labels.clone()),
        ..Default::default()
    };
    let from_router =
        NetworkPolicyPeer { pod_selector: Some(select(&router_selector(&app_name))), ..Default::default() };
    // One peer with both selectors: the pods that match in the namespaces that match.
    let from_prometheus = NetworkPolicyPeer {
        namespace_selector: Some(select(&metrics.namespaces)),
        pod_selector: Some(select(&metrics.pods)),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: child_meta(app, models_name(&app_name), object_labels(&models)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(select(&models)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule { from: Some(vec![from_router]), ports: port(HTTP_PORT_NAME) },
                NetworkPolicyIngressRule { from: Some(vec![from_prometheus]), ports: port(METRICS_PORT_NAME) },
            ]),
            ..Default::default()
        }),
    }
}
