//! The application's OpenAI-compatible router: a Deployment of the serving image in router mode
//! (`llmserve-router`), its Service, and the ServiceAccount, Role and RoleBinding that let it
//! read the EndpointSlices of the models' Services (it balances over the replicas itself) and,
//! with API keys, the one Secret that holds them.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, PodSpec, PodTemplateSpec, ResourceRequirements, SecretVolumeSource, Service, ServiceAccount, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use serde_json::{Map, Value};

use super::service::service_spec;
use super::*;
use crate::crd::{LlmApplication, TenantLimits, TenantLimitsConfig};

/// Where the router's `kubernetes.io/tls` Secret is mounted.
pub const TLS_PATH: &str = "/etc/llmserve/tls";
/// The router's `/tmp` `sizeLimit`.
const ROUTER_TMP_SIZE_LIMIT: &str = "64Mi";

/// The router's Deployment; it follows each model's replicas through the EndpointSlices of the
/// model's Service.
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
        "--namespace".into(),
        ns,
        "--endpoint-port".into(),
        HTTP_PORT_NAME.into(),
        "--metrics-port".into(),
        METRICS_PORT.to_string(),
        "--shutdown-delay-seconds".into(),
        super::SHUTDOWN_DELAY_SECONDS.to_string(),
    ];
    for m in &app.spec.models {
        args.push("--backend-service".into());
        args.push(format!("{}={}", m.model_id(), model_object_name(&app_name, m.model_id())));
    }
    args.extend(router_flags(app));
    let tls = app.spec.tls.as_ref().map(|t| t.secret_name.clone());
    let mut volumes = vec![empty_dir("tmp", None, Some(ROUTER_TMP_SIZE_LIMIT))];
    let mut mounts = vec![VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() }];
    if let Some(secret) = &tls {
        args.extend(["--tls-cert-file".into(), format!("{TLS_PATH}/tls.crt")]);
        args.extend(["--tls-key-file".into(), format!("{TLS_PATH}/tls.key")]);
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource { secret_name: Some(secret.clone()), ..Default::default() }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let q = |s: &str| Quantity(s.into());
    let container = Container {
        name: "router".into(),
        image: Some(image_for(app, None)),
        command: Some(vec!["llmserve-router".into()]),
        args: Some(args),
        ports: Some(container_ports()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), q("100m")), ("memory".into(), q("128Mi"))])),
            limits: Some(BTreeMap::from([("memory".into(), q("512Mi"))])),
            ..Default::default()
        }),
        readiness_probe: Some(https_health_probe(5, 3, tls.is_some())),
        liveness_probe: Some(https_health_probe(10, 6, tls.is_some())),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
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
                    volumes: Some(volumes),
                    security_context: Some(pod_security_context()),
                    service_account_name: Some(router_name(&app_name)),
                    // The token is what the router reads EndpointSlices with.
                    automount_service_account_token: Some(true),
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

/// The flags of the app's routing and auth settings; only those set, so an app that sets none
/// keeps the argument list (and the pods) it had.
fn router_flags(app: &LlmApplication) -> Vec<String> {
    let mut args = Vec::new();
    let mut flag = |name: &str, value: String| args.extend([name.to_string(), value]);
    if let Some(r) = &app.spec.router {
        if let Some(p) = r.policy {
            flag("--routing-policy", p.as_str().into());
        }
        if let Some(n) = r.prefix_chars {
            flag("--prefix-chars", n.to_string());
        }
        if let Some(f) = r.load_factor {
            flag("--load-factor", f.to_string());
        }
    }
    if let Some(secret) = app.spec.api_keys_secret() {
        flag("--api-keys-secret", secret.into());
    }
    if let Some(json) = app.spec.auth.as_ref().and_then(|a| a.limits.as_ref()).and_then(tenant_limits_json) {
        flag("--tenant-limits", json);
    }
    args
}

/// `--tenant-limits` as the router parses it: compact JSON with only the keys that are set;
/// `None` when nothing is.
pub fn tenant_limits_json(limits: &TenantLimitsConfig) -> Option<String> {
    fn one(l: &TenantLimits) -> Value {
        let fields = [
            ("requestsPerMinute", l.requests_per_minute),
            ("tokensPerMinute", l.tokens_per_minute),
            ("concurrentRequests", l.concurrent_requests),
        ];
        Value::Object(fields.into_iter().filter_map(|(k, v)| Some((k.to_string(), Value::from(v?)))).collect())
    }
    let mut out = Map::new();
    if let Some(d) = limits.default.as_ref().map(one).filter(|d| d.as_object().is_some_and(|o| !o.is_empty())) {
        out.insert("default".into(), d);
    }
    if !limits.tenants.is_empty() {
        let tenants = limits.tenants.iter().map(|(t, l)| (t.clone(), one(l))).collect();
        out.insert("tenants".into(), Value::Object(tenants));
    }
    (!out.is_empty()).then(|| Value::Object(out).to_string())
}

/// The router's Service; its `http` port says `https` when the router speaks TLS.
pub fn router_service(app: &LlmApplication) -> Service {
    let app_name = app.name_any();
    let selector = router_selector(&app_name);
    let mut spec = service_spec(selector.clone());
    if app.spec.tls.is_some()
        && let Some(api) = spec.ports.iter_mut().flatten().find(|p| p.name.as_deref() == Some(HTTP_PORT_NAME))
    {
        api.app_protocol = Some("https".into());
    }
    Service {
        metadata: child_meta(app, router_name(&app_name), object_labels(&selector)),
        spec: Some(spec),
        status: None,
    }
}

/// In-cluster base URL of the router, with the route prefix.
pub fn router_url(app: &LlmApplication) -> String {
    let ns = app.namespace().unwrap_or_else(|| "default".into());
    let prefix = app.spec.route_prefix.trim_end_matches('/');
    let scheme = if app.spec.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{}.{ns}.svc:{HTTP_PORT}{prefix}", router_name(&app.name_any()))
}

/// The router's ServiceAccount.
pub fn router_service_account(app: &LlmApplication) -> ServiceAccount {
    let name = router_name(&app.name_any());
    ServiceAccount {
        metadata: child_meta(app, name, object_labels(&router_selector(&app.name_any()))),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// The ServiceAccount of the application's model replicas: their own identity (not the
/// namespace's `default`, which other workloads may have been granted rights through), with no
/// token mounted.
pub fn models_service_account(app: &LlmApplication) -> ServiceAccount {
    let app_name = app.name_any();
    let labels = BTreeMap::from([
        (labels::INSTANCE.to_string(), app_name.clone()),
        (labels::COMPONENT.to_string(), labels::COMPONENT_MODEL.to_string()),
    ]);
    ServiceAccount {
        metadata: child_meta(app, models_name(&app_name), object_labels(&labels)),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// Read access to EndpointSlices in the application's namespace, and with API keys to their one
/// Secret by name (the router lists and watches it with a `metadata.name` field selector, which
/// RBAC checks against `resourceNames`): all the router needs.
pub fn router_role(app: &LlmApplication) -> Role {
    let name = router_name(&app.name_any());
    let read = || vec!["get".to_string(), "list".into(), "watch".into()];
    let mut rules = vec![PolicyRule {
        api_groups: Some(vec!["discovery.k8s.io".into()]),
        resources: Some(vec!["endpointslices".into()]),
        verbs: read(),
        ..Default::default()
    }];
    if let Some(secret) = app.spec.api_keys_secret() {
        rules.push(PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            resource_names: Some(vec![secret.into()]),
            verbs: read(),
            ..Default::default()
        });
    }
    Role { metadata: child_meta(app, name, object_labels(&router_selector(&app.name_any()))), rules: Some(rules) }
}

/// Binds [`router_role`] to [`router_service_account`].
pub fn router_role_binding(app: &LlmApplication) -> RoleBinding {
    let name = router_name(&app.name_any());
    RoleBinding {
        metadata: child_meta(app, name.clone(), object_labels(&router_selector(&app.name_any()))),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: name.clone() },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: app.namespace(),
            ..Default::default()
        }]),
    }
}
