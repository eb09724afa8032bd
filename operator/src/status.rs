//! Status: conditions as constants, derived from what the applied objects report.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{AuthStatus, LlmApplicationStatus, ModelStatus, ScaleEvent};

/// Condition types.
pub mod types {
    /// Every model and the router serve with all desired replicas ready.
    pub const READY: &str = "Ready";
    /// A rollout or scale is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs a person: invalid spec, failed apply, failed rollout.
    pub const DEGRADED: &str = "Degraded";
    /// ServiceMonitors are applied (the Prometheus Operator CRD exists).
    pub const MONITORED: &str = "Monitored";
}

/// Condition reasons.
pub mod reasons {
    /// All replicas ready.
    pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
    /// Waiting for replicas.
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    /// Spec refused by the operator's own checks.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Applying a child failed.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// A child's name is taken by an object this application does not own.
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// A Deployment reports ReplicaFailure or an exceeded progress deadline.
    pub const ROLLOUT_FAILED: &str = "RolloutFailed";
    /// Nothing wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Rollout complete.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// Rollout under way.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// ServiceMonitors applied.
    pub const SERVICE_MONITORS_APPLIED: &str = "ServiceMonitorsApplied";
    /// The `monitoring.coreos.com/v1` ServiceMonitor CRD is not installed.
    pub const SERVICE_MONITOR_CRD_MISSING: &str = "ServiceMonitorCRDMissing";
    /// `spec.observability.enabled` is false: no ServiceMonitors, no alerts.
    pub const OBSERVABILITY_DISABLED: &str = "ObservabilityDisabled";
}

/// A condition to set; times and generations are filled in by [`merge_conditions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// One of [`types`].
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// One of [`reasons`].
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

impl Cond {
    /// A condition of the given type.
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Cond { type_, status, reason, message: message.into() }
    }
}

/// The new conditions list: `lastTransitionTime` is kept from `old` where the status did not
/// change, and set to `now` where it did or the condition is new. Types not in `new` are kept.
pub fn merge_conditions(old: &[Condition], new: &[Cond], generation: Option<i64>, now: Time) -> Vec<Condition> {
    let mut out: Vec<Condition> = old.iter().filter(|c| !new.iter().any(|n| n.type_ == c.type_)).cloned().collect();
    for n in new {
        let status = if n.status { "True" } else { "False" }.to_string();
        let last = old
            .iter()
            .find(|c| c.type_ == n.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        out.push(Condition {
            type_: n.type_.into(),
            status,
            reason: n.reason.into(),
            message: n.message.clone(),
            observed_generation: generation,
            last_transition_time: last,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Replica counts of an applied Deployment. Desired is the live `spec.replicas` (what the HPA
/// chose when autoscaling).
pub fn model_status(model_id: &str, d: &Deployment) -> ModelStatus {
    let s = d.status.clone().unwrap_or_default();
    ModelStatus {
        model_id: model_id.into(),
        replicas: s.replicas.unwrap_or(0),
        ready_replicas: s.ready_replicas.unwrap_or(0),
        desired_replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        last_scale: None,
    }
}

/// Why a model has the replica count it has: its HPA's metrics against their targets, as the HPA
/// last reported them, or the spec's fixed count.
pub fn scale_reason(hpa: Option<&HorizontalPodAutoscaler>) -> String {
    let Some(hpa) = hpa else { return "spec: numReplicas".into() };
    let targets = hpa.spec.as_ref().and_then(|s| s.metrics.clone()).unwrap_or_default();
    let current = hpa.status.as_ref().and_then(|s| s.current_metrics.clone()).unwrap_or_default();
    let mut parts = Vec::new();
    for m in &current {
        let Some(pods) = &m.pods else { continue };
        let name = &pods.metric.name;
        let value = pods.current.average_value.as_ref().map_or("?", |q| q.0.as_str());
        let target = targets
            .iter()
            .filter_map(|t| t.pods.as_ref())
            .find(|t| t.metric.name == *name)
            .and_then(|t| t.target.average_value.as_ref())
            .map_or("?", |q| q.0.as_str());
        parts.push(format!("{name} {value} per pod, target {target}"));
    }
    if parts.is_empty() {
        "HorizontalPodAutoscaler (no metric reported yet)".into()
    } else {
        format!("HorizontalPodAutoscaler: {}", parts.join("; "))
    }
}

/// Whether a Deployment has rolled out its current generation with every desired replica ready.
pub fn deployment_ready(d: &Deployment) -> bool {
    let s = d.status.clone().unwrap_or_default();
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let current = s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    current
        && s.ready_replicas.unwrap_or(0) >= desired
        && s.updated_replicas.unwrap_or(0) >= desired
        && s.available_replicas.unwrap_or(0) >= desired
}

/// A failure the Deployment reports (`ReplicaFailure`, or `Progressing` past its deadline).
pub fn deployment_failure(d: &Deployment) -> Option<String> {
    let conds = d.status.as_ref()?.conditions.as_ref()?;
    conds.iter().find_map(|c| {
        let failed =
            (c.type_ == "ReplicaFailure" && c.status == "True") || (c.type_ == "Progressing" && c.status == "False");
        failed.then(|| format!("{}: {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
    })
}

/// Ready, Progressing and Degraded from the applied model and router Deployments.
pub fn rollout_conditions(models: &[(String, Deployment)], router: &Deployment) -> Vec<Cond> {
    let mut waiting: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for (id, d) in models {
        if !deployment_ready(d) {
            waiting.push(format!("model {id}"));
        }
        if let Some(f) = deployment_failure(d) {
            failures.push(format!("model {id}: {f}"));
        }
    }
    if !deployment_ready(router) {
        waiting.push("router".into());
    }
    if let Some(f) = deployment_failure(router) {
        failures.push(format!("router: {f}"));
    }
    let ready = waiting.is_empty();
    vec![
        if ready {
            Cond::new(
                types::READY,
                true,
                reasons::ALL_REPLICAS_READY,
                "every model and the router have all desired replicas ready",
            )
        } else {
            Cond::new(types::READY, false, reasons::REPLICAS_NOT_READY, format!("waiting for {}", waiting.join(", ")))
        },
        if ready {
            Cond::new(types::PROGRESSING, false, reasons::ROLLOUT_COMPLETE, "rollout complete")
        } else {
            Cond::new(types::PROGRESSING, true, reasons::ROLLING_OUT, format!("rolling out {}", waiting.join(", ")))
        },
        if failures.is_empty() {
            Cond::new(types::DEGRADED, false, reasons::AS_EXPECTED, "no failures reported")
        } else {
            Cond::new(types::DEGRADED, true, reasons::ROLLOUT_FAILED, failures.join("; "))
        },
    ]
}

/// `"ready/desired"` summed over models, for the REPLICAS printer column.
pub fn replicas_summary(models: &[ModelStatus]) -> String {
    let ready: i32 = models.iter().map(|m| m.ready_replicas).sum();
    let desired: i32 = models.iter().map(|m| m.desired_replicas).sum();
    format!("{ready}/{desired}")
}

/// What an apply of every child reports into status, beside the conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Per-model replica counts.
    pub models: Vec<ModelStatus>,
    /// Why each model (in the order of `models`) has its desired count ([`scale_reason`]).
    pub scale_reasons: Vec<String>,
    /// The router's in-cluster base URL.
    pub router_url: String,
    /// Whether the router was configured to ask for API keys.
    pub auth: AuthStatus,
}

/// How long after a scale event its reason still follows the HPA's status: the HPA scales the
/// Deployment first and reports the metrics it decided on a moment later.
pub const SCALE_REASON_SETTLES_SECONDS: i64 = 30;

/// `models` with their last scale events: a new one where the desired count differs from the
/// previous status's, else the previous event (its reason refreshed while it settles). A model
/// seen for the first time has none.
fn scale_events(
    previous: &[ModelStatus],
    mut models: Vec<ModelStatus>,
    reasons: &[String],
    now: &Time,
) -> Vec<ModelStatus> {
    for (i, m) in models.iter_mut().enumerate() {
        let Some(before) = previous.iter().find(|p| p.model_id == m.model_id) else { continue };
        let reason = reasons.get(i).cloned().unwrap_or_default();
        m.last_scale = if before.desired_replicas == m.desired_replicas {
            before.last_scale.clone().map(|mut e| {
                let age = e.time.parse::<jiff::Timestamp>().map(|t| now.0.as_second() - t.as_second());
                if age.is_ok_and(|a| a <= SCALE_REASON_SETTLES_SECONDS) && e.to == m.desired_replicas {
                    e.reason = reason;
                }
                e
            })
        } else {
            Some(ScaleEvent {
                // Whole seconds, as Kubernetes writes times.
                time: jiff::Timestamp::from_second(now.0.as_second()).unwrap_or(now.0).to_string(),
                from: before.desired_replicas,
                to: m.desired_replicas,
                reason,
            })
        };
    }
    models
}

/// Status with conditions merged into the previous ones; what `observed` is `None` for (a spec
/// that was not applied) keeps its previous value.
pub fn next_status(
    previous: Option<&LlmApplicationStatus>,
    conds: &[Cond],
    generation: Option<i64>,
    observed: Option<Observed>,
    now: Time,
) -> LlmApplicationStatus {
    let prev = previous.cloned().unwrap_or_default();
    let (models, router_url, auth) = match observed {
        Some(o) => (scale_events(&prev.models, o.models, &o.scale_reasons, &now), Some(o.router_url), Some(o.auth)),
        None => (prev.models.clone(), prev.router_url, prev.auth),
    };
    LlmApplicationStatus {
        observed_generation: generation,
        conditions: merge_conditions(&prev.conditions, conds, generation, now),
        replicas: Some(replicas_summary(&models)),
        models,
        router_url,
        auth,
        // Written by the live-status loop under its own field manager; kept here only so that an
        // unchanged status compares equal (the reconciler's patch leaves it out).
        serving: prev.serving,
    }
}
