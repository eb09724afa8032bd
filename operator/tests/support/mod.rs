//! Operator test helpers on top of `llmserve-test-support` (the real control plane every crate's
//! tests share): the controller in this process, fixtures, and `kubectl apply`-like writes.
#![allow(dead_code, unused_imports)]

use std::sync::Arc;

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Reporter;
use llmserve_operator::controller::{self, Context};
use llmserve_operator::metrics::Metrics;
pub use llmserve_test_support::control_plane::{client, control_plane, install_llmapp_crd, namespace};
pub use llmserve_test_support::eventually;

/// Installs prometheus-operator's ServiceMonitor CRD.
pub async fn install_service_monitor_crd(client: &Client) {
    llmserve_test_support::control_plane::install_monitoring_crd(client, "servicemonitors").await
}

/// Installs prometheus-operator's PrometheusRule CRD.
pub async fn install_prometheus_rule_crd(client: &Client) {
    llmserve_test_support::control_plane::install_monitoring_crd(client, "prometheusrules").await
}

/// The controller running in this process, watching one namespace; stops when dropped.
pub struct RunningController {
    handle: tokio::task::JoinHandle<()>,
    /// The metrics it records.
    pub metrics: Metrics,
}

impl RunningController {
    /// Whether the controller's task has ended (it never should: a panic in a reconcile ends it).
    pub fn handle_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts the operator's controller on `ns`.
pub fn spawn_controller(client: &Client, ns: &str) -> RunningController {
    let metrics = Metrics::new();
    let reporter = Reporter { controller: "llmserve-operator".into(), instance: Some(format!("test-{ns}")) };
    let ctx = Arc::new(Context::new(client.clone(), metrics.clone(), reporter));
    let handle = tokio::spawn(controller::run(ctx, Some(ns.to_string()), 16, std::future::pending()));
    RunningController { handle, metrics }
}

/// Reads a YAML fixture as JSON, with its name replaced.
pub fn fixture(name: &str, app_name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut v: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["metadata"]["name"] = app_name.into();
    v
}

/// Applies an LlmApplication the way `kubectl apply --server-side` does (strict field validation).
pub async fn apply_app(
    client: &Client,
    ns: &str,
    app: &serde_json::Value,
) -> Result<llmserve_operator::crd::LlmApplication, kube::Error> {
    let api: Api<llmserve_operator::crd::LlmApplication> = Api::namespaced(client.clone(), ns);
    let mut pp = PatchParams::apply("kubectl").force();
    pp.field_validation = Some(kube::api::ValidationDirective::Strict);
    api.patch(app["metadata"]["name"].as_str().unwrap(), &pp, &Patch::Apply(app)).await
}
