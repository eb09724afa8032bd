//! The reconcile pipeline: validate, build, apply, update status.
//!
//! Only `apply`, `prune` and `update_status` touch the API. An invalid spec becomes a condition
//! and an Event and waits for the next edit, leaving running children alone; API errors requeue
//! with exponential backoff.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ObjectReference, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PatchParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::build::{self, labels};
use crate::crd::{LlmApplication, LlmApplicationStatus, ModelConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::status::{self, Cond, reasons, types};
use crate::validate::validate;
use crate::{MANAGER, ssa};

/// A status condition's message is one line of at most this many bytes (the API allows 32 KiB; a
/// person reads far less).
const MAX_MESSAGE_BYTES: usize = 1024;

/// Field manager that sets only the initial replica count of an autoscaled Deployment, so the
/// main manager can leave `spec.replicas` to the HPA without it falling back to the default.
pub const INITIAL_REPLICAS_MANAGER: &str = "llmserve-operator-initial-replicas";
/// How long a shutdown waits for running reconciles.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often a healthy application is looked at again without any change.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Shared state of every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events on LlmApplications.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Metrics,
    monitoring: Mutex<Option<(Instant, Monitoring)>>,
    failures: Mutex<HashMap<ObjectRef<LlmApplication>, u32>>,
    /// Per application, the (uid, generation) this process last applied in full: ownership
    /// checked, children applied and stale ones pruned. A generation not in here, a new spec or
    /// the first reconcile since the operator started (an upgrade may have renamed children), gets
    /// the full treatment.
    settled: Mutex<HashMap<ObjectRef<LlmApplication>, Settled>>,
    /// Who may scrape the models when each app gets its NetworkPolicy; `None`: no policies.
    network_policy: Option<build::MetricsPeers>,
}

/// An application's uid and `metadata.generation`: a recreated app (same name, new uid) is new.
type Settled = (String, Option<i64>);

impl Context {
    /// A context publishing Events as `reporter`.
    pub fn new(client: Client, metrics: Metrics, reporter: Reporter) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            monitoring: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
            network_policy: Some(build::MetricsPeers::monitoring_prometheus()),
        }
    }

    /// Gives every application a NetworkPolicy admitting `metrics` to its models' metrics port,
    /// or (`None`) none.
    pub fn with_network_policy(mut self, metrics: Option<build::MetricsPeers>) -> Self {
        self.network_policy = metrics;
        self
    }

    /// Which `monitoring.coreos.com/v1` kinds exist, rechecked every 30 seconds so CRDs installed
    /// later are picked up.
    async fn monitoring(&self) -> Monitoring {
        if let Some((at, known)) = *self.monitoring.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < Duration::from_secs(30)
        {
            return known;
        }
        let known = match self.client.list_api_group_resources(build::SERVICE_MONITOR_API_VERSION).await {
            Ok(list) => Monitoring {
                service_monitors: list.resources.iter().any(|r| r.name == "servicemonitors"),
                prometheus_rules: list.resources.iter().any(|r| r.name == "prometheusrules"),
            },
            Err(e) => {
                tracing::debug!(error = %e, "monitoring.coreos.com discovery");
                Monitoring::default()
            }
        };
        *self.monitoring.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), known));
        known
    }

    fn settled_key(app: &LlmApplication) -> (ObjectRef<LlmApplication>, Settled) {
        (ObjectRef::from_obj(app), (app.uid().unwrap_or_default(), app.metadata.generation))
    }

    /// Whether this process has applied `app`'s current generation in full.
    fn is_settled(&self, app: &LlmApplication) -> bool {
        let (key, value) = Self::settled_key(app);
        self.settled.lock().unwrap_or_else(PoisonError::into_inner).get(&key) == Some(&value)
    }

    fn settle(&self, app: &LlmApplication) {
        let (key, value) = Self::settled_key(app);
        self.settled.lock().unwrap_or_else(PoisonError::into_inner).insert(key, value);
    }

    async fn event(&self, app: &LlmApplication, type_: EventType, reason: &str, action: &str, note: String) {
        let reference: ObjectReference = app.object_ref(&());
        // Kubernetes caps an Event's note at 1 kB.
        let note = crate::text::one_line(&note, 1000);
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// The Prometheus Operator kinds the API server has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Monitoring {
    /// ServiceMonitors.
    pub service_monitors: bool,
    /// PrometheusRules.
    pub prometheus_rules: bool,
}

/// What to write this round: the kinds that exist, and only if the app wants monitoring.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    monitors: bool,
    rules: bool,
    /// The kinds exist (so stale objects of them can be listed and deleted).
    present: Monitoring,
}

/// Every object one application should have, built from its spec.
pub struct Desired {
    /// Per model: the model, its Deployment, Service, HPA (when autoscaling) and ServiceMonitor.
    pub models: Vec<(ModelConfig, Deployment, Service, Option<HorizontalPodAutoscaler>, DynamicObject)>,
    /// Router Deployment.
    pub router_deployment: Deployment,
    /// Router Service.
    pub router_service: Service,
    /// Router ServiceMonitor.
    pub router_monitor: DynamicObject,
    /// The router's identity and its read access to EndpointSlices.
    pub router_rbac: (ServiceAccount, Role, RoleBinding),
    /// The model replicas' identity.
    pub models_account: ServiceAccount,
    /// Only the router reaches the models (when the operator runs with NetworkPolicies).
    pub network_policy: Option<NetworkPolicy>,
    /// SLO alerts.
    pub rules: DynamicObject,
}

impl Desired {
    /// Builds every child; pure. `metrics` admits Prometheus in the NetworkPolicy; `None` builds none.
    pub fn build(app: &LlmApplication, metrics: Option<&build::MetricsPeers>) -> Self {
        Desired {
            models: app
                .spec
                .models
                .iter()
                .map(|m| {
                    (
                        m.clone(),
                        build::deployment(app, m),
                        build::service(app, m),
                        build::hpa(app, m),
                        build::service_monitor(app, Some(m)),
                    )
                })
                .collect(),
            router_deployment: build::router_deployment(app),
            router_service: build::router_service(app),
            router_monitor: build::service_monitor(app, None),
            router_rbac: (build::router_service_account(app), build::router_role(app), build::router_role_binding(app)),
            models_account: build::models_service_account(app),
            network_policy: metrics.map(|m| build::network_policy(app, m)),
            rules: build::prometheus_rule(app),
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Reconciles one application; the entry point the controller calls.
pub async fn reconcile(app: Arc<LlmApplication>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.duration.start_timer();
    let result = reconcile_inner(&app, &ctx).await;
    timer.observe_duration();
    match &result {
        Ok(Outcome::Applied) => {
            ctx.metrics.reconciles.with_label_values(&["success"]).inc();
            ctx.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(&ObjectRef::from_obj(app.as_ref()));
        }
        Ok(Outcome::Invalid) => ctx.metrics.reconciles.with_label_values(&["invalid"]).inc(),
        Err(e) => {
            ctx.metrics.reconciles.with_label_values(&["error"]).inc();
            ctx.metrics.errors.with_label_values(&[e.metric_label()]).inc();
        }
    }
    result.map(|o| match o {
        Outcome::Applied => Action::requeue(RESYNC),
        Outcome::Invalid => Action::await_change(),
    })
}

enum Outcome {
    Applied,
    Invalid,
}

async fn reconcile_inner(app: &LlmApplication, ctx: &Context) -> Result<Outcome> {
    // === validate ===
    let problems = validate(app);
    if !problems.is_empty() {
        let msg = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        let msg = crate::text::one_line(&msg, MAX_MESSAGE_BYTES);
        tracing::warn!(app = %app.name_any(), problems = %msg, "invalid spec; children left as they are");
        let conds = [
            Cond::new(types::READY, false, reasons::INVALID_SPEC, msg.clone()),
            Cond::new(types::DEGRADED, true, reasons::INVALID_SPEC, msg.clone()),
        ];
        update_status(ctx, app, &conds, app.metadata.generation, None).await?;
        ctx.event(app, EventType::Warning, reasons::INVALID_SPEC, "Validate", msg).await;
        return Ok(Outcome::Invalid);
    }

    // === build ===
    let desired = Desired::build(app, ctx.network_policy.as_ref());
    let observed_generation = app.status.as_ref().and_then(|s| s.observed_generation);
    let new_generation = observed_generation != app.metadata.generation;
    // A new spec, or the first look since the operator started, may name children that exist
    // already or leave some stale; steady-state reconciles skip the reads that find out.
    let fresh = new_generation || !ctx.is_settled(app);
    let present = ctx.monitoring().await;
    let observe = app.spec.observability_enabled();
    let wanted =
        Wanted { monitors: observe && present.service_monitors, rules: observe && present.prometheus_rules, present };

    // === apply ===
    // Only this app's own children may be written.
    if fresh && let Err(e) = check_ownership(ctx, app, &desired, wanted).await {
        if let Error::NameConflict { .. } = e {
            let msg = crate::text::one_line(&e.to_string(), MAX_MESSAGE_BYTES);
            tracing::warn!(app = %app.name_any(), error = %msg, "name conflict; nothing written");
            let conds = [
                Cond::new(types::READY, false, reasons::NAME_CONFLICT, msg.clone()),
                Cond::new(types::DEGRADED, true, reasons::NAME_CONFLICT, msg.clone()),
            ];
            let _ = update_status(ctx, app, &conds, observed_generation, None).await;
            ctx.event(app, EventType::Warning, reasons::NAME_CONFLICT, "Apply", msg).await;
        }
        return Err(e);
    }
    let applied = match apply(ctx, app, &desired, wanted).await {
        Ok(a) => a,
        Err(e) => {
            let msg = crate::text::one_line(&format!("{e} ({})", e.metric_label()), MAX_MESSAGE_BYTES);
            let conds = [Cond::new(types::DEGRADED, true, reasons::APPLY_FAILED, msg.clone())];
            // The generation stays unobserved, so the retry prunes too. The status write may fail
            // for the same reason; the apply error is what matters.
            let _ = update_status(ctx, app, &conds, observed_generation, None).await;
            ctx.event(app, EventType::Warning, reasons::APPLY_FAILED, "Apply", msg).await;
            return Err(e);
        }
    };
    // Children only become stale when the spec changes or an upgraded operator names them anew,
    // so steady-state reconciles skip the lists; so does an application never reconciled before,
    // which can have no stale children.
    let removed = if fresh && app.status.is_some() { prune(ctx, app, &desired, wanted).await? } else { Vec::new() };
    for name in &removed {
        ctx.event(app, EventType::Normal, "Pruned", "Prune", format!("deleted {name}, no longer wanted by the spec"))
            .await;
    }

    // === update status ===
    let mut conds = status::rollout_conditions(&applied.models, &applied.router);
    conds.push(if !observe {
        Cond::new(
            types::MONITORED,
            false,
            reasons::OBSERVABILITY_DISABLED,
            "spec.observability.enabled is false: no ServiceMonitors and no alerts",
        )
    } else if present.service_monitors {
        let alerts = if present.prometheus_rules {
            format!("; alerts in PrometheusRule {}", desired.rules.name_any())
        } else {
            "; no alerts: the PrometheusRule CRD is not installed".into()
        };
        Cond::new(
            types::MONITORED,
            true,
            reasons::SERVICE_MONITORS_APPLIED,
            format!("ServiceMonitors applied for every model and the router{alerts}"),
        )
    } else {
        Cond::new(
            types::MONITORED,
            false,
            reasons::SERVICE_MONITOR_CRD_MISSING,
            "the monitoring.coreos.com/v1 ServiceMonitor CRD is not installed; install the Prometheus Operator to have \
                models scraped",
        )
    });
    let models = applied.models.iter().map(|(id, d)| status::model_status(id, d)).collect();
    let previously_monitored = condition_status(app, types::MONITORED);
    let observed = status::Observed {
        models,
        scale_reasons: applied.scale_reasons.clone(),
        router_url: build::router_url(app),
        auth: app.spec.auth_status(),
    };
    update_status(ctx, app, &conds, app.metadata.generation, Some(observed)).await?;
    ctx.settle(app);
    if new_generation {
        let note = format!(
            "applied {} model(s) and the router at generation {}",
            app.spec.models.len(),
            app.metadata.generation.unwrap_or(0)
        );
        ctx.event(app, EventType::Normal, "Applied", "Apply", note).await;
    }
    if observe && !present.service_monitors && previously_monitored.as_deref() != Some("False") {
        ctx.event(
            app,
            EventType::Warning,
            reasons::SERVICE_MONITOR_CRD_MISSING,
            "Apply",
            "ServiceMonitor CRD missing; models are served but not scraped".into(),
        )
        .await;
    }
    Ok(Outcome::Applied)
}

fn condition_status(app: &LlmApplication, type_: &str) -> Option<String> {
    app.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.clone())
}

/// What the API server reported back for the applied Deployments.
struct Applied {
    models: Vec<(String, Deployment)>,
    /// Why each model has its replica count ([`status::scale_reason`]), in the order of `models`.
    scale_reasons: Vec<String>,
    router: Deployment,
}

async fn apply(ctx: &Context, app: &LlmApplication, desired: &Desired, wanted: Wanted) -> Result<Applied> {
    let ns = app.namespace().unwrap_or_default();
    let client = &ctx.client;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let sms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &build::service_monitor_resource());
    let pp = apply_params();

    // Before the pods that use them: the identity the replicas run as, and the policy that
    // keeps everyone but the router away from them.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let models_name = desired.models_account.name_any();
    accounts
        .patch(&models_name, &pp, &ssa::patch(&desired.models_account)?)
        .await
        .map_err(failed("ServiceAccount", &models_name))?;
    if let Some(policy) = &desired.network_policy {
        Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
            .patch(&models_name, &pp, &ssa::patch(policy)?)
            .await
            .map_err(failed("NetworkPolicy", &models_name))?;
    }
    let mut models = Vec::with_capacity(desired.models.len());
    let mut scale_reasons = Vec::with_capacity(desired.models.len());
    for (model, dep, svc, hpa, sm) in &desired.models {
        let name = dep.name_any();
        let initial = model.autoscaling().map(|a| a.initial_replicas.unwrap_or(a.min_replicas)).unwrap_or(1);
        // Only an autoscaled model starting above one replica needs to know whether it is new.
        let is_new = initial > 1 && deployments.get_metadata_opt(&name).await?.is_none();
        let mut live = deployments.patch(&name, &pp, &ssa::patch(dep)?).await.map_err(failed("Deployment", &name))?;
        if is_new {
            let replicas = json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name}, "spec": {"replicas": initial},
            });
            live = deployments
                .patch(&name, &PatchParams::apply(INITIAL_REPLICAS_MANAGER), &ssa::patch(&replicas)?)
                .await
                .map_err(failed("Deployment", &name))?;
        }
        services.patch(&name, &pp, &ssa::patch(svc)?).await.map_err(failed("Service", &name))?;
        let live_hpa = match hpa {
            Some(hpa) => Some(
                hpas.patch(&name, &pp, &ssa::patch(hpa)?).await.map_err(failed("HorizontalPodAutoscaler", &name))?,
            ),
            None => None,
        };
        scale_reasons.push(status::scale_reason(live_hpa.as_ref()));
        if wanted.monitors {
            sms.patch(&name, &pp, &ssa::patch(sm)?).await.map_err(failed("ServiceMonitor", &name))?;
        }
        models.push((model.model_id().to_string(), live));
    }
    let router_name = desired.router_deployment.name_any();
    let (sa, role, binding) = &desired.router_rbac;
    let name = &router_name;
    accounts.patch(name, &pp, &ssa::patch(sa)?).await.map_err(failed("ServiceAccount", name))?;
    Api::<Role>::namespaced(client.clone(), &ns)
        .patch(name, &pp, &ssa::patch(role)?)
        .await
        .map_err(failed("Role", name))?;
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .patch(name, &pp, &ssa::patch(binding)?)
        .await
        .map_err(failed("RoleBinding", name))?;
    let router = deployments
        .patch(name, &pp, &ssa::patch(&desired.router_deployment)?)
        .await
        .map_err(failed("Deployment", name))?;
    services.patch(name, &pp, &ssa::patch(&desired.router_service)?).await.map_err(failed("Service", name))?;
    if wanted.monitors {
        sms.patch(name, &pp, &ssa::patch(&desired.router_monitor)?).await.map_err(failed("ServiceMonitor", name))?;
    }
    if wanted.rules {
        let rules: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &build::prometheus_rule_resource());
        let rule_name = desired.rules.name_any();
        rules
            .patch(&rule_name, &pp, &ssa::patch(&desired.rules)?)
            .await
            .map_err(failed("PrometheusRule", &rule_name))?;
    }
    Ok(Applied { models, scale_reasons, router })
}

/// Refuses to take over an existing object of any kind this application writes but does not
/// control: one made outside llmserve, or another controller's. Read before a new spec (or the
/// first time after a start) is applied, so steady-state reconciles cost nothing.
async fn check_ownership(ctx: &Context, app: &LlmApplication, desired: &Desired, wanted: Wanted) -> Result<()> {
    let ns = app.namespace().unwrap_or_default();
    let uid = app.uid().unwrap_or_default();
    let client = &ctx.client;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let sms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &build::service_monitor_resource());
    for (_, dep, _, hpa, _) in &desired.models {
        let name = dep.name_any();
        owns(&deployments, &uid, "Deployment", &name).await?;
        owns(&services, &uid, "Service", &name).await?;
        if hpa.is_some() {
            owns(&hpas, &uid, "HorizontalPodAutoscaler", &name).await?;
        }
        if wanted.monitors {
            owns(&sms, &uid, "ServiceMonitor", &name).await?;
        }
    }
    let name = desired.router_deployment.name_any();
    owns(&deployments, &uid, "Deployment", &name).await?;
    owns(&services, &uid, "Service", &name).await?;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    owns(&accounts, &uid, "ServiceAccount", &name).await?;
    let models_name = desired.models_account.name_any();
    owns(&accounts, &uid, "ServiceAccount", &models_name).await?;
    if desired.network_policy.is_some() {
        owns(&Api::<NetworkPolicy>::namespaced(client.clone(), &ns), &uid, "NetworkPolicy", &models_name).await?;
    }
    owns(&Api::<Role>::namespaced(client.clone(), &ns), &uid, "Role", &name).await?;
    owns(&Api::<RoleBinding>::namespaced(client.clone(), &ns), &uid, "RoleBinding", &name).await?;
    if wanted.monitors {
        owns(&sms, &uid, "ServiceMonitor", &name).await?;
    }
    if wanted.rules {
        let rules: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &build::prometheus_rule_resource());
        owns(&rules, &uid, "PrometheusRule", &desired.rules.name_any()).await?;
    }
    Ok(())
}

/// `Ok` when `kind` `name` does not exist or is controlled by the application with `uid`.
async fn owns<K>(api: &Api<K>, uid: &str, kind: &'static str, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_metadata_opt(name).await.map_err(failed(kind, name))? {
        Some(o) => owned_by(uid, kind, name, &o.metadata),
        None => Ok(()),
    }
}

/// Whether the object `kind` `name` is controlled by the application with `uid`; the conflict
/// names its actual controller otherwise.
pub fn owned_by(
    uid: &str,
    kind: &'static str,
    name: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<()> {
    let controller = meta.owner_references.iter().flatten().find(|r| r.controller == Some(true));
    match controller {
        Some(r) if r.uid == uid => Ok(()),
        Some(r) => Err(Error::NameConflict { kind, name: name.to_string(), owner: format!("{} {}", r.kind, r.name) }),
        None => Err(Error::NameConflict {
            kind,
            name: name.to_string(),
            owner: "no controller (it was made outside llmserve)".into(),
        }),
    }
}

/// Turns a failed write of `kind` `name` into the error that names it.
fn failed(kind: &'static str, name: &str) -> impl FnOnce(kube::Error) -> Error + use<> {
    let name = name.to_string();
    move |source| Error::Apply { kind, name, source }
}

/// Deletes children this application controls and no longer wants: those of removed models (or
/// named by an older operator), HPAs of models that switched to a fixed replica count, and
/// ServiceMonitors and the PrometheusRule when observability is off. Returns the names deleted.
async fn prune(ctx: &Context, app: &LlmApplication, desired: &Desired, wanted: Wanted) -> Result<Vec<String>> {
    let ns = app.namespace().unwrap_or_default();
    let client = &ctx.client;
    let selector = format!(
        "{}={},{}={},{}={}",
        labels::INSTANCE,
        app.name_any(),
        labels::MANAGED_BY,
        MANAGER,
        labels::COMPONENT,
        labels::COMPONENT_MODEL
    );
    let lp = ListParams::default().labels(&selector);
    let want: BTreeSet<String> = desired.models.iter().map(|(_, d, ..)| d.name_any()).collect();
    let want_hpa: BTreeSet<String> =
        desired.models.iter().filter_map(|(_, _, _, h, _)| h.as_ref().map(|h| h.name_any())).collect();
    let uid = app.uid().unwrap_or_default();
    let mut removed = Vec::new();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    removed.extend(prune_listed(&deployments, &lp, &uid, "Deployment", &want).await?);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    removed.extend(prune_listed(&services, &lp, &uid, "Service", &want).await?);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    removed.extend(prune_listed(&hpas, &lp, &uid, "HorizontalPodAutoscaler", &want_hpa).await?);
    if wanted.present.service_monitors {
        let sms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &build::service_monitor_resource());
        let want_sm = if wanted.monitors { want.clone() } else { BTreeSet::new() };
        removed.extend(prune_listed(&sms, &lp, &uid, "ServiceMonitor", &want_sm).await?);
        if !wanted.monitors {
            removed.extend(prune_named(&sms, &uid, "ServiceMonitor", &desired.router_monitor.name_any()).await?);
        }
    }
    if desired.network_policy.is_none() {
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        removed.extend(prune_named(&policies, &uid, "NetworkPolicy", &build::models_name(&app.name_any())).await?);
    }
    if wanted.present.prometheus_rules && !wanted.rules {
        let rules: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &build::prometheus_rule_resource());
        removed.extend(prune_named(&rules, &uid, "PrometheusRule", &desired.rules.name_any()).await?);
    }
    Ok(removed)
}

/// Deletes the objects `lp` lists that the application with `uid` controls and `want` does not
/// name; an object carrying the app's labels but someone else's (or no) controller stays.
async fn prune_listed<K>(
    api: &Api<K>,
    lp: &ListParams,
    uid: &str,
    kind: &'static str,
    want: &BTreeSet<String>,
) -> Result<Vec<String>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut removed = Vec::new();
    for o in api.list_metadata(lp).await?.items {
        let name = o.name_any();
        if !want.contains(&name) && owned_by(uid, kind, &name, &o.metadata).is_ok() {
            delete(api, &name, o.metadata.uid.as_deref()).await?;
            removed.push(format!("{kind}/{name}"));
        }
    }
    Ok(removed)
}

/// Deletes `kind` `name` if the application with `uid` controls it.
async fn prune_named<K>(api: &Api<K>, uid: &str, kind: &'static str, name: &str) -> Result<Vec<String>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_metadata_opt(name).await? {
        Some(o) if owned_by(uid, kind, name, &o.metadata).is_ok() => {
            delete(api, name, o.metadata.uid.as_deref()).await?;
            Ok(vec![format!("{kind}/{name}")])
        }
        _ => Ok(Vec::new()),
    }
}

/// Deletes `name` if it is still the object with `uid` (read together with its owner), so an
/// object made under the same name in between is left alone.
async fn delete<K>(api: &Api<K>, name: &str, uid: Option<&str>) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut dp = DeleteParams::background();
    dp.preconditions = uid.map(|uid| Preconditions { uid: Some(uid.to_string()), resource_version: None });
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        // Gone already, or replaced by another object (the uid precondition failed).
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes status through server-side apply, only when it changed (an unchanged write would wake
/// the controller again for nothing).
async fn update_status(
    ctx: &Context,
    app: &LlmApplication,
    conds: &[Cond],
    generation: Option<i64>,
    observed: Option<status::Observed>,
) -> Result<()> {
    let next: LlmApplicationStatus =
        status::next_status(app.status.as_ref(), conds, generation, observed, Time(jiff::Timestamp::now()));
    if app.status.as_ref() == Some(&next) {
        return Ok(());
    }
    let api: Api<LlmApplication> = Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    // `serving` belongs to the live-status loop's field manager.
    let next = LlmApplicationStatus { serving: None, ..next };
    let patch = json!({
        "apiVersion": format!("{}/v1alpha1", crate::crd::GROUP),
        "kind": "LlmApplication",
        "status": next,
    });
    api.patch_status(&app.name_any(), &apply_params(), &ssa::patch(&patch)?).await?;
    Ok(())
}

/// Requeue after an error, backing off exponentially per object: 1 s, 2 s, 4 s ... 5 min.
pub fn error_policy(app: Arc<LlmApplication>, err: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().unwrap_or_else(PoisonError::into_inner);
    let n = failures.entry(ObjectRef::from_obj(app.as_ref())).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300));
    let reason = err.metric_label();
    tracing::warn!(app = %app.name_any(), error = %err, reason, ?delay, "reconcile failed; requeueing");
    Action::requeue(delay)
}

/// Runs the controller until the stream ends (shutdown signal), with at most `concurrency`
/// reconciles at once (0: unbounded).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let apps: Api<LlmApplication> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (deps, svcs, hpas) = match &namespace {
        Some(ns) => (
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
            Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
    };
    let owned = watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, MANAGER));
    // Only spec changes (generation bumps) of the application itself trigger a reconcile: its
    // own status writes would otherwise wake it again. Children's changes come through `owns`.
    let (reader, writer) = reflector::store();
    let primary = watcher::watcher(apps, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let shutdown = shutdown.shared();
    let running = Controller::for_stream(primary, reader)
        .with_config(controller::Config::default().concurrency(concurrency))
        .owns(deps, owned.clone())
        .owns(svcs, owned.clone())
        .owns(hpas, owned)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile round");
            }
        });
    // The controller holds its reconciles until the application cache has been listed once; if
    // that never happens (no permission to list), a graceful shutdown would wait forever.
    let hard_stop = async move {
        shutdown.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::warn!(
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "reconciles did not finish in the grace period; stopping anyway"
        );
    };
    tokio::select! {
        _ = running => {}
        _ = hard_stop => {}
    }
}
