//! The model's ClusterIP Service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::*;
use crate::crd::{LlmApplication, ModelConfig};

/// The Service in front of one model's replicas: `http` for the router, `metrics` for Prometheus.
pub fn service(app: &LlmApplication, model: &ModelConfig) -> Service {
    Service {
        metadata: model_meta(app, model),
        spec: Some(service_spec(model_selector(&app.name_any(), model.model_id()))),
        status: None,
    }
}

/// ClusterIP spec with the `http` and `metrics` ports, each to the container's port of that name.
pub fn service_spec(selector: BTreeMap<String, String>) -> ServiceSpec {
    ServiceSpec {
        type_: Some("ClusterIP".into()),
        selector: Some(selector),
        ports: Some(vec![
            ServicePort {
                name: Some(HTTP_PORT_NAME.into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..Default::default()
            },
            ServicePort {
                name: Some(METRICS_PORT_NAME.into()),
                port: METRICS_PORT,
                target_port: Some(IntOrString::String(METRICS_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}
