//! Status: conditions as constants, derived from what the applied objects report.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{AuthStatus, LlmApplicationStatus, ModelStatus};

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
    /// The router's in-cluster base URL.
    pub router_url: String,
    /// Whether the router was configured to ask for API keys.
    pub auth: AuthStatus,
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
        Some(o) => (o.models, Some(o.router_url), Some(o.auth)),
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
