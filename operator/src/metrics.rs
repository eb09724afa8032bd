//! The operator's own Prometheus metrics. Names carry their unit; labels are bounded.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Reconciles by result (`success`, `invalid`, `error`).
pub const RECONCILES_TOTAL: &str = "llmserve_operator_reconciles_total";
/// Reconcile errors by the error's stable label.
pub const RECONCILE_ERRORS_TOTAL: &str = "llmserve_operator_reconcile_errors_total";
/// Reconcile duration.
pub const RECONCILE_DURATION_SECONDS: &str = "llmserve_operator_reconcile_duration_seconds";
/// 1 while this replica holds the leader lease.
pub const LEADER: &str = "llmserve_operator_leader";
/// Usage facts: number of models per (architecture, accelerator, tensor parallel, autoscaling, LoRA).
pub const USAGE_INFO: &str = "llmserve_usage_info";
/// 1 when usage data is collected, 0 when it is turned off.
pub const USAGE_STATS_ENABLED: &str = "llmserve_operator_usage_stats_enabled";
/// Applications and models seen by the last usage collection.
pub const USAGE_APPLICATIONS: &str = "llmserve_usage_applications";
/// Reads of routers' `GET /status` by the live-status loop, by result.
pub const LIVE_READS_TOTAL: &str = "llmserve_operator_live_reads_total";
/// Writes of `status.serving`.
pub const LIVE_WRITES_TOTAL: &str = "llmserve_operator_live_status_writes_total";

/// Labels of [`USAGE_INFO`].
pub const USAGE_LABELS: [&str; 5] = ["architecture", "accelerator_type", "tensor_parallel_size", "autoscaling", "lora"];

/// Handles to every operator metric, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// See [`RECONCILES_TOTAL`].
    pub reconciles: IntCounterVec,
    /// See [`RECONCILE_ERRORS_TOTAL`].
    pub errors: IntCounterVec,
    /// See [`RECONCILE_DURATION_SECONDS`].
    pub duration: Histogram,
    /// See [`LEADER`].
    pub leader: IntGauge,
    /// See [`USAGE_STATS_ENABLED`].
    pub usage_stats_enabled: IntGauge,
    /// See [`USAGE_INFO`].
    pub usage_info: IntGaugeVec,
    /// See [`USAGE_APPLICATIONS`].
    pub usage_applications: IntGaugeVec,
    /// See [`LIVE_READS_TOTAL`].
    pub live_reads: IntCounterVec,
    /// See [`LIVE_WRITES_TOTAL`].
    pub live_writes: prometheus::IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    #[allow(clippy::expect_used)] // cannot fail: constant, valid, distinct names into a registry of its own
    pub fn new() -> Self {
        Self::try_new().expect("constant metric names are valid and unique")
    }

    /// Creates and registers every metric, or says why a metric was refused.
    pub fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reconciles =
            IntCounterVec::new(Opts::new(RECONCILES_TOTAL, "Reconciles of LlmApplications by result."), &["result"])?;
        let errors = IntCounterVec::new(Opts::new(RECONCILE_ERRORS_TOTAL, "Reconcile errors by reason."), &["reason"])?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(RECONCILE_DURATION_SECONDS, "Time one reconcile of an LlmApplication took.")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let leader = IntGauge::new(LEADER, "1 while this operator replica holds the leader lease.")?;
        let usage_stats_enabled =
            IntGauge::new(USAGE_STATS_ENABLED, "1 when usage data is collected (see README), 0 when turned off.")?;
        // Zero-valued series for every result and error reason, so rates exist from the start.
        for result in ["success", "invalid", "error"] {
            reconciles.with_label_values(&[result]).reset();
        }
        for reason in crate::error::METRIC_LABELS {
            errors.with_label_values(&[reason]).reset();
        }
        let usage_info = IntGaugeVec::new(
            Opts::new(USAGE_INFO, "Models served, by the usage facts llmserve collects (see README)."),
            &USAGE_LABELS,
        )?;
        let usage_applications = IntGaugeVec::new(
            Opts::new(USAGE_APPLICATIONS, "LlmApplications and models seen by the last usage collection."),
            &["kind"],
        )?;
        let live_reads = IntCounterVec::new(
            Opts::new(LIVE_READS_TOTAL, "Reads of routers' live figures (GET /status), by result."),
            &["result"],
        )?;
        for result in ["ok", "unreachable", "bad_answer", "no_router"] {
            live_reads.with_label_values(&[result]).reset();
        }
        let live_writes = prometheus::IntCounter::new(
            LIVE_WRITES_TOTAL,
            "Writes of status.serving (at most one per application per 30 s, only on a change).",
        )?;
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(live_reads.clone()),
            Box::new(live_writes.clone()),
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
            Box::new(usage_stats_enabled.clone()),
            Box::new(usage_info.clone()),
            Box::new(usage_applications.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            usage_stats_enabled,
            usage_info,
            usage_applications,
            live_reads,
            live_writes,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "encoding the operator's metrics failed");
            format!("# encoding metrics failed: {e}\n")
        })
    }
}
