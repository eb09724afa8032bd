//! The application's OpenAI-compatible router: a Deployment of the serving image in router mode
//! (`llmserve-router`) and its Service.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, PodSpec, PodTemplateSpec, ResourceRequirements, Service,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;

use super::service::service_spec;
use super::*;
use crate::crd::LlmApplication;

/// The router's Deployment; it reaches each model through the model's Service.
pub fn router_deployment(app: &LlmApplication) -> Deployment {
    let app_name = app.name_any();
    let ns = app.namespace().unwrap_or_else(|| "default".into());
    let selector = router_selector(&app_name);
    let mut args: Vec<String> = vec![
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        HTTP_PORT.to_string(),
        "--route-prefix".into(),
        app.spec.route_prefix.clone(),
    ];
    for m in &app.spec.models {
        args.push("--backend".into());
        args.push(format!(
            "{}=http://{}.{ns}.svc:{HTTP_PORT}",
            m.model_id(),
            model_object_name(&app_name, m.model_id())
        ));
    }
    let q = |s: &str| Quantity(s.into());
    let container = Container {
        name: "router".into(),
        image: Some(image_for(app, None)),
        command: Some(vec!["llmserve-router".into()]),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT_NAME.into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), q("100m")), ("memory".into(), q("128Mi"))])),
            limits: Some(BTreeMap::from([("memory".into(), q("512Mi"))])),
            ..Default::default()
        }),
        readiness_probe: Some(health_probe(5, 3)),
        liveness_probe: Some(health_probe(10, 6)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    Deployment {
        metadata: child_meta(app, router_name(&app_name), object_labels(&selector)),
        spec: Some(DeploymentSpec {
            replicas: Some(app.spec.router.as_ref().map(|r| r.replicas).unwrap_or(1)),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(object_labels(&selector)), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    }]),
                    security_context: Some(pod_security_context()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(60),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The router's Service.
pub fn router_service(app: &LlmApplication) -> Service {
    let app_name = app.name_any();
    let selector = router_selector(&app_name);
    Service {
        metadata: child_meta(app, router_name(&app_name), object_labels(&selector)),
        spec: Some(service_spec(selector)),
        status: None,
    }
}

/// In-cluster base URL of the router, with the route prefix.
pub fn router_url(app: &LlmApplication) -> String {
    let ns = app.namespace().unwrap_or_else(|| "default".into());
    let prefix = app.spec.route_prefix.trim_end_matches('/');
    format!("http://{}.{ns}.svc:{HTTP_PORT}{prefix}", router_name(&app.name_any()))
}
