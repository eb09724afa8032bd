//! Prometheus Operator ServiceMonitors, built as dynamic objects: the CRD may be absent, and the
//! operator discovers it at run time instead of depending on its types.

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::*;
use crate::crd::{LlmApplication, ModelConfig};

/// `monitoring.coreos.com/v1`.
pub const SERVICE_MONITOR_API_VERSION: &str = "monitoring.coreos.com/v1";
/// `ServiceMonitor`.
pub const SERVICE_MONITOR_KIND: &str = "ServiceMonitor";

/// The series label that carries the application's name (from the Service's
/// `app.kubernetes.io/instance`), as the dashboards expect it.
pub const APP_SERIES_LABEL: &str = "llmserve_app";

/// The API resource of ServiceMonitors.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", SERVICE_MONITOR_KIND),
        "servicemonitors",
    )
}

/// A ServiceMonitor scraping `/metrics` on the `metrics` port of the model's Service, or of the
/// router's when `model` is `None`.
pub fn service_monitor(app: &LlmApplication, model: Option<&ModelConfig>) -> DynamicObject {
    let app_name = app.name_any();
    let (meta, selector) = match model {
        Some(m) => (model_meta(app, m), model_selector(&app_name, m.model_id())),
        None => {
            let sel = router_selector(&app_name);
            (child_meta(app, router_name(&app_name), object_labels(&sel)), sel)
        }
    };
    let mut obj = DynamicObject::new(meta.name.as_deref().unwrap_or_default(), &service_monitor_resource());
    obj.metadata = meta;
    obj.data = json!({
        "spec": {
            "selector": { "matchLabels": selector },
            "endpoints": [{
                "port": METRICS_PORT_NAME,
                "path": "/metrics",
                "interval": "15s",
                "scrapeTimeout": "10s",
                // The application as a series label, which the dashboards filter on.
                "relabelings": [{
                    "action": "replace",
                    "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"],
                    "targetLabel": APP_SERIES_LABEL,
                }],
            }],
        }
    });
    obj
}
